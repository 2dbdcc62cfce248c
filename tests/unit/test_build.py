"""What an agent is, said the same way by --version, status and the mcache_build_info metric."""

from __future__ import annotations

import os
import subprocess
import sys

from prometheus_client import generate_latest

from mcache_agent import __version__, build
from mcache_agent.dataplane.source import code_hash
from mcache_agent.metrics import make_registry


def test_version_names_release_programs_and_kernel():
    agent = os.path.join(os.path.dirname(sys.executable), "mcache-agent")  # the console script
    out = subprocess.run([agent, "--version"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (f"mcache-agent {__version__} (programs {code_hash()}, "
                                  f"kernel {os.uname().release})")


def test_build_info_metric_carries_the_status_build():
    st = {"build": build.info(), "counters": {}}
    text = generate_latest(make_registry(lambda: st)).decode()
    want = (f'mcache_build_info{{kernel="{os.uname().release}",programs="{code_hash()}",'
            f'release="{__version__}"}} 1.0')
    assert want in text, text
    # no build in the status (an agent that cannot say): no series, no crash
    assert "mcache_build_info{" not in generate_latest(make_registry(lambda: {})).decode()

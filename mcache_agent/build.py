"""What this agent is: its release, the data plane's program set (a digest of bpf/), and the
kernel it runs on. `mcache-agent --version`, status and the mcache_build_info metric say it the
same way, so an upgrade's progress across a fleet can be read from any of them."""

from __future__ import annotations

import os
from functools import cache

from mcache_agent import __version__


@cache
def info() -> dict[str, str]:
    from mcache_agent.dataplane.source import code_hash

    return {"release": __version__, "programs": code_hash(), "kernel": os.uname().release}


def version_line() -> str:
    i = info()
    return f"mcache-agent {i['release']} (programs {i['programs']}, kernel {i['kernel']})"

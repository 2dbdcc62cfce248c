"""The README's first command works whatever ran on the machine before: an agent run on the
machine itself (the README's "Operating one host"), then `make demo`, twice in a row.

The machine's own /var/lib/mcache (left by that agent) must not reach the lab's hosts, whose
/var is an overlay over the machine's. Runs before test_fleet.py (file order) and leaves the
lab down for it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from mcache_agent.paths import DEFAULT_SOCKET
from tests.fleet.labctl import REPO, lab_env, lab_sh

AGENT = REPO / ".venv" / "bin" / "mcache-agent"
MACHINE_STATE = Path("/var/lib/mcache")
MACHINE_RUN = DEFAULT_SOCKET.parent  # the control socket's directory, made by the agent
MACHINE_CONFIG = """\
apiVersion: mcache/v1
version: 1
memcached: {address: 127.0.0.1, port: 11211}
interfaces: [{name: lo, xdp_mode: generic}]
cache: {entries: 1024, ttl_ms: 1234, allowed_clients: [127.0.0.0/8]}
"""


def run_agent_on_the_machine(tmp: Path) -> None:
    """`mcache-agent run` in the machine's own namespaces with its default state dir, socket
    and pins, as the README's single-host commands do; then `mcache-agent stop`."""
    cfg = tmp / "machine.yml"
    cfg.write_text(MACHINE_CONFIG)
    proc = subprocess.Popen([str(AGENT), "run", "--config", str(cfg)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = subprocess.run([str(AGENT), "status", "--json"], capture_output=True, text=True)
            if r.returncode == 0 and json.loads(r.stdout)["result"]["version"] == 1:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        else:
            raise AssertionError("the machine's agent did not apply its config")
        assert subprocess.run([str(AGENT), "stop"], capture_output=True).returncode == 0
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def make_demo() -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "demo"], cwd=REPO, env=lab_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=900, check=False)


def test_demo_after_an_agent_ran_on_the_machine_twice_in_a_row(tmp_path):
    had_state, had_run = MACHINE_STATE.exists(), MACHINE_RUN.exists()
    try:
        run_agent_on_the_machine(tmp_path)
        assert (MACHINE_STATE / "versions" / "1.yml").read_text() == MACHINE_CONFIG
        for attempt in (1, 2):
            res = make_demo()
            assert res.returncode == 0, (attempt, res.stdout[-6000:], res.stderr[-3000:])
            assert "kernel hit for the probe key" in res.stdout
            # every host runs the lab's version 1, not the machine's
            for i in (1, 2, 3):
                st = subprocess.run(["lab/lab.sh", "exec", str(i), "--", "/opt/mcache/venv/bin/"
                                     "mcache-agent", "status", "--json"], cwd=REPO,
                                    capture_output=True, text=True)
                doc = json.loads(st.stdout)["result"]
                assert doc["version"] == 1 and doc["cache"]["entries"] == 4096, doc
                assert doc["attached"] and doc["attached"][0]["interface"] == "eth0"
    finally:
        lab_sh("down")
        if not had_state:
            shutil.rmtree(MACHINE_STATE, ignore_errors=True)
        if not had_run:
            shutil.rmtree(MACHINE_RUN, ignore_errors=True)

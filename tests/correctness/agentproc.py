"""The real daemon (`mcache-agent run`) in a lab's server namespace, with its own dirs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import lab as L

AGENT = str(Path(sys.executable).parent / "mcache-agent")


class AgentProc:
    def __init__(self, lab: L.Lab):
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix="mcache-corr-agent-"))
        self.state, self.sock = self.dir / "state", self.dir / "run" / "agent.sock"
        self.cfg = self.dir / "config.yaml"
        self.proc: subprocess.Popen | None = None

    def args(self) -> list[str]:
        return ["--socket", str(self.sock), "--state-dir", str(self.state),
                "--bpffs", str(self.lab.pin)]

    def start(self, text: str | None = None, *, env: dict[str, str] | None = None,
              wait: bool = True) -> None:
        """`env`: extra environment of the agent (e.g. MCACHE_CRASH_AT); `wait`: until the
        control socket answers."""
        if text is not None:
            self.cfg.write_text(text)
        penv = {k: v for k, v in os.environ.items() if k != "MCACHE_CRASH_AT"}
        penv.update(env or {})
        with open(self.dir / "agent.log", "a") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{self.lab.s}", AGENT, "run", "--config",
                 str(self.cfg), *self.args()],
                stdout=subprocess.DEVNULL, stderr=log, env=penv)
        if not wait:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.ctl("status", check=False).returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("agent did not come up: " + (self.dir / "agent.log").read_text()[-2000:])

    def ctl(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["nsenter", f"--net=/var/run/netns/{self.lab.s}", AGENT, *argv,
                            *self.args()], capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"{argv}: {r.stdout} {r.stderr}")
        return r

    def apply(self, text: str) -> dict:
        f = self.dir / "apply.yaml"
        f.write_text(text)
        return json.loads(self.ctl("apply", str(f), "--json", check=False).stdout or "{}")

    def status(self) -> dict:
        r = self.ctl("status", "--json", check=False)
        return json.loads(r.stdout or "{}").get("result", {}) if r.returncode == 0 else {}

    def wait_serving(self, timeout: float = 60) -> dict:
        """The control socket answers before the config file is applied: wait for a version."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st.get("version") is not None:
                return st
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = (self.dir / "agent.log").read_text()[-2000:]
        raise RuntimeError("agent serves no version: " + log)

    def wait_dead(self, timeout: float = 120) -> int:
        """Wait for an agent that kills itself (MCACHE_CRASH_AT); returns its exit status."""
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        self.proc = None
        return rc

    def kill9(self) -> None:
        if self.proc:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
            self.proc = None

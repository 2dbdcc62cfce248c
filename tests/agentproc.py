"""The real daemon (`mcache-agent run`) in a test host's server namespace, with its own dirs.

A host is anything with a server namespace `s` and a pin directory `pin`: the correctness
tests' Lab, the agent tests' Pair."""

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
from typing import Any, Protocol


class Host(Protocol):
    s: str
    pin: Path


AGENT = str(Path(sys.executable).parent / "mcache-agent")
REPO = Path(__file__).resolve().parents[2]


class AgentProc:
    def __init__(self, lab: Host, root: Path | None = None):
        self.lab = lab
        self.dir = root or Path(tempfile.mkdtemp(prefix="mcache-test-agent-"))
        self.state, self.sock = self.dir / "state", self.dir / "run" / "agent.sock"
        self.cfg = self.dir / "config.yaml"
        self.proc: subprocess.Popen | None = None

    def args(self) -> list[str]:
        return ["--socket", str(self.sock), "--state-dir", str(self.state),
                "--bpffs", str(self.lab.pin)]

    def start(self, text: str | Path | None = None, *, crash_at: str | None = None,
              wait: bool = True) -> None:
        """`text`: the config file's text (or a file to copy it from); `crash_at`: the agent
        SIGKILLs itself when an apply reaches that step (tests/crash_agent.py); `wait`: until
        the control socket answers and the agent has finished starting."""
        if isinstance(text, Path):
            text = text.read_text()
        if text is not None:
            self.cfg.write_text(text)
        agent = [sys.executable, "-m", "tests.crash_agent", crash_at] if crash_at else [AGENT]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.dir / "agent.log", "a") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{self.lab.s}", *agent, "run", "--config",
                 str(self.cfg), *self.args()],
                stdout=subprocess.DEVNULL, stderr=log, env=env)
        if not wait:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = self.ctl("status", "--json", check=False)
            if r.returncode == 0 and not json.loads(r.stdout)["result"].get("starting"):
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

    def cli(self, *argv: str, check: bool = True) -> dict[str, Any]:
        """A client command's --json document (asserting exit 0 when `check`)."""
        r = self.ctl(*argv, "--json", check=False)
        if check:
            assert r.returncode == 0, (argv, r.returncode, r.stdout, r.stderr)
        return json.loads(r.stdout) if r.stdout.strip() else {}

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
        """Wait for an agent that kills itself (crash_at); returns its exit status."""
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

"""SIGKILL the real agent at every step of an apply, and between applies.

Afterwards the kernel keeps answering, and a new agent adopts a consistent version: the one
the pins record, which is also the agent's current version, whose config is what the kernel
runs; leftovers of the interrupted apply are gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pymemcache.client.base import Client

from mcache_agent import udp_client as uc
from tests.dataplane.nsutil import Pair, in_ns

AGENT = [os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", ".venv", "bin",
                      "mcache-agent")]
PROGRAM_STEPS = ["loaded", "config", "ingress", "switched", "committed"]
MAP_STEPS = ["switched", "committed"]


class AgentProc:
    def __init__(self, pair: Pair, root: Path) -> None:
        self.pair = pair
        self.root = root
        self.opts = ["--socket", str(root / "agent.sock"), "--state-dir", str(root / "state"),
                     "--bpffs", str(pair.pin)]
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, check: bool = True) -> dict:
        r = subprocess.run([*AGENT, *self.opts, *args, "--json"], capture_output=True,
                           text=True, timeout=120)
        doc = json.loads(r.stdout) if r.stdout.strip() else {}
        if check:
            assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
        return doc

    def start(self, cfg: Path, crash_at: str | None = None) -> None:
        env = dict(os.environ)
        env.pop("MCACHE_CRASH_AT", None)
        if crash_at:
            env["MCACHE_CRASH_AT"] = crash_at
        with open(self.root / "agent.log", "a") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{self.pair.s}", *AGENT, *self.opts,
                 "run", "--config", str(cfg)],
                env=env, stdout=subprocess.DEVNULL, stderr=log,
            )
        for _ in range(300):
            if (self.root / "agent.sock").exists() and self.cli("status", check=False).get(
                "result", {}
            ).get("running"):
                return
            assert self.proc.poll() is None, (self.root / "agent.log").read_text()[-2000:]
            time.sleep(0.05)
        raise AssertionError("agent did not come up")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)

    def wait_dead(self) -> None:
        assert self.proc is not None
        self.proc.wait(120)
        assert self.proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def pair():
    p = Pair("k", 14, fill_hold_ms=0).up()
    with in_ns(p.s):
        p.dp.teardown()  # the agent owns the data plane in these tests
    with in_ns(p.c):
        mc = Client((p.saddr, 11211), default_noreply=False)
        mc.set(b"kk", b"kept")
        mc.close()
    yield p
    p.down()


@pytest.fixture
def agent(pair, tmp_path):
    a = AgentProc(pair, tmp_path)
    yield a
    a.kill()
    a.cli("stop", check=False)
    a.kill()


def write(pair: Pair, path: Path, version: int, entries: int, ttl_ms: int = 60000) -> Path:
    pair.version = version - 1
    text = pair.config_text(entries=entries, ttl_ms=ttl_ms).replace(
        f"version: {version - 1}", f"version: {version}"
    )
    path.write_text(text.replace(f"version: {pair.version}", f"version: {version}"))
    return path


def consistent(pair: Pair, a: AgentProc) -> int:
    """The host serves one version, the same everywhere; returns it."""
    status = a.cli("status")["result"]
    meta = pair.dp.meta()
    assert status["running"] is True
    assert status["version"] == meta["version"] == status["current"], (status, meta)
    sets = [d.name for d in (pair.pin / "sets").iterdir()]
    assert sets == [meta["set"]], sets
    caches = sorted(c.name for c in pair.pin.glob("cache_*"))
    assert caches == ["cache_{}_{}_{}".format(*meta["shape"])], caches
    with in_ns(pair.c):
        for _ in range(3):
            assert uc.udp_get_ascii(pair.saddr, 11211, [b"kk"], 2.0) == {b"kk": b"kept"}
    assert a.cli("probe")["ok"] is True
    return status["version"]


@pytest.mark.parametrize("step", PROGRAM_STEPS)
def test_kill_during_program_swap(pair, agent, tmp_path, step):
    v1 = write(pair, tmp_path / "v1.yml", 1, 4096)
    v2 = write(pair, tmp_path / "v2.yml", 2, 8192)
    agent.start(v1)
    agent.kill()
    agent.start(v1, crash_at=step)  # adopts v1: no apply until v2 arrives
    agent.cli("apply", str(v2), check=False)  # the agent dies inside this apply
    agent.wait_dead()
    # the kernel still answers while no agent runs
    with in_ns(pair.c):
        assert uc.udp_get_ascii(pair.saddr, 11211, [b"kk"], 2.0) == {b"kk": b"kept"}
    agent.start(v1)
    version = consistent(pair, agent)
    committed = PROGRAM_STEPS.index(step) >= PROGRAM_STEPS.index("committed")
    assert version == (2 if committed else 1), (step, version)


@pytest.mark.parametrize("step", MAP_STEPS)
def test_kill_during_map_swap(pair, agent, tmp_path, step):
    v1 = write(pair, tmp_path / "v1.yml", 1, 4096)
    v2 = write(pair, tmp_path / "v2.yml", 2, 4096, ttl_ms=30000)
    agent.start(v1)
    agent.kill()
    agent.start(v1, crash_at=step)
    agent.cli("apply", str(v2), check=False)
    agent.wait_dead()
    agent.start(v1)
    version = consistent(pair, agent)
    assert version == (2 if step == "committed" else 1), (step, version)


def test_kill_between_applies_adopts_without_reload(pair, agent, tmp_path):
    v1 = write(pair, tmp_path / "v1.yml", 1, 4096)
    agent.start(v1)
    with in_ns(pair.c):
        for _ in range(2):
            uc.udp_get_ascii(pair.saddr, 11211, [b"kk"], 2.0)
    hits = pair.dp.counters()["hit"]
    set_before = pair.dp.meta()["set"]
    agent.kill()
    with in_ns(pair.c):
        assert uc.udp_get_ascii(pair.saddr, 11211, [b"kk"], 2.0) == {b"kk": b"kept"}
    assert pair.dp.counters()["hit"] == hits + 1  # served by the kernel, no agent running
    agent.start(v1)
    assert pair.dp.meta()["set"] == set_before  # adopted, not reloaded
    assert pair.dp.counters()["hit"] >= hits + 1  # counters continue
    consistent(pair, agent)

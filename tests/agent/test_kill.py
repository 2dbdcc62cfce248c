"""SIGKILL the real agent at every step of an apply, and between applies.

Afterwards the kernel keeps answering, and a new agent adopts a consistent version: the one
the pins record, which is also the agent's current version, whose config is what the kernel
runs; leftovers of the interrupted apply are gone.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from mcache_agent import udp_client as uc
from tests.agentproc import AgentProc
from tests.dataplane.nsutil import Pair, agent_owned, in_ns

PROGRAM_STEPS = ["loaded", "config", "ingress", "switched", "committed"]
MAP_STEPS = ["switched", "committed"]


@pytest.fixture(scope="module")
def pair():
    with agent_owned(Pair("k", 14, fill_hold_ms=0), {b"kk": b"kept"}) as p:
        yield p


def killed(a: AgentProc) -> None:
    assert a.wait_dead(120) == -signal.SIGKILL


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
    rec = pair.dp.record()
    assert status["running"] is True
    assert status["version"] == rec.version == status["current"], (status, rec)
    sets = [d.name for d in (pair.pin / "sets").iterdir()]
    assert sets == [rec.set], sets
    views = [d.name for d in (pair.pin / "views").iterdir()]
    assert views == [rec.set], views
    store = sorted(p.name for p in (pair.pin / "maps").iterdir())
    assert store == sorted(f"{p}@{i}" for p, i in rec.maps), (store, rec.maps)
    caches = sorted(c.name for c in (pair.pin / "views" / rec.set).glob("cache_*"))
    assert caches == ["cache_{}_{}_{}".format(*rec.shape)], caches
    assert not list(pair.pin.glob("maps-*"))
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
    agent.kill9()
    agent.start(v1, crash_at=step)  # adopts v1: no apply until v2 arrives
    agent.cli("apply", str(v2), check=False)  # the agent dies inside this apply
    killed(agent)
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
    agent.kill9()
    agent.start(v1, crash_at=step)
    agent.cli("apply", str(v2), check=False)
    killed(agent)
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
    set_before = pair.dp.record().set
    agent.kill9()
    with in_ns(pair.c):
        assert uc.udp_get_ascii(pair.saddr, 11211, [b"kk"], 2.0) == {b"kk": b"kept"}
    assert pair.dp.counters()["hit"] == hits + 1  # served by the kernel, no agent running
    agent.start(v1)
    assert pair.dp.record().set == set_before  # adopted, not reloaded
    assert pair.dp.counters()["hit"] >= hits + 1  # counters continue
    consistent(pair, agent)

"""An agent upgrade keeps the cache, with the real daemon and data plane: the agent stops,
starts again on programs it did not load (the pinned record names older code), adopts the
pins, and the next config is a program swap onto the very same maps: a key cached before is
a kernel hit after, without a fill. (tests/fleet/test_truth.py rolls a real new release out
with the canary playbook.)"""

from __future__ import annotations

import dataclasses
import time

import pytest

from mcache_agent.dataplane.pins import PinDir
from tests.agentproc import AgentProc
from tests.dataplane.nsutil import NsClient, Pair, agent_owned, in_ns, versioned_config


@pytest.fixture(scope="module")
def pair():
    with agent_owned(Pair("up", 21, fill_hold_ms=0), {}) as p:
        yield p


def test_a_restart_onto_new_programs_keeps_the_cache(pair: Pair, agent: AgentProc) -> None:
    agent.start(versioned_config(pair, 1))
    assert agent.wait_serving()["version"] == 1
    # The agent's first look at memcached (a second after its start) empties a cache it
    # cannot tell the origin of, and notes memcached's identity for the next start.
    deadline = time.monotonic() + 30
    while not (agent.state / "memcached.json").exists():
        assert time.monotonic() < deadline, "the agent never noted memcached's identity"
        time.sleep(0.1)
    c = NsClient(pair, pair.c)
    c.cached(b"upgraded", b"kept")
    c.mc.close()
    agent.stop()
    pins = PinDir(pair.pin)
    rec = pins.record()
    pins.write_record(dataclasses.replace(rec, code="0" * 16))  # loaded by an older release
    agent.start()
    assert agent.wait_serving()["version"] == 1
    res = agent.apply(versioned_config(pair, 2))
    assert res.get("ok"), res
    st = agent.status()
    assert st["last_apply"]["strategy"] == "program_swap", st["last_apply"]
    assert st["last_apply"]["cache_kept"] is True, st["last_apply"]
    assert pins.record().maps == rec.maps
    c = NsClient(pair, pair.c)
    before, gets = c.counters(), c.cmd_get()
    with in_ns(pair.c):
        assert c.udp_get(b"upgraded") == {b"upgraded": b"kept"}
    after = c.counters()
    assert after["hit"] == before["hit"] + 1, (before, after, st["flush_reasons"],
                                               (agent.dir / "agent.log").read_text()[-1500:])
    assert c.cmd_get() == gets
    c.mc.close()

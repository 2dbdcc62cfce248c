"""Faults under load (CI sizes): memcached killed and restarted, the agent SIGKILLed in a loop,
random applies, applies that fail midway; the real agent, a steady UDP GET load and acknowledged
TCP writes. Long mode: `python -m tests.correctness.faults --long --report out.json`."""

from __future__ import annotations

import json
import os
import time

import pytest

from mcache_agent.udp_client import parse_ascii_values
from tests.correctness import faults as F
from tests.correctness import lab as L

SIZES = dict(F.CI)
if os.environ.get("MCACHE_FAULTS_LONG"):
    SIZES = dict(F.LONG)


@pytest.fixture(scope="module")
def rig():
    with F.lab_net():
        r = F.Rig("t")
        yield r
        r.down()


def show(rep: dict) -> str:
    return json.dumps(rep, indent=1, default=str)[:4000]


def assert_clean(rep: dict) -> None:
    assert rep["operations"] > 1000, show(rep)
    assert rep["wrong"] == 0, show(rep)
    assert rep["stale"] == 0, show(rep)
    assert rep["lost"] == 0, show(rep)
    assert rep["failures"] == [], show(rep)


def test_memcached_killed_and_restarted(rig):
    rep = F.scenario(rig, "memcached", SIZES)
    assert_clean(rep)
    assert rep["faults"] == SIZES["memcached"]
    # every restart was followed by a generation bump (else a failure is listed); nothing
    # older than the restart was served after it
    assert len(rep["flush_after_restart_ms"]) == SIZES["memcached"], show(rep)


def test_agent_sigkilled_in_a_loop(rig):
    rep = F.scenario(rig, "agent", SIZES)
    assert_clean(rep)
    assert rep["faults"] == SIZES["agent"]
    assert rep["kills_with_hits_while_down"] >= 0.8 * SIZES["agent"], show(rep)


def test_random_applies(rig):
    rep = F.scenario(rig, "applies", SIZES)
    assert_clean(rep)
    assert rep["faults"] == SIZES["applies"]
    assert "program_swap" in rep["strategies"] and "map_swap" in rep["strategies"], show(rep)


def test_failing_applies(rig):
    rep = F.scenario(rig, "failing", SIZES)
    assert_clean(rep)


# ------------------------------------------------------------------ focused regressions

def _udp_get(key: bytes, rid: int) -> bytes | None:
    values = parse_ascii_values(L.udp_get_from(L.CADDR, key, rid))
    return values[key][1] if key in values else None


def test_crash_after_ingress_switch_serves_no_value_written_meanwhile(rig):
    """Killed after a shape-changing program swap switched the ingress only: the new XDP
    invalidates writes in its own (new) cache; the agent then reconciles back to the old set,
    whose cache never saw those writes. It must not serve what they replaced."""
    from pymemcache.client.base import Client

    with F.lab_net():
        with L.in_ns(rig.lab.c):
            mc = Client((L.SADDR, L.PORT), timeout=2)
            mc.set(b"ck:ingress", b"old-value", noreply=False)
            h0 = rig.hits()
            for i in range(20):  # fill, then hit (fill_hold_ms 50)
                assert _udp_get(b"ck:ingress", i + 1) == b"old-value"
                time.sleep(0.02)
            assert rig.hits() > h0, "never served from the kernel"
        v_run = rig.agent.status()["version"]
        rig.agent.kill9()
        rig.agent.start(crash_at="ingress")
        rig.agent.wait_serving()
        cur = rig.lab.dp.record().shape[0]
        rig.version += 1
        rig.agent.apply(rig.text(rig.version, entries=8192 if cur == 4096 else 4096))
        assert rig.agent.wait_dead(30) == -9
        with L.in_ns(rig.lab.c):
            mc.set(b"ck:ingress", b"new-value", noreply=False)  # seen by the new XDP only
        rig.agent.start()
        rig.agent.wait_serving()
        assert rig.agent.status()["version"] == v_run
        with L.in_ns(rig.lab.c):
            got = [_udp_get(b"ck:ingress", 100 + i) for i in range(5)]
            mc.close()
        assert got == [b"new-value"] * 5, got


def test_apply_failing_after_commit_keeps_the_previous_version(rig):
    with F.lab_net():
        lab = rig.lab
        ifb = "tifbx"
        L.sh(f"ip -n {lab.s} link add {ifb} type ifb && ip -n {lab.s} link set {ifb} up")
        try:
            v_prev = rig.agent.status()["version"]
            rig.version += 1
            text = rig.text(rig.version, prefix="zz:").replace(
                "xdp_mode: auto}]", f"xdp_mode: auto}}, {{name: {ifb}, xdp_mode: native}}]")
            r = rig.agent.apply(text)
            assert r.get("ok") is False  # native XDP refused on an ifb
            assert rig.agent.status()["version"] == v_prev
            assert rig.pinned_version() == v_prev, "the kernel runs the failed version"
        finally:
            L.sh(f"ip -n {lab.s} link del {ifb}", check=False)
            rig.version = max(rig.version, rig.pinned_version() or 0) + 1
            rig.agent.apply(rig.text(rig.version))

"""The canary bake's judgement (plugins/module_utils/canary_analysis.py): windows from two agent
signals readings, and which before/after/peer differences count as a regression."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import pyfile

ca = pyfile.load("canary_analysis", Path(__file__).resolve().parents[2] / "plugins" /
                 "module_utils" / "canary_analysis.py")


def reading(t: float, boot: str = "b1", started: float = 1.0, probe_failures: int = 0,
            mc_errors: int = 0, version: int = 1, **counters: int) -> dict[str, Any]:
    return {"at_monotonic": t, "at_unix": 1e9 + t, "boot_id": boot,
            "agent_started_at_unix": started, "version": version, "counters": counters,
            "probes": {"runs": 10, "failures": probe_failures},
            "memcached": {"errors": mc_errors}}


def healthy(t0: float, t1: float, hit_per_s: int = 100, miss_per_s: int = 2, base: int = 0
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    return (reading(t0, hit=base, miss=base, **{"pass": 0}),
            reading(t1, hit=base + int(hit_per_s * (t1 - t0)),
                    miss=base + int(miss_per_s * (t1 - t0)), **{"pass": 0}))


def test_window_rates_and_shares() -> None:
    w = ca.window(reading(10, hit=100, miss=100, too_big=0),
                  reading(20, hit=1000, miss=200, too_big=100))
    assert w["valid"] and w["seconds"] == 10
    assert w["requests"] == 1000 and w["hit_ratio"] == 0.9
    assert w["hits_per_s"] == 90 and w["share_too_big"] == round(100 / 1100, 4)


@pytest.mark.parametrize(("a", "b", "why"), [
    (reading(1, boot="b1", hit=5), reading(2, boot="b2", hit=6), "booted"),
    (reading(1, hit=500), reading(2, hit=3), "counter hit went down"),
    (reading(2, hit=1), reading(1, hit=2), "time order"),
    ({}, reading(1), "no reading"),
])
def test_window_that_cannot_be_compared(a: dict, b: dict, why: str) -> None:
    w = ca.window(a, b)
    assert w["valid"] is False and why in w["why"]


def test_agent_restart_counts_its_own_counters_from_zero() -> None:
    w = ca.window(reading(1, started=1.0, probe_failures=5, hit=0),
                  reading(2, started=50.0, probe_failures=1, hit=10), min_requests=0)
    assert w["valid"] and w["probe_failures"] == 1


def test_a_good_change_passes() -> None:
    start, before = healthy(0, 30)
    bake_start, after = healthy(31, 36, base=3060)
    res = ca.analyse({"start": start, "before": before, "bake_start": bake_start,
                      "after": after})
    assert res["verdict"] == "pass", res
    assert res["regressions"] == []


def test_a_ttl_of_1ms_regresses_on_hit_ratio_and_hits_per_s() -> None:
    # what the lab's canary sees with ttl_ms: 1 - every entry expired before it is asked again
    start, before = healthy(0, 30)
    bake_start = reading(31, hit=3000, miss=60)
    after = reading(36, hit=3005, miss=560, expired=490)
    res = ca.analyse({"start": start, "before": before, "bake_start": bake_start,
                      "after": after})
    assert res["verdict"] == "regressed"
    signals = {r["signal"]: r for r in res["regressions"]}
    assert set(signals) >= {"hit_ratio", "hits_per_s"}
    assert signals["hit_ratio"]["before"] == 0.9804 and signals["hit_ratio"]["after"] < 0.01
    line = ca.describe("mc-lab-1", res["regressions"])
    assert line.startswith("mc-lab-1: hit_ratio 0.9804 -> 0.0099: hit ratio fell by 97.0 points")


def test_peers_catch_a_regression_without_a_baseline() -> None:
    bake_start = reading(31, hit=0, miss=0)
    after = reading(36, hit=50, miss=450)
    peer = healthy(0, 36)
    res = ca.analyse({"start": None, "before": None, "bake_start": bake_start, "after": after,
                      "peers": [list(peer)]})
    assert res["verdict"] == "regressed"
    (r,) = res["regressions"]
    assert r["signal"] == "peer_hit_ratio" and r["before"] == 0.9804 and r["after"] == 0.1
    assert any("no window before the change" in n for n in res["notes"])


def test_a_peer_lost_in_the_bake_is_left_out_and_noted() -> None:
    before, after = healthy(0, 30), healthy(31, 36, base=10_000)
    peer = healthy(0, 36)
    res = ca.analyse({"start": before[0], "before": before[1], "bake_start": after[0],
                      "after": after[1], "peers": [list(peer)], "peers_lost": ["mc-lab-3"]})
    assert res["verdict"] == "pass" and res["peers"] == 1
    assert "peer mc-lab-3 did not answer: left out of the comparison" in res["notes"]


def test_denied_share_rising_is_a_regression() -> None:
    start, before = healthy(0, 30)
    bake_start = reading(31, hit=3000, miss=60, denied=0)
    after = reading(36, hit=3490, miss=70, denied=400)
    res = ca.analyse({"start": start, "before": before, "bake_start": bake_start,
                      "after": after})
    assert [r["signal"] for r in res["regressions"]] == ["share_denied"]


def test_probe_failures_and_memcached_errors_need_no_traffic() -> None:
    bake_start = reading(31, probe_failures=0, mc_errors=2)
    after = reading(36, probe_failures=1, mc_errors=5)
    res = ca.analyse({"bake_start": bake_start, "after": after})
    assert [r["signal"] for r in res["regressions"]] == ["probe_failures", "memcached_errors"]
    assert res["regressions"][1]["after"] == 3
    assert any("traffic signals not judged" in n for n in res["notes"])


def test_thresholds_loosen_and_none_keeps_the_default() -> None:
    start, before = healthy(0, 30)
    bake_start = reading(31, hit=3000, miss=60)
    after = reading(36, hit=3400, miss=160)  # 80 % hit ratio, 18 points down
    readings = {"start": start, "before": before, "bake_start": bake_start, "after": after}
    assert ca.analyse(readings)["verdict"] == "regressed"
    assert ca.analyse(readings, {"max_hit_ratio_drop": 0.25,
                                 "min_requests": None})["verdict"] == "pass"


def test_too_little_traffic_is_not_judged_a_regression() -> None:
    start, before = healthy(0, 30)
    res = ca.analyse({"start": start, "before": before, "bake_start": reading(31, hit=3000),
                      "after": reading(36, hit=3010, miss=40)})
    assert res["verdict"] == "pass"
    assert any("traffic signals not judged" in n for n in res["notes"])


def test_an_unreadable_bake_is_unjudged() -> None:
    res = ca.analyse({"bake_start": reading(31, boot="x"), "after": reading(36, boot="y")})
    assert res["verdict"] == "unjudged" and "booted" in res["notes"][0]

"""Smoke run of the benchmark harness (bench/run.py --smoke): it must run end to end in its
smallest mode and produce numbers. Benchmarks are not tests: no threshold is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import peer_bmc  # noqa: E402  (bench/peer_bmc.py: how the harness builds its peer)


@pytest.fixture(autouse=True)
def _bench_needs() -> None:
    """What the harness runs: missing, the smoke fails here, by name (it never skips)."""
    assert os.geteuid() == 0, "the benchmark harness needs root"
    for tool in ("memcaslap", "memcached"):
        assert shutil.which(tool), f"{tool} not installed (make setup installs it)"


def test_bench_smoke(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--no-plots",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((tmp_path / "latest-smoke.json").read_text())
    s = res["scenarios"]["get90_v32"]["summary"]
    for mode in ("A", "B", "C"):
        assert s[mode]["ops_per_s"] > 0, (mode, s[mode])
        assert s[mode]["mean_us"] > 0, (mode, s[mode])
    assert s["B"]["hit_ratio"] and s["B"]["hit_ratio"] > 0.5
    hs = res["hot_swap"]
    assert hs["compile_load"]["p50_ms"] > 0
    assert hs["map_swap"]["n"] > 0 and hs["map_swap"]["outer_update_ms_p99"] is not None
    assert hs["program_switch"]["n"] > 0 and hs["program_switch"]["ms_p99"] is not None
    cost = res["bpf_prog_stats"]["test_run_ns"]
    assert cost["mcache"]["get_hit"]["verdicts"].get("tx")
    assert cost["reflector"]["get_hit"]["verdicts"].get("tx")

    # remote TCP (memcaslap over TCP, 16 connections): every GET is memcached's in A and B,
    # B's write scanner reads the sets off the segments, the programs' run time is counted
    tcp = res["scenarios"]["tcp_get90_v32"]
    for mode in ("A", "B"):
        assert tcp["summary"][mode]["ops_per_s"] > 0, (mode, tcp["summary"][mode])
    b = tcp["runs"]["B"][0]
    assert b["counters"].get("invalidate", 0) > 0, b["counters"]
    assert not b["counters"].get("hit"), b["counters"]
    assert b["memcached_cmd_get"] >= b["get_ops"] > 0, b
    live = tcp["bpf_live"]
    assert live["xdp_root"]["run_cnt"] > 0 and live["ns_per_op"] > 0, live
    assert "B/A_server_cpu_per_op" in tcp["ratios"], tcp["ratios"]

    # 32-key multi-gets over UDP: memcached has every key (A: every reply carries 32 items);
    # warm, B answers them in the kernel, whole
    mg = res["scenarios"]["mget32_v16"]
    a_run, b_run = mg["runs"]["A"][0], mg["runs"]["B"][0]
    assert a_run["replies"] > 0 and a_run["items"] == 32 * a_run["replies"], a_run
    assert b_run["full_replies"] > 0.9 and b_run["counters"].get("hit", 0) > 0, b_run
    assert b_run["memcached_cmd_get"] < 32 * b_run["replies"] * 0.1, b_run


# BMC (the peer system, round D): its port lives beside the checkout (../shared/peers/bmc),
# built once into a cached directory and reused.
BMC_SRC = Path(os.environ.get("MCACHE_BENCH_BMC_SRC",
                              next((str(p) for p in (ROOT.parent / "shared" / "peers" / "bmc",
                                                     Path("/work/shared/peers/bmc"))
                                    if (p / "build.sh").is_file()),
                                   str(ROOT.parent / "shared" / "peers" / "bmc"))))
BMC_DIR = Path(os.environ.get("MCACHE_BENCH_BMC_DIR", "/var/cache/mcache-bench/bmc"))


def test_bench_smoke_peer_bmc(tmp_path: Path) -> None:
    assert (BMC_SRC / "build.sh").is_file() or (BMC_DIR / "bmc").is_file(), (
        f"BMC, the benchmark's peer, not found at {BMC_SRC} (MCACHE_BENCH_BMC_SRC)")
    # the build is bench/run.py's own (--peer-bmc builds into DIR when DIR/bmc is missing),
    # done here first so that its time does not count against the run's timeout; on a fresh
    # machine DIR's parent does not exist yet (the peer's build.sh needs it)
    peer_bmc.ensure_built(BMC_DIR, BMC_SRC / "build.sh")
    # the smoke's memcaslap GET scenario and one udpgen GET scenario, A -> B -> C -> D
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--no-plots", "--no-profile",
         "--scenarios", "get90_v32,zipf_v32", "--peer-bmc", str(BMC_DIR), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((tmp_path / "latest-smoke.json").read_text())
    assert res["peer_bmc"]["dir"] == str(BMC_DIR.resolve())
    for name in ("get90_v32", "zipf_v32"):
        sc = res["scenarios"][name]
        s = sc["summary"]
        assert list(s) == ["A", "B", "C", "D"], (name, list(s))
        assert s["D"]["ops_per_s"] > 0, (name, s["D"])
        assert s["D"]["hit_ratio"] and s["D"]["hit_ratio"] > 0, (name, s["D"])
        run = sc["runs"]["D"][0]
        assert run["bmc_counters"]["hit_count"] > 0, run["bmc_counters"]
        assert "get_recv_count" in run["bmc_stats_end"]
        assert "B/D_throughput" in sc["ratios"]

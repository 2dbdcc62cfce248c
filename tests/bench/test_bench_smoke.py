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

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("memcaslap") or not shutil.which("memcached"),
    reason="needs root, memcached and memcaslap",
)


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

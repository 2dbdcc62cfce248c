#!/usr/bin/env python3
"""Markdown tables of a result file (for docs/BENCHMARKS.md):

    .venv/bin/python bench/report.py bench/results/latest-full.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)


def tables(r: dict) -> str:
    out = []
    m = r["machine"]
    out.append(f"Run: {r['time']}, mode `{r['mode']}`, {r['profile']['rounds']} rounds x "
               f"{r['profile']['seconds']} s per measurement, kernel {m['kernel']}, {m['cpus']} x "
               f"{m['cpu_model']}, {m['memcached']}, memcached threads {r['memcached_threads']}, "
               f"client/server split over CPUs: {r['split_cpus']}; load average at start "
               f"{' '.join(m['loadavg_start'])}, at end {' '.join(m['loadavg_end'])}; "
               f"wall {r['wall_s']:.0f} s.\n")
    has_d = any("D" in s["summary"] for s in r["scenarios"].values())
    if has_d:
        out[-1] = out[-1][:-1] + (
            " Mode D: BMC (NSDI'21, the peer system) from "
            f"`{r.get('peer_bmc', {}).get('dir', '?')}`, XDP in generic mode plus its tc egress "
            "program, started afresh (empty cache) for every D measurement; its hit ratio is "
            "BMC's own hit_count / (hit_count + miss_count) per key.\n")
    out.append("| scenario | tool | mode | ops/s median (min-max) | mean µs median (min-max) | "
               "p50 µs | p99 µs | server CPU µs/op | memcached µs/op | hit ratio | lost | "
               "verify failed | failed runs |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, s in r["scenarios"].items():
        for mode, v in s["summary"].items():
            out.append(
                f"| {name} | {s['tool']} | {mode} | {_f(v['ops_per_s'])} "
                f"({_f(v['ops_per_s_min'])}-{_f(v['ops_per_s_max'])}) | {_f(v['mean_us'])} "
                f"({_f(v['mean_us_min'])}-{_f(v['mean_us_max'])}) | {_f(v['p50_us'])} | "
                f"{_f(v['p99_us'])} | {_f(v['server_cpu_us_per_op'], '{:.1f}')} | "
                f"{_f(v['memcached_cpu_us_per_op'], '{:.2f}')} | "
                f"{_f(v['hit_ratio'], '{:.3f}')} | {v['lost']} | {v['verify_failed']} | "
                f"{v.get('failed_runs', 0)} |")
    out.append("")
    cols = [("B/A throughput", "B/A_throughput"), ("B/A mean latency", "B/A_mean_latency"),
            ("B/C throughput", "B/C_throughput"),
            ("B/A server CPU per op", "B/A_server_cpu_per_op")]
    if has_d:
        cols[3:3] = [("B/D throughput", "B/D_throughput")]
        cols.append(("B/D server CPU per op", "B/D_server_cpu_per_op"))
    out.append("| scenario | " + " | ".join(c for c, _ in cols) + " |")
    out.append("|---" * (len(cols) + 1) + "|")
    for name, s in r["scenarios"].items():
        q = s["ratios"]
        out.append(f"| {name} | " + " | ".join(_f(q.get(k), "{:.2f}") for _, k in cols) + " |")
    hs = r.get("hot_swap", {})
    if hs:
        cl, ms, ps = hs["compile_load"], hs["map_swap"], hs["program_switch"]
        out.append("")
        out.append("| hot swap | n | p50 | p99 | requests lost (sent) under load |")
        out.append("|---|---|---|---|---|")
        out.append(f"| map swap: outer-map update syscall | {ms['n']} | "
                   f"{ms['outer_update_ms_p50']:.2f} ms | {ms['outer_update_ms_p99']:.2f} ms | "
                   f"{ms['load_during']['lost']} ({ms['load_during']['sent']:,}) |")
        out.append(f"| map swap: whole `apply` | {ms['n']} | {ms['apply_ms_p50']:.2f} ms | "
                   f"{ms['apply_ms_p99']:.2f} ms | (same run) |")
        out.append(f"| program switch (2 root-slot updates) | {ps['n']} | {ps['ms_p50']:.3f} ms | "
                   f"{ps['ms_p99']:.3f} ms | {ps['load_during']['lost']} "
                   f"({ps['load_during']['sent']:,}) |")
        out.append(f"| compile+load (program_swap apply) | {len(cl['runs'])} | "
                   f"{cl['p50_ms']:.0f} ms | max {cl['max_ms']:.0f} ms | - |")
        b = cl.get("breakdown", {})
        if b.get("workers_parallel_ms"):
            w = sorted(b["workers_parallel_ms"])
            out.append(f"| loader workers alone (xdp ∥ tc) | {len(w)} | "
                       f"{w[len(w) // 2]:.0f} ms | max {w[-1]:.0f} ms | - |")
        seq = b.get("sequential", {})
        if "xdp_compile_s" in seq:
            out.append("")
            out.append(f"Sequential breakdown: bcc import {seq['import_bcc_s'] * 1000:.0f} ms, "
                       f"xdp compile {seq['xdp_compile_s'] * 1000:.0f} ms + load "
                       f"{seq['xdp_load_total_s'] * 1000:.0f} ms, tc compile "
                       f"{seq['tc_compile_s'] * 1000:.0f} ms + load "
                       f"{seq['tc_load_total_s'] * 1000:.0f} ms. Verifier (instructions "
                       "processed, load time): " + ", ".join(
                           f"{n} {x['verified_insns']:,} ({x['load_s'] * 1000:.0f} ms)"
                           for k in ("xdp_load", "tc_load") for n, x in seq[k].items()) + ".")
    ps = r.get("bpf_prog_stats", {})
    if "test_run_ns" in ps:
        t = ps["test_run_ns"]
        out.append("")
        out.append("| XDP program cost per frame (BPF_PROG_TEST_RUN, median ns) | GET hit | "
                   "GET miss | non-memcached UDP |")
        out.append("|---|---|---|---|")
        for who in ("mcache", "reflector"):
            x = t[who]
            hit, miss = x["get_hit"], x["get_miss"]
            out.append(f"| {who} | {hit['median_ns']:.0f} ({'/'.join(hit['verdicts'])}) | "
                       f"{miss['median_ns']:.0f} ({'/'.join(miss['verdicts'])}) | "
                       f"{x['non_memcached']['median_ns']:.0f} |")
    if "live" in ps:
        lv = ps["live"]
        out.append("")
        out.append("Live (bpf_stats_enabled, one get90_v32 B run): " + ", ".join(
            f"{k} {v['run_cnt']:,} runs x {v['ns_per_run']:.0f} ns" for k, v in lv.items()
            if isinstance(v, dict) and v.get("ns_per_run")) + ".")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(json.loads(Path(sys.argv[1]).read_text())))

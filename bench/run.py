#!/usr/bin/env python3
"""mcache benchmarks: stock memcached (A) vs mcache (B) vs the XDP reflector limit (C),
and optionally (--peer-bmc DIR) vs BMC, the NSDI'21 peer system (D).

    bench/run.py            full run (~10-15 min)
    bench/run.py --quick    short run (~4 min)
    bench/run.py --smoke    smallest run (~75 s; the test suite's smoke test)
    bench/run.py --smoke --peer-bmc /var/cache/mcache-bench/bmc    ... with round D (BMC)

Writes bench/results/<mode>-<timestamp>.json (and latest-<mode>.json), PNG plots next to it.
See docs/BENCHMARKS.md for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import loads  # noqa: E402
import peer_bmc  # noqa: E402
import topo  # noqa: E402
from topo import CLIENT_NS, NET, PIN, SERVER_ADDR, SERVER_IF, SERVER_NS, Topology, in_ns  # noqa: E402

from harness.frames import udp_frame  # noqa: E402
from mcache_agent.config import load_config  # noqa: E402
from mcache_agent.dataplane import Dataplane, libbpf  # noqa: E402

SERVER_CPU = "1"
RESULTS = HERE / "results"


# ---------------------------------------------------------------------------- profiles

def profile(mode: str) -> dict:
    if mode == "smoke":
        return dict(rounds=1, seconds=1, warm=1, conc=16, window="1k", swaps=5, switches=5,
                    compiles=1, scenarios=["get90_v32", "tcp_get90_v32"],
                    udp_scenarios=["mget32_v16"], loss_seconds=2,
                    testruns=500)
    if mode == "quick":
        return dict(rounds=3, seconds=2, warm=1, conc=16, window="1k", swaps=50, switches=50,
                    compiles=2, scenarios=["get90_v32", "tcp_get90_v32"],
                    udp_scenarios=["zipf_v32", "misses", "non_memcached", "meta_zipf_v32",
                                   "getset_zipf_v32", "mget32_v16"], loss_seconds=6,
                    testruns=3000)
    return dict(rounds=5, seconds=4, warm=1, conc=16, window="1k", swaps=60, switches=60,
                compiles=5,
                scenarios=["get90_v32", "get90_v256", "get90_v1000", "get100_v32", "get50_v32",
                           "tcp_get90_v32"],
                udp_scenarios=["uniform_v32", "zipf_v32", "uniform_v1000", "misses",
                               "non_memcached", "meta_zipf_v32", "getset_zipf_v32",
                               "mget32_v16"],
                loss_seconds=12, testruns=20000)


MEMASLAP = {  # name -> (value bytes, GET share)
    "get90_v32": (32, 0.9), "get90_v256": (256, 0.9), "get90_v1000": (1000, 0.9),
    "get100_v32": (32, 1.0), "get50_v32": (32, 0.5),
    # over TCP, 16 connections (--conc) from the client netns: a remote TCP client, whose GETs
    # mcache never answers on this kernel (docs/REMOTE_TCP.md); B/A is what the data plane
    # (XDP on every segment, the write scanner reading the sets) costs that traffic
    "tcp_get90_v32": (32, 0.9),
}
MEMASLAP_TCP = {"tcp_get90_v32"}
UDPGEN_KEYS = 50000
UDPGEN = {  # name -> (kind, value bytes, zipf exponent, key prefix)
    "uniform_v32": ("get", 32, 0.0, "u32:"), "zipf_v32": ("get", 32, 0.99, "u32:"),
    "uniform_v1000": ("get", 1000, 0.0, "u1000:"), "misses": ("get", 32, 0.0, "none:"),
    "non_memcached": ("raw", 32, 0.0, ""),
    # bench/loads.py rwgen (Python): a meta-only client (mg reads, ms writes) and the same
    # load from a get/set client, 5 % writes, Zipf s=0.99: B/A and the hit ratio of each
    "meta_zipf_v32": ("mg", 32, 0.99, "u32:"), "getset_zipf_v32": ("get", 32, 0.99, "u32:"),
    # multi-gets of MGET_KEYS keys, uniform over MGET_NKEYS keys, all hits once warm (A: all
    # memcached's). 16-byte values: 32 items of "VALUE u16:00000001 0 16\r\n<16>\r\n" (43 B)
    # fit one reply datagram (MC_MGET_ROOM, 1,459 B); 32-byte ones (59 B) would not, and
    # memcached would answer every request (docs/DATAPLANE.md, "Multi-gets of 32 keys")
    "mget32_v16": ("mget", 16, 0.0, "u16:"),
}
MGET_KEYS = 32
# few enough keys that all stay cached (65,536 entries, set-associative) and one warm-up
# second fills them: with 50,000 keys a 32-key multi-get would rarely find every key
MGET_NKEYS = 2048
RWGEN = {"meta_zipf_v32", "getset_zipf_v32"}
RWGEN_WRITES = 0.05
RWGEN_CONC = 8
# Round D (BMC, --peer-bmc): BMC serves ASCII GETs over UDP, i.e. the memcaslap scenarios and
# udpgen's GET scenarios; misses and non_memcached show what it costs where it cannot help.
BMC_SCENARIOS = (set(MEMASLAP) - MEMASLAP_TCP) | (set(UDPGEN) - RWGEN - {"mget32_v16"})


# ---------------------------------------------------------------------------- data plane

def config_text(version: int, ttl_ms: int = 600000, strategy: str = "auto") -> str:
    return textwrap.dedent(f"""\
        apiVersion: mcache/v1
        version: {version}
        memcached: {{address: {SERVER_ADDR}, port: 11211}}
        interfaces: [{{name: {SERVER_IF}, xdp_mode: auto}}]
        cache: {{entries: 65536, max_value_bytes: 1024, ttl_ms: {ttl_ms}, fill_hold_ms: 0,
                 allowed_clients: [{NET}]}}
        rollout: {{strategy: {strategy}}}
        """)


class Mcache:
    """mcache's Dataplane in the server netns, attached (B) or detached (A, C) between rounds
    without recompiling: detaching takes XDP and the TC filter off, the pins stay, and
    attaching again empties the cache (writes passed unseen meanwhile)."""

    def __init__(self) -> None:
        self.dp = Dataplane(PIN)
        self.version = 0
        self.cfg = None
        self.attached = False

    def apply(self, **kw):
        self.version += 1
        cfg = load_config(config_text(self.version, **kw))
        with in_ns(SERVER_NS):
            t0 = time.perf_counter()
            res = self.dp.apply(cfg, self.cfg)
            wall = (time.perf_counter() - t0) * 1000
        self.cfg = cfg
        self.attached = True
        return res, wall

    def detach(self) -> None:
        if not self.attached:
            return
        with in_ns(SERVER_NS):
            self.dp.detach_interfaces()
        self.attached = False

    def attach(self) -> None:
        if self.attached:
            return
        with in_ns(SERVER_NS):
            self.dp.attach_interfaces(self.cfg)
        self.attached = True

    def counters(self) -> dict[str, int]:
        return self.dp.counters()

    def hits_by_path(self) -> dict[str, int]:
        """Hits by the path that answered them (XDP, or TC ingress past XDP's frame)."""
        return {p: c.get("hit", 0) for p, c in self.dp.stats().total().by_path.items()}

    def teardown(self) -> None:
        with in_ns(SERVER_NS):
            self.dp.teardown()


# ---------------------------------------------------------------------------- helpers

def cpu_times() -> dict[str, tuple[int, int]]:
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            break
        f = line.split()
        vals = [int(x) for x in f[1:9]]
        idle = vals[3] + vals[4]
        out[f[0]] = (sum(vals) - idle, sum(vals), vals[5] + vals[6])  # busy, total, irq+softirq
    return out


def cpu_delta(a, b, name):
    busy = b[name][0] - a[name][0]
    total = b[name][1] - a[name][1]
    soft = b[name][2] - a[name][2]
    return busy, total, soft


def diff(a: dict, b: dict) -> dict:
    return {k: b.get(k, 0) - a.get(k, 0) for k in b}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[k]


def set_rps(split: bool) -> None:
    """Client and server on their own core: the server veth's receive work (generic XDP,
    the stack, memcached's socket) on CPU 1, the client's on CPU 0."""
    s_mask, c_mask = ("2", "1") if split else ("0", "0")
    for ns, dev, mask in ((SERVER_NS, SERVER_IF, s_mask), (CLIENT_NS, topo.CLIENT_IF, c_mask)):
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                        f"for q in /sys/class/net/{dev}/queues/rx-*; "
                        f"do echo {mask} > $q/rps_cpus; done"],
                       check=True, capture_output=True)


# ---------------------------------------------------------------------------- measurement

class Bench:
    def __init__(self, args, prof) -> None:
        self.args, self.p = args, prof
        self.topo = Topology(memcached_threads=args.memcached_threads)
        self.mc: Mcache | None = None
        self.refl = {}
        self.cur_refl = None
        # round D: BMC's loader, started for each D measurement (an empty cache each time)
        self.bmc = peer_bmc.Bmc(args.peer_bmc) if args.peer_bmc else None
        self.results: dict = {"scenarios": {}, "hot_swap": {}, "notes": []}

    # modes -----------------------------------------------------------------
    def set_mode(self, mode: str, value_len: int) -> None:
        self.cur_mode = mode
        if self.cur_refl is not None:
            self.cur_refl.detach()
            self.cur_refl = None
        if self.bmc is not None:
            self.bmc.stop()  # no-op unless a D measurement failed half-way
        if mode == "B":
            self.mc.attach()
        else:
            self.mc.detach()
        if mode == "D":
            # mcache's root is off (detached above): BMC refuses an interface with XDP on it,
            # and start() checks that first
            self.bmc.start()
        if mode == "C":
            from reflector import Reflector

            if value_len not in self.refl:
                self.refl[value_len] = Reflector(value_len)
            self.cur_refl = self.refl[value_len]
            self.cur_refl.attach()

    def measure(self, mode: str, value_len: int, load) -> dict:
        self.set_mode(mode, value_len)
        warm = load(warm=True)
        if warm.get("timeout"):  # D only (see memaslap_load): the measured run would hang too
            stats = self.bmc.stop()  # over the warm-up: how many GETs BMC hit (and dropped)
            return {"mode": mode, "failed": True, "timeout": "warm-up", "ops_per_s": None,
                    "mean_us": None, "warmup": warm, "bmc_start_s": self.bmc.start_s,
                    "bmc_stats_end": stats, "bmc_counters_warmup": stats}
        bmc0 = self.bmc.snapshot() if mode == "D" else None  # after the warm-up
        c0 = self.mc.counters()
        h0 = self.mc.hits_by_path()
        m0 = self.topo.mc_stats()
        t0 = cpu_times()
        p0 = topo.proc_cpu_ticks(self.topo.mc_pid)
        res = load(warm=False)
        p1 = topo.proc_cpu_ticks(self.topo.mc_pid)
        t1 = cpu_times()
        m1 = self.topo.mc_stats()
        c1 = self.mc.counters()
        h1 = self.mc.hits_by_path()
        bmc1 = self.bmc.stop() if mode == "D" else None  # SIGTERM: counters, detached
        ops = res.get("ops") or res.get("replies") or 0
        split = self.args.split
        sbusy, stotal, ssoft = cpu_delta(t0, t1, "cpu" + SERVER_CPU) if split else (0, 0, 0)
        abusy, _, _ = cpu_delta(t0, t1, "cpu")
        hz = os.sysconf("SC_CLK_TCK")
        res["mode"] = mode
        res["server_cpu_busy_frac"] = sbusy / stotal if stotal else None
        res["server_cpu_softirq_frac"] = ssoft / stotal if stotal else None
        res["server_cpu_us_per_op"] = (sbusy / hz * 1e6 / ops) if ops and self.args.split else None
        res["all_cpu_us_per_op"] = (abusy / hz * 1e6 / ops) if ops else None
        res["memcached_cpu_us_per_op"] = ((p1 - p0) / hz * 1e6 / ops) if ops else None
        cd = diff(c0, c1)
        res["counters"] = {k: v for k, v in cd.items() if v}
        res["hits_by_path"] = {k: v for k, v in diff(h0, h1).items() if v}
        looked = cd.get("hit", 0) + cd.get("miss", 0)
        res["hit_ratio"] = cd.get("hit", 0) / looked if looked else None
        if mode == "D":
            if bmc1 is None:
                raise RuntimeError(f"BMC wrote no counters on exit:\n{self.bmc.log_tail()}")
            bd = peer_bmc.counter_diff(bmc0, bmc1)
            res["bmc_start_s"] = self.bmc.start_s
            res["bmc_stats_after_warmup"] = bmc0  # raw, as BMC wrote them
            res["bmc_stats_end"] = bmc1
            res["bmc_counters"] = bd  # the measured run
            res["hit_ratio"] = peer_bmc.hit_ratio(bd)
        res["memcached_cmd_get"] = int(m1["cmd_get"]) - int(m0["cmd_get"])
        res["memcached_get_hits"] = int(m1["get_hits"]) - int(m0["get_hits"])
        res["memcached_cmd_set"] = int(m1["cmd_set"]) - int(m0["cmd_set"])
        res["memcached_evictions"] = int(m1["evictions"]) - int(m0["evictions"])
        return res

    # scenarios ---------------------------------------------------------------
    def memaslap_load(self, name: str):
        value_len, share = MEMASLAP[name]
        cfgf = loads.memaslap_cfg(Path(f"/tmp/mcache-bench-{name}.cfg"), 32, value_len, share)

        def load(warm: bool) -> dict:
            secs = self.p["warm"] if warm else self.p["seconds"]
            for _attempt in range(2):  # memcaslap now and then aborts (SIGABRT) at start
                try:
                    r = loads.run_memaslap(
                        cfgf, secs, self.p["conc"], self.p["window"],
                        # C's fixed value would fail memcaslap's verification
                        verify=0 if warm or self.cur_mode == "C" else self.args.verify,
                        pin_cpu=self.cpu0, tcp=name in MEMASLAP_TCP)
                except subprocess.TimeoutExpired:
                    # D: BMC drops the GETs it hits whose reply does not fit in the request's
                    # frame plus its 128-byte headroom (values of 256 B and more here), and
                    # memcaslap's UDP client then never ends: killed, a failed run, no retry
                    if self.cur_mode != "D":
                        raise
                    self.results["notes"].append(
                        f"memcaslap {name} {self.cur_mode}{' warm-up' if warm else ''}: "
                        f"no end after {secs + 30} s, killed")
                    r = {"exit": "timeout", "timeout": True}
                    break
                if r.get("exit") == 0 and r.get("ops"):
                    break
                self.results["notes"].append(f"memcaslap {name} exit {r.get('exit')}: retried")
            r["failed"] = not (r.get("exit") == 0 and r.get("ops"))
            if not warm:
                r["ops_per_s"] = r.get("tps")
                r["mean_us"] = r.get("get_mean_us")
            return r
        return value_len, load

    def udpgen_load(self, name: str):
        kind, value_len, zipf, prefix = UDPGEN[name]

        def load(warm: bool) -> dict:
            secs = self.p["warm"] if warm else self.p["seconds"]
            if kind == "raw":
                r = loads.run_udpgen_raw(secs, 32, value_len, pin_cpu=self.cpu0)
            elif name in RWGEN:
                r = loads.run_rwgen(secs, RWGEN_CONC, UDPGEN_KEYS, zipf, prefix, kind,
                                    RWGEN_WRITES, value_len, pin_cpu=self.cpu0)
            elif kind == "mget":
                r = loads.run_udpgen_get(secs, 32, MGET_NKEYS, zipf, prefix, pin_cpu=self.cpu0,
                                         keys_per_get=MGET_KEYS)
                # requests answered with every key's item (udpgen's "hits")
                r["full_replies"] = r["hits"] / r["replies"] if r.get("replies") else None
            else:
                r = loads.run_udpgen_get(secs, 32, UDPGEN_KEYS, zipf, prefix, pin_cpu=self.cpu0)
            r["ops_per_s"] = r["ops_s"]
            r["failed"] = not r.get("replies")
            return r
        return value_len, load

    def run_scenario(self, name: str) -> None:
        tool = "memcaslap" if name in MEMASLAP else "udpgen"
        value_len, load = (self.memaslap_load if tool == "memcaslap" else self.udpgen_load)(name)
        # C on non-memcached traffic: the reflector passes it, so C is what any generic-mode
        # XDP program costs there, and B/C what mcache's programs add to that.
        # rwgen's reads and writes: C (a reflector) would answer the writes as GETs.
        # The reflector answers single-key GETs only: a multi-get gets no C. TCP does get C: the
        # reflector passes it, so C is what generic XDP on the veth costs TCP at all.
        two = RWGEN | {"mget32_v16"}
        modes = ["A", "B"] if name == "misses" or name in two else ["A", "B", "C"]
        if self.bmc is not None and name in BMC_SCENARIOS:
            modes.append("D")
        runs = {m: [] for m in modes}
        for r in range(self.p["rounds"]):
            for m in list(modes):
                res = self.measure(m, value_len, load)
                res["round"] = r
                runs[m].append(res)
                if m == "D" and res.get("timeout"):
                    # the load hung on BMC (see memaslap_load): not tried again in this scenario
                    modes.remove("D")
                    self.results["notes"].append(
                        f"{name}: D timed out in round {r}, not run in later rounds")
                print(f"  {name} round {r} {m}: {res.get('ops_per_s')} ops/s, mean "
                      f"{res.get('mean_us')} us, hit ratio {res.get('hit_ratio')}", flush=True)
        summary = {}
        for m, all_rs in runs.items():
            rs = [x for x in all_rs if not x.get("failed")] or all_rs
            tput = [x.get("ops_per_s") or 0 for x in rs]
            summary[m] = {
                "ops_per_s": med(tput), "ops_per_s_min": min(tput), "ops_per_s_max": max(tput),
                "mean_us": med([x.get("mean_us") for x in rs]),
                "mean_us_min": min((x.get("mean_us") or 0) for x in rs),
                "mean_us_max": max((x.get("mean_us") or 0) for x in rs),
                "p99_us": med([x.get("p99_us", x.get("get_p99_le_us")) for x in rs]),
                "p50_us": med([x.get("p50_us", x.get("get_p50_le_us")) for x in rs]),
                "server_cpu_us_per_op": med([x.get("server_cpu_us_per_op") for x in rs]),
                "all_cpu_us_per_op": med([x.get("all_cpu_us_per_op") for x in rs]),
                "memcached_cpu_us_per_op": med([x.get("memcached_cpu_us_per_op") for x in rs]),
                "hit_ratio": med([x.get("hit_ratio") for x in rs]),
                "lost": sum(x.get("lost", 0) + x.get("udp_timeout", 0) + x.get("packet_drop", 0)
                            for x in rs),
                "verify_failed": sum(x.get("verify_failed", 0) for x in rs),
                "failed_runs": sum(1 for x in all_rs if x.get("failed")),
            }
            if m == "D":
                summary[m]["bmc_counters"] = {
                    k: sum(x.get("bmc_counters", {}).get(k, 0) for x in rs)
                    for k in rs[0].get("bmc_counters", {})}
        ratios = {}
        a, b = summary["A"], summary["B"]
        if a["ops_per_s"] and b["ops_per_s"]:
            ratios["B/A_throughput"] = b["ops_per_s"] / a["ops_per_s"]
        if a["mean_us"] and b["mean_us"]:
            ratios["B/A_mean_latency"] = b["mean_us"] / a["mean_us"]
        if "C" in summary and summary["C"]["ops_per_s"] and b["ops_per_s"]:
            ratios["B/C_throughput"] = b["ops_per_s"] / summary["C"]["ops_per_s"]
        if a["server_cpu_us_per_op"] and b["server_cpu_us_per_op"]:
            ratios["B/A_server_cpu_per_op"] = b["server_cpu_us_per_op"] / a["server_cpu_us_per_op"]
        d = summary.get("D")
        if d and d["ops_per_s"] and b["ops_per_s"]:
            ratios["B/D_throughput"] = b["ops_per_s"] / d["ops_per_s"]
        if d and d["server_cpu_us_per_op"] and b["server_cpu_us_per_op"]:
            ratios["B/D_server_cpu_per_op"] = b["server_cpu_us_per_op"] / d["server_cpu_us_per_op"]
        self.results["scenarios"][name] = {
            "tool": tool, "value_bytes": value_len, "runs": runs, "summary": summary,
            "ratios": ratios,
        }
        if name in MEMASLAP_TCP and not self.args.no_profile:
            # B/A over TCP is within this host's round-to-round noise; the programs' own run
            # time per op (one more B run, kernel.bpf_stats_enabled on) does not depend on load
            live = self.live_prog_ns(load)
            self.results["scenarios"][name]["bpf_live"] = live
            print(f"  {name} B programs: {live.get('ns_per_op')} ns per op", flush=True)
        print(f"  {name}: {json.dumps(ratios)}", flush=True)

    # hot swap ----------------------------------------------------------------
    def hot_swap(self) -> None:
        mc = self.mc
        self.set_mode("B", 32)
        hs = self.results["hot_swap"]
        # compile + load of a program set (agent's program_swap path: two bcc workers)
        comp = []
        for _ in range(self.p["compiles"]):
            res, wall = mc.apply(strategy="program_swap")
            comp.append({"strategy": res.strategy, "duration_ms": res.duration_ms,
                         "switch_ms": res.swap_ms, "wall_ms": wall})
        hs["compile_load"] = {"runs": comp,
                              "p50_ms": med([c["duration_ms"] for c in comp]),
                              "max_ms": max(c["duration_ms"] for c in comp)}
        print(f"  compile+load: {hs['compile_load']['p50_ms']:.0f} ms p50", flush=True)
        hs["compile_load"]["breakdown"] = self.compile_breakdown()

        # map swaps under load (ttl alternates), requests lost counted by udpgen
        gen = loads.start_udpgen_get(self.p["loss_seconds"], 8, UDPGEN_KEYS, 0.0, "u32:", 200)
        time.sleep(1.0)
        swaps = []
        for i in range(self.p["swaps"]):
            res, wall = mc.apply(ttl_ms=600000 - (i % 2) * 1000, strategy="map_swap")
            swaps.append({"strategy": res.strategy, "outer_update_ms": res.swap_ms,
                          "apply_ms": res.duration_ms, "wall_ms": wall})
        time.sleep(0.5)
        loss = loads.finish(gen, timeout=self.p["loss_seconds"] + 30)
        # An apply turns into a program swap when the data plane's source changed under us
        # (bpf/ edited while the benchmark runs): those are not map swaps, counted apart.
        ms = [s for s in swaps if s["strategy"] == "map_swap"]
        hs["map_swap"] = {
            "n": len(ms), "not_map_swap": len(swaps) - len(ms),
            "outer_update_ms_p50": pct([s["outer_update_ms"] for s in ms], 0.5),
            "outer_update_ms_p99": pct([s["outer_update_ms"] for s in ms], 0.99),
            "apply_ms_p50": pct([s["apply_ms"] for s in ms], 0.5),
            "apply_ms_p99": pct([s["apply_ms"] for s in ms], 0.99),
            "load_during": loss,
            "runs": swaps,
        }
        print(f"  map swap: update p99 {hs['map_swap']['outer_update_ms_p99']:.2f} ms, apply p99 "
              f"{hs['map_swap']['apply_ms_p99']:.2f} ms, lost {loss['lost']}", flush=True)

        # program switches between two loaded sets: hold every object of the current set
        # open (a retired set keeps working while held), load a second set, then switch the
        # roots to one or the other set, as the agent does.
        held_a = mc.dp.hold(mc.dp.record().set)
        mc.apply(strategy="program_swap")
        held_b = mc.dp.hold(mc.dp.record().set)
        gen = loads.start_udpgen_get(self.p["loss_seconds"], 8, UDPGEN_KEYS, 0.0, "u32:", 200)
        time.sleep(1.0)
        sw = []
        try:
            for i in range(self.p["switches"]):
                sw.append((held_a if i % 2 == 0 else held_b).switch_to())
                time.sleep(0.02)
            held_b.switch_to()  # leave the set the record names in place
            time.sleep(0.5)
            loss = loads.finish(gen, timeout=self.p["loss_seconds"] + 30)
        finally:
            held_a.close()
            held_b.close()
        hs["program_switch"] = {"n": len(sw), "ms_p50": pct(sw, 0.5), "ms_p99": pct(sw, 0.99),
                                "ms_max": max(sw), "load_during": loss, "runs_ms": sw}
        print(f"  program switch: p99 {hs['program_switch']['ms_p99']:.3f} ms, lost "
              f"{loss['lost']}", flush=True)

    def compile_breakdown(self) -> dict:
        """Where compile+load goes: a program set loaded by the agent's loader workers alone
        (in parallel, as in a program swap), and one process doing compile then load of each
        program in turn."""
        dp, out = self.mc.dp, {}
        with in_ns(SERVER_NS):
            cflags = dp.cflags(self.mc.cfg)
            walls = []
            for _ in range(max(1, self.p["compiles"])):
                t0 = time.perf_counter()
                set_id = dp.load_set(self.mc.cfg)
                walls.append((time.perf_counter() - t0) * 1000)
                dp.discard(set_id)
        out["workers_parallel_ms"] = walls
        scratch = "/sys/fs/bpf/mcache-bench-compile"
        flags = [f for f in cflags if not f.startswith(("-DMC_PIN_DIR", "-DMC_STATE_DIR"))]
        flags += [f'-DMC_PIN_DIR="{scratch}"', f'-DMC_STATE_DIR="{scratch}"']
        p = subprocess.run([sys.executable, str(HERE / "compile_split.py"), "--pin", scratch,
                            "--start", str(time.time()), *[f"--cflag={f}" for f in flags]],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(HERE.parent)})
        try:
            out["sequential"] = json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            out["sequential"] = {"error": p.stderr[-2000:]}
        return out

    # where the time goes ---------------------------------------------------------
    def prog_stats(self) -> dict:
        """Per-packet cost of the XDP path (BPF_PROG_TEST_RUN, see progcost.py), the verifier's
        counts, and run_time_ns/run_cnt of the attached roots over one live B run."""
        import progcost
        from reflector import Reflector

        out: dict = {}
        self.set_mode("B", 32)
        key = b"u32:00000001"
        gen = loads.run_udpgen_get(0.3, 1, 2, 0.0, "u32:", 200, pin_cpu=None)  # fills keys 0,1
        out["warm"] = gen
        if 32 not in self.refl:
            self.refl[32] = Reflector(32)
        n = self.p["testruns"]
        frames = {
            "get_hit": progcost.hit_frame(key, topo.CLIENT_ADDR, SERVER_ADDR),
            "get_miss": progcost.hit_frame(b"none:00000001", topo.CLIENT_ADDR, SERVER_ADDR),
            "non_memcached": udp_frame(b"p" * 32, src=topo.CLIENT_ADDR, dst=SERVER_ADDR,
                                       sport=40000, dport=topo.ECHO_PORT),
        }
        with in_ns(SERVER_NS):
            import socket as _s

            ifindex = _s.if_nametoindex(SERVER_IF)
            with libbpf.opened(PIN / "xdp_root") as root:
                out["test_run_ns"] = {
                    "mcache": {k: progcost.measure(root, f, ifindex, n) for k, f in frames.items()},
                    "reflector": {k: progcost.measure(self.refl[32].fn.fd, f, ifindex, n)
                                  for k, f in frames.items()},
                }
            out["programs"] = progcost.set_programs(self.mc.dp)
        # live: the roots' run time (tail calls included) over one measured B run
        try:
            old = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
            Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1")
        except OSError as exc:
            out["live_error"] = str(exc)
            return out
        try:
            def snap():
                progs = self.mc.dp.programs()
                return {name: (progs[name].run_cnt, progs[name].run_time_ns)
                        for name in ("xdp_root", "tc_in_root", "tc_root") if name in progs}
            _, load = self.memaslap_load("get90_v32")
            load(warm=True)
            s0 = snap()
            res = load(warm=False)
            s1 = snap()
            live = {"ops": res.get("ops"), "hit_ratio": None,
                    "link": subprocess.run(["ip", "-n", SERVER_NS, "-d", "link", "show", SERVER_IF],
                                           capture_output=True, text=True).stdout}
            for name in s1:
                cnt = s1[name][0] - s0.get(name, (0, 0))[0]
                ns = s1[name][1] - s0.get(name, (0, 0))[1]
                live[name] = {"run_cnt": cnt, "ns_per_run": ns / cnt if cnt else None}
            out["live"] = live
        finally:
            Path("/proc/sys/kernel/bpf_stats_enabled").write_text(old)
        return out

    def live_prog_ns(self, load) -> dict:
        """The attached roots' run count and time (tail calls included) over one measured B
        run of `load`, per run and per op of the load."""
        self.set_mode("B", 32)
        stats = Path("/proc/sys/kernel/bpf_stats_enabled")
        try:
            old = stats.read_text().strip()
            stats.write_text("1")
        except OSError as exc:
            return {"error": str(exc)}

        def snap() -> dict[str, tuple[int, int]]:
            progs = self.mc.dp.programs()
            return {n: (progs[n].run_cnt, progs[n].run_time_ns)
                    for n in ("xdp_root", "tc_in_root", "tc_root") if n in progs}
        try:
            load(warm=True)
            s0 = snap()
            res = load(warm=False)
            s1 = snap()
        finally:
            stats.write_text(old)
        ops = res.get("ops") or 0
        out: dict = {"ops": ops}
        total = 0
        for n in s1:
            cnt = s1[n][0] - s0.get(n, (0, 0))[0]
            ns = s1[n][1] - s0.get(n, (0, 0))[1]
            total += ns
            out[n] = {"run_cnt": cnt, "ns_per_run": ns / cnt if cnt else None,
                      "runs_per_op": cnt / ops if ops else None}
        out["ns_per_op"] = total / ops if ops else None
        return out

    def fresh_memcached(self) -> None:
        """Every scenario starts from a new memcached with udpgen's keysets stored. memcaslap
        stores new keys on every run (~0.1-0.5 M per run here); after the memcaslap scenarios of
        a full run memcached had filled its 1 GB, its slab classes were given out, and a
        preload of udpgen's keys kept only 35 % of them (measured: memcached's own get_hits)."""
        pid = self.topo.start_memcached()
        if self.args.split:
            subprocess.run(["taskset", "-a", "-pc", SERVER_CPU, str(pid)], check=True,
                           capture_output=True)
        for vl in sorted({v for _, v, _, _ in UDPGEN.values()}):
            # the multi-get's value size has its own few keys (MGET_NKEYS), no more to store
            n = max(MGET_NKEYS if k == "mget" else UDPGEN_KEYS
                    for k, v, _, _ in UDPGEN.values() if v == vl)
            keys = [b"u%d:%08d" % (vl, i) for i in range(n)]
            self.topo.preload(keys, b"x" * vl)
        if self.mc is not None:
            self.mc.dp.flush()  # what the agent does when memcached restarts

    # main --------------------------------------------------------------------
    def run(self) -> dict:
        t_start = time.time()
        self.cpu0 = "0" if self.args.split else None
        loads.build_udpgen()
        self.topo.up()
        try:
            set_rps(self.args.split)
            self.fresh_memcached()
            echo_secs = 1800
            self.topo.spawn(SERVER_NS,
                            loads.echo_server_argv(echo_secs,
                                                   SERVER_CPU if self.args.split else None),
                            stdout=subprocess.DEVNULL)
            self.mc = Mcache()
            res, wall = self.mc.apply()
            self.results["first_apply"] = {"strategy": res.strategy, "duration_ms": res.duration_ms,
                                           "wall_ms": wall}
            print(f"mcache applied ({res.strategy}, {res.duration_ms:.0f} ms)", flush=True)
            for name in self.p["scenarios"] + self.p["udp_scenarios"]:
                print(f"scenario {name}", flush=True)
                self.fresh_memcached()
                self.run_scenario(name)
            print("hot swap", flush=True)
            self.hot_swap()
            if not self.args.no_profile:
                print("bpf run-time stats", flush=True)
                self.results["bpf_prog_stats"] = self.prog_stats()
        finally:
            if self.bmc is not None:
                try:
                    self.bmc.close()
                except Exception as exc:
                    print(f"BMC stop: {exc}", file=sys.stderr)
            for r in self.refl.values():
                with contextlib.suppress(Exception):
                    r.close()
            if self.mc is not None:
                with contextlib.suppress(Exception):
                    self.mc.teardown()
            self.topo.down()
            shutil.rmtree(PIN, ignore_errors=True)
        self.results["wall_s"] = time.time() - t_start
        if self.bmc is not None:
            self.results["peer_bmc"] = {
                "dir": str(self.bmc.dir), "xdp_mode": "generic (skb)",
                "source": str(peer_bmc.BUILD_SH.parent),
            }
        return self.results


def machine() -> dict:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": cpu,
            "memcached": subprocess.run(["memcached", "-V"], capture_output=True,
                                        text=True).stdout.strip(),
            "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--seconds", type=int)
    ap.add_argument("--scenarios", help="comma-separated subset")
    ap.add_argument("--memcached-threads", type=int, default=1)
    ap.add_argument("--conc", type=int, help="memcaslap concurrency (default 16)")
    ap.add_argument("--no-split", dest="split", action="store_false",
                    help="do not pin client/server to CPU 0/1 (RPS + taskset)")
    ap.add_argument("--verify", type=float, default=0.01, help="memcaslap --verify share")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--fleet", action="store_true",
                    help="also time the fleet operations on 3, 10 and 20 lab hosts "
                         "(bench/fleet.py; takes the shared lab fleet over: lab-down first)")
    ap.add_argument("--peer-bmc", type=Path, metavar="DIR",
                    help="also run round D: BMC, the peer system, from DIR/bmc and "
                         "DIR/bmc_kern.o; when they are missing, BMC is first built into DIR "
                         f"with {peer_bmc.BUILD_SH} DIR (an existing build is reused)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/run.py must run as root", file=sys.stderr)
        return 2
    if args.peer_bmc:
        args.peer_bmc = peer_bmc.ensure_built(args.peer_bmc)
        # SIGTERM ends the run through the finally blocks, which stop BMC and take the topology
        # down (by default SIGTERM would leave BMC's loader attached)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    prof = profile(mode)
    if args.rounds:
        prof["rounds"] = args.rounds
    if args.seconds:
        prof["seconds"] = args.seconds
    if args.conc:
        prof["conc"] = args.conc
    if args.scenarios:
        names = args.scenarios.split(",")
        prof["scenarios"] = [n for n in names if n in MEMASLAP]
        prof["udp_scenarios"] = [n for n in names if n in UDPGEN]
    bench = Bench(args, prof)
    mach = machine()
    results = bench.run()
    if args.fleet:
        import fleet

        results["fleet"] = fleet.run()
    else:
        results["fleet"] = {"skipped": "not requested (--fleet takes the shared lab over)"}
    mach["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    results.update({"mode": mode, "profile": prof, "machine": mach, "split_cpus": args.split,
                    "memcached_threads": args.memcached_threads,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = args.out / f"{mode}-{stamp}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    shutil.copyfile(path, args.out / f"latest-{mode}.json")
    print(f"results: {path}")
    if not args.no_plots:
        try:
            import plots

            for p in plots.plot(results, args.out, mode):
                print(f"plot: {p}")
            if args.fleet:
                import fleet

                fleet.plot(results["fleet"], args.out / f"{mode}-fleet.png")
                print(f"plot: {args.out / f'{mode}-fleet.png'}")
        except Exception as exc:  # plots are a convenience; the JSON is the result
            print(f"plots failed: {exc}", file=sys.stderr)
    print_summary(results)
    return 0


def print_summary(results: dict) -> None:
    print("\nsummary (medians)")
    for name, s in results["scenarios"].items():
        line = []
        for m, v in s["summary"].items():
            line.append(f"{m} {v['ops_per_s'] or 0:,.0f} ops/s {v['mean_us'] or 0:.0f} us")
        print(f"  {name:16s} " + " | ".join(line) + "  " +
              " ".join(f"{k}={v:.2f}" for k, v in s["ratios"].items()))
    hs = results.get("hot_swap", {})
    if hs:
        print(f"  compile+load p50 {hs['compile_load']['p50_ms']:.0f} ms; map swap update p99 "
              f"{hs['map_swap']['outer_update_ms_p99']:.2f} ms (apply p99 "
              f"{hs['map_swap']['apply_ms_p99']:.1f} ms), "
              f"lost {hs['map_swap']['load_during']['lost']}; "
              f"program switch p99 {hs['program_switch']['ms_p99']:.3f} ms, lost "
              f"{hs['program_switch']['load_during']['lost']}")


if __name__ == "__main__":
    sys.exit(main())

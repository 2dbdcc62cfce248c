"""Local TCP clients with and without the local bypass (issue 16): memcaslap over TCP against
memcached on the same host, the modes interleaved round by round, and a remote client's cost.

    bench/local_bypass.py [--seconds S] [--rounds R] [--out FILE] [--plot FILE]

memcached (1 thread) on CPU 1 and memcaslap (1 thread) on CPU 0, both in the benchmark's
server namespace (a local client: no veth, lo only), 90 % GETs, 64-byte values. Modes:
  stock    no data plane at all
  cache    mcache without the bypass: every local message takes TCP over lo, where XDP
           reads it for writes (what a local client of mcache paid before)
  bypass   local_bypass on: both directions skip TCP/IP, the sk_msg program reads the
           client's messages for writes
each with 1 connection (a request-response latency) and 16 (load). The remote client
(memcaslap in the client namespace, over the veth, RPS: each side's receive work on its own
CPU) runs with the bypass off and on: its connections never join, so its cost must not
move, and the bypass's programs must not run for it (their counters stay put).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import loads  # noqa: E402
import topo  # noqa: E402
from run import SERVER_CPU, set_rps  # noqa: E402

from harness.netns import in_ns, nsenter  # noqa: E402
from mcache_agent.config import load_config  # noqa: E402
from mcache_agent.dataplane import Dataplane  # noqa: E402

CLIENT_CPU = loads.CLIENT_CPU
MODES = ("stock", "cache", "bypass")


def config_text(version: int, bypass: bool) -> str:
    return textwrap.dedent(f"""\
        apiVersion: mcache/v1
        version: {version}
        memcached: {{address: {topo.SERVER_ADDR}, port: {topo.PORT}}}
        interfaces: [{{name: {topo.SERVER_IF}, xdp_mode: auto}}]
        cache: {{entries: 65536, max_value_bytes: 1024, allowed_clients: [{topo.NET}]}}
        local_bypass: {{enabled: {str(bypass).lower()}}}
        """)


class Plane:
    """The data plane in the server namespace, in one of MODES."""

    def __init__(self) -> None:
        self.dp = Dataplane(topo.PIN)
        self.version = 0
        self.cfg = None

    def mode(self, mode: str) -> None:
        with in_ns(topo.SERVER_NS):
            if mode == "stock":
                self.dp.teardown()
                self.cfg = None
                return
            self.version += 1
            cfg = load_config(config_text(self.version, mode == "bypass"))
            self.dp.apply(cfg, self.cfg)
            self.cfg = cfg

    def by_path(self) -> dict[str, dict[str, int]]:
        if self.cfg is None:
            return {}
        return self.dp.stats().total().by_path


def memcaslap(ns: str, cfg: Path, seconds: int, conns: int) -> dict:
    argv = [*nsenter(ns), "taskset", "-c", CLIENT_CPU, "memcaslap", "-s",
            f"{topo.SERVER_ADDR}:{topo.PORT}", "-T", "1", "-c", str(conns), "-t", f"{seconds}s",
            "-S", f"{seconds}s", "-F", str(cfg)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    res = loads.parse_memaslap(p.stdout)
    res["exit"] = p.returncode
    return {k: res.get(k) for k in ("tps", "total_mean_us", "total_p99_le_us", "get_mean_us",
                                    "exit")}


def median(runs: list[dict], key: str) -> float:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plot", type=Path)
    a = ap.parse_args()
    cfg = loads.memaslap_cfg(Path("/tmp/mcache-bypass-bench.cfg"), 32, 64, 0.9)
    t = topo.Topology(1).up()
    plane = Plane()
    res: dict = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "seconds": a.seconds, "rounds": a.rounds, "local": {}, "remote": {}}
    try:
        set_rps(True)
        pid = t.start_memcached()
        subprocess.run(["taskset", "-a", "-pc", SERVER_CPU, str(pid)], check=True,
                       capture_output=True)
        for _ in range(a.rounds):
            for conns in (1, 16):
                for mode in MODES:
                    plane.mode(mode)
                    run = memcaslap(topo.SERVER_NS, cfg, a.seconds, conns)
                    res["local"].setdefault(f"{mode} c{conns}", []).append(run)
            for mode in ("cache", "bypass"):
                plane.mode(mode)
                before = plane.by_path()
                run = memcaslap(topo.CLIENT_NS, cfg, a.seconds, 16)
                after = plane.by_path()
                run["bypass_counts"] = {
                    p: sum(after[p].values()) - sum(before[p].values())
                    for p in ("sk_msg", "sockops")}
                res["remote"].setdefault(f"{mode} c16", []).append(run)
        plane.mode("stock")
    finally:
        with in_ns(topo.SERVER_NS):
            plane.dp.teardown()
        t.down()
    summary: dict = {}
    for group in ("local", "remote"):
        for name, runs in res[group].items():
            summary[f"{group} {name}"] = {k: median(runs, k) for k in
                                          ("tps", "total_mean_us", "total_p99_le_us")}
    for conns in (1, 16):
        stock = summary[f"local stock c{conns}"]
        for mode in ("cache", "bypass"):
            m = summary[f"local {mode} c{conns}"]
            m["tps_ratio_to_stock"] = round(m["tps"] / stock["tps"], 3)
            m["mean_ratio_to_stock"] = round(m["total_mean_us"] / stock["total_mean_us"], 3)
            m["mean_ratio_to_cache"] = round(
                m["total_mean_us"] / summary[f"local cache c{conns}"]["total_mean_us"], 3)
    off, on = summary["remote cache c16"], summary["remote bypass c16"]
    on["tps_ratio_to_bypass_off"] = round(on["tps"] / off["tps"], 3)
    on["bypass_program_runs"] = max(r["bypass_counts"]["sk_msg"] + r["bypass_counts"]["sockops"]
                                    for r in res["remote"]["bypass c16"])
    res["summary"] = summary
    text = json.dumps(res, indent=2)
    if a.out:
        a.out.write_text(text + "\n")
    print(json.dumps(summary, indent=2))
    if a.plot:
        plot(summary, a.plot)
    return 0


def plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "tps", "ops/s"), (axes[1], "total_mean_us", "mean µs")):
        xs = range(2)
        for i, mode in enumerate(MODES):
            vals = [summary[f"local {mode} c{c}"][key] for c in (1, 16)]
            ax.bar([x + i * 0.27 for x in xs], vals, width=0.27, label=mode)
        ax.set_xticks([x + 0.27 for x in xs], ["1 connection", "16 connections"])
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("local TCP client, memcaslap 90 % GET (medians)")
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What the agent's own operations cost, measured on the real daemon (`mcache-agent run`) in a
network namespace of its own:

  scrape   a Prometheus scrape of /metrics (HTTP, as Prometheus does it) for caches of 4 Ki,
           64 Ki and 1 Mi entries, half of them filled: median and max over N scrapes
  status   `status` over the control socket while a program swap runs (the apply of a new
           cache shape): every answer's time, and how long the swap took

    bench/agent_ops.py [--src DIR] [--scrapes N] [--out FILE]

--src runs the agent from another checkout (e.g. the commit before a change, for the before
figures); the client side is always this checkout's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness.netns import in_ns, sh  # noqa: E402
from mcache_agent import control  # noqa: E402

NS = "mcb-agent"
ADDR = "198.19.77.1"
METRICS = f"{ADDR}:9477"
PIN = Path("/sys/fs/bpf/mcache-bench-agent")
SIZES = (4096, 65536, 1048576)


def config(version: int, entries: int) -> str:
    return (f"apiVersion: mcache/v1\nversion: {version}\n"
            f"memcached: {{address: {ADDR}, port: 11211}}\n"
            "interfaces: [{name: b0, xdp_mode: generic}]\n"
            f"cache: {{entries: {entries}, max_value_bytes: 512,\n"
            "         allowed_clients: [198.19.77.0/24]}\n"
            f'metrics: {{listen: "{METRICS}"}}\n')


class Agent:
    def __init__(self, src: Path) -> None:
        self.src = src
        self.dir = Path(tempfile.mkdtemp(prefix="mcache-bench-agent-"))
        self.sock = self.dir / "agent.sock"
        self.proc: subprocess.Popen | None = None

    def args(self) -> list[str]:
        return ["--socket", str(self.sock), "--state-dir", str(self.dir / "state"),
                "--bpffs", str(PIN)]

    def start(self, text: str) -> None:
        (self.dir / "cfg.yml").write_text(text)
        env = {**os.environ, "PYTHONPATH": str(self.src)}
        log = open(self.dir / "agent.log", "a")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{NS}", sys.executable, "-m", "mcache_agent.cli",
             "run", "--config", str(self.dir / "cfg.yml"), *self.args()],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
            cwd=self.dir)  # `python -m` puts the working directory first on sys.path
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                st = self.request({"op": "status"}, 5)["result"]
                if st.get("version") is not None and not st.get("starting"):
                    return
                if (st.get("config_file") or {}).get("result") in ("refused", "failed"):
                    break
            except control.AgentUnreachable:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("agent did not come up: " + (self.dir / "agent.log").read_text()[-3000:])

    def request(self, req: dict, timeout: float = 300) -> dict:
        return control.request(self.sock, req, timeout=timeout)

    def stop(self) -> None:
        try:
            self.request({"op": "stop"}, 30)
        except control.AgentUnreachable:
            pass
        if self.proc is not None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def fill(entries: int) -> int:
    """Fill half the cache through the data plane itself (the test-run path), so that the
    fill level is real; returns how many keys were filled."""
    from harness.frames import mc_reply, mc_udp
    from harness.testrun import Prog, xdp_ctx

    n = entries // 2
    xdp, tc = Prog(PIN / "xdp_root"), Prog(PIN / "tc_root")
    try:
        with in_ns(NS):
            ifindex = socket.if_nametoindex("b0")
        for i in range(n):
            key = b"k%07d" % i
            rid = i & 0xFFFF
            req = mc_udp(rid, b"get " + key + b"\r\n", src="198.19.77.2", dst=ADDR)
            with in_ns(NS):
                xdp.run(req, xdp_ctx(len(req), ifindex))
            tc.run(mc_reply(rid, b"VALUE %s 0 1\r\nx\r\nEND\r\n" % key, client="198.19.77.2",
                            server=ADDR))
    finally:
        xdp.close()
        tc.close()
    return n


def scrape_times(n: int) -> list[float]:
    out = []
    with in_ns(NS):
        for _ in range(n):
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=60) as r:
                body = r.read()
            out.append((time.perf_counter() - t0) * 1000)
    assert b"mcache_cache_used_entries" in body
    return out


def used_entries() -> float | None:
    with in_ns(NS), urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=60) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("mcache_cache_used_entries "):
                return float(line.split()[1])
    return None


def status_during_swap(agent: Agent, version: int, entries: int) -> dict:
    times: list[float] = []
    result: dict = {}

    def apply() -> None:
        t0 = time.perf_counter()
        result["resp"] = agent.request({"op": "apply", "config": config(version, entries)})
        result["ms"] = (time.perf_counter() - t0) * 1000

    t = threading.Thread(target=apply)
    t.start()
    time.sleep(0.05)
    while t.is_alive():
        t0 = time.perf_counter()
        try:
            st = agent.request({"op": "status"}, 60)["result"]
        except control.AgentUnreachable:
            st = {}
        times.append((time.perf_counter() - t0) * 1000)
        if not st.get("apply_in_progress") and not t.is_alive():
            break
        time.sleep(0.02)
    t.join()
    resp = result["resp"]
    return {"apply_ms": result["ms"], "strategy": (resp.get("result") or {}).get("strategy"),
            "status_calls": len(times), "status_ms_median": statistics.median(times),
            "status_ms_max": max(times), "status_ms": times}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=HERE.parent)
    ap.add_argument("--scrapes", type=int, default=20)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sh(f"ip netns del {NS}", check=False)
    sh(f"ip netns add {NS} && ip -n {NS} link add b0 type veth peer name b1 && "
       f"ip -n {NS} addr add {ADDR}/24 dev b0 && ip -n {NS} link set b0 up && "
       f"ip -n {NS} link set b1 up && ip -n {NS} link set lo up")
    shutil.rmtree(PIN, ignore_errors=True)
    res: dict = {"src": str(args.src), "scrape": {}, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                            time.gmtime())}
    agent = Agent(args.src)
    try:
        version = 1
        for entries in map(int, args.sizes.split(",")):
            if version == 1:
                agent.start(config(version, entries))
            else:
                agent.request({"op": "apply", "config": config(version, entries)})
            version += 1
            filled = fill(entries)
            times = scrape_times(args.scrapes)
            res["scrape"][entries] = {"filled": filled, "used_reported": used_entries(),
                                      "ms_median": statistics.median(times),
                                      "ms_max": max(times), "n": len(times)}
            print(f"scrape, {entries} entries ({filled} filled): median "
                  f"{statistics.median(times):.1f} ms, max {max(times):.1f} ms", flush=True)
        sw = status_during_swap(agent, version, 8192)
        res["status_during_program_swap"] = sw
        print(f"status during a program swap ({sw['apply_ms']:.0f} ms, {sw['strategy']}): "
              f"{sw['status_calls']} answers, median {sw['status_ms_median']:.1f} ms, "
              f"max {sw['status_ms_max']:.1f} ms", flush=True)
    finally:
        agent.stop()
        shutil.rmtree(PIN, ignore_errors=True)
        sh(f"ip netns del {NS}", check=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What one request costs the data plane, per path, for one or more source trees side by side:
BPF_PROG_TEST_RUN of the attached roots on hand-built frames (the kernel's own duration of
one run on a fresh copy of the frame, median over many), no scheduler or veth in the way.

    bench/pathcost.py [--src DIR ...] [--runs N] [--rounds R] [--out FILE]

Paths measured for each tree (--src, default this checkout; e.g. a worktree of the commit
before a change), in rounds that interleave the trees, and for the reflector (round C's
program, bench/reflector.c: the floor of answering from XDP):
  hit       "get <32-byte key>\\r\\n", a cached 32-byte value: XDP_TX with the reply
  miss      a GET of a key not cached: XDP_PASS, the GET remembered for the fill guard
  fill      memcached's reply to that GET through TC egress: the slot filled
  miss+fill what a miss costs the data plane in all
  pass      a non-memcached UDP datagram
  tcp_write "delete <key>\r\n" in order on a real TCP connection: the socket looked up,
            the command read, the key invalidated
  unawaited memcached's reply (1000-byte value) to a GET nobody waits for, through TC
and the wall time of the tree's first `Dataplane.apply` (compile, load, pin, attach).
--ipv6 measures the last tree's hit, miss and fill over IPv6 too (memcached.address '::';
the reply's mandatory UDP checksum), besides the same paths over IPv4. --guard measures the
last tree's hit and a GET from outside the allow-list with cache.amplification_guard off and
on (on: the GET is dropped).
Each tree runs in a child process with PYTHONPATH=<tree>, its own network namespace and pin
directory, so its own agent code loads its own programs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEY_LEN = VALUE_LEN = 32
CONFIG = """
apiVersion: mcache/v1
version: 1
memcached: {address: 198.19.78.1, port: 11211}
interfaces: [{name: pc0, xdp_mode: auto}]
cache: {entries: 65536, max_key_bytes: 250, max_value_bytes: 1024, ttl_ms: 600000,
        fill_hold_ms: 0, allowed_clients: [198.19.78.0/24]}
"""
CLIENT, SERVER = "198.19.78.2", "198.19.78.1"
OUTSIDER = "198.19.79.2"  # outside allowed_clients
CLIENT6, SERVER6 = "fd00:78::2", "fd00:78::1"
DUAL = ("address: 198.19.78.1", "address: '::'"), ("[198.19.78.0/24]",
                                                    "[198.19.78.0/24, 'fd00:78::/64']")


def child(runs: int, reflector_c: Path, index: int, with_capture: bool, with_ipv6: bool,
          with_guard: bool = False) -> dict:
    """Measure the tree on sys.path (PYTHONPATH): its Dataplane, its programs."""
    import bcc

    from harness.frames import mc_reply, mc_udp, udp_frame
    config = CONFIG
    if with_ipv6:
        for old, new in DUAL:
            config = config.replace(old, new)
    from harness.netns import in_ns, sh
    from harness.testrun import Prog, xdp_ctx
    from mcache_agent.config import parse_config
    from mcache_agent.dataplane import Dataplane

    ns, pin = f"mcpc-{index}", f"/sys/fs/bpf/mcache-pathcost-{index}"
    sh(f"ip netns del {ns}", check=False)
    sh(f"ip netns add {ns} && ip -n {ns} link add pc0 type veth peer name pc1 && "
       f"ip -n {ns} addr add {SERVER}/24 dev pc0 && ip -n {ns} link set pc0 up && "
       f"ip -n {ns} link set pc1 up && ip -n {ns} link set lo up && "
       f"ip -n {ns} addr add {CLIENT}/32 dev lo")  # the TCP writer's end, on this host
    dp = Dataplane(pin)
    out: dict = {}
    try:
        with in_ns(ns):
            t = time.perf_counter()
            dp.apply(parse_config(config), None)
            out["first_apply_ms"] = (time.perf_counter() - t) * 1000
            ifindex = socket.if_nametoindex("pc0")
            xdp, tc = Prog(f"{pin}/xdp_root"), Prog(f"{pin}/tc_root")

            def xrun(frame: bytes) -> tuple[int, int]:
                ret, dur, _ = xdp.run_timed(frame, xdp_ctx(len(frame), ifindex))
                return ret, dur

            key = b"k" * (KEY_LEN - 8)
            value = b"v" * VALUE_LEN

            def paths(prefix: bytes, after_each=lambda: None):
                times: dict[str, list[int]] = {"hit": [], "miss": [], "fill": [],
                                               "miss+fill": [], "pass": []}
                rets: dict[str, set[int]] = {k: set() for k in times}
                for i in range(runs):
                    one(prefix + key[len(prefix):] + b"%08d" % i, i, times, rets)
                    after_each()
                return times, rets

            def one(k, i, times, rets):
                # a key never asked before: a miss, then memcached's reply fills it
                rid = i & 0xFFFF
                r, d_miss = xrun(mc_udp(rid, b"get " + k + b"\r\n", src=CLIENT, dst=SERVER))
                rets["miss"].add(r)
                body = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k, len(value), value)
                r, d_fill, _ = tc.run_timed(mc_reply(rid, body, client=CLIENT, server=SERVER))
                rets["fill"].add(r)
                # the same key again: a hit
                r, d_hit = xrun(mc_udp(rid, b"get " + k + b"\r\n", src=CLIENT, dst=SERVER))
                rets["hit"].add(r)
                r, d_pass = xrun(udp_frame(b"p" * 32, src=CLIENT, dst=SERVER, dport=9999))
                rets["pass"].add(r)
                for name, v in (("hit", d_hit), ("miss", d_miss), ("fill", d_fill),
                                ("miss+fill", d_miss + d_fill), ("pass", d_pass)):
                    times[name].append(v)

            times, rets = paths(b"k")
            times["tcp_write"] = tcp_writes(xrun, runs, ns)
            # memcached's reply to a GET nobody waits for (a hit too big for the frame is
            # passed to memcached and not remembered): TC's cost on traffic it cannot use
            big = b"w" * 1000
            unawaited = []
            for i in range(runs):
                k = b"u" * 24 + b"%08d" % i
                body = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k, len(big), big)
                unawaited.append(tc.run_timed(mc_reply((i + 7) & 0xFFFF, body, client=CLIENT,
                                                       server=SERVER))[1])
            times["unawaited"] = unawaited
            out["ns"] = {k: statistics.median(v) for k, v in times.items()}
            out["returns"] = {k: sorted(v) for k, v in rets.items()}
            if with_capture:
                # the same paths while a capture of every verdict runs, the ring drained
                # after each request (outside the measured run)
                from mcache_agent import capture

                spec = capture.Spec(verdicts=["all"])
                with capture.Session(Path(pin), spec) as session:
                    session.start()
                    records = []
                    with session.ring(records.append) as ring:
                        ctimes, _ = paths(b"c", ring.drain)
                    out["captured"] = len(records)
                    out["capture_lost"] = session.lost() - session.lost_before
                out["ns_capture"] = {k: statistics.median(v) for k, v in ctimes.items()}
            if with_ipv6:
                out["ns_ipv6"] = ipv6_paths(xrun, tc, runs, key, value)
            if with_guard:
                out["ns_guard"] = guard_paths(dp, xrun, tc, runs, key, value, config)
            out["counters"] = dp.counters()
            out["verified_insns"] = {n: p.verified_insns for n, p in dp.programs().items()}
            xdp.close()
            tc.close()
            # the reflector on the same hit frame (its fixed reply has a 32-byte value)
            sfx = b" 0 %d\r\n" % VALUE_LEN + b"r" * VALUE_LEN + b"\r\nEND\r\n"
            refl = bcc.BPF(src_file=str(reflector_c).encode(),
                           cflags=[f"-DREFL_SUFFIX_LEN={len(sfx)}"])
            fn = refl.load_func(b"xdp_reflect", bcc.BPF.XDP)
            rp = Prog(fd=fn.fd)
            frame = mc_udp(1, b"get " + key + b"00000000\r\n", src=CLIENT, dst=SERVER)
            c = xdp_ctx(len(frame), ifindex)
            out["reflector_hit_ns"] = statistics.median(
                rp.run_timed(frame, c)[1] for _ in range(runs))
            refl.cleanup()
    finally:
        with in_ns(ns):
            dp.teardown()
        sh(f"ip netns del {ns}", check=False)
    return out


def tcp_writes(xrun, runs: int, ns: str) -> list[int]:
    """A delete per run, each the next bytes of one real connection's stream (the write
    scanner reads only segments of a connection the host has, in order)."""
    from harness.frames import tcp_frame
    from harness.netns import in_ns

    with in_ns(ns):
        ls = socket.socket()
        ls.bind((SERVER, 11211))
        ls.listen(1)
        c = socket.create_connection((SERVER, 11211), source_address=(CLIENT, 0))
        srv, _ = ls.accept()
    try:
        c.setsockopt(socket.IPPROTO_TCP, 19, 1)  # TCP_REPAIR: the next sequence number
        c.setsockopt(socket.IPPROTO_TCP, 20, 2)
        seq = int.from_bytes(c.getsockopt(socket.IPPROTO_TCP, 21, 4), "little")
        c.setsockopt(socket.IPPROTO_TCP, 19, 0)
        sport = c.getsockname()[1]
        times = []
        for i in range(runs):
            cmd = b"delete k%07d\r\n" % i
            ret, d = xrun(tcp_frame(cmd, seq=seq, sport=sport, src=CLIENT, dst=SERVER))
            if ret != 2:  # XDP_PASS
                raise RuntimeError(f"a TCP write was not passed: {ret}")
            seq = (seq + len(cmd)) & 0xFFFFFFFF
            times.append(d)
        return times
    finally:
        c.close()
        srv.close()
        ls.close()


def guard_paths(dp, xrun, tc, runs: int, key: bytes, value: bytes, config: str) -> dict:
    """A cached key's hit and a GET from outside the allow-list, guard off then on."""
    import statistics as st

    from harness.frames import mc_reply, mc_udp
    from mcache_agent.config import parse_config

    k = b"g" + key[1:] + b"00000000"
    xrun(mc_udp(1, b"get " + k + b"\r\n", src=CLIENT, dst=SERVER))
    body = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k, len(value), value)
    tc.run_timed(mc_reply(1, body, client=CLIENT, server=SERVER))
    hit = mc_udp(2, b"get " + k + b"\r\n", src=CLIENT, dst=SERVER)
    outsider = mc_udp(3, b"get " + k + b"\r\n", src=OUTSIDER, dst=SERVER)

    def med(frame: bytes, want: int) -> float:
        ds = []
        for _ in range(runs):
            ret, d = xrun(frame)
            if ret != want:
                raise RuntimeError(f"guard paths: {ret}, not {want}")
            ds.append(d)
        return st.median(ds)

    out = {"hit_guard_off": med(hit, 3), "outsider_guard_off": med(outsider, 2)}
    dp.apply(parse_config(config.replace("version: 1", "version: 2").replace(
        "allowed_clients:", "amplification_guard: true, allowed_clients:")), None)
    out |= {"hit_guard_on": med(hit, 3), "outsider_guard_on": med(outsider, 1)}
    return out


def ipv6_paths(xrun, tc, runs: int, key: bytes, value: bytes) -> dict[str, float]:
    """Miss, fill and hit over IPv6 for keys never asked before (medians, ns)."""
    from harness.frames import mc_reply6, mc_udp6

    times: dict[str, list[int]] = {"hit": [], "miss": [], "fill": []}
    for i in range(runs):
        k = b"6" + key[1:] + b"%08d" % i
        rid = i & 0xFFFF
        req = mc_udp6(rid, b"get " + k + b"\r\n", src=CLIENT6, dst=SERVER6)
        r_miss, d_miss = xrun(req)
        body = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k, len(value), value)
        _r, d_fill, _ = tc.run_timed(mc_reply6(rid, body, client=CLIENT6, server=SERVER6))
        r_hit, d_hit = xrun(req)
        if r_hit != 3:  # XDP_TX
            raise RuntimeError(f"IPv6 GET not answered: {r_miss} then {r_hit}")
        for name, v in (("hit", d_hit), ("miss", d_miss), ("fill", d_fill)):
            times[name].append(v)
    return {k: statistics.median(v) for k, v in times.items()}


def run_child(src: Path, runs: int, index: int, with_capture: bool, with_ipv6: bool,
              with_guard: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    # cwd too: the agent's loader workers run as `python -m`, which puts the working
    # directory first on sys.path.
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--runs",
                        str(runs), "--index", str(index),
                        *(["--capture"] if with_capture else []),
                        *(["--ipv6"] if with_ipv6 else []),
                        *(["--guard"] if with_guard else [])], env=env, cwd=src,
                       capture_output=True, text=True, check=False, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{src}: exit {r.returncode}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, action="append",
                    help="a source tree to measure (repeatable; default this checkout)")
    ap.add_argument("--runs", type=int, default=5000, help="frames per path per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--capture", action="store_true",
                    help="also measure the last tree with a capture of every verdict running")
    ap.add_argument("--ipv6", action="store_true",
                    help="also measure the last tree's hit, miss and fill over IPv6")
    ap.add_argument("--guard", action="store_true",
                    help="also measure the last tree's amplification guard (off and on)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.runs, HERE / "reflector.c", args.index, args.capture,
                               args.ipv6, args.guard)))
        return 0
    srcs = [s.resolve() for s in (args.src or [HERE.parent])]
    rounds: dict[str, list[dict]] = {str(s): [] for s in srcs}
    for _ in range(args.rounds):
        for i, s in enumerate(srcs):
            last = i == len(srcs) - 1
            rounds[str(s)].append(run_child(s, args.runs, i, args.capture and last,
                                            args.ipv6 and last, args.guard and last))
    res = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": args.runs,
           "rounds": args.rounds, "kernel": os.uname().release, "trees": {}}
    print(f"{'tree':<28} {'hit':>7} {'miss':>7} {'fill':>7} {'miss+fill':>9} {'pass':>7} "
          f"{'tcp_write':>9} {'unawaited':>9} "
          f"{'reflector':>9} {'hit/refl':>8} {'apply ms':>8}  (ns, median of round medians)")
    for s, rs in rounds.items():
        med = {k: statistics.median(r["ns"][k] for r in rs) for k in rs[0]["ns"]}
        refl = statistics.median(r["reflector_hit_ns"] for r in rs)
        apply_ms = statistics.median(r["first_apply_ms"] for r in rs)
        res["trees"][s] = {"ns": med, "reflector_hit_ns": refl, "first_apply_ms": apply_ms,
                           "rounds": rs}
        print(f"{Path(s).name:<28} {med['hit']:>7.0f} {med['miss']:>7.0f} {med['fill']:>7.0f} "
              f"{med['miss+fill']:>9.0f} {med['pass']:>7.0f} {med['tcp_write']:>9.0f} "
              f"{med['unawaited']:>9.0f} {refl:>9.0f} "
              f"{med['hit'] / refl:>8.2f} {apply_ms:>8.0f}")
        if "ns_capture" in rs[0]:
            cap = {k: statistics.median(r["ns_capture"][k] for r in rs)
                   for k in rs[0]["ns_capture"]}
            res["trees"][s]["ns_capture"] = cap
            print(f"{'  capture of every verdict on':<28} {cap['hit']:>7.0f} {cap['miss']:>7.0f} "
                  f"{cap['fill']:>7.0f} {cap['miss+fill']:>9.0f} {cap['pass']:>7.0f}  "
                  f"(records {sum(r['captured'] for r in rs)}, "
                  f"lost {sum(r['capture_lost'] for r in rs)})")
        if "ns_ipv6" in rs[0]:
            v6 = {k: statistics.median(r["ns_ipv6"][k] for r in rs) for k in rs[0]["ns_ipv6"]}
            res["trees"][s]["ns_ipv6"] = v6
            print(f"{'  over IPv6':<28} {v6['hit']:>7.0f} {v6['miss']:>7.0f} {v6['fill']:>7.0f}")
        if "ns_guard" in rs[0]:
            g = {k: statistics.median(r["ns_guard"][k] for r in rs) for k in rs[0]["ns_guard"]}
            res["trees"][s]["ns_guard"] = g
            print(f"  amplification guard: hit {g['hit_guard_off']:.0f} -> {g['hit_guard_on']:.0f}"
                  f" ns; a GET from outside the allow-list {g['outsider_guard_off']:.0f} ns "
                  f"(passed) -> {g['outsider_guard_on']:.0f} ns (dropped)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

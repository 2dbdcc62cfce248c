"""Cost of the XDP path per packet, free of scheduler noise: BPF_PROG_TEST_RUN, one run per
call on a fresh copy of the frame (repeat>1 would re-run on the already rewritten reply), the
kernel's own per-run duration, median over many calls. Measures mcache's attached root (tail
calls included) and the reflector on the same frames: a GET hit, a GET miss, a non-memcached
UDP datagram. Also the verifier's counts for every program of the loaded set."""

from __future__ import annotations

import statistics
import struct

from harness.frames import udp_frame
from harness.testrun import Prog, xdp_ctx

XDP_NAMES = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}


def measure(fd: int, frame: bytes, ifindex: int, n: int) -> dict:
    prog = Prog(fd=fd)  # not closed here: the caller owns the fd
    ctx = xdp_ctx(len(frame), ifindex)
    durs, rets = [], {}
    for _ in range(n):
        ret, dur, _ = prog.run_timed(frame, ctx)
        durs.append(dur)
        rets[XDP_NAMES.get(ret, ret)] = rets.get(XDP_NAMES.get(ret, ret), 0) + 1
    durs.sort()
    return {"median_ns": statistics.median(durs), "p90_ns": durs[int(0.9 * (len(durs) - 1))],
            "n": n, "verdicts": rets}


def set_programs(dp) -> dict:
    """verified_insns / xlated / jited sizes of every program of the running set (and the
    roots), from the kernel's own account (mcache_agent.dataplane.libbpf.prog_info)."""
    return {name: {"verified_insns": info.verified_insns, "xlated_bytes": info.xlated_bytes,
                   "jited_bytes": info.jited_bytes}
            for name, info in sorted(dp.programs().items())}


def hit_frame(key: bytes, client: str, server: str, rid: int = 7) -> bytes:
    return udp_frame(struct.pack("!HHHH", rid, 0, 1, 0) + b"get " + key + b"\r\n",
                     src=client, dst=server)

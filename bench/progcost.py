"""Cost of the XDP path per packet, free of scheduler noise: BPF_PROG_TEST_RUN, one run per
call on a fresh copy of the frame (repeat>1 would re-run on the already rewritten reply), the
kernel's own per-run duration, median over many calls. Measures mcache's attached root (tail
calls included) and the reflector on the same frames: a GET hit, a GET miss, a non-memcached
UDP datagram. Also the verifier's counts for every program of the loaded set."""

from __future__ import annotations

import json
import socket
import statistics
import struct
import subprocess
from pathlib import Path

from tests.bpf_syscall import Prog, xdp_ctx
from tests.dataplane.pkt import csum as _csum


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    eth = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00"
    return eth + ip + udp


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


def prog_info(path: str) -> list[dict]:
    p = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", path], capture_output=True,
                       text=True)
    try:
        x = json.loads(p.stdout)
    except json.JSONDecodeError:
        return []
    return x if isinstance(x, list) else [x]


def set_programs(pin: Path) -> dict:
    """verified_insns / xlated / jited sizes of every program pinned in the current set."""
    out = {}
    for p in sorted(pin.rglob("*")):
        if not p.is_file():
            continue
        for info in prog_info(str(p)):
            if "name" in info and info.get("type") in ("xdp", "sched_cls"):
                out[info["name"]] = {"verified_insns": info.get("verified_insns"),
                                     "xlated_bytes": info.get("bytes_xlated"),
                                     "jited_bytes": info.get("bytes_jited")}
    return out


def hit_frame(key: bytes, client: str, server: str, rid: int = 7) -> bytes:
    return udp_frame(client, server, 40000, 11211,
                     struct.pack("!HHHH", rid, 0, 1, 0) + b"get " + key + b"\r\n")


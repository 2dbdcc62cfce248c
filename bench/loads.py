"""The load generators: memcaslap (the stock tool) and bench/udpgen.c (ours, for skew, misses,
non-memcached UDP and loss counting); running them in the client netns and parsing them."""

from __future__ import annotations

import bisect
import itertools
import json
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from topo import CLIENT_NS, ECHO_PORT, PORT, SERVER_ADDR, SERVER_NS, nsenter

HERE = Path(__file__).resolve().parent
UDPGEN_SRC = HERE / "udpgen.c"
BUILD = HERE.parent / "build" / "bench"
UDPGEN = BUILD / "udpgen"
CLIENT_CPU = "0"


def build_udpgen() -> Path:
    BUILD.mkdir(parents=True, exist_ok=True)
    if not UDPGEN.exists() or UDPGEN.stat().st_mtime < UDPGEN_SRC.stat().st_mtime:
        # gcc-12 comes with Debian's kernel headers (linux-compiler-gcc-12-x86) even where
        # the `gcc` package is not installed
        cc = next((c for c in ("gcc", "gcc-12", "cc") if shutil.which(c)), None)
        if cc is None:
            raise RuntimeError("no C compiler for bench/udpgen.c: apt-get install gcc")
        subprocess.run([cc, "-O2", "-Wall", "-o", str(UDPGEN), str(UDPGEN_SRC), "-lm"],
                       check=True)
    return UDPGEN


# ------------------------------------------------------------------ memcaslap

def memaslap_cfg(path: Path, key_len: int, value_len: int, get_share: float) -> Path:
    path.write_text(
        f"key\n{key_len} {key_len} 1\nvalue\n{value_len} {value_len} 1\n"
        f"cmd\n0 {1 - get_share:.4f}\n1 {get_share:.4f}\n"
    )
    return path


def run_memaslap(cfg: Path, seconds: int, conc: int, window: str, verify: float = 0.0,
                 pin_cpu: str | None = CLIENT_CPU, tcp: bool = False) -> dict:
    """memcaslap over UDP, or over TCP (tcp=True: one connection per concurrency unit, -c),
    from the client netns to memcached in the server netns: a remote client."""
    argv = [*nsenter(CLIENT_NS)]
    if pin_cpu is not None:
        argv += ["taskset", "-c", pin_cpu]
    argv += ["memcaslap", "-s", f"{SERVER_ADDR}:{PORT}", *([] if tcp else ["-U"]), "-T", "1",
             "-c", str(conc), "-w", window, "-t", f"{seconds}s", "-S", f"{seconds}s",
             "-F", str(cfg)]
    if verify:
        argv.append(f"--verify={verify}")
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    res = parse_memaslap(p.stdout)
    res["exit"] = p.returncode
    return res


_TABLE = re.compile(r"^Global\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)"
                    r"\s+([\d.]+)\s+([\d.]+)")


def _log2_hist(lines: list[str], start: int) -> list[int]:
    hist: list[int] = []
    for line in lines[start:]:
        m = re.match(r"^\s+(\d+):((?:\s+\d+)+)\s*$", line)
        if not m:
            if hist:
                break
            continue
        base = int(m.group(1))
        vals = [int(v) for v in m.group(2).split()]
        while len(hist) < base:
            hist.append(0)
        hist[base:base + len(vals)] = vals
    return hist


def _hist_pct(hist: list[int], q: float) -> float | None:
    """Upper edge (us) of the log2 bucket holding quantile q: bucket i is [2^i, 2^(i+1))."""
    total = sum(hist)
    if not total:
        return None
    acc = 0
    for i, n in enumerate(hist):
        acc += n
        if acc >= q * total:
            return float(2 ** (i + 1))
    return float(2 ** len(hist))


def parse_memaslap(out: str) -> dict:
    lines = out.splitlines()
    res: dict = {}
    section = None
    for i, line in enumerate(lines):
        s = line.strip()
        if s == "Get Statistics":
            section = "get"
        elif s == "Set Statistics":
            section = "set"
        elif s == "Total Statistics":
            section = "total"
        m = _TABLE.match(s)
        if m and section and f"{section}_ops" not in res:
            res[f"{section}_ops"] = int(m.group(2))
            res[f"{section}_tps"] = int(m.group(3))
            res[f"{section}_min_us"] = int(m.group(6))
            res[f"{section}_max_us"] = int(m.group(7))
            res[f"{section}_mean_us"] = int(m.group(8))
            res[f"{section}_std_us"] = float(m.group(9))
        m = re.match(r"^(Get|Set|Total) Statistics \((\d+) events\)", s)
        if m:
            hist = _log2_hist(lines, i + 1)
            key = m.group(1).lower()
            res[f"{key}_p50_le_us"] = _hist_pct(hist, 0.5)
            res[f"{key}_p99_le_us"] = _hist_pct(hist, 0.99)
            res[f"{key}_p999_le_us"] = _hist_pct(hist, 0.999)
        m = re.match(r"^(cmd_get|cmd_set|get_misses|verify_misses|verify_failed|"
                     r"packet_disorder|packet_drop|udp_timeout|expired_get|unexpired_unget):"
                     r"\s+(\d+)", s)
        if m:
            res[m.group(1)] = int(m.group(2))
        m = re.match(r"^Run time: ([\d.]+)s Ops: (\d+) TPS: (\d+)", s)
        if m:
            res["run_s"] = float(m.group(1))
            res["ops"] = int(m.group(2))
            res["tps"] = int(m.group(3))
    return res


# ------------------------------------------------------------------ udpgen

def run_udpgen_get(seconds: float, conc: int, nkeys: int, zipf: float, prefix: str,
                   timeout_ms: int = 200, pin_cpu: str | None = CLIENT_CPU,
                   keys_per_get: int = 1) -> dict:
    """keys_per_get > 1: multi-gets of that many keys; a hit is a reply with every item."""
    argv = [*nsenter(CLIENT_NS)]
    if pin_cpu is not None:
        argv += ["taskset", "-c", pin_cpu]
    argv += [str(UDPGEN), "get", SERVER_ADDR, str(PORT), str(seconds), str(conc), str(nkeys),
             str(zipf), prefix, str(timeout_ms), str(keys_per_get)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    return json.loads(p.stdout.strip().splitlines()[-1])


def start_udpgen_get(seconds: float, conc: int, nkeys: int, zipf: float, prefix: str,
                     timeout_ms: int = 200) -> subprocess.Popen:
    argv = [*nsenter(CLIENT_NS), str(UDPGEN), "get", SERVER_ADDR, str(PORT), str(seconds),
            str(conc), str(nkeys), str(zipf), prefix, str(timeout_ms)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = 60) -> dict:
    out, _ = p.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def run_udpgen_raw(seconds: float, conc: int, payload: int, timeout_ms: int = 200,
                   pin_cpu: str | None = CLIENT_CPU) -> dict:
    argv = [*nsenter(CLIENT_NS)]
    if pin_cpu is not None:
        argv += ["taskset", "-c", pin_cpu]
    argv += [str(UDPGEN), "raw", SERVER_ADDR, str(ECHO_PORT), str(seconds), str(conc),
             str(payload), str(timeout_ms)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    return json.loads(p.stdout.strip().splitlines()[-1])


def echo_server_argv(seconds: int, cpu: str | None) -> list[str]:
    argv = [*nsenter(SERVER_NS)]
    if cpu is not None:
        argv += ["taskset", "-c", cpu]
    return [*argv, str(UDPGEN), "echo", SERVER_ADDR, str(ECHO_PORT), str(seconds)]


# ------------------------------------------------------------------ rwgen (meta or get client)

def run_rwgen(seconds: float, conc: int, nkeys: int, zipf: float, prefix: str, reads: str,
              write_share: float, value_len: int, pin_cpu: str | None = CLIENT_CPU) -> dict:
    """A client that reads and writes over UDP, as a meta-protocol client does (reads "mg
    <key> v f", writes "ms <key> <bytes>") or as a classic one does ("get <key>", "set <key>
    0 0 <bytes>"), Zipf-skewed over nkeys preloaded keys. In Python (this file run in the
    client namespace): udpgen.c sends GETs only. Its own speed bounds the throughput, so
    compare B/A of the two kinds of client, not these figures with udpgen's."""
    argv = [*nsenter(CLIENT_NS)]
    if pin_cpu is not None:
        argv += ["taskset", "-c", pin_cpu]
    argv += [sys.executable, str(Path(__file__).resolve()), "rwgen", SERVER_ADDR, str(PORT),
             str(seconds), str(conc), str(nkeys), str(zipf), prefix, reads, str(write_share),
             str(value_len)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if p.returncode:
        raise RuntimeError(f"rwgen: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _zipf_cdf(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n)))


def rwgen(server: str, port: int, seconds: float, conc: int, nkeys: int, zipf: float,
          prefix: str, reads: str, write_share: float, value_len: int,
          timeout_ms: int = 200) -> dict:
    """conc requests kept in flight on one socket; a request is done at its reply's last
    message (a get's END, an mg's or ms's one line), lost after timeout_ms."""
    rng = random.Random(1)
    cdf = _zipf_cdf(nkeys, zipf)
    total = cdf[-1]
    value = b"x" * value_len
    frame = struct.Struct("!HHHH")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.connect((server, port))
    rids = itertools.count(1)
    inflight: dict[int, tuple[int, bool, bytearray]] = {}  # rid -> (sent ns, write, reply)
    lat: list[int] = []
    done = lost = writes = 0
    end = time.monotonic() + seconds
    timeout_ns = timeout_ms * 1_000_000
    while time.monotonic() < end:
        while len(inflight) < conc:
            k = b"%s%08d" % (prefix.encode(), bisect.bisect_left(cdf, rng.random() * total))
            write = rng.random() < write_share
            if write:
                req = (b"ms %s %d\r\n" % (k, value_len) if reads == "mg" else
                       b"set %s 0 0 %d\r\n" % (k, value_len)) + value + b"\r\n"
            else:
                req = b"mg %s v f\r\n" % k if reads == "mg" else b"get %s\r\n" % k
            rid = next(rids) & 0xFFFF
            inflight[rid] = (time.monotonic_ns(), write, bytearray())
            s.send(frame.pack(rid, 0, 1, 0) + req)
        if not select.select([s], [], [], 0.05)[0]:
            continue
        while True:
            try:
                data = s.recv(65535)
            except BlockingIOError:
                break
            rid = frame.unpack_from(data)[0] if len(data) >= 8 else -1
            if rid not in inflight:
                continue
            t0, write, acc = inflight[rid]
            acc += data[8:]
            if write or reads == "mg" or acc.endswith(b"END\r\n"):
                del inflight[rid]
                lat.append(time.monotonic_ns() - t0)
                done += 1
                writes += write
        now = time.monotonic_ns()
        for rid in [r for r, v in inflight.items() if now - v[0] > timeout_ns]:
            del inflight[rid]
            lost += 1
    lat.sort()
    us = [x / 1000 for x in lat]
    return {"replies": done, "writes": writes, "lost": lost,
            "ops_s": done / seconds, "mean_us": sum(us) / len(us) if us else None,
            "p50_us": us[len(us) // 2] if us else None,
            "p99_us": us[int(len(us) * 0.99)] if us else None}


if __name__ == "__main__" and len(sys.argv) == 12 and sys.argv[1] == "rwgen":
    a = sys.argv[2:]
    print(json.dumps(rwgen(a[0], int(a[1]), float(a[2]), int(a[3]), int(a[4]), float(a[5]),
                           a[6], a[7], float(a[8]), int(a[9]))))

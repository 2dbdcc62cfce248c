#!/usr/bin/env python3
"""Background GET traffic for the lab fleet, so that a canary's bake has real traffic to judge.

A cache-aside client of each lab host's memcached, run on the machine (198.18.0.1 on the lab
bridge): GETs over UDP at a steady rate per host, round robin over a small key set; a GET that
memcached answers without a value (the key is not there: a first run, a restarted memcached)
is followed by a SET of that key over TCP, as an application would. The hosts' data planes see
repeated GETs of keys memcached holds: with a sane config the kernel answers nearly all of them
(hit ratio near 1); with ttl_ms: 1 nearly none.

    lab/loadgen.py --hosts 198.18.0.11,198.18.0.12 [--rate 300] [--keys 20] [--seconds 0]

Runs until --seconds have passed (0: until SIGTERM or SIGINT), then prints one JSON line per
host: sent, replies, values (answers with the value, from the kernel or memcached), empty
(answers without), lost, sets. Steady pacing, not a benchmark: bench/udpgen.c measures.
Traffic only to the lab's addresses (198.18.0.0/15), which it checks.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

LAB_NET = ipaddress.ip_network("198.18.0.0/15")
VALUE = b"v" * 64  # small: well under the lab config's max_value_bytes


@dataclass
class Host:
    address: str
    port: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("sent", "replies", "values", "empty", "lost", "sets", "set_errors"), 0))
    # request id -> key, for the GETs not answered yet
    waiting: dict[int, str] = field(default_factory=dict)


def frame(req_id: int, payload: bytes) -> bytes:
    # memcached's UDP frame header: request id, sequence 0, 1 datagram, reserved
    return struct.pack("!HHHH", req_id, 0, 1, 0) + payload


def set_key(host: Host, key: str) -> None:
    try:
        with socket.create_connection((host.address, host.port), timeout=1.0) as s:
            s.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(VALUE), VALUE))
            reply = s.recv(64)
        host.counts["sets" if reply.startswith(b"STORED") else "set_errors"] += 1
    except OSError:
        host.counts["set_errors"] += 1


def run(hosts: list[Host], rate: float, keys: int, seconds: float, prefix: str) -> None:
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    by_addr = {h.address: h for h in hosts}
    interval = 1.0 / (rate * len(hosts))
    started = time.monotonic()
    due = started
    n = 0
    while not stop and (seconds <= 0 or time.monotonic() - started < seconds):
        now = time.monotonic()
        if now >= due:
            host = hosts[n % len(hosts)]
            req_id = (n // len(hosts)) & 0xFFFF
            key = f"{prefix}{(n // len(hosts)) % keys:04d}"
            if req_id in host.waiting:
                host.counts["lost"] += 1
            host.waiting[req_id] = key
            try:
                sock.sendto(frame(req_id, b"get %s\r\n" % key.encode()), (host.address, host.port))
                host.counts["sent"] += 1
            except OSError:
                host.counts["lost"] += 1
            n += 1
            due += interval
            if due < now - 1.0:  # far behind (a stall): do not burst to catch up
                due = now
        try:
            data, (addr, _port) = sock.recvfrom(65536)
        except BlockingIOError:
            time.sleep(min(max(due - time.monotonic(), 0), 0.005))
            continue
        except OSError:
            continue
        host = by_addr.get(addr)
        if host is None or len(data) < 8:
            continue
        req_id = struct.unpack("!H", data[:2])[0]
        key = host.waiting.pop(req_id, None)
        host.counts["replies"] += 1
        if data[8:].startswith(b"VALUE"):
            host.counts["values"] += 1
        else:
            host.counts["empty"] += 1
            if key is not None:
                set_key(host, key)
    for h in hosts:
        h.counts["lost"] += len(h.waiting)
        print(json.dumps({"host": h.address, **h.counts}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", required=True, help="comma-separated lab host addresses")
    ap.add_argument("--port", type=int, default=11211)
    ap.add_argument("--rate", type=float, default=300.0, help="GETs per second per host")
    # few keys: they are filled together and expire together (ttl_ms later); 20 misses in a
    # bake window cost its hit ratio at most ~2 points at 300 GETs/s
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=0.0)
    ap.add_argument("--prefix", default="load:")
    args = ap.parse_args()
    hosts = []
    for a in args.hosts.split(","):
        if ipaddress.ip_address(a) not in LAB_NET:
            print(f"{a} is not a lab address ({LAB_NET})", file=sys.stderr)
            return 2
        hosts.append(Host(a, args.port))
    run(hosts, args.rate, args.keys, args.seconds, args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""memcached's `stats` over TCP, and what in them means the cache must be emptied."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

STATS_TIMEOUT_S = 0.5
MAX_STATS_BYTES = 1 << 20


class StatsError(Exception):
    pass


def connect_host(address: str) -> str:
    """Where to reach memcached at address: bound to every address (0.0.0.0, or :: for both
    families), it is reachable on IPv4 loopback."""
    try:
        wildcard = ipaddress.ip_address(address).is_unspecified
    except ValueError:
        wildcard = False  # a host name
    return "127.0.0.1" if wildcard else address


def fetch_stats(host: str, port: int, timeout: float = STATS_TIMEOUT_S) -> dict[str, Any]:
    """`stats` as a dict; integer-looking values become ints."""
    try:
        with socket.create_connection((connect_host(host), port), timeout=timeout) as s:
            s.sendall(b"stats\r\n")
            buf = bytearray()
            while not (buf.endswith(b"END\r\n") or buf.startswith(b"ERROR")):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_STATS_BYTES:
                    raise StatsError("stats reply too large")
    except OSError as e:
        raise StatsError(f"memcached {host}:{port}: {e}") from None
    if not buf.endswith(b"END\r\n"):
        raise StatsError(f"memcached {host}:{port}: incomplete stats reply")
    out: dict[str, Any] = {}
    for line in buf.decode("ascii", "replace").split("\r\n"):
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            value = parts[2]
            out[parts[1]] = int(value) if value.isdigit() else value
    return out


@dataclass
class RestartDetector:
    """Remembers the last stats seen; says why the cache must be flushed, if it must."""

    last: dict[str, Any] | None = None

    def observe(self, stats: dict[str, Any]) -> str | None:
        prev, self.last = self.last, stats
        if prev is None:
            return None
        if stats.get("pid") != prev.get("pid"):
            return f"memcached restarted (pid {prev.get('pid')} -> {stats.get('pid')})"
        up, prev_up = stats.get("uptime"), prev.get("uptime")
        if isinstance(up, int) and isinstance(prev_up, int) and up < prev_up:
            return f"memcached uptime went backwards ({prev_up} -> {up}): restarted"
        fl, prev_fl = stats.get("cmd_flush"), prev.get("cmd_flush")
        if isinstance(fl, int) and isinstance(prev_fl, int) and fl > prev_fl:
            return f"memcached was flushed (cmd_flush {prev_fl} -> {fl})"
        return None

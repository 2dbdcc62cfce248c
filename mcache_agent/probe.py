"""Health probe: is the kernel really answering GETs, with the value memcached holds?

SET a fresh value over TCP, GET it twice over UDP: the first GET may miss and fill the cache, so
the proof is that both answers carry the value, the data plane's hit counter rose, and memcached
itself served at most one of the GETs.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

from mcache_agent.config import Config
from mcache_agent.memcached_stats import StatsError, connect_host, fetch_stats


class CountingDataplane(Protocol):
    def counters(self) -> dict[str, int]: ...


def run_probe(cfg: Config, dataplane: CountingDataplane) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + cfg.probe_timeout_ms / 1000
    host, port = connect_host(cfg.memcached.address), cfg.memcached.port
    key = cfg.probe_key.encode()
    value = f"mcache-probe-{uuid.uuid4().hex}".encode()
    evidence: dict[str, Any] = {
        "ok": False, "value_ok": False, "hits_before": None, "hits_after": None,
        "cmd_get_before": None, "cmd_get_after": None, "duration_ms": 0.0, "detail": "",
    }

    def done(detail: str) -> dict[str, Any]:
        evidence["detail"] = detail
        evidence["duration_ms"] = round((time.monotonic() - started) * 1000, 3)
        return evidence

    try:
        from pymemcache.client.base import Client

        client = Client((host, port), connect_timeout=_left(deadline), timeout=_left(deadline))
        try:
            # noreply=False: the GETs below must see this write.
            if not client.set(key, value, expire=300, noreply=False):
                return done("memcached refused the probe SET")
        finally:
            client.close()
        # probe_hit counts kernel hits of this key only: other clients' traffic cannot
        # make the probe pass or fail (the global counters are kept as context).
        counters = dataplane.counters()
        evidence["hits_before"] = counters.get("probe_hit", 0)
        evidence["all_hits_before"] = counters.get("hit", 0)
        evidence["cmd_get_before"] = fetch_stats(host, port, _left(deadline)).get("cmd_get")
    except (OSError, StatsError, Exception) as e:
        return done(f"probe set-up failed: {type(e).__name__}: {e}")

    from mcache_agent.udp_client import udp_get_ascii

    # Fills are held back for fill_hold_ms after a write to the slot (the race guard): a GET
    # sent sooner would be answered by memcached but not fill. Wait it out, so that the
    # evidence is the plain one: GET 1 fills, GET 2 is a kernel hit.
    time.sleep(cfg.cache.fill_hold_ms / 1000 + 0.005)
    try:
        first = udp_get_ascii(host, port, [key], timeout=_left(deadline)).get(key)
    except Exception as e:
        return done(f"first UDP GET failed: {type(e).__name__}: {e}")
    if first != value:
        return done(f"first UDP GET returned {first!r}, expected the probe value")

    # The fill happens on the reply's way out, asynchronously to our read of it: retry the
    # second GET until it is a kernel hit or the time is up.
    second: bytes | None = None
    attempts = 0
    while True:
        attempts += 1
        try:
            second = udp_get_ascii(host, port, [key], timeout=_left(deadline)).get(key)
            counters = dataplane.counters()
            evidence["hits_after"] = counters.get("probe_hit", 0)
            evidence["all_hits_after"] = counters.get("hit", 0)
        except Exception as e:
            return done(f"second UDP GET failed: {type(e).__name__}: {e}")
        if second != value or evidence["hits_after"] > evidence["hits_before"]:
            break
        if _left(deadline) <= 0.05:
            break
        time.sleep(min(0.02 * attempts, 0.2))
    evidence["value_ok"] = first == value and second == value
    try:
        evidence["cmd_get_after"] = fetch_stats(host, port, max(_left(deadline), 0.2)).get(
            "cmd_get"
        )
    except StatsError as e:
        return done(f"could not read memcached stats after the GETs: {e}")

    hits_rose = evidence["hits_after"] > evidence["hits_before"]
    # memcached's cmd_get counts every client: context, not a condition (on an idle host it
    # rises by the GETs that missed, here usually 1).
    gets = _delta(evidence["cmd_get_before"], evidence["cmd_get_after"])
    evidence["ok"] = bool(evidence["value_ok"] and hits_rose)
    if evidence["ok"]:
        return done(f"kernel hit for the probe key after {attempts} attempt(s); "
                    f"memcached cmd_get +{gets}")
    reasons = []
    if not evidence["value_ok"]:
        reasons.append(f"second UDP GET returned {second!r}")
    if not hits_rose:
        reasons.append(f"no kernel hit for the probe key in {attempts} attempt(s)")
    return done("; ".join(reasons))


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.01)


def _delta(before: Any, after: Any) -> int | None:
    if isinstance(before, int) and isinstance(after, int):
        return after - before
    return None

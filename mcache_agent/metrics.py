"""Prometheus metrics, read from the agent's state at scrape time (nothing to keep in sync)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mcache_agent.config import listen_address

log = logging.getLogger(__name__)

# The status document (daemon.Agent.status()) is the single source for both status and metrics.
StatusSource = Callable[[], dict[str, Any]]


class AgentCollector(Collector):
    def __init__(self, source: StatusSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        try:
            st = self.source()
        except Exception:  # a failed scrape must not take the endpoint down
            log.exception("metrics: status failed")
            return
        verdicts = CounterMetricFamily(
            "mcache_verdicts", "Packets by data-plane verdict (sum over CPUs).", labels=["verdict"]
        )
        for name, value in sorted((st.get("counters") or {}).items()):
            verdicts.add_metric([name], float(value))
        yield verdicts
        yield _by_verdict("mcache_path_verdicts",
                          "Verdicts by the data-plane program (path) that decided.", "path",
                          st.get("counters_by_path"))
        yield _by_verdict("mcache_version_verdicts",
                          "Verdicts by the config version that decided.", "version",
                          st.get("counters_by_version"))
        flushes = CounterMetricFamily(
            "mcache_fallback_flushes",
            "Fallback flushes by reason: traffic the write scanner could not read emptied "
            "the cache (docs/HOSTILE_INPUT.md).", labels=["reason"])
        for reason, value in sorted((st.get("flush_reasons") or {}).items()):
            flushes.add_metric([reason], float(value))
        yield flushes
        memcached = st.get("memcached") or {}
        gets = CounterMetricFamily(
            "mcache_memcached_gets",
            "memcached's own GET count (stats cmd_get, read every second): what reached it.")
        if "cmd_get" in memcached:
            gets.add_metric([], float(memcached["cmd_get"]))
        yield gets
        yield _gauge("mcache_hit_ratio", "hit / (hit + miss) since the counters were created.",
                     st.get("hit_ratio"))
        cache = st.get("cache") or {}
        yield _gauge("mcache_cache_entries", "Cache slots.", cache.get("entries"))
        yield _gauge("mcache_cache_used_entries", "Cache slots holding a live entry.",
                     cache.get("used"))
        yield _gauge("mcache_cache_fill_ratio", "Cache slots holding a live entry, of all.",
                     cache.get("fill_ratio"))
        yield _gauge("mcache_cache_memory_bytes",
                     "Kernel memory of every map of the data plane (the kernel's account).",
                     cache.get("memory_bytes"))
        yield _gauge("mcache_local_bypass_sockets",
                     "Sockets in the local bypass (two per local connection to memcached).",
                     (st.get("local_bypass") or {}).get("sockets"))
        build = st.get("build") or {}
        info = GaugeMetricFamily("mcache_build_info",
                                 "The agent's release, program set and kernel (always 1).",
                                 labels=["release", "programs", "kernel"])
        if build:
            info.add_metric([build.get("release", ""), build.get("programs", ""),
                             build.get("kernel", "")], 1.0)
        yield info
        yield _gauge("mcache_config_version", "Config version running.", st.get("version"))
        # "No config yet" is data, not an absent target: a host being prepared, or whose first
        # apply is under way, scrapes as up with 0 here (mcache_config_version is absent).
        yield _gauge("mcache_config_running",
                     "1 when the agent runs a config, 0 when it has none (yet).",
                     0 if st.get("version") is None else 1)
        rejected = [r for r in st.get("rejected") or [] if isinstance(r, dict)]
        yield _gauge("mcache_rejected_versions",
                     "Config versions a rollback left rejected on this host (never applied "
                     "again).", len(rejected))
        listed = GaugeMetricFamily("mcache_rejected_version",
                                   "1 for each config version rejected on this host.",
                                   labels=["version"])
        for r in rejected:
            listed.add_metric([str(r.get("version"))], 1.0)
        yield listed
        cfile = st.get("config_file") or {}
        yield _gauge("mcache_config_file_refused",
                     "1 when the agent refused (or failed) the config file it started with.",
                     1 if cfile.get("result") in ("refused", "failed") else 0)
        yield _gauge("mcache_agent_start_time_seconds", "Unix time the agent process started.",
                     st.get("started_at_unix"))
        last = st.get("last_apply") or {}
        yield _gauge("mcache_last_apply_success", "1 when the last apply succeeded, 0 when not.",
                     None if not last.get("result") else (1 if last["result"] == "ok" else 0))
        yield _gauge("mcache_last_apply_timestamp_seconds", "Unix time the last apply began.",
                     _unix(last.get("applied_at")))
        yield _gauge("mcache_last_apply_duration_seconds", "Duration of the last apply.",
                     _ms(last.get("duration_ms")))
        yield _gauge("mcache_last_apply_swap_seconds", "Switch-over time of the last apply.",
                     _ms(last.get("swap_ms")))
        strategy = GaugeMetricFamily("mcache_last_apply_info", "Last apply: strategy and result.",
                                     labels=["strategy", "result"])
        if last:
            strategy.add_metric([str(last.get("strategy")), str(last.get("result"))], 1.0)
        yield strategy
        probe = st.get("probe") or {}
        yield _gauge("mcache_probe_success", "1 when the last health probe passed, 0 when not.",
                     None if "ok" not in probe else (1 if probe.get("ok") else 0))
        yield _gauge("mcache_probe_timestamp_seconds", "Unix time of the last health probe.",
                     probe.get("at_unix"))


def _unix(stamp: Any) -> float | None:
    """An agent time stamp (2026-12-02T10:00:00Z) as Unix time."""
    if not isinstance(stamp, str):
        return None
    try:
        return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def _ms(v: Any) -> float | None:
    return None if v is None else float(v) / 1000


def _by_verdict(name: str, doc: str, label: str,
                counts: dict[str, dict[str, int]] | None) -> CounterMetricFamily:
    """A counter of verdicts by one more label (its value: the keys of counts)."""
    family = CounterMetricFamily(name, doc, labels=[label, "verdict"])
    for key, by_verdict in sorted((counts or {}).items()):
        for verdict, value in sorted(by_verdict.items()):
            family.add_metric([key, verdict], float(value))
    return family


def _gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    if value is not None:
        g.add_metric([], float(value))
    return g


def make_registry(source: StatusSource) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(source))
    return registry


def parse_listen(listen: str) -> tuple[str, int]:
    """metrics.listen ("IPv4:port", "[IPv6]:port", ":port") to (host, port), by the config's
    own rule (the one validation applies); ValueError when it is none of those."""
    return listen_address(listen)


def start_metrics(listen: str, source: StatusSource) -> Any | None:
    """Serve /metrics on listen; nothing when listen is empty. Raises what binding raises
    (OSError: the port taken, the address not this host's; ValueError: not a listen address):
    the caller reports it, and the agent goes on without the endpoint."""
    if not listen:
        return None
    host, port = parse_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=make_registry(source))
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server

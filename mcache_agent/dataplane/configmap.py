"""The config map: a Config as the data plane reads it (struct mc_config), and the map hot
swap that puts it in place (a fresh inner map, filled, written into the outer slot in one
update)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from mcache_agent import constants
from mcache_agent.config import Config, resolve_allowed_clients
from mcache_agent.dataplane import libbpf
from mcache_agent.dataplane.layout import Layout, key_hash, net_u16, net_u32, pack
from mcache_agent.dataplane.plan import wanted_interfaces

ZERO = (0).to_bytes(4, "little")
RCU_EXPEDITED = Path("/sys/kernel/rcu_expedited")
LOOPBACK = "127.0.0.0/8"


class ConfigMapError(Exception):
    pass


def allow_list(cfg: Config) -> list[str]:
    """The client networks that may read from the cache. The host itself (the probe, clients
    over lo) always may: its own address and loopback come first, so that nothing can push
    them out; config validation keeps the rest within the data plane's room."""
    own = [] if cfg.memcached.address == "0.0.0.0" else [f"{cfg.memcached.address}/32"]
    nets = list(dict.fromkeys([*own, LOOPBACK, *resolve_allowed_clients(cfg)]))
    room = constants.const("MC_MAX_ALLOWED")
    if len(nets) > room:
        raise ConfigMapError(f"{len(nets)} client networks (with the host's own), the data "
                             f"plane holds {room}: config validation should have refused it")
    return nets


def config_value(cfg: Config, layout: Layout, *, stats_slot: int) -> bytes:
    """struct mc_config for cfg (addresses and ports in network byte order), counting in
    line stats_slot of the counters (dataplane.stats)."""
    c = cfg.cache
    prefix = c.key_prefix.encode()
    allowed = []
    for net in allow_list(cfg):
        n = ipaddress.IPv4Network(net, strict=False)
        allowed.append({"addr": net_u32(str(n.network_address)), "mask": net_u32(str(n.netmask))})
    serve = [socket.if_nametoindex(w.name) for w in wanted_interfaces(cfg) if w.role == "serve"]
    proto = (constants.const("MC_PROTO_ASCII") if "ascii" in c.protocols else 0) | (
        constants.const("MC_PROTO_BINARY") if "binary" in c.protocols else 0
    )
    return pack(layout, {
        "version": cfg.version,
        "enabled": 1 if c.enabled else 0,
        "ttl_ns": c.ttl_ms * 1_000_000,
        "fill_hold_ns": c.fill_hold_ms * 1_000_000,
        "server_addr": net_u32(cfg.memcached.address),
        "port": net_u16(cfg.memcached.port),
        "protocols": proto,
        "prefix_len": len(prefix),
        "prefix": list(prefix),
        "n_allowed": len(allowed),
        "allowed": allowed,
        "serve_ifindex": serve,
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC
        "unix_offset_ns": time.time_ns() - time.monotonic_ns(),
        "probe_hash": key_hash(cfg.probe_key.encode()),
        "stats_slot": stats_slot,
    })


def swap_in(outer: Path, value: bytes) -> float:
    """Map hot swap: a fresh inner map holding value, put into the outer map's slot 0 in one
    update. Returns the milliseconds the update took."""
    with libbpf.Fd(libbpf.map_create(libbpf.BPF_MAP_TYPE_ARRAY, "mc_cfg", 4, len(value),
                                     1)) as inner, libbpf.opened(outer) as out:
        libbpf.map_update(inner, ZERO, value)
        with expedited_grace_period():
            t0 = time.perf_counter()
            libbpf.map_update(out, ZERO, int(inner).to_bytes(4, "little"))
            return (time.perf_counter() - t0) * 1000


def read_back(outer: Path, size: int) -> bytes | None:
    """The value the data plane reads now (slot 0 of the inner map in place)."""
    with libbpf.opened(outer) as out:
        raw = libbpf.map_lookup(out, ZERO, 4)
    if raw is None:
        return None
    with libbpf.Fd(libbpf.map_fd_by_id(int.from_bytes(raw, "little"))) as inner:
        return libbpf.map_lookup(inner, ZERO, size)


@contextlib.contextmanager
def expedited_grace_period() -> Iterator[None]:
    """An update of an array-of-maps returns only after an RCU grace period (the kernel's
    maybe_wait_bpf_programs(): no program still reads the old inner map), 5-20 ms here.
    An expedited grace period is as strong and takes microseconds, at the price of an IPI
    to each busy CPU: the kernel's own rcu_expedited switch, set for this one update and
    put back. Where it cannot be written (a read-only /sys), the update just takes longer."""
    try:
        was = RCU_EXPEDITED.read_text().strip()
        if was == "0":
            RCU_EXPEDITED.write_text("1")
    except OSError:
        was = ""
    try:
        yield
    finally:
        if was == "0":
            with contextlib.suppress(OSError):
                RCU_EXPEDITED.write_text("0")

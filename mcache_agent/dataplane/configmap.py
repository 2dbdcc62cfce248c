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
from mcache_agent.dataplane import bypass, libbpf
from mcache_agent.dataplane.layout import Layout, key_hash, net_u16, net_u32, net_u32x4, pack
from mcache_agent.dataplane.plan import wanted_interfaces

ZERO = (0).to_bytes(4, "little")
RCU_EXPEDITED = Path("/sys/kernel/rcu_expedited")
# The host's own clients (the probe among them) always may read, over either family.
LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}


class ConfigMapError(Exception):
    pass


def allow_list(cfg: Config, version: int) -> list[str]:
    """The client networks of one IP version (4 or 6) that may read from the cache. The host
    itself (the probe, clients over lo) always may: memcached's own address (when it is one
    of this version, not a wildcard) and loopback come first, so that nothing can push them
    out; config validation keeps the rest within the data plane's room."""
    ip = cfg.memcached.ip()
    own = [] if ip.is_unspecified or ip.version != version else [ipaddress.ip_network(ip)]
    clients = [ipaddress.ip_network(n, strict=False) for n in resolve_allowed_clients(cfg)]
    nets = list(dict.fromkeys([*own, ipaddress.ip_network(LOOPBACK[version]),
                               *(n for n in clients if n.version == version)]))
    room = constants.const("MC_MAX_ALLOWED")
    if len(nets) > room:
        raise ConfigMapError(f"{len(nets)} IPv{version} client networks (with the host's own), "
                             f"the data plane holds {room}: config validation should have "
                             "refused it")
    return [str(n) for n in nets]


def families(cfg: Config) -> int:
    """MC_FAMILY_* bits: the families whose GETs the data plane answers (writes are watched
    over both whatever this says)."""
    bit = {4: constants.const("MC_FAMILY_IPV4"), 6: constants.const("MC_FAMILY_IPV6")}
    return sum(bit[v] for v in cfg.memcached.versions())


def config_value(cfg: Config, layout: Layout, *, stats_slot: int) -> bytes:
    """struct mc_config for cfg (addresses and ports in network byte order), counting in
    line stats_slot of the counters (dataplane.stats)."""
    c = cfg.cache
    prefix = c.key_prefix.encode()
    ip = cfg.memcached.ip()
    allowed = [_cidr(ipaddress.IPv4Network(n)) for n in allow_list(cfg, 4)]
    allowed6 = [_cidr6(ipaddress.IPv6Network(n)) for n in allow_list(cfg, 6)]
    serve = [socket.if_nametoindex(w.name) for w in wanted_interfaces(cfg) if w.role == "serve"]
    proto = (constants.const("MC_PROTO_ASCII") if "ascii" in c.protocols else 0) | (
        constants.const("MC_PROTO_BINARY") if "binary" in c.protocols else 0
    )
    return pack(layout, {
        "version": cfg.version,
        "enabled": 1 if c.enabled else 0,
        "ttl_ns": c.ttl_ms * 1_000_000,
        "fill_hold_ns": c.fill_hold_ms * 1_000_000,
        # 0 (0.0.0.0) and :: are "any local address"; the other family's field stays zero,
        # families says whether its GETs are answered at all
        "server_addr": net_u32(str(ip)) if ip.version == 4 else 0,
        "server_addr6": net_u32x4(str(ip)) if ip.version == 6 else [0, 0, 0, 0],
        "families": families(cfg),
        "port": net_u16(cfg.memcached.port),
        "protocols": proto,
        "prefix_len": len(prefix),
        "prefix": list(prefix),
        "n_allowed": len(allowed),
        "allowed": allowed,
        "n_allowed6": len(allowed6),
        "allowed6": allowed6,
        "serve_ifindex": serve,
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC
        "unix_offset_ns": time.time_ns() - time.monotonic_ns(),
        "probe_hash": key_hash(cfg.probe_key.encode()),
        "stats_slot": stats_slot,
        "bypass": 1 if cfg.local_bypass.enabled else 0,
        "guard": 1 if cfg.cache.amplification_guard else 0,
        # the namespace of the agent applying it: the sockops program sees every namespace's
        # connections, and only this one's are memcached's
        "netns_cookie": bypass.netns_cookie(),
    })


def _cidr(net: ipaddress.IPv4Network) -> dict[str, int]:
    """struct mc_cidr."""
    return {"addr": net_u32(str(net.network_address)), "mask": net_u32(str(net.netmask))}


def _cidr6(net: ipaddress.IPv6Network) -> dict[str, list[int]]:
    """struct mc_cidr6."""
    return {"addr": net_u32x4(str(net.network_address)), "mask": net_u32x4(str(net.netmask))}


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

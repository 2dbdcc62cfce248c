"""Read-only views of a running data plane: verdict counters (by version and path), the
cache's fill level, its generation, and the memory the kernel holds for it. Each costs a few
syscalls, whatever the size of the cache, so status and every Prometheus scrape may call them
freely."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mcache_agent.dataplane import libbpf
from mcache_agent.dataplane import stats as dataplane_stats
from mcache_agent.dataplane.pins import PinDir, Record, level_pin
from mcache_agent.dataplane.sets import root_programs, set_programs

STATE_BYTES = 24  # struct mc_state: gen, flush_at_ns, flush_ns


@dataclass(frozen=True)
class CacheUsage:
    entries: int
    used: int


@dataclass(frozen=True)
class Memory:
    """Bytes the kernel accounts to every map of the data plane (fdinfo memlock), by map."""

    total_bytes: int
    maps: dict[str, int]


def stats(pins: PinDir, record: Record | None) -> dataplane_stats.Stats:
    """Counters by config version and path (dataplane.stats): a few batched lookups."""
    if record is None:
        return dataplane_stats.Stats({}, {})
    return dataplane_stats.read(pins.state_dir(record))


def counters(pins: PinDir, record: Record | None) -> dict[str, int]:
    """Verdict counters, summed over CPUs, paths and versions."""
    return stats(pins, record).total().by_verdict()


def flush_reasons(pins: PinDir, record: Record | None) -> dict[str, int]:
    """Fallback flushes by reason: real traffic the write scanner could not read."""
    if record is None:
        return {}
    return dataplane_stats.flush_reasons(pins.state_dir(record))


def generation(pins: PinDir, record: Record | None) -> int:
    if record is None:
        return 0
    raw = pins.read0(pins.state_dir(record) / "state", STATE_BYTES) or bytes(8)
    return int.from_bytes(raw[:8], "little")


def cache_usage(pins: PinDir, record: Record | None) -> CacheUsage | None:
    """Live entries, from the data plane's own count (mc_level_add): two lookups."""
    if record is None:
        return None
    entries = record.shape[0]
    level = pins.state_dir(record) / level_pin(record.shape)
    if not level.exists():
        return CacheUsage(entries, 0)
    gen = generation(pins, record)
    with libbpf.opened(level) as fd:
        raw = libbpf.map_lookup(fd, (gen & 1).to_bytes(4, "little"), 8) or bytes(8)
    n = int.from_bytes(raw, "little", signed=True)
    # Updates that raced a generation bump may leave the count a little off: clamp it.
    return CacheUsage(entries, min(max(n, 0), entries))


def memory(pins: PinDir, record: Record | None) -> Memory:
    """Every map the running programs use (read from the programs themselves, tail calls
    included), the config maps in place and the record: what the kernel allocated for them."""
    if record is None:
        return Memory(0, {})
    ids: set[int] = set()
    progs = {**root_programs(pins), **set_programs(pins, record.set)}
    for info in progs.values():
        ids.update(info.map_ids)
    by_name: dict[str, int] = {}
    extra = [pins.root / "meta"]
    fds = []
    try:
        for map_id in sorted(ids):
            fds.append(libbpf.Fd(libbpf.map_fd_by_id(map_id)))
        for path in extra:
            if path.exists():
                fds.append(libbpf.opened(path))
        cfg_outer = pins.state_dir(record) / "cfg"
        if cfg_outer.exists():
            with libbpf.opened(cfg_outer) as outer:
                raw = libbpf.map_lookup(outer, (0).to_bytes(4, "little"), 4)
            if raw is not None:
                fds.append(libbpf.Fd(libbpf.map_fd_by_id(int.from_bytes(raw, "little"))))
        seen: set[int] = set()
        for fd in fds:
            info = libbpf.map_info(fd)
            if info.id in seen:
                continue
            seen.add(info.id)
            name = info.name or f"id{info.id}"
            by_name[name] = by_name.get(name, 0) + libbpf.map_memory(fd)
    finally:
        for fd in fds:
            os.close(fd)
    return Memory(sum(by_name.values()), dict(sorted(by_name.items())))

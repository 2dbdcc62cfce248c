"""Counters by config version and by path (the sub-program that decided).

The data plane counts in mc_stats: MC_STAT_SLOTS lines of MC_P_COUNT x MC_V_COUNT per-CPU
counters, and each config names its line (struct mc_config.stats_slot), so every packet
counts under the version that decided it, whatever swaps happen meanwhile. This module
gives each version a line (stat_slots records whose counts each line holds) and, before a
line goes to another version, adds the counts it holds to stats_archive and zeroes it: a
version's totals are its archive entry plus its line, and never go down.

Only the agent, under the Dataplane's change lock, assigns lines; readers may read at any
time (a line being handed over is read once in the archive and once in the line for the few
microseconds between the two writes, which a counter scraped a moment later corrects).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mcache_agent import constants
from mcache_agent.dataplane import libbpf

U32 = 4
U64 = 8


def _slots() -> int:
    return constants.const("MC_STAT_SLOTS")


def _line_len() -> int:
    return len(constants.paths()) * len(constants.verdicts())


@dataclass(frozen=True)
class Counts:
    """Counts by path then verdict (names from mcache_shared.h), every one present."""

    by_path: dict[str, dict[str, int]]

    @staticmethod
    def zero() -> Counts:
        return Counts({p: dict.fromkeys(constants.verdicts(), 0) for p in constants.paths()})

    @staticmethod
    def from_line(values: list[int]) -> Counts:
        verdicts, paths = constants.verdicts(), constants.paths()
        return Counts({p: {v: values[i * len(verdicts) + j] for j, v in enumerate(verdicts)}
                       for i, p in enumerate(paths)})

    def line(self) -> list[int]:
        return [n for p in constants.paths() for n in self.by_path[p].values()]

    def plus(self, other: Counts) -> Counts:
        return Counts.from_line([a + b for a, b in zip(self.line(), other.line(), strict=True)])

    def by_verdict(self) -> dict[str, int]:
        out = dict.fromkeys(constants.verdicts(), 0)
        for counts in self.by_path.values():
            for v, n in counts.items():
                out[v] += n
        return out


@dataclass(frozen=True)
class Stats:
    """Everything counted in one layout's maps: per version (archive + line) and in all."""

    by_version: dict[int, Counts]
    slots: dict[int, int]  # line -> the version it counts now

    def total(self) -> Counts:
        out = Counts.zero()
        for c in self.by_version.values():
            out = out.plus(c)
        return out


def _lines(state_dir: Path) -> list[list[int]]:
    """Every line of mc_stats, summed over CPUs."""
    ncpu = libbpf.num_possible_cpus()
    total = [0] * (_slots() * _line_len())
    with libbpf.opened(state_dir / "stats") as fd:
        for key, value in libbpf.map_lookup_batch(fd, U32, U64 * ncpu, len(total)):
            i = int.from_bytes(key, "little")
            if i < len(total):
                total[i] = sum(int.from_bytes(value[c * U64 : (c + 1) * U64], "little")
                               for c in range(ncpu))
    n = _line_len()
    return [total[s * n : (s + 1) * n] for s in range(_slots())]


def flush_reasons(state_dir: Path) -> dict[str, int]:
    """Fallback flushes by reason (mc_flush_why), summed over CPUs; every reason present."""
    ncpu = libbpf.num_possible_cpus()
    names = constants.flush_reasons()
    out = dict.fromkeys(names, 0)
    pin = state_dir / "flush_why"
    if not pin.exists():  # maps made by a release without it
        return out
    with libbpf.opened(pin) as fd:
        for key, value in libbpf.map_lookup_batch(fd, U32, U64 * ncpu, len(names)):
            i = int.from_bytes(key, "little")
            if i < len(names):
                out[names[i]] = sum(int.from_bytes(value[c * U64:(c + 1) * U64], "little")
                                    for c in range(ncpu))
    return out


def _slot_versions(state_dir: Path) -> dict[int, int]:
    """Line -> version, for the lines in use."""
    out = {}
    with libbpf.opened(state_dir / "stat_slots") as fd:
        for key, value in libbpf.map_lookup_batch(fd, U32, U32, _slots()):
            version = int.from_bytes(value, "little")
            if version:
                out[int.from_bytes(key, "little")] = version
    return out


def _unpack_line(raw: bytes) -> Counts:
    """A struct mc_stat_line (the archive's value)."""
    return Counts.from_line([int.from_bytes(raw[i * U64 : (i + 1) * U64], "little")
                             for i in range(_line_len())])


def _pack_line(counts: Counts) -> bytes:
    return b"".join(n.to_bytes(U64, "little") for n in counts.line())


def _archive(state_dir: Path) -> dict[int, Counts]:
    out = {}
    with libbpf.opened(state_dir / "stats_archive") as fd:
        for key, value in libbpf.map_lookup_batch(fd, U32, U64 * _line_len(),
                                                  constants.const("MC_ARCHIVE_VERSIONS")):
            out[int.from_bytes(key, "little")] = _unpack_line(value)
    return out


def read(state_dir: Path) -> Stats:
    """The counts of the layout whose maps are in state_dir (empty if it has none yet)."""
    if not (state_dir / "stat_slots").exists():
        return Stats({}, {})
    slots = _slot_versions(state_dir)
    lines = _lines(state_dir)
    by_version = _archive(state_dir)
    for slot, version in slots.items():
        live = Counts.from_line(lines[slot])
        by_version[version] = by_version.get(version, Counts.zero()).plus(live)
    unowned = [line for s, line in enumerate(lines) if s not in slots and any(line)]
    if unowned:  # counted by a config written before its line was recorded: version 0
        extra = Counts.zero()
        for line in unowned:
            extra = extra.plus(Counts.from_line(line))
        by_version[0] = by_version.get(0, Counts.zero()).plus(extra)
    return Stats(dict(sorted(by_version.items())), slots)


def assign(state_dir: Path, version: int, running: int | None) -> int:
    """The line `version` counts in: the one it has, else a free one, else the line of the
    lowest version other than the running one, whose counts go to the archive first."""
    slots = _slot_versions(state_dir)
    for slot, v in slots.items():
        if v == version:
            return slot
    free = [s for s in range(_slots()) if s not in slots]
    if free:
        slot = free[0]
    else:
        slot = min((s for s, v in slots.items() if v != running), key=lambda s: slots[s])
        _retire(state_dir, slot, slots[slot])
    with libbpf.opened(state_dir / "stat_slots") as fd:
        libbpf.map_update(fd, slot.to_bytes(U32, "little"), version.to_bytes(U32, "little"))
    return slot


def _retire(state_dir: Path, slot: int, version: int) -> None:
    """The line's counts into the archive of its version, then the line zeroed. No packet
    counts there now: the running config names another line."""
    line = Counts.from_line(_lines(state_dir)[slot])
    key = version.to_bytes(U32, "little")
    size = U64 * _line_len()
    with libbpf.opened(state_dir / "stats_archive") as fd:
        raw = libbpf.map_lookup(fd, key, size)
        kept = Counts.zero() if raw is None else _unpack_line(raw)
        libbpf.map_update(fd, key, _pack_line(kept.plus(line)))
    zero = bytes(U64 * libbpf.num_possible_cpus())
    first = slot * _line_len()
    with libbpf.opened(state_dir / "stats") as fd:
        for i in range(first, first + _line_len()):
            libbpf.map_update(fd, i.to_bytes(U32, "little"), zero)

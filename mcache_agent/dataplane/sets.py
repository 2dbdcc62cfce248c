"""Program sets: loading one (in loader workers), holding one open, switching the roots.

A set is everything one compile of xdp_ingress.c and tc_egress.c made, with its own fresh
prog arrays: a live prog array is never updated entry by entry (packets could run a mix of
old and new tail calls). Switching to a set is one update of each root's dispatch slot,
ingress first (see switch()).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcache_agent.dataplane import libbpf, loader
from mcache_agent.dataplane.layout import Layout
from mcache_agent.dataplane.pins import PinDir

WORKER_TIMEOUT_S = 120
# Each root's dispatch slot and the set's entry it points at, in the order of a switch: the
# ingress hooks first (see switch()).
# The local bypass's sk_msg scans writes as XDP does: it goes with the ingress hooks.
ENTRIES = {"xdp_root_jmp": "xdp_main", "msg_root_jmp": "msg_main",
           "tc_in_root_jmp": "tc_ingress", "tc_root_jmp": "tc_main",
           "sock_root_jmp": "sock_main"}
ROOTS = ("xdp_root", "tc_in_root", "tc_root", "sock_root", "msg_root")
REQUIRED = ("xdp_main", "tc_main")  # sets from before tc_ingress have only these


class LoadError(Exception):
    pass


def run_workers(pins: PinDir, kinds: list[str], cflags: list[str], set_id: str = "") -> list[Any]:
    """Run loader workers in parallel; their JSON results, in order."""
    procs = []
    for kind in kinds:
        procs.append(loader.spawn(kind, pins.root, set_id, cflags))
    results, errors = [], []
    for kind, proc in zip(kinds, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            errors.append(f"{kind}: no result within {WORKER_TIMEOUT_S} s")
            continue
        if proc.returncode != 0:
            errors.append(f"{kind}: {err.strip() or f'exit {proc.returncode}'}")
            continue
        results.append(json.loads(out.strip().splitlines()[-1]))
    if errors:
        raise LoadError("; ".join(errors))
    return results


def new_set_id() -> str:
    return str(time.time_ns())


@dataclass(frozen=True)
class LoadedSet:
    id: str
    config_layout: Layout  # struct mc_config as the XDP worker's compiler laid it out


def load_set(pins: PinDir, set_id: str, cflags: list[str], shared_pinned: bool,
             bypass: bool) -> LoadedSet:
    """Compile and load program set `set_id` (and the roots if they are not pinned yet), the
    workers in parallel. `shared_pinned`: the state maps this set uses are in its view
    already. When they are not, a "maps" worker creates and pins the missing ones first (a
    compile of the map definitions alone, ~0.3 s): bcc decides to create a pinned map before
    it compiles and pins it after, so two workers compiling at once would both create it, and
    one pin would fail. `bypass`: the local bypass's programs too (a third compile on the
    host's CPUs: only a config that turns the bypass on pays for it)."""
    kinds = ["xdp", "tc", *(["sock"] if bypass else [])]
    first = [] if shared_pinned else ["maps"]
    if not all(pins.has(r) for r in ROOTS):
        first.append("root")  # it makes the bypass's maps, which the sock worker opens
    try:
        if first:
            run_workers(pins, first, cflags, set_id)
        results = run_workers(pins, kinds, cflags, set_id)
    except Exception:
        discard(pins, set_id)
        raise
    return LoadedSet(set_id, results[0]["config"])


def discard(pins: PinDir, set_id: str) -> None:
    """A set that never ran: its programs and its view (the store keeps what it holds)."""
    shutil.rmtree(pins.set_dir(set_id), ignore_errors=True)
    shutil.rmtree(pins.view_dir(set_id), ignore_errors=True)


def point_root(pins: PinDir, jmp: str, prog_fd: int) -> None:
    """One root's dispatch slot to a program: one map update."""
    pins.write0(jmp, int(prog_fd).to_bytes(4, "little"))


def switch(pins: PinDir, set_id: str) -> float:
    """The roots to a set's entries; returns the milliseconds between the two updates.
    Ingress first: while the old egress still runs it fills only the old cache (or, across a
    shape or layout change, a cache that nobody reads any more); the reverse order could fill
    the new cache with a value whose write only the old ingress saw."""
    with HeldSet(pins, set_id) as held:
        return held.switch_to()


class HeldSet:
    """Every pinned object of a set, held open: a set whose pins are removed (retired) keeps
    working while it is held, so a benchmark can switch between two sets at will."""

    def __init__(self, pins: PinDir, set_id: str) -> None:
        self.pins = pins
        self.id = set_id
        self.fds: dict[str, libbpf.Fd] = {}
        d = pins.set_dir(set_id)
        try:
            for p in sorted(d.iterdir()):
                self.fds[p.name] = libbpf.opened(p)
        except OSError as exc:
            self.close()
            raise LoadError(f"program set {set_id}: {exc}") from None
        missing = [e for e in REQUIRED if e not in self.fds]
        if missing:
            self.close()
            raise LoadError(f"program set {set_id} has no {', '.join(missing)}")

    def switch_to(self) -> float:
        t0 = time.perf_counter()
        for jmp in ENTRIES:
            self.point(jmp)
        return (time.perf_counter() - t0) * 1000

    def point(self, jmp: str) -> None:
        """One root's slot to this set's entry for it; a set loaded before that root existed
        has none, and its slot is emptied (the root then passes)."""
        entry = self.fds.get(ENTRIES[jmp])
        if entry is not None:
            point_root(self.pins, jmp, entry)
        elif self.pins.has(jmp):
            with self.pins.open(jmp) as fd:
                libbpf.map_delete(fd, (0).to_bytes(4, "little"))

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> HeldSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def set_programs(pins: PinDir, set_id: str) -> dict[str, libbpf.ProgInfo]:
    """Every program of a set, tail calls included (read from its prog arrays)."""
    out: dict[str, libbpf.ProgInfo] = {}
    d = pins.set_dir(set_id)
    for p in sorted(d.iterdir()):
        with libbpf.opened(p) as fd:
            if p.name.endswith("_jmp"):
                info = libbpf.map_info(fd)
                for i in range(info.max_entries):
                    raw = libbpf.map_lookup(fd, i.to_bytes(4, "little"), 4)
                    if raw is None:
                        continue
                    with libbpf.Fd(libbpf.prog_fd_by_id(int.from_bytes(raw, "little"))) as pfd:
                        pi = libbpf.prog_info(pfd)
                        out[pi.name] = pi
            else:
                pi = libbpf.prog_info(fd)
                out[pi.name] = pi
    return out


def root_programs(pins: PinDir) -> dict[str, libbpf.ProgInfo]:
    out = {}
    for name in ROOTS:
        if pins.has(name):
            with pins.open(name) as fd:
                out[name] = libbpf.prog_info(fd)
    return out


def pinned_dirs(pins: PinDir) -> list[Path]:
    sets = pins.root / "sets"
    return sorted(sets.iterdir()) if sets.is_dir() else []

"""The Dataplane: the agent's hold on the kernel, behind one typed interface.

An apply is a transaction with one commit point, the write of the pinned record (pins.py):
before it, a failure puts the kernel back to the recorded version; after it, an agent that
adopts the pins runs the new version, and what is left (retiring the old set and maps) is
redone by reconcile(). Everything that must outlive the agent is pinned or attached to an
interface, so a SIGKILLed agent leaves the host serving.

Only one change runs at a time (a lock); readers (status, metrics) never wait for it: while
a change runs they see the record as it was when the change began, or as it committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mcache_agent import cgroups
from mcache_agent.config import Config
from mcache_agent.dataplane import attach as attach_mod
from mcache_agent.dataplane import (
    bypass,
    configmap,
    identity,
    libbpf,
    readings,
    sets,
    source,
    stats,
)
from mcache_agent.dataplane.layout import Layout
from mcache_agent.dataplane.pins import Attachment, PinDir, Record, level_pin
from mcache_agent.dataplane.plan import Plan, PlanRefused, plan, wanted_interfaces
from mcache_agent.dataplane.readings import CacheUsage, Memory
from mcache_agent.dataplane.sets import HeldSet

log = logging.getLogger(__name__)

# Where an apply may be interrupted; tests inject a fault at each (see Dataplane.fault).
FAULT_POINTS = ("loaded", "config", "ingress", "switched", "committed")


class DataplaneError(Exception):
    pass


@dataclass(frozen=True)
class ApplyResult:
    strategy: str
    duration_ms: float
    swap_ms: float | None
    cache_kept: bool
    reasons: tuple[str, ...] = ()


FaultHook = Callable[[str], None]


class Dataplane:
    """The data plane pinned under `pin_dir`.

    `extra_cflags` and `fault` exist for tests only and are never set by the daemon: extra
    compiler flags of every program set (e.g. -DMC_TEST_NO_FILL_GUARD, which the coherence
    checker's self-test needs), and a hook called at each of FAULT_POINTS of an apply.
    """

    def __init__(self, pin_dir: Path, *, extra_cflags: Sequence[str] = (),
                 fault: FaultHook | None = None) -> None:
        self.pins = PinDir(pin_dir)
        self.extra_cflags = tuple(extra_cflags)
        self.fault: FaultHook = fault or (lambda _step: None)
        self._lock = threading.RLock()
        self._depth = 0  # changes in progress (the lock is reentrant)
        self._layout: Layout | None = None
        # The layout pass's answer by cache shape: this process's code does not change.
        self._layouts: dict[tuple[int, int, int] | None, dict[str, object]] = {}
        self._record: Record | None = None
        self._memory: tuple[str, Memory] | None = None

    @property
    def pin_dir(self) -> Path:
        return self.pins.root

    # ------------------------------------------------------------------ reading

    def record(self) -> Record | None:
        """What the kernel runs. While a change runs: the record as it was when the change
        began (or as the change committed it), never a half-written one; otherwise read from
        the pins, so that a Dataplane sees what another process (an agent) changed."""
        if self._depth:
            return self._record
        self._record = self.pins.record()
        return self._record

    def adopt(self) -> int | None:
        """The version pinned and attached, or None when there is none to adopt."""
        rec = self.record()
        if rec is None or not self.pins.has("xdp_root_jmp"):
            return None
        return rec.version

    def plan(self, cfg: Config, previous: Config | None) -> Plan:
        """What apply(cfg, previous) would do now; raises PlanRefused."""
        return plan(cfg, previous, self.record(), source.code_hash(), self.identities(cfg))

    def identities(self, cfg: Config) -> dict[str, str]:
        """The identity of each state map of a program set for cfg (identity.py)."""
        maps = self._layout_pass(cfg.shape())["maps"]
        assert isinstance(maps, dict)
        return identity.identities(maps, cfg.shape())

    def counters(self) -> dict[str, int]:
        """Verdict counters: every version, every path."""
        return readings.counters(self.pins, self.record())

    def stats(self) -> stats.Stats:
        """Counters by config version and path."""
        return readings.stats(self.pins, self.record())

    def flush_reasons(self) -> dict[str, int]:
        """Fallback flushes by reason."""
        return readings.flush_reasons(self.pins, self.record())

    def cache_usage(self) -> CacheUsage | None:
        return readings.cache_usage(self.pins, self.record())

    def generation(self) -> int:
        return readings.generation(self.pins, self.record())

    def memory(self) -> Memory:
        """The kernel's own account of the data plane's maps (cached per program set)."""
        rec = self.record()
        if rec is None:
            return Memory(0, {})
        key = f"{rec.set}/{rec.abi}/{rec.maps}"
        if self._memory is None or self._memory[0] != key:
            self._memory = (key, readings.memory(self.pins, rec))
        return self._memory[1]

    def attached(self) -> list[dict[str, str]]:
        rec = self.record()
        return [{"interface": a.interface, "mode": a.mode, "role": a.role}
                for a in (rec.interfaces if rec else ())]

    def local_bypass(self) -> dict[str, object]:
        """The local bypass: the cgroup its sockops root is attached to ("" when off), and the
        sockets in it now (two per connection; connections that left stay until they close)."""
        rec = self.record()
        return {"cgroup": rec.bypass_cgroup if rec else "", "sockets": bypass.sockets(self.pins)}

    def state_path(self, name: str) -> Path | None:
        """Where the running layout's state map `name` (stats, state, cfg, ...) is pinned."""
        rec = self.record()
        return None if rec is None else self.pins.state_dir(rec) / name

    def config_in_place(self) -> bytes | None:
        """struct mc_config as the data plane reads it now."""
        rec = self.record()
        if rec is None:
            return None
        return configmap.read_back(self.pins.state_dir(rec) / "cfg",
                                   self.config_layout()["size"])

    def config_layout(self) -> Layout:
        """struct mc_config's layout, from the compiler (once per Dataplane)."""
        if self._layout is None:
            rec = self.record()
            self._layout = self._layout_pass(rec.shape if rec else None)["config"]
        return self._layout

    def _layout_pass(self, shape: tuple[int, int, int] | None) -> dict[str, object]:
        """The types of the maps as a build of this shape lays them out (loader "layout":
        a compile that pins nothing, ~0.4 s, once per shape)."""
        if shape not in self._layouts:
            flags = source.cflags(self.pins.root, self.pins.root, shape, self.extra_cflags)
            self._layouts[shape] = sets.run_workers(self.pins, ["layout"], flags)[0]
        return self._layouts[shape]

    def programs(self) -> dict[str, object]:
        """The kernel's account of every running program (verifier, run time, sizes)."""
        rec = self.record()
        if rec is None:
            return {}
        return {**sets.root_programs(self.pins), **sets.set_programs(self.pins, rec.set)}

    def cflags(self, cfg: Config, set_id: str = "") -> list[str]:
        """The compiler flags of program set `set_id` for cfg (default: the running one)."""
        rec = self.record()
        state = self.pins.view_dir(set_id) if set_id else \
            self.pins.state_dir(rec) if rec else self.pins.root
        return source.cflags(self.pins.root, state, cfg.shape(), self.extra_cflags)

    # ------------------------------------------------------------------ changing

    def apply(self, cfg: Config, previous: Config | None) -> ApplyResult:
        """Make the kernel run cfg (`previous`: the config running now, if any)."""
        with self._change():
            t0 = time.perf_counter()
            self.pins.ensure()
            record = self.pins.record()
            self._record = record
            try:
                ids = self.identities(cfg)
                p = plan(cfg, previous, record, source.code_hash(), ids)
            except PlanRefused as exc:
                raise DataplaneError(str(exc)) from None
            except Exception as exc:  # the layout pass: nothing changed yet
                raise DataplaneError(_message(exc)) from exc
            if p.strategy == "none" and record is not None:
                return ApplyResult("none", (time.perf_counter() - t0) * 1000, None, True,
                                   p.reasons)
            set_id = record.set if record else ""
            abi = record.abi if record else ""
            maps = record.maps if record else ()
            try:
                if p.strategy == "program_swap":
                    abi, maps = "", tuple(sorted(ids.items()))
                    set_id, swap_ms = self._program_swap(cfg, record, ids, p.cache_kept)
                else:
                    assert record is not None
                    swap_ms = self._write_config(cfg, self.pins.state_dir(record))
                self.fault("switched")
                # Attached before the commit point: the roots do not depend on the set, and
                # a refusal (say, native mode on a device without it) must fail the apply.
                attached = self._attach(cfg, record)
                cgroup = self._attach_bypass(cfg, record)
            except Exception as exc:
                self._back_to(previous, record)
                raise DataplaneError(_message(exc)) from exc
            programs = cfg.local_bypass.enabled if p.strategy == "program_swap" else \
                bool(record and record.bypass_programs)
            new = Record(version=cfg.version, shape=cfg.shape(), code=source.code_hash(),
                         abi=abi, set=set_id, interfaces=tuple(attached),
                         bypass_cgroup=cgroup, bypass_programs=programs, maps=maps)
            self._commit(new)
            self.fault("committed")
            self.pins.retire(new)
            return ApplyResult(strategy=p.strategy,
                               duration_ms=(time.perf_counter() - t0) * 1000,
                               swap_ms=swap_ms, cache_kept=p.cache_kept, reasons=p.reasons)

    def reconcile(self, cfg: Config) -> None:
        """Make the kernel match the pinned record of `cfg` after an agent died mid-apply:
        its config map, its program set in the dispatch slots, its attachments; leftovers of
        the interrupted apply (orphan sets and caches) go."""
        with self._change():
            record = self.pins.record()
            if record is None or record.version != cfg.version:
                raise DataplaneError("reconcile: the pinned record is not this version")
            self._write_config(cfg, self.pins.state_dir(record))
            if any(d.name != record.set for d in sets.pinned_dirs(self.pins)):
                # An interrupted program swap may have run its new ingress (and its cache)
                # for a while: writes then invalidated only that cache. Empty the recorded
                # one before its ingress is back: after, it would serve what those writes
                # replaced until the flush (test_failing_applies saw it, ~1 ms).
                self._flush(record, memcached_restarted=False)
            sets.switch(self.pins, record.set)
            self.pins.retire(record)
            self._commit(dataclasses.replace(record,
                                             interfaces=tuple(self._attach(cfg, record)),
                                             bypass_cgroup=self._attach_bypass(cfg, record)))

    def flush(self, *, memcached_restarted: bool = True) -> None:
        """Empty the cache: bump the generation, which kills every entry. When memcached
        restarted, also drop a pending delayed flush, which the new memcached does not have."""
        with self._change():
            self._flush(self.pins.record(), memcached_restarted=memcached_restarted)

    def teardown(self) -> None:
        """Detach from every interface and remove every pin."""
        with self._change():
            record = self.pins.record() if self.pins.root.exists() else None
            for entry in record.interfaces if record else ():
                try:
                    attach_mod.detach(entry)
                except Exception as exc:  # keep going: leave as little behind as possible
                    log.warning("detach %s: %s", entry.interface, exc)
            if record and record.bypass_cgroup:
                # Connections in the bypass stay linked until they close: with the pins gone
                # their sk_msg root finds no program set and leaves the bypass (root.c).
                try:
                    bypass.detach(self.pins, record.bypass_cgroup)
                except Exception as exc:
                    log.warning("detach the local bypass from %s: %s", record.bypass_cgroup,
                                exc)
            self.pins.remove_all()
            self._record = None

    def detach_interfaces(self) -> None:
        """Take the data plane off every interface, keeping its pins (and cache)."""
        with self._change():
            record = self.pins.record()
            if record is None:
                return
            for entry in record.interfaces:
                attach_mod.detach(entry)
            self._commit(dataclasses.replace(record, interfaces=()))

    def attach_interfaces(self, cfg: Config) -> None:
        """Put the data plane back on cfg's interfaces. Writes that passed while it was off
        were not seen, so the cache is emptied first."""
        with self._change():
            record = self.pins.record()
            if record is None:
                raise DataplaneError("nothing loaded to attach")
            self._flush(record, memcached_restarted=False)
            self._commit(dataclasses.replace(record,
                                             interfaces=tuple(self._attach(cfg, record))))

    # ------------------------------------------------------------------ program sets

    def load_set(self, cfg: Config) -> str:
        """Compile and load a program set for cfg without switching to it; returns its id.
        The caller switches to it (hold(id).switch_to()) or discards it."""
        with self._change():
            self.pins.ensure()
            return self._load_set(cfg, self.identities(cfg))

    def hold(self, set_id: str) -> HeldSet:
        """A loaded set, held open (it keeps working after its pins are retired)."""
        return HeldSet(self.pins, set_id)

    def discard(self, set_id: str) -> None:
        sets.discard(self.pins, set_id)

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _change(self) -> Iterator[None]:
        """One change at a time; readers see the snapshot while it runs."""
        with self._lock:
            if not self._depth:
                self._record = self.pins.record() if self.pins.root.exists() else None
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1

    def _commit(self, record: Record) -> None:
        self.pins.write_record(record)
        self._record = record

    def _load_set(self, cfg: Config, ids: dict[str, str]) -> str:
        """A program set on the store's maps of the identities it needs; the maps the store
        has none for are made by its compile and join the store."""
        set_id = sets.new_set_id()
        try:
            missing = self.pins.fill_view(set_id, ids)
            loaded = sets.load_set(self.pins, set_id, self.cflags(cfg, set_id), not missing,
                                   cfg.local_bypass.enabled)
            self.pins.store_view(set_id, {p: ids[p] for p in missing})
        except Exception:
            sets.discard(self.pins, set_id)
            raise
        self._layout = loaded.config_layout  # the same sources: no layout worker needed
        return loaded.id

    def _program_swap(self, cfg: Config, record: Record | None, ids: dict[str, str],
                      cache_kept: bool) -> tuple[str, float]:
        set_id = self._load_set(cfg, ids)
        switched = False
        try:
            self.fault("loaded")
            self._write_config(cfg, self.pins.view_dir(set_id))
            self.fault("config")
            with HeldSet(self.pins, set_id) as held:
                t0 = time.perf_counter()
                # Ingress first (see sets.switch).
                held.point("xdp_root_jmp")
                switched = True
                if not cache_kept:
                    # The writes the old ingress saw marked only the old cache: a GET the new
                    # ingress takes now may read, inside memcached, a value such a write is
                    # about to replace. Like a flush: no fill for GETs within fill_hold of
                    # now (the new cache is empty: its egress is not switched in yet).
                    self._flush_at(self.pins.view_dir(set_id), cfg.shape(),
                                   memcached_restarted=False)
                self.fault("ingress")
                held.point("msg_root_jmp")
                held.point("tc_in_root_jmp")
                held.point("tc_root_jmp")
                held.point("sock_root_jmp")
                swap_ms = (time.perf_counter() - t0) * 1000
        except Exception:
            if switched and record is not None:
                # The new ingress ran: writes since invalidated only its cache. The recorded
                # one is emptied before its ingress is back (as reconcile does), and it is
                # back before the new set's pins go.
                self._flush(record, memcached_restarted=False)
                sets.switch(self.pins, record.set)
            sets.discard(self.pins, set_id)
            raise
        return set_id, swap_ms

    def _write_config(self, cfg: Config, state: Path) -> float:
        """Map hot swap of the config (in the state maps at `state`), which names the
        counters' line of its version."""
        running = self._record.version if self._record else None
        slot = stats.assign(state, cfg.version, running)
        value = configmap.config_value(cfg, self.config_layout(), stats_slot=slot)
        return configmap.swap_in(state / "cfg", value)

    def _attach(self, cfg: Config, record: Record | None) -> list[Attachment]:
        have = {a.interface: a for a in (record.interfaces if record else ())}
        wanted = wanted_interfaces(cfg)
        names = {w.name for w in wanted}
        for name, old in have.items():
            if name not in names:
                attach_mod.detach(old)
        out: list[Attachment] = []
        for w in wanted:
            old = have.get(w.name)
            if old and old.requested == w.xdp_mode and attach_mod.xdp_attached(w.name):
                if not old.tc_ingress:  # attached by an agent from before the TC responder
                    with self.pins.open("tc_root") as tc, self.pins.open("tc_in_root") as tc_in:
                        attach_mod.attach_tc(w.name, tc, tc_in)
                out.append(dataclasses.replace(old, role=w.role, tc_ingress=True))
                continue
            if old:
                attach_mod.detach(old)
            with self.pins.open("xdp_root") as xdp, self.pins.open("tc_root") as tc, \
                    self.pins.open("tc_in_root") as tc_in:
                out.append(attach_mod.attach(w.name, w.xdp_mode, w.role, xdp, tc, tc_in))
        return out

    def _attach_bypass(self, cfg: Config, record: Record | None) -> str:
        """The sockops root on the cgroup cfg's local bypass names, off any other; returns
        where it is attached ("": nowhere). Off, it only stops new connections joining: the
        config map tells the ones in the bypass to leave."""
        want = str(cgroups.cgroup_dir(cfg.local_bypass.cgroup)) \
            if cfg.local_bypass.enabled else ""
        have = record.bypass_cgroup if record else ""
        if have and have != want:
            bypass.detach(self.pins, have)
        if want:
            bypass.attach(self.pins, want)
        return want

    def _back_to(self, previous: Config | None, record: Record | None) -> None:
        """After a failed apply: the kernel back to the recorded (running) version."""
        if previous is None or record is None or record.version != previous.version:
            return  # nothing recorded to go back to; the next agent start reconciles
        try:
            self.reconcile(previous)
        except Exception:
            log.exception("could not go back to version %s", previous.version)

    def _flush(self, record: Record | None, *, memcached_restarted: bool) -> None:
        if record is not None:
            self._flush_at(self.pins.state_dir(record), record.shape,
                           memcached_restarted=memcached_restarted)

    def _flush_at(self, state_dir: Path, shape: tuple[int, int, int], *,
                  memcached_restarted: bool) -> None:
        # A read-modify-write: a flush_all the kernel counts in between still bumps.
        state = state_dir / "state"
        if not state.exists():
            return
        raw = self.pins.read0(state, readings.STATE_BYTES) or bytes(readings.STATE_BYTES)
        gen = int.from_bytes(raw[:8], "little") + 1
        level = state_dir / level_pin(shape)
        if level.exists():  # the new generation's count starts at zero (mc_bump_gen)
            with self.pins.open(level) as fd:
                libbpf.map_update(fd, (gen & 1).to_bytes(4, "little"), bytes(8))
        flush_at = bytes(8) if memcached_restarted else raw[8:16]
        flush_ns = time.monotonic_ns().to_bytes(8, "little")  # = bpf_ktime_get_ns()
        self.pins.write0(state, gen.to_bytes(8, "little") + flush_at + flush_ns)


def _message(exc: Exception) -> str:
    if isinstance(exc, DataplaneError | sets.LoadError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"

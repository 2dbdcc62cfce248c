"""The pin directory: what outlives the agent, and the record of what is running.

    <pins>/meta                      the record (JSON in a one-element array map, see Record)
    <pins>/xdp_root, tc_root         the stable roots attached to the interfaces
    <pins>/xdp_root_jmp, tc_root_jmp their dispatch slots (one update = a program switch)
    <pins>/maps/<pin>@<identity>     the store of state maps (mcache_maps.h: stats, state, cfg,
                                     pending, conn, carry, capture_*, cache_<shape>, ...), each
                                     named by its own layout (identity.py)
    <pins>/views/<id>/<pin>          the state maps program set <id> was built against (its
                                     MC_STATE_DIR): second pins of the store's maps
    <pins>/sets/<id>/                one program set: xdp_main, xdp_jmp, tc_main, tc_jmp

Records written by agents before per-map identities (no `maps`) have their state maps in
<pins>/maps-<abi>/ (abi: a hash of the map headers), or in <pins> itself (abi ""); the next
program swap moves the data plane to the store, with maps made anew.
"""

from __future__ import annotations

import ctypes as ct
import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mcache_agent.dataplane import libbpf

META = "meta"
META_SIZE = 8192
# The state maps of records from before maps-<abi> directories, in <pins> itself.
STATE_MAPS = ("stats", "stat_slots", "stats_archive", "state", "cfg", "pending", "conn",
              "carry", "flush_why", "capture_ctl", "capture_lost", "capture_ring")
STORE = "maps"
VIEWS = "views"
ZERO = (0).to_bytes(4, "little")


class PinError(Exception):
    pass


@dataclass(frozen=True)
class Attachment:
    """One interface the roots are attached to."""

    interface: str
    requested: str  # the config's xdp_mode
    mode: str  # what the kernel took: native or generic
    role: str
    clsact_created: bool  # we made the clsact qdisc, so detaching removes it
    tc_ingress: bool = False  # the TC ingress root is attached too (agents before it: not)


@dataclass(frozen=True)
class Record:
    """What the kernel runs, written at an apply's commit point: an agent that adopts the
    pins runs this version."""

    version: int
    shape: tuple[int, int, int]
    code: str
    abi: str
    set: str
    interfaces: tuple[Attachment, ...] = field(default=())
    bypass_cgroup: str = ""  # where the local bypass's sockops root is attached ("": nowhere)
    bypass_programs: bool = False  # the set has the local bypass's programs (sock_bypass.c)
    # Each state map the set uses and its identity (identity.py), sorted by pin name; empty
    # in records from before per-map identities (their maps are in maps-<abi>).
    maps: tuple[tuple[str, str], ...] = ()

    @property
    def identities(self) -> dict[str, str]:
        return dict(self.maps)

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["shape"] = list(self.shape)
        doc["maps"] = dict(self.maps)
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Record:
        doc: dict[str, Any] = json.loads(raw)
        return cls(
            version=int(doc["version"]),
            shape=(int(doc["shape"][0]), int(doc["shape"][1]), int(doc["shape"][2])),
            code=str(doc.get("code", "")),
            abi=str(doc.get("abi", "")),
            set=str(doc["set"]),
            interfaces=tuple(
                Attachment(interface=i["interface"], requested=i["requested"], mode=i["mode"],
                           role=i["role"], clsact_created=bool(i.get("clsact_created")),
                           tc_ingress=bool(i.get("tc_ingress")))
                for i in doc.get("interfaces", [])
            ),
            bypass_cgroup=str(doc.get("bypass_cgroup", "")),
            bypass_programs=bool(doc.get("bypass_programs")),
            maps=tuple(sorted((str(k), str(v)) for k, v in doc.get("maps", {}).items())),
        )


def cache_pin(shape: tuple[int, int, int]) -> str:
    """The cache map of a shape, in its layout's state directory (MC_SHAPE in the C)."""
    e, k, v = shape
    return f"cache_{e}_{k}_{v}"


def level_pin(shape: tuple[int, int, int]) -> str:
    """The fill-level counters of that cache."""
    e, k, v = shape
    return f"level_{e}_{k}_{v}"


class PinDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        base = Path("/sys/fs/bpf")
        if not os.path.ismount(base):
            base.mkdir(parents=True, exist_ok=True)
            _mount_bpffs(base)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    # ------------------------------------------------------------ names

    def state_dir(self, record: Record) -> Path:
        """Where the record's program set finds its state maps by name (stats, cfg, ...)."""
        if record.maps:
            return self.view_dir(record.set)
        return self.root / f"maps-{record.abi}" if record.abi else self.root

    def set_dir(self, set_id: str) -> Path:
        return self.root / "sets" / set_id

    def view_dir(self, set_id: str) -> Path:
        return self.root / VIEWS / set_id

    def store_path(self, pin: str, ident: str) -> Path:
        return self.root / STORE / f"{pin}@{ident}"

    def fill_view(self, set_id: str, identities: dict[str, str]) -> list[str]:
        """Pin into a new set's view every state map of the store with the identity the set
        needs; returns the pins the store has none for (the set's compile makes them)."""
        view = self.view_dir(set_id)
        view.mkdir(parents=True, exist_ok=True, mode=0o700)
        missing = []
        for pin, ident in sorted(identities.items()):
            stored = self.store_path(pin, ident)
            if not stored.exists():
                missing.append(pin)
                continue
            with libbpf.opened(stored) as fd:
                self.pin(fd, view / pin)
        return missing

    def store_view(self, set_id: str, pins: dict[str, str]) -> None:
        """Put the maps a set's compile made (in its view) into the store."""
        for pin, ident in sorted(pins.items()):
            with self.open(self.view_dir(set_id) / pin) as fd:
                self.pin(fd, self.store_path(pin, ident))

    def has(self, rel: str | Path) -> bool:
        return (self.root / rel).exists()

    # ------------------------------------------------------------ objects

    def open(self, rel: str | Path) -> libbpf.Fd:
        path = self.root / rel
        try:
            return libbpf.opened(path)
        except OSError as exc:
            raise PinError(f"{path}: not pinned ({exc.strerror})") from None

    def pin(self, fd: int, rel: str | Path) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        libbpf.obj_pin(fd, path)

    def read0(self, rel: str | Path, size: int) -> bytes | None:
        """Element 0 of a pinned one-element map, or None."""
        with self.open(rel) as fd:
            return libbpf.map_lookup(fd, ZERO, size)

    def write0(self, rel: str | Path, data: bytes) -> None:
        """Replace element 0 of a pinned one-element map."""
        with self.open(rel) as fd:
            libbpf.map_update(fd, ZERO, data)

    # ------------------------------------------------------------ the record

    def record(self) -> Record | None:
        if not self.has(META):
            return None
        raw = (self.read0(META, META_SIZE) or b"").split(b"\0", 1)[0]
        return Record.from_json(raw) if raw else None

    def write_record(self, record: Record) -> None:
        data = record.to_json()
        if len(data) >= META_SIZE:
            raise PinError("the record is too large for its map")
        if not self.has(META):
            with libbpf.Fd(libbpf.map_create(libbpf.BPF_MAP_TYPE_ARRAY, "mc_meta", 4, META_SIZE,
                                             1)) as fd:
                self.pin(fd, META)
        self.write0(META, data.ljust(META_SIZE, b"\0"))

    # ------------------------------------------------------------ clean-up

    def retire(self, record: Record) -> None:
        """Unpin every program set, view, layout and cache that the record does not name."""
        for parent in (self.root / "sets", self.root / VIEWS):
            if parent.is_dir():
                for d in parent.iterdir():
                    if d.name != record.set:
                        shutil.rmtree(d, ignore_errors=True)
        keep = self.state_dir(record)
        for d in self.root.glob("maps-*"):
            if d != keep:
                shutil.rmtree(d, ignore_errors=True)
        if keep != self.root:  # the maps of a record from before maps-<abi> directories
            for name in STATE_MAPS:
                (self.root / name).unlink(missing_ok=True)
            for stale in (*self.root.glob("cache_*"), *self.root.glob("level_*")):
                stale.unlink(missing_ok=True)
        store = self.root / STORE
        named = {self.store_path(p, i).name for p, i in record.maps}
        if store.is_dir():
            for stale in store.iterdir():
                if stale.name not in named:
                    stale.unlink(missing_ok=True)
        if record.maps:
            return
        mine = {cache_pin(record.shape), level_pin(record.shape)}
        for stale in (*keep.glob("cache_*"), *keep.glob("level_*")):
            if stale.name not in mine:
                stale.unlink(missing_ok=True)

    def remove_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _mount_bpffs(base: Path) -> None:
    libc = ct.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", str(base).encode(), b"bpf", 0, None) != 0:
        err = ct.get_errno()
        if err != errno.EBUSY:
            raise PinError(f"cannot mount bpffs on {base}: {os.strerror(err)}")

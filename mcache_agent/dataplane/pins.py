"""The pin directory: what outlives the agent, and the record of what is running.

    <pins>/meta                      the record (JSON in a one-element array map, see Record)
    <pins>/xdp_root, tc_root         the stable roots attached to the interfaces
    <pins>/xdp_root_jmp, tc_root_jmp their dispatch slots (one update = a program switch)
    <pins>/maps-<abi>/               the state maps of one layout (mcache_maps.h): stats,
                                     stat_slots, stats_archive, state, cfg, pending, conn,
                                     capture_ctl, capture_lost, capture_ring, cache_<shape>,
                                     level_<shape>
    <pins>/sets/<id>/                one program set: xdp_main, xdp_jmp, tc_main, tc_jmp

A record written before layouts had their own directory (abi "") has its state maps in
<pins> itself; the next program swap moves the data plane to a maps-<abi> directory.
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
STATE_MAPS = ("stats", "stat_slots", "stats_archive", "state", "cfg", "pending", "conn",
              "capture_ctl", "capture_lost", "capture_ring")
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

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["shape"] = list(self.shape)
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

    def state_dir(self, abi: str) -> Path:
        return self.root / f"maps-{abi}" if abi else self.root

    def set_dir(self, set_id: str) -> Path:
        return self.root / "sets" / set_id

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
        """Unpin every program set, layout and cache that the record does not name."""
        sets = self.root / "sets"
        if sets.is_dir():
            for d in sets.iterdir():
                if d.name != record.set:
                    shutil.rmtree(d, ignore_errors=True)
        keep = self.state_dir(record.abi)
        for d in self.root.glob("maps-*"):
            if d != keep:
                shutil.rmtree(d, ignore_errors=True)
        if keep != self.root:  # the maps of a record from before maps-<abi> directories
            for name in STATE_MAPS:
                (self.root / name).unlink(missing_ok=True)
            for stale in (*self.root.glob("cache_*"), *self.root.glob("level_*")):
                stale.unlink(missing_ok=True)
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

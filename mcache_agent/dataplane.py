"""The agent's hold on the kernel: compile, load, pin, attach and hot-swap the data plane.

Everything that must outlive the agent is pinned under the bpffs directory: the state maps
(cache, counters, config, fill guard), the stable root programs and their dispatch prog
arrays, each program set's own prog arrays, and a small "meta" map that records what is
running (version, shape, interfaces). XDP is attached over netlink and TC through a clsact
filter; both outlive the process. So a SIGKILLed agent leaves the host serving, and the next
agent adopts the pins instead of reloading.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcache_agent import constants
from mcache_agent.config import Config, resolve_allowed_clients
from mcache_agent.dataplane_src import code_hash

log = logging.getLogger(__name__)

BPF_MAP_TYPE_ARRAY = 2
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
TC_EGRESS_PARENT = "ffff:fff3"
TC_PRIO = 0xC0DE & 0x7FFF
META_SIZE = 8192
STATE_BYTES = 24  # struct mc_state: gen, flush_at_ns, flush_ns



class DataplaneError(Exception):
    pass


@dataclass(frozen=True)
class ApplyResult:
    strategy: str
    duration_ms: float
    swap_ms: float
    cache_kept: bool


class _Libbpf:
    """libbpf through ctypes: the daemon needs a handful of syscall wrappers, not bcc's LLVM."""

    def __init__(self) -> None:
        lib = ct.CDLL("libbpf.so.1", use_errno=True)
        self.obj_get = lib.bpf_obj_get
        self.obj_get.argtypes = [ct.c_char_p]
        self.obj_pin = lib.bpf_obj_pin
        self.obj_pin.argtypes = [ct.c_int, ct.c_char_p]
        self.update = lib.bpf_map_update_elem
        self.update.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]
        self.lookup = lib.bpf_map_lookup_elem
        self.lookup.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
        self.map_create = lib.bpf_map_create
        self.map_create.argtypes = [
            ct.c_int, ct.c_char_p, ct.c_uint32, ct.c_uint32, ct.c_uint32, ct.c_void_p,
        ]
        self.xdp_attach = lib.bpf_xdp_attach
        self.xdp_attach.argtypes = [ct.c_int, ct.c_int, ct.c_uint32, ct.c_void_p]
        self.xdp_detach = lib.bpf_xdp_detach
        self.xdp_detach.argtypes = [ct.c_int, ct.c_uint32, ct.c_void_p]
        self.xdp_query_id = lib.bpf_xdp_query_id
        self.xdp_query_id.argtypes = [ct.c_int, ct.c_int, ct.POINTER(ct.c_uint32)]
        self.possible_cpus = lib.libbpf_num_possible_cpus


_LIB: _Libbpf | None = None


def _lib() -> _Libbpf:
    global _LIB
    if _LIB is None:
        _LIB = _Libbpf()
    return _LIB


def _errno(ret: int) -> str:
    # libbpf 1.x returns -errno, and sets errno too
    return os.strerror(-ret if ret < 0 and ret != -1 else ct.get_errno())


def _net_u32(addr: str) -> int:
    """An IPv4 address as the kernel reads it from a packet into a u32 on this host."""
    return int.from_bytes(socket.inet_aton(addr), "little")


def _net_u16(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def _possible_cpus() -> int:
    return int(_lib().possible_cpus())


def _link_kind(name: str) -> str:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.get_links(ipr.link_lookup(ifname=name))
        if not links:
            raise DataplaneError(f"interface {name} not found")
        info = links[0].get_attr("IFLA_LINKINFO")
        return (info.get_attr("IFLA_INFO_KIND") if info else None) or ""


class Dataplane:
    def __init__(self, bpffs: Path) -> None:
        self.pin = Path(bpffs)
        self._lock = threading.RLock()
        self._cfg_leaf: Any = None

    # ------------------------------------------------------------ pins

    def _p(self, name: str) -> bytes:
        return str(self.pin / name).encode()

    def _obj_get(self, name: str) -> int:
        fd = _lib().obj_get(self._p(name))
        if fd < 0:
            raise DataplaneError(f"{self.pin / name}: not pinned ({_errno(fd)})")
        return fd

    def _pin_fd(self, fd: int, name: str) -> None:
        path = self.pin / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        ret = _lib().obj_pin(fd, str(path).encode())
        if ret != 0:
            raise DataplaneError(f"cannot pin {path}: {_errno(ret)}")

    def _ensure_bpffs(self) -> None:
        base = Path("/sys/fs/bpf")
        if not os.path.ismount(base):
            base.mkdir(parents=True, exist_ok=True)
            _mount_bpffs(base)
        self.pin.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.pin, 0o700)

    # ------------------------------------------------------------ meta

    def _read(self, name: str, size: int) -> bytes | None:
        """Element 0 of a pinned single-element map, or None."""
        fd = self._obj_get(name)
        try:
            buf = ct.create_string_buffer(size)
            key = ct.c_uint32(0)
            return buf.raw if _lib().lookup(fd, ct.byref(key), buf) == 0 else None
        finally:
            os.close(fd)

    def _write(self, name: str, data: bytes) -> None:
        """Replace element 0 of a pinned single-element map."""
        fd = self._obj_get(name)
        try:
            key = ct.c_uint32(0)
            ret = _lib().update(fd, ct.byref(key), ct.create_string_buffer(data, len(data)), 0)
            if ret != 0:
                raise DataplaneError(f"cannot write {self.pin / name}: {_errno(ret)}")
        finally:
            os.close(fd)

    def meta(self) -> dict[str, Any] | None:
        if not (self.pin / "meta").exists():
            return None
        buf = self._read("meta", META_SIZE)
        raw = buf.split(b"\0", 1)[0] if buf else b""
        return json.loads(raw) if raw else None

    def _write_meta(self, meta: dict[str, Any]) -> None:
        data = json.dumps(meta, sort_keys=True).encode()
        if len(data) >= META_SIZE:
            raise DataplaneError("meta record too large")
        if not (self.pin / "meta").exists():
            fd = _lib().map_create(BPF_MAP_TYPE_ARRAY, b"mc_meta", 4, META_SIZE, 1, None)
            if fd < 0:
                raise DataplaneError(f"cannot create meta map: {os.strerror(ct.get_errno())}")
            self._pin_fd(fd, "meta")
            os.close(fd)
        self._write("meta", data.ljust(META_SIZE, b"\0"))

    # ------------------------------------------------------------ the agent contract

    def adopt(self) -> int | None:
        meta = self.meta()
        if not meta or not (self.pin / "xdp_root_jmp").exists():
            return None
        return int(meta["version"])

    def plan(self, cfg: Config, previous: Config | None) -> str:
        return self._plan(cfg, previous, self.meta(), code_hash())

    def _plan(
        self, cfg: Config, previous: Config | None, meta: dict[str, Any] | None, code: str
    ) -> str:
        if meta is None or meta.get("code") != code:
            return "program_swap"
        if list(cfg.shape()) != meta["shape"]:
            return "program_swap"
        if cfg.strategy in ("map_swap", "program_swap"):
            return cfg.strategy
        wanted = self._wanted_interfaces(cfg)
        have = {(i["interface"], i["requested"]) for i in meta.get("interfaces", [])}
        if {(n, m) for n, m, _ in wanted} != have:
            return "reattach"
        if previous is not None and _config_doc(previous) == _config_doc(cfg):
            return "none"
        return "map_swap"

    def apply(self, cfg: Config, previous: Config | None) -> ApplyResult:
        with self._lock:
            t0 = time.perf_counter()
            self._ensure_bpffs()
            meta = self.meta()
            code = code_hash()
            strategy = self._plan(cfg, previous, meta, code)
            if cfg.strategy == "map_swap" and meta and list(cfg.shape()) != meta["shape"]:
                raise DataplaneError(
                    "rollout.strategy map_swap cannot change the cache shape "
                    f"{meta['shape']} -> {list(cfg.shape())}: use auto or program_swap"
                )
            cache_kept = True
            set_id = (meta or {}).get("set")
            slot = (meta or {}).get("slot")
            try:
                if strategy == "program_swap":
                    swap_ms, cache_kept, set_id, slot = self._program_swap(cfg, meta)
                else:
                    swap_ms = self._write_config(cfg)
                _crash_point("switched")
                # Attached before the commit point: the roots do not depend on the set, and
                # a refusal (say, native mode on a device without it) must fail the apply.
                attached = self._attach(cfg, meta)
            except Exception as exc:
                self._back_to(previous, meta)
                if isinstance(exc, DataplaneError):
                    raise
                raise DataplaneError(f"{type(exc).__name__}: {exc}") from exc
            # The commit point: from here on an agent that adopts the pins runs this version.
            # What follows (retiring the old set) is redone by reconcile().
            record = {
                "version": cfg.version,
                "shape": list(cfg.shape()),
                "code": code,
                "set": set_id,
                "slot": slot,
                "interfaces": attached,
            }
            self._write_meta(record)
            _crash_point("committed")
            self._retire(record)
            return ApplyResult(
                strategy=strategy,
                duration_ms=(time.perf_counter() - t0) * 1000,
                swap_ms=swap_ms,
                cache_kept=cache_kept,
            )

    def _back_to(self, previous: Config | None, meta: dict[str, Any] | None) -> None:
        """After a failed apply: the kernel back to the recorded (running) version."""
        if previous is None or not meta or meta.get("version") != previous.version:
            return  # nothing recorded to go back to; the next agent start reconciles
        try:
            self.reconcile(previous)
        except Exception:
            log.exception("could not go back to version %s", previous.version)

    def reconcile(self, cfg: Config) -> None:
        """Make the kernel match the pinned record of `cfg` after an agent died mid-apply:
        its config map, its program set in the dispatch slots, its attachments; leftovers of
        the interrupted apply (orphan sets and caches) go."""
        with self._lock:
            meta = self.meta()
            if not meta or meta.get("version") != cfg.version:
                raise DataplaneError("reconcile: the pinned record is not this version")
            self._write_config(cfg)
            for jmp, entry in (("xdp_root_jmp", "xdp_main"), ("tc_root_jmp", "tc_main")):
                self._point_root(jmp, f"sets/{meta['set']}/{entry}")
            sets = self.pin / "sets"
            if sets.is_dir() and any(d.name != meta["set"] for d in sets.iterdir()):
                # An interrupted program swap may have run its new ingress (and its cache) for
                # a while: writes then invalidated only that cache. Empty them all.
                self.flush(memcached_restarted=False)
            self._retire(meta)
            meta["interfaces"] = self._attach(cfg, meta)
            self._write_meta(meta)

    def _retire(self, record: dict[str, Any]) -> None:
        """Unpin every program set and cache that the record does not name."""
        sets = self.pin / "sets"
        if sets.is_dir():
            for d in sets.iterdir():
                if d.name != record["set"]:
                    shutil.rmtree(d, ignore_errors=True)
        keep = _cache_pin(record["shape"])
        for c in self.pin.glob("cache_*"):
            if c.name != keep:
                c.unlink(missing_ok=True)

    def counters(self) -> dict[str, int]:
        names = constants.verdicts()
        if not (self.pin / "stats").exists():
            return {n: 0 for n in names}
        ncpu = _possible_cpus()
        fd = self._obj_get("stats")
        out: dict[str, int] = {}
        try:
            vals = (ct.c_uint64 * ncpu)()
            for i, name in enumerate(names):
                key = ct.c_uint32(i)
                if _lib().lookup(fd, ct.byref(key), vals) != 0:
                    out[name] = 0
                    continue
                out[name] = int(sum(vals))
        finally:
            os.close(fd)
        return out

    def cache_usage(self) -> tuple[int, int]:
        meta = self.meta()
        if not meta:
            return (0, 0)
        entries = meta["shape"][0]
        slot = meta["slot"]
        name = _cache_pin(meta["shape"])
        if not (self.pin / name).exists():
            return (entries, 0)
        gen = self._gen()
        fd = self._obj_get(name)
        used = 0
        try:
            buf = ct.create_string_buffer(slot["size"])
            for i in range(entries):
                key = ct.c_uint32(i)
                if _lib().lookup(fd, ct.byref(key), buf) != 0:
                    continue
                valid = int.from_bytes(buf.raw[slot["valid"] : slot["valid"] + 4], "little")
                sgen = int.from_bytes(buf.raw[slot["gen"] : slot["gen"] + 8], "little")
                used += 1 if valid and sgen == gen else 0
        finally:
            os.close(fd)
        return (entries, used)

    def attached(self) -> list[dict[str, Any]]:
        meta = self.meta() or {}
        return [
            {"interface": i["interface"], "mode": i["mode"], "role": i["role"]}
            for i in meta.get("interfaces", [])
        ]

    def flush(self, *, memcached_restarted: bool = True) -> None:
        """Empty the cache: bump the generation, which kills every entry. When memcached
        restarted, also drop a pending delayed flush, which the new memcached does not have.
        A read-modify-write: a flush_all the kernel counts in between still bumps."""
        if not (self.pin / "state").exists():
            return
        state = self._read("state", STATE_BYTES) or bytes(STATE_BYTES)
        gen = int.from_bytes(state[:8], "little") + 1
        flush_at = bytes(8) if memcached_restarted else state[8:16]
        flush_ns = time.monotonic_ns().to_bytes(8, "little")  # = bpf_ktime_get_ns()
        self._write("state", gen.to_bytes(8, "little") + flush_at + flush_ns)

    def teardown(self) -> None:
        with self._lock:
            meta = self.meta() or {}
            for i in meta.get("interfaces", []):
                try:
                    self._detach_one(i)
                except Exception as exc:  # keep going: leave as little behind as possible
                    log.warning("detach %s: %s", i["interface"], exc)
            if self.pin.exists():
                shutil.rmtree(self.pin, ignore_errors=True)

    # ------------------------------------------------------------ internals

    def _gen(self) -> int:
        return int.from_bytes((self._read("state", STATE_BYTES) or bytes(8))[:8], "little")

    def _cflags(self, cfg: Config | None) -> list[str]:
        flags = [f'-DMC_PIN_DIR="{self.pin}"', "-Wno-unused-function"]
        # Test builds only (e.g. -DMC_TEST_NO_FILL_GUARD in tests/correctness).
        flags += os.environ.get("MCACHE_EXTRA_CFLAGS", "").split()
        if cfg is not None:
            e, k, v = cfg.shape()
            flags += [
                f"-DMC_CACHE_ENTRIES={e}",
                f"-DMC_MAX_KEY={k}",
                f"-DMC_MAX_VALUE={v}",
                f'-DMC_SHAPE="{e}_{k}_{v}"',
            ]
        return flags

    def _config_layout(self) -> dict[str, Any]:
        if self._cfg_leaf is None:
            self._cfg_leaf = self._worker("layout")[0]["config"]
        return self._cfg_leaf

    def _config_value(self, cfg: Config) -> bytes:
        c = cfg.cache
        prefix = c.key_prefix.encode()
        # The host itself (probe, local clients over lo) may always read from the cache.
        nets = [*resolve_allowed_clients(cfg), f"{cfg.memcached.address}/32", "127.0.0.0/8"]
        nets = list(dict.fromkeys(nets))[: constants.const("MC_MAX_ALLOWED")]
        allowed = []
        for net in nets:
            n = ipaddress.IPv4Network(net, strict=False)
            allowed.append(
                {"addr": _net_u32(str(n.network_address)), "mask": _net_u32(str(n.netmask))}
            )
        serve = [
            socket.if_nametoindex(name)
            for name, _, role in self._wanted_interfaces(cfg)
            if role == "serve"
        ]
        proto = (constants.const("MC_PROTO_ASCII") if "ascii" in c.protocols else 0) | (
            constants.const("MC_PROTO_BINARY") if "binary" in c.protocols else 0
        )
        values = {
            "version": cfg.version,
            "enabled": 1 if c.enabled else 0,
            "ttl_ns": c.ttl_ms * 1_000_000,
            "fill_hold_ns": c.fill_hold_ms * 1_000_000,
            "server_addr": _net_u32(cfg.memcached.address),
            "port": _net_u16(cfg.memcached.port),
            "protocols": proto,
            "prefix_len": len(prefix),
            "prefix": list(prefix),
            "n_allowed": len(allowed),
            "allowed": allowed,
            "serve_ifindex": serve,
            # bpf_ktime_get_ns() is CLOCK_MONOTONIC
            "unix_offset_ns": time.time_ns() - time.monotonic_ns(),
            "probe_hash": fnv1a(cfg.probe_key.encode()),
        }
        return pack(self._config_layout(), values)

    def _write_config(self, cfg: Config) -> float:
        """Map hot swap: a fresh inner config map, filled, then put into slot 0 in one update."""
        leaf = self._config_value(cfg)
        inner = _lib().map_create(BPF_MAP_TYPE_ARRAY, b"mc_cfg", 4, len(leaf), 1, None)
        if inner < 0:
            raise DataplaneError(f"cannot create config map: {os.strerror(ct.get_errno())}")
        outer = self._obj_get("cfg")
        try:
            key = ct.c_int(0)
            value = ct.create_string_buffer(bytes(leaf), len(leaf))
            if _lib().update(inner, ct.byref(key), value, 0) != 0:
                raise DataplaneError(f"cannot fill config map: {os.strerror(ct.get_errno())}")
            val = ct.c_int(inner)
            with _expedited_grace_period():
                t0 = time.perf_counter()
                ret = _lib().update(outer, ct.byref(key), ct.byref(val), 0)
                swap_ms = (time.perf_counter() - t0) * 1000
            if ret != 0:
                raise DataplaneError(f"config map swap refused: {os.strerror(ct.get_errno())}")
            return swap_ms
        finally:
            os.close(inner)
            os.close(outer)

    def _worker(self, *kinds: str, cflags: list[str] | None = None, set_id: str = "") -> list[Any]:
        """Run loader workers (in parallel) and return their JSON results, in order."""
        procs = []
        for kind in kinds:
            argv = [sys.executable, "-m", "mcache_agent.loader", kind, "--bpffs", str(self.pin)]
            if set_id:
                argv += ["--set", set_id]
            for f in cflags or []:
                argv.append(f"--cflag={f}")
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        results, errors = [], []
        for kind, proc in zip(kinds, procs, strict=True):
            out, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                errors.append(f"{kind}: {err.strip() or f'exit {proc.returncode}'}")
                continue
            results.append(json.loads(out.strip().splitlines()[-1]))
        if errors:
            raise DataplaneError("; ".join(errors))
        return results

    def _program_swap(
        self, cfg: Config, meta: dict[str, Any] | None
    ) -> tuple[float, bool, str, dict[str, int]]:
        set_id = str(time.time_ns())
        set_dir = self.pin / "sets" / set_id
        switched = False
        try:
            cflags = self._cflags(cfg)
            kinds = ["xdp", "tc"]
            if not ((self.pin / "xdp_root").exists() and (self.pin / "tc_root").exists()):
                kinds.append("root")
            shared = (self.pin / _cache_pin(cfg.shape()), self.pin / "conn")
            if not all(p.exists() for p in shared):
                # The first to compile creates and pins the shared maps; two racing workers
                # would both try. Later sets find them pinned and compile in parallel.
                (xdp,) = self._worker("xdp", cflags=cflags, set_id=set_id)
                self._worker(*kinds[1:], cflags=cflags, set_id=set_id)
            else:
                xdp, *_ = self._worker(*kinds, cflags=cflags, set_id=set_id)
            _crash_point("loaded")
            self._write_config(cfg)
            _crash_point("config")
            t0 = time.perf_counter()
            # Ingress first: while the old egress still runs it fills only the old cache,
            # which nobody reads any more; the reverse order could fill the new cache with
            # a value whose write only the old ingress saw.
            self._point_root("xdp_root_jmp", f"sets/{set_id}/xdp_main")
            switched = True
            _crash_point("ingress")
            self._point_root("tc_root_jmp", f"sets/{set_id}/tc_main")
            swap_ms = (time.perf_counter() - t0) * 1000
        except Exception as exc:
            if switched and meta and meta.get("set"):
                # Back to the running set before its replacement's pins go.
                old = meta["set"]
                self._point_root("xdp_root_jmp", f"sets/{old}/xdp_main")
                self._point_root("tc_root_jmp", f"sets/{old}/tc_main")
            shutil.rmtree(set_dir, ignore_errors=True)
            raise DataplaneError(f"program set not loaded: {exc}") from exc
        cache_kept = bool(meta) and list(cfg.shape()) == meta["shape"]
        return swap_ms, cache_kept, set_id, xdp["slot"]

    def _point_root(self, jmp: str, prog_pin: str) -> None:
        """Switch a root's dispatch slot to a pinned program: one map update."""
        fd = self._obj_get(prog_pin)
        try:
            self._set_root(jmp, fd)
        finally:
            os.close(fd)

    def _set_root(self, jmp: str, prog_fd: int) -> None:
        self._write(jmp, prog_fd.to_bytes(4, "little"))

    def _wanted_interfaces(self, cfg: Config) -> list[tuple[str, str, str]]:
        """(name, requested mode, role). lo is always watched and served: a client on this
        host (the probe among them) reaches memcached through it."""
        out = [(i.name, i.xdp_mode, "serve") for i in cfg.interfaces]
        if "lo" not in {i.name for i in cfg.interfaces}:
            out.append(("lo", "generic", "serve"))
        return out

    def _attach(self, cfg: Config, meta: dict[str, Any] | None) -> list[dict[str, Any]]:
        have = {i["interface"]: i for i in (meta or {}).get("interfaces", [])}
        out: list[dict[str, Any]] = []
        wanted = self._wanted_interfaces(cfg)
        names = {n for n, _, _ in wanted}
        for name, old in have.items():
            if name not in names:
                self._detach_one(old)
        for name, requested, role in wanted:
            old = have.get(name)
            if old and old["requested"] == requested and _xdp_attached(name):
                out.append({**old, "role": role})
                continue
            if old:
                self._detach_one(old)
            mode = self._attach_xdp(name, requested)
            clsact = self._attach_tc(name)
            out.append(
                {
                    "interface": name,
                    "requested": requested,
                    "mode": mode,
                    "role": role,
                    "clsact_created": clsact,
                }
            )
        return out

    def _attach_xdp(self, name: str, requested: str) -> str:
        fd = self._obj_get("xdp_root")
        ifindex = socket.if_nametoindex(name)
        try:
            mode = requested
            if requested == "auto":
                # Native XDP_TX on a veth drops every reply unless the peer runs XDP too,
                # and lo has no native mode: both get generic.
                mode = "generic" if name == "lo" or _link_kind(name) == "veth" else "native"
            if mode == "native":
                ret = _lib().xdp_attach(ifindex, fd, XDP_FLAGS_DRV_MODE, None)
                if ret == 0:
                    return "native"
                if requested == "native":
                    raise DataplaneError(f"{name}: native XDP refused: {_errno(ret)}")
            ret = _lib().xdp_attach(ifindex, fd, XDP_FLAGS_SKB_MODE, None)
            if ret != 0:
                raise DataplaneError(f"{name}: generic XDP refused: {_errno(ret)}")
            return "generic"
        finally:
            os.close(fd)

    def _attach_tc(self, name: str) -> bool:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        fd = self._obj_get("tc_root")
        try:
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=name)[0]
                created = True
                try:
                    ipr.tc("add", "clsact", idx)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
                    created = False
                ipr.tc(
                    "replace-filter",
                    "bpf",
                    idx,
                    fd=fd,
                    name="mcache_tc_root",
                    parent=TC_EGRESS_PARENT,
                    prio=TC_PRIO,
                    protocol=0x0003,  # ETH_P_ALL
                    direct_action=True,
                )
                return created
        finally:
            os.close(fd)

    def _detach_one(self, entry: dict[str, Any]) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        name = entry["interface"]
        flags = XDP_FLAGS_DRV_MODE if entry.get("mode") == "native" else XDP_FLAGS_SKB_MODE
        try:
            ret = _lib().xdp_detach(socket.if_nametoindex(name), flags, None)
            if ret != 0:
                log.warning("remove xdp from %s: %s", name, _errno(ret))
        except OSError as exc:
            log.warning("remove xdp from %s: %s", name, exc)
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                return
            idx = found[0]
            try:
                if entry.get("clsact_created"):
                    ipr.tc("del", "clsact", idx)
                else:
                    ipr.tc("del-filter", "bpf", idx, parent=TC_EGRESS_PARENT, prio=TC_PRIO,
                           protocol=0x0003)
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.EINVAL):
                    raise


def fnv1a(data: bytes) -> int:
    """The data plane's key hash (mc_hash in bpf/mcache_parse.h)."""
    h = constants.const("MC_FNV_OFFSET")
    for b in data:
        h = ((h ^ b) * constants.const("MC_FNV_PRIME")) & 0xFFFFFFFF
    return h


def _crash_point(step: str) -> None:
    """Fault injection for the kill tests: MCACHE_CRASH_AT=<step> SIGKILLs the agent there."""
    if os.environ.get("MCACHE_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _cache_pin(shape: list[int] | tuple[int, ...]) -> str:
    e, k, v = shape
    return f"cache_{e}_{k}_{v}"


def _config_doc(cfg: Config) -> tuple[Any, ...]:
    return (cfg.version, cfg.memcached, cfg.interfaces, cfg.cache, cfg.strategy)


def _xdp_attached(name: str) -> bool:
    try:
        ifindex = socket.if_nametoindex(name)
    except OSError:
        return False
    prog_id = ct.c_uint32(0)
    return _lib().xdp_query_id(ifindex, 0, ct.byref(prog_id)) == 0 and prog_id.value != 0


RCU_EXPEDITED = Path("/sys/kernel/rcu_expedited")


@contextlib.contextmanager
def _expedited_grace_period() -> Iterator[None]:
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


def _mount_bpffs(base: Path) -> None:
    libc = ct.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", str(base).encode(), b"bpf", 0, None) != 0:
        err = ct.get_errno()
        if err != errno.EBUSY:
            raise DataplaneError(f"cannot mount bpffs on {base}: {os.strerror(err)}")


def pack(layout: dict[str, Any], value: Any) -> bytes:
    """Bytes of a C value from its layout (see loader.ctype_layout): ints little-endian,
    arrays from lists or bytes, structs from dicts; whatever is not given is zero."""
    buf = bytearray(layout["size"])
    _pack_into(buf, 0, layout, value)
    return bytes(buf)


def _pack_into(buf: bytearray, off: int, layout: dict[str, Any], value: Any) -> None:
    kind = layout["kind"]
    if kind == "int":
        buf[off : off + layout["size"]] = int(value).to_bytes(layout["size"], "little")
    elif kind == "array":
        elem = layout["elem"]
        if len(value) > layout["length"]:
            raise DataplaneError(f"{len(value)} items for an array of {layout['length']}")
        for i, v in enumerate(value):
            _pack_into(buf, off + i * elem["size"], elem, v)
    else:
        for name, v in value.items():
            f = layout["fields"][name]
            _pack_into(buf, off + f["offset"], f, v)

"""The agent's hold on the kernel: compile, load, pin, attach and hot-swap the data plane.

Everything that must outlive the agent is pinned under the bpffs directory: the state maps
(cache, counters, config, fill guard), the stable root programs and their dispatch prog
arrays, each program set's own prog arrays, and a small "meta" map that records what is
running (version, shape, interfaces). XDP is attached over netlink and TC through a clsact
filter; both outlive the process. So a SIGKILLed agent leaves the host serving, and the next
agent adopts the pins instead of reloading.
"""

from __future__ import annotations

import ctypes as ct
import errno
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcache_agent import constants
from mcache_agent.config import Config, resolve_allowed_clients

log = logging.getLogger(__name__)

BPF_MAP_TYPE_ARRAY = 2
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
TC_EGRESS_PARENT = "ffff:fff3"
TC_PRIO = 0xC0DE & 0x7FFF
META_SIZE = 8192

XDP_PROGS = ("xdp_main", "xdp_get_key", "xdp_reply", "xdp_scan", "xdp_get_parse")
TC_PROGS = ("tc_main", "tc_fill_item")
XDP_TAILS = {
    "xdp_get_key": "MC_TAIL_GET_KEY",
    "xdp_reply": "MC_TAIL_REPLY",
    "xdp_scan": "MC_TAIL_SCAN",
    "xdp_get_parse": "MC_TAIL_GET_PARSE",
}
TC_TAILS = {"tc_fill_item": "MC_TAIL_FILL_ITEM"}


class DataplaneError(Exception):
    pass


@dataclass(frozen=True)
class ApplyResult:
    strategy: str
    duration_ms: float
    swap_ms: float
    cache_kept: bool


def _bcc() -> Any:
    import bcc  # imported late: bcc pulls in LLVM (~130 MB), which status and validate never need

    return bcc


def _lib() -> Any:
    return _bcc().libbcc.lib


def inline_source(path: Path, seen: set[Path] | None = None) -> str:
    """The C file with its local includes pasted in: bcc rewrites map calls
    (table.lookup(), .call()) only in the main file, not in included headers."""
    seen = set() if seen is None else seen
    out: list[str] = []
    for line in path.read_text().splitlines(keepends=True):
        m = re.match(r'#include "(.+)"', line)
        if m:
            inc = path.parent / m.group(1)
            if inc not in seen:
                seen.add(inc)
                out.append(inline_source(inc, seen))
            continue
        out.append(line)
    return "".join(out)


def code_hash() -> str:
    h = hashlib.sha256()
    for f in sorted(constants.source("x").parent.glob("*.[ch]")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _net_u32(addr: str) -> int:
    """An IPv4 address as the kernel reads it from a packet into a u32 on this host."""
    return int.from_bytes(socket.inet_aton(addr), "little")


def _net_u16(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def _possible_cpus() -> int:
    from bcc.utils import get_possible_cpus

    return len(get_possible_cpus())


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
        self._keep: list[Any] = []  # BPF objects of the running set (their fds)

    # ------------------------------------------------------------ pins

    def _p(self, name: str) -> bytes:
        return str(self.pin / name).encode()

    def _obj_get(self, name: str) -> int:
        fd = _lib().bpf_obj_get(self._p(name))
        if fd < 0:
            raise DataplaneError(f"{self.pin / name}: not pinned ({os.strerror(ct.get_errno())})")
        return fd

    def _pin_fd(self, fd: int, name: str) -> None:
        path = self.pin / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        if _lib().bpf_obj_pin(fd, str(path).encode()) != 0:
            raise DataplaneError(f"cannot pin {path}: {os.strerror(ct.get_errno())}")

    def _ensure_bpffs(self) -> None:
        base = Path("/sys/fs/bpf")
        if not os.path.ismount(base):
            base.mkdir(parents=True, exist_ok=True)
            _mount_bpffs(base)
        self.pin.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.pin, 0o700)

    # ------------------------------------------------------------ meta

    def meta(self) -> dict[str, Any] | None:
        if not (self.pin / "meta").exists():
            return None
        fd = self._obj_get("meta")
        try:
            buf = ct.create_string_buffer(META_SIZE)
            key = ct.c_int(0)
            if _lib().bpf_lookup_elem(fd, ct.byref(key), buf) != 0:
                return None
            raw = buf.raw.split(b"\0", 1)[0]
            return json.loads(raw) if raw else None
        finally:
            os.close(fd)

    def _write_meta(self, meta: dict[str, Any]) -> None:
        data = json.dumps(meta, sort_keys=True).encode()
        if len(data) >= META_SIZE:
            raise DataplaneError("meta record too large")
        if not (self.pin / "meta").exists():
            fd = _lib().bcc_create_map(BPF_MAP_TYPE_ARRAY, b"mc_meta", 4, META_SIZE, 1, 0)
            if fd < 0:
                raise DataplaneError(f"cannot create meta map: {os.strerror(ct.get_errno())}")
            self._pin_fd(fd, "meta")
            os.close(fd)
        fd = self._obj_get("meta")
        try:
            buf = ct.create_string_buffer(data, META_SIZE)
            key = ct.c_int(0)
            if _lib().bpf_update_elem(fd, ct.byref(key), buf, 0) != 0:
                raise DataplaneError(f"cannot write meta: {os.strerror(ct.get_errno())}")
        finally:
            os.close(fd)

    # ------------------------------------------------------------ the agent contract

    def adopt(self) -> int | None:
        meta = self.meta()
        if not meta or not (self.pin / "xdp_root_jmp").exists():
            return None
        return int(meta["version"])

    def plan(self, cfg: Config, previous: Config | None) -> str:
        meta = self.meta()
        if meta is None or meta.get("code") != code_hash():
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
            strategy = self.plan(cfg, previous)
            if cfg.strategy == "map_swap" and meta and list(cfg.shape()) != meta["shape"]:
                raise DataplaneError(
                    "rollout.strategy map_swap cannot change the cache shape "
                    f"{meta['shape']} -> {list(cfg.shape())}: use auto or program_swap"
                )
            cache_kept = True
            swap_ms = 0.0
            if strategy == "program_swap":
                swap_ms, cache_kept = self._program_swap(cfg, meta)
            else:
                swap_ms = self._write_config(cfg)
            attached = self._attach(cfg, meta)
            self._write_meta(
                {
                    "version": cfg.version,
                    "shape": list(cfg.shape()),
                    "code": code_hash(),
                    "set": (meta or {}).get("set") if strategy != "program_swap" else self._set,
                    "interfaces": attached,
                    "slot": self._slot_layout if strategy == "program_swap" else meta["slot"],
                }
            )
            return ApplyResult(
                strategy=strategy,
                duration_ms=(time.perf_counter() - t0) * 1000,
                swap_ms=swap_ms,
                cache_kept=cache_kept,
            )

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
                if _lib().bpf_lookup_elem(fd, ct.byref(key), vals) != 0:
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
                if _lib().bpf_lookup_elem(fd, ct.byref(key), buf) != 0:
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

    def flush(self) -> None:
        """Empty the cache: bump the generation (entries of older generations are dead)."""
        if not (self.pin / "state").exists():
            return
        fd = self._obj_get("state")
        try:
            buf = ct.create_string_buffer(16)
            key = ct.c_uint32(0)
            _lib().bpf_lookup_elem(fd, ct.byref(key), buf)
            gen = int.from_bytes(buf.raw[:8], "little") + 1
            new = ct.create_string_buffer(gen.to_bytes(8, "little") + buf.raw[8:16], 16)
            _lib().bpf_update_elem(fd, ct.byref(key), new, 0)
        finally:
            os.close(fd)

    def teardown(self) -> None:
        with self._lock:
            meta = self.meta() or {}
            for i in meta.get("interfaces", []):
                try:
                    self._detach_one(i)
                except Exception as exc:  # keep going: leave as little behind as possible
                    log.warning("detach %s: %s", i["interface"], exc)
            self._keep.clear()
            if self.pin.exists():
                shutil.rmtree(self.pin, ignore_errors=True)

    # ------------------------------------------------------------ internals

    def _gen(self) -> int:
        fd = self._obj_get("state")
        try:
            buf = ct.create_string_buffer(16)
            key = ct.c_uint32(0)
            _lib().bpf_lookup_elem(fd, ct.byref(key), buf)
            return int.from_bytes(buf.raw[:8], "little")
        finally:
            os.close(fd)

    def _cflags(self, cfg: Config | None) -> list[str]:
        flags = [f'-DMC_PIN_DIR="{self.pin}"', "-Wno-unused-function"]
        if cfg is not None:
            e, k, v = cfg.shape()
            flags += [
                f"-DMC_CACHE_ENTRIES={e}",
                f"-DMC_MAX_KEY={k}",
                f"-DMC_MAX_VALUE={v}",
                f'-DMC_SHAPE="{e}_{k}_{v}"',
            ]
        return flags

    def _config_leaf_type(self) -> Any:
        if self._cfg_leaf is None:
            bcc = _bcc()
            text = inline_source(constants.source("mcache_shared.h")) + (
                "\nBPF_ARRAY(mc_cfg_layout, struct mc_config, 1);\n"
            )
            b = bcc.BPF(text=text)
            self._cfg_leaf = b["mc_cfg_layout"].Leaf
        return self._cfg_leaf

    def _config_value(self, cfg: Config) -> Any:
        leaf = self._config_leaf_type()()
        c = cfg.cache
        leaf.version = cfg.version
        leaf.enabled = 1 if c.enabled else 0
        leaf.ttl_ns = c.ttl_ms * 1_000_000
        leaf.fill_hold_ns = c.fill_hold_ms * 1_000_000
        leaf.server_addr = _net_u32(cfg.memcached.address)
        leaf.port = _net_u16(cfg.memcached.port)
        leaf.protocols = (constants.const("MC_PROTO_ASCII") if "ascii" in c.protocols else 0) | (
            constants.const("MC_PROTO_BINARY") if "binary" in c.protocols else 0
        )
        prefix = c.key_prefix.encode()
        leaf.prefix_len = len(prefix)
        for i, b in enumerate(prefix):
            leaf.prefix[i] = b
        # The host itself (probe, local clients over lo) may always read from the cache.
        nets = [*resolve_allowed_clients(cfg), f"{cfg.memcached.address}/32", "127.0.0.0/8"]
        nets = list(dict.fromkeys(nets))[: constants.const("MC_MAX_ALLOWED")]
        leaf.n_allowed = len(nets)
        for i, net in enumerate(nets):
            n = ipaddress.IPv4Network(net, strict=False)
            leaf.allowed[i].addr = _net_u32(str(n.network_address))
            leaf.allowed[i].mask = _net_u32(str(n.netmask))
        for i, (name, _, role) in enumerate(self._wanted_interfaces(cfg)):
            if role == "serve":
                leaf.serve_ifindex[i] = socket.if_nametoindex(name)
        return leaf

    def _write_config(self, cfg: Config) -> float:
        """Map hot swap: a fresh inner config map, filled, then put into slot 0 in one update."""
        leaf = self._config_value(cfg)
        inner = _lib().bcc_create_map(BPF_MAP_TYPE_ARRAY, b"mc_cfg", 4, ct.sizeof(leaf), 1, 0)
        if inner < 0:
            raise DataplaneError(f"cannot create config map: {os.strerror(ct.get_errno())}")
        outer = self._obj_get("cfg")
        try:
            key = ct.c_int(0)
            if _lib().bpf_update_elem(inner, ct.byref(key), ct.byref(leaf), 0) != 0:
                raise DataplaneError(f"cannot fill config map: {os.strerror(ct.get_errno())}")
            val = ct.c_int(inner)
            t0 = time.perf_counter()
            if _lib().bpf_update_elem(outer, ct.byref(key), ct.byref(val), 0) != 0:
                raise DataplaneError(f"config map swap refused: {os.strerror(ct.get_errno())}")
            return (time.perf_counter() - t0) * 1000
        finally:
            os.close(inner)
            os.close(outer)

    def _program_swap(self, cfg: Config, meta: dict[str, Any] | None) -> tuple[float, bool]:
        bcc = _bcc()
        set_id = str(time.time_ns())
        self._set = set_id
        cflags = self._cflags(cfg)
        created: list[str] = []
        try:
            xdp = bcc.BPF(text=inline_source(constants.source("xdp_ingress.c")), cflags=cflags)
            tc = bcc.BPF(text=inline_source(constants.source("tc_egress.c")), cflags=cflags)
            xfn = {n: xdp.load_func(n, bcc.BPF.XDP) for n in XDP_PROGS}
            tfn = {n: tc.load_func(n, bcc.BPF.SCHED_CLS) for n in TC_PROGS}
            for name, idx in XDP_TAILS.items():
                xdp["mc_xdp_jmp"][ct.c_int(constants.const(idx))] = ct.c_int(xfn[name].fd)
            for name, idx in TC_TAILS.items():
                tc["mc_tc_jmp"][ct.c_int(constants.const(idx))] = ct.c_int(tfn[name].fd)
            # A prog array empties when its last user reference goes: pin it.
            self._pin_fd(xdp["mc_xdp_jmp"].get_fd(), f"sets/{set_id}/xdp_jmp")
            self._pin_fd(tc["mc_tc_jmp"].get_fd(), f"sets/{set_id}/tc_jmp")
            self._pin_fd(xfn["xdp_main"].fd, f"sets/{set_id}/xdp_main")
            self._pin_fd(tfn["tc_main"].fd, f"sets/{set_id}/tc_main")
            created.append(f"sets/{set_id}")
            leaf_t = xdp["mc_cache"].Leaf
            self._slot_layout = {
                "size": ct.sizeof(leaf_t),
                "valid": leaf_t.valid.offset,
                "gen": leaf_t.gen.offset,
            }
            self._write_config(cfg)
            self._ensure_roots()
            t0 = time.perf_counter()
            # Ingress first: while the old egress still runs it fills only the old cache,
            # which nobody reads any more; the reverse order could fill the new cache with
            # a value whose write only the old ingress saw.
            self._set_root("xdp_root_jmp", xfn["xdp_main"].fd)
            self._set_root("tc_root_jmp", tfn["tc_main"].fd)
            swap_ms = (time.perf_counter() - t0) * 1000
        except Exception as exc:
            for c in created:
                shutil.rmtree(self.pin / c, ignore_errors=True)
            raise DataplaneError(f"program set not loaded: {exc}") from exc
        self._keep = [xdp, tc]
        cache_kept = bool(meta) and list(cfg.shape()) == meta["shape"]
        # Retire the old set and, if the shape changed, the old cache.
        if meta and meta.get("set"):
            shutil.rmtree(self.pin / "sets" / meta["set"], ignore_errors=True)
        if meta and list(cfg.shape()) != meta["shape"]:
            (self.pin / _cache_pin(meta["shape"])).unlink(missing_ok=True)
        return swap_ms, cache_kept

    def _ensure_roots(self) -> None:
        if (self.pin / "xdp_root").exists() and (self.pin / "tc_root").exists():
            return
        bcc = _bcc()
        root = bcc.BPF(text=inline_source(constants.source("root.c")), cflags=self._cflags(None))
        x = root.load_func("xdp_root", bcc.BPF.XDP)
        t = root.load_func("tc_root", bcc.BPF.SCHED_CLS)
        self._pin_fd(x.fd, "xdp_root")
        self._pin_fd(t.fd, "tc_root")

    def _set_root(self, jmp: str, prog_fd: int) -> None:
        fd = self._obj_get(jmp)
        try:
            key = ct.c_int(0)
            val = ct.c_int(prog_fd)
            if _lib().bpf_update_elem(fd, ct.byref(key), ct.byref(val), 0) != 0:
                raise DataplaneError(f"{jmp}: switch refused: {os.strerror(ct.get_errno())}")
        finally:
            os.close(fd)

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
        bcc = _bcc()
        fd = self._obj_get("xdp_root")
        fn = bcc.BPF.Function(None, b"xdp_root", fd)
        try:
            mode = requested
            if requested == "auto":
                # Native XDP_TX on a veth drops every reply unless the peer runs XDP too,
                # and lo has no native mode: both get generic.
                mode = "generic" if name == "lo" or _link_kind(name) == "veth" else "native"
            if mode == "native":
                try:
                    bcc.BPF.attach_xdp(name, fn, XDP_FLAGS_DRV_MODE)
                    return "native"
                except Exception as exc:
                    if requested == "native":
                        raise DataplaneError(f"{name}: native XDP refused: {exc}") from exc
                    mode = "generic"
            bcc.BPF.attach_xdp(name, fn, XDP_FLAGS_SKB_MODE)
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
            _bcc().BPF.remove_xdp(name, flags)
        except Exception as exc:
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


def _cache_pin(shape: list[int] | tuple[int, ...]) -> str:
    e, k, v = shape
    return f"cache_{e}_{k}_{v}"


def _config_doc(cfg: Config) -> tuple[Any, ...]:
    return (cfg.version, cfg.memcached, cfg.interfaces, cfg.cache, cfg.strategy)


def _xdp_attached(name: str) -> bool:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.get_links(ipr.link_lookup(ifname=name))
        if not links:
            return False
        xdp = links[0].get_attr("IFLA_XDP")
        return bool(xdp and xdp.get_attr("IFLA_XDP_ATTACHED"))


def _mount_bpffs(base: Path) -> None:
    libc = ct.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", str(base).encode(), b"bpf", 0, None) != 0:
        err = ct.get_errno()
        if err != errno.EBUSY:
            raise DataplaneError(f"cannot mount bpffs on {base}: {os.strerror(err)}")

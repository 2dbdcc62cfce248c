"""The one binding to bpf(2) that mcache uses: libbpf 1.x through ctypes.

The daemon, the loader worker, the tests, the fuzzer and the benchmarks all make their bpf
syscalls here: map operations (single, per-CPU and batched), pins, BPF_PROG_TEST_RUN, XDP
attachment over netlink, and the kernel's own accounts of programs and maps (info by fd, the
memory a map holds). bcc is used only to compile and load (mcache_agent.dataplane.loader);
nothing here needs LLVM, so the long-lived daemon stays small.

Debian's libbcc links the same libbpf.so.1 (1.1.2 on bookworm), so loader workers that also
load bcc see one libbpf.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERCPU_ARRAY = 6

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

BPF_OBJ_NAME_LEN = 16
# struct xdp_md of BPF_PROG_TEST_RUN's context: data, data_end, data_meta, ingress_ifindex,
# rx_queue_index, egress_ifindex.
XDP_MD = "=IIIIII"


class BpfError(OSError):
    """A bpf(2) call refused; errno is the kernel's."""


class _MapCreateOpts(ct.Structure):
    _fields_ = [
        ("sz", ct.c_size_t),
        ("btf_fd", ct.c_uint32),
        ("btf_key_type_id", ct.c_uint32),
        ("btf_value_type_id", ct.c_uint32),
        ("btf_vmlinux_value_type_id", ct.c_uint32),
        ("inner_map_fd", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("map_extra", ct.c_uint64),
        ("numa_node", ct.c_uint32),
        ("map_ifindex", ct.c_uint32),
    ]


class _MapBatchOpts(ct.Structure):
    _fields_ = [("sz", ct.c_size_t), ("elem_flags", ct.c_uint64), ("flags", ct.c_uint64)]


class _TestRunOpts(ct.Structure):
    _fields_ = [
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    ]


class _ProgInfo(ct.Structure):
    """struct bpf_prog_info (uapi/linux/bpf.h) up to attach_btf_id."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32),
        ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64),
        ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64),
        ("created_by_uid", ct.c_uint32),
        ("nr_map_ids", ct.c_uint32),
        ("map_ids", ct.c_uint64),
        ("name", ct.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ct.c_uint32),
        ("gpl_compatible", ct.c_uint32),
        ("netns_dev", ct.c_uint64),
        ("netns_ino", ct.c_uint64),
        ("nr_jited_ksyms", ct.c_uint32),
        ("nr_jited_func_lens", ct.c_uint32),
        ("jited_ksyms", ct.c_uint64),
        ("jited_func_lens", ct.c_uint64),
        ("btf_id", ct.c_uint32),
        ("func_info_rec_size", ct.c_uint32),
        ("func_info", ct.c_uint64),
        ("nr_func_info", ct.c_uint32),
        ("nr_line_info", ct.c_uint32),
        ("line_info", ct.c_uint64),
        ("jited_line_info", ct.c_uint64),
        ("nr_jited_line_info", ct.c_uint32),
        ("line_info_rec_size", ct.c_uint32),
        ("jited_line_info_rec_size", ct.c_uint32),
        ("nr_prog_tags", ct.c_uint32),
        ("prog_tags", ct.c_uint64),
        ("run_time_ns", ct.c_uint64),
        ("run_cnt", ct.c_uint64),
        ("recursion_misses", ct.c_uint64),
        ("verified_insns", ct.c_uint32),
        ("attach_btf_obj_id", ct.c_uint32),
        ("attach_btf_id", ct.c_uint32),
    ]


class _MapInfo(ct.Structure):
    """struct bpf_map_info (uapi/linux/bpf.h)."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ct.c_uint32),
        ("btf_vmlinux_value_type_id", ct.c_uint32),
        ("netns_dev", ct.c_uint64),
        ("netns_ino", ct.c_uint64),
        ("btf_id", ct.c_uint32),
        ("btf_key_type_id", ct.c_uint32),
        ("btf_value_type_id", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("map_extra", ct.c_uint64),
    ]


@cache
def _lib() -> Any:
    lib = ct.CDLL("libbpf.so.1", use_errno=True)
    sigs: dict[str, list[Any]] = {
        "bpf_obj_get": [ct.c_char_p],
        "bpf_obj_pin": [ct.c_int, ct.c_char_p],
        "bpf_map_create": [ct.c_int, ct.c_char_p, ct.c_uint32, ct.c_uint32, ct.c_uint32,
                           ct.POINTER(_MapCreateOpts)],
        "bpf_map_lookup_elem": [ct.c_int, ct.c_void_p, ct.c_void_p],
        "bpf_map_update_elem": [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64],
        "bpf_map_delete_elem": [ct.c_int, ct.c_void_p],
        "bpf_map_lookup_batch": [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_void_p, ct.c_void_p,
                                 ct.POINTER(ct.c_uint32), ct.POINTER(_MapBatchOpts)],
        "bpf_prog_test_run_opts": [ct.c_int, ct.POINTER(_TestRunOpts)],
        "bpf_obj_get_info_by_fd": [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)],
        "bpf_prog_get_fd_by_id": [ct.c_uint32],
        "bpf_map_get_fd_by_id": [ct.c_uint32],
        "bpf_xdp_attach": [ct.c_int, ct.c_int, ct.c_uint32, ct.c_void_p],
        "bpf_xdp_detach": [ct.c_int, ct.c_uint32, ct.c_void_p],
        "bpf_xdp_query_id": [ct.c_int, ct.c_int, ct.POINTER(ct.c_uint32)],
        "bpf_prog_attach": [ct.c_int, ct.c_int, ct.c_int, ct.c_uint],
        "bpf_prog_detach2": [ct.c_int, ct.c_int, ct.c_int],
        "bpf_prog_query": [ct.c_int, ct.c_int, ct.c_uint32, ct.POINTER(ct.c_uint32),
                           ct.POINTER(ct.c_uint32), ct.POINTER(ct.c_uint32)],
        "bpf_map_get_next_key": [ct.c_int, ct.c_void_p, ct.c_void_p],
        "libbpf_num_possible_cpus": [],
    }
    for name, argtypes in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = ct.c_int
    lib.ring_buffer__new.argtypes = [ct.c_int, _RING_SAMPLE_FN, ct.c_void_p, ct.c_void_p]
    lib.ring_buffer__new.restype = ct.c_void_p
    lib.ring_buffer__poll.argtypes = [ct.c_void_p, ct.c_int]
    lib.ring_buffer__poll.restype = ct.c_int
    lib.ring_buffer__consume.argtypes = [ct.c_void_p]
    lib.ring_buffer__consume.restype = ct.c_int
    lib.ring_buffer__free.argtypes = [ct.c_void_p]
    lib.ring_buffer__free.restype = None
    return lib


# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
_RING_SAMPLE_FN = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_size_t)


def _check(ret: int, what: str) -> int:
    """libbpf 1.x returns -errno (and sets errno) on failure."""
    if ret < 0:
        err = -ret if ret != -1 else (ct.get_errno() or errno.EPERM)
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def _buf(data: bytes) -> ct.Array[ct.c_char]:
    return ct.create_string_buffer(data, len(data))


# ---------------------------------------------------------------------------- pins and fds


def obj_get(path: str | os.PathLike[str]) -> int:
    """An fd of the pinned object at path."""
    return _check(_lib().bpf_obj_get(os.fsencode(path)), f"open {os.fspath(path)}")


def obj_pin(fd: int, path: str | os.PathLike[str]) -> None:
    _check(_lib().bpf_obj_pin(fd, os.fsencode(path)), f"pin {os.fspath(path)}")


def num_possible_cpus() -> int:
    return _check(_lib().libbpf_num_possible_cpus(), "possible CPUs")


# ---------------------------------------------------------------------------- maps


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int,
               *, flags: int = 0) -> int:
    opts = _MapCreateOpts(sz=ct.sizeof(_MapCreateOpts), map_flags=flags)
    fd = _lib().bpf_map_create(map_type, name.encode()[: BPF_OBJ_NAME_LEN - 1], key_size,
                               value_size, max_entries, ct.byref(opts))
    return _check(fd, f"create map {name}")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value under key, or None when there is none."""
    out = ct.create_string_buffer(value_size)
    ret = _lib().bpf_map_lookup_elem(fd, _buf(key), out)
    if ret == -errno.ENOENT:
        return None
    _check(ret, "map lookup")
    return out.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    _check(_lib().bpf_map_update_elem(fd, _buf(key), _buf(value), flags), "map update")


def map_delete(fd: int, key: bytes) -> bool:
    """False when there was nothing to delete."""
    ret = _lib().bpf_map_delete_elem(fd, _buf(key))
    if ret == -errno.ENOENT:
        return False
    _check(ret, "map delete")
    return True


def percpu_lookup(fd: int, key: bytes, value_size: int) -> list[bytes] | None:
    """One value per possible CPU (each padded to 8 bytes by the kernel)."""
    stride = (value_size + 7) & ~7
    ncpu = num_possible_cpus()
    raw = map_lookup(fd, key, stride * ncpu)
    if raw is None:
        return None
    return [raw[i * stride : i * stride + value_size] for i in range(ncpu)]


def map_lookup_batch(fd: int, key_size: int, value_size: int, max_entries: int,
                     *, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a map, read `chunk` elements per syscall (BPF_MAP_LOOKUP_BATCH)."""
    lib = _lib()
    opts = _MapBatchOpts(sz=ct.sizeof(_MapBatchOpts))
    n = max(1, min(chunk, max_entries))
    keys = ct.create_string_buffer(key_size * n)
    values = ct.create_string_buffer(value_size * n)
    token_in = ct.create_string_buffer(max(key_size, 8))
    token_out = ct.create_string_buffer(max(key_size, 8))
    out: list[tuple[bytes, bytes]] = []
    first = True
    while True:
        count = ct.c_uint32(n)
        ret = lib.bpf_map_lookup_batch(fd, None if first else token_in, token_out, keys,
                                       values, ct.byref(count), ct.byref(opts))
        done = ret == -errno.ENOENT  # the last chunk (possibly empty) comes with ENOENT
        if not done:
            _check(ret, "map lookup batch")
        kraw, vraw = keys.raw, values.raw
        out.extend((kraw[i * key_size : (i + 1) * key_size],
                    vraw[i * value_size : (i + 1) * value_size]) for i in range(count.value))
        if done or count.value == 0:
            return out
        ct.memmove(token_in, token_out, len(token_out))
        first = False


# ---------------------------------------------------------------------------- programs


@dataclass(frozen=True)
class TestRun:
    retval: int
    duration_ns: int
    data: bytes


def prog_test_run(fd: int, data: bytes, ctx: bytes | None = None, *, repeat: int = 1,
                  out_size: int = 8192) -> TestRun:
    """BPF_PROG_TEST_RUN on a copy of data; `out_size` must hold a frame the program grew."""
    din = _buf(data)
    dout = ct.create_string_buffer(out_size)
    cin = _buf(ctx) if ctx else None
    opts = _TestRunOpts(sz=ct.sizeof(_TestRunOpts), data_in=ct.cast(din, ct.c_void_p),
                        data_out=ct.cast(dout, ct.c_void_p), data_size_in=len(data),
                        data_size_out=out_size, repeat=repeat)
    if ctx:
        opts.ctx_in = ct.cast(cin, ct.c_void_p)
        opts.ctx_size_in = len(ctx)
    _check(_lib().bpf_prog_test_run_opts(fd, ct.byref(opts)), "BPF_PROG_TEST_RUN")
    return TestRun(retval=opts.retval, duration_ns=opts.duration,
                   data=dout.raw[: opts.data_size_out])


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    name: str
    map_ids: tuple[int, ...]
    verified_insns: int
    xlated_bytes: int
    jited_bytes: int
    run_cnt: int
    run_time_ns: int


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: int
    name: str
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def _info(fd: int, info: ct.Structure) -> None:
    size = ct.c_uint32(ct.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "object info")


def prog_info(fd: int) -> ProgInfo:
    info = _ProgInfo()
    _info(fd, info)
    n = info.nr_map_ids
    ids = (ct.c_uint32 * max(n, 1))()
    if n:
        # A second call with room for the map ids (the first one told how many there are).
        info = _ProgInfo(nr_map_ids=n, map_ids=ct.addressof(ids))
        _info(fd, info)
    return ProgInfo(id=info.id, type=info.type, name=info.name.decode(errors="replace"),
                    map_ids=tuple(ids[: min(n, info.nr_map_ids)]),
                    verified_insns=info.verified_insns, xlated_bytes=info.xlated_prog_len,
                    jited_bytes=info.jited_prog_len, run_cnt=info.run_cnt,
                    run_time_ns=info.run_time_ns)


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    _info(fd, info)
    return MapInfo(id=info.id, type=info.type, name=info.name.decode(errors="replace"),
                   key_size=info.key_size, value_size=info.value_size,
                   max_entries=info.max_entries, flags=info.map_flags)


def prog_fd_by_id(prog_id: int) -> int:
    return _check(_lib().bpf_prog_get_fd_by_id(prog_id), f"program id {prog_id}")


def map_fd_by_id(map_id: int) -> int:
    return _check(_lib().bpf_map_get_fd_by_id(map_id), f"map id {map_id}")


def map_memory(fd: int) -> int:
    """Bytes the kernel accounts to a map (its `memlock` in fdinfo: the map's own
    map_mem_usage() since 6.4, i.e. what it really allocated)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    raise BpfError(errno.ENOTSUP, "no memlock in the map's fdinfo")


# ---------------------------------------------------------------------------- XDP (netlink)


def xdp_attach(ifindex: int, prog_fd: int, flags: int) -> None:
    _check(_lib().bpf_xdp_attach(ifindex, prog_fd, flags, None), f"XDP attach to {ifindex}")


def xdp_detach(ifindex: int, flags: int) -> None:
    _check(_lib().bpf_xdp_detach(ifindex, flags, None), f"XDP detach from {ifindex}")


def xdp_prog_id(ifindex: int, flags: int = 0) -> int:
    """The id of the XDP program on the interface, 0 when none."""
    prog_id = ct.c_uint32(0)
    _check(_lib().bpf_xdp_query_id(ifindex, flags, ct.byref(prog_id)), "XDP query")
    return prog_id.value


# ---------------------------------------------------------------------------- cgroups

BPF_CGROUP_SOCK_OPS = 3
BPF_F_ALLOW_MULTI = 2


def cgroup_attach(prog_fd: int, cgroup_fd: int, attach_type: int) -> None:
    """Beside whatever else is attached there (other agents, other tools): multi mode."""
    _check(_lib().bpf_prog_attach(prog_fd, cgroup_fd, attach_type, BPF_F_ALLOW_MULTI),
           "cgroup attach")


def cgroup_detach(prog_fd: int, cgroup_fd: int, attach_type: int) -> None:
    _check(_lib().bpf_prog_detach2(prog_fd, cgroup_fd, attach_type), "cgroup detach")


def cgroup_prog_ids(cgroup_fd: int, attach_type: int) -> list[int]:
    """The ids of the programs attached to the cgroup itself (not inherited)."""
    ids = (ct.c_uint32 * 64)()
    count = ct.c_uint32(64)
    flags = ct.c_uint32(0)
    _check(_lib().bpf_prog_query(cgroup_fd, attach_type, 0, ct.byref(flags), ids,
                                 ct.byref(count)), "cgroup query")
    return list(ids[: count.value])


def map_keys(fd: int, key_size: int, limit: int) -> int:
    """How many keys the map holds (up to limit): for maps whose values cannot be read
    (a sockhash)."""
    key, nxt = ct.create_string_buffer(key_size), ct.create_string_buffer(key_size)
    n, prev = 0, None
    while n < limit:
        if _lib().bpf_map_get_next_key(fd, prev, nxt) < 0:
            break
        n += 1
        ct.memmove(key, nxt, key_size)
        prev = key
    return n


# ---------------------------------------------------------------------------- ring buffers


class RingBuffer:
    """A consumer of a BPF ring buffer map (libbpf's ring_buffer): each poll() hands every
    record waiting to on_record, as bytes, in the order the producers committed them."""

    def __init__(self, map_fd: int, on_record: Callable[[bytes], None]) -> None:
        def sample(_ctx: int | None, data: int, size: int) -> int:
            on_record(ct.string_at(data, size))
            return 0

        self._callback = _RING_SAMPLE_FN(sample)  # kept alive as long as the ring
        ptr = _lib().ring_buffer__new(map_fd, self._callback, None, None)
        if not ptr:
            err = ct.get_errno() or errno.EINVAL
            raise BpfError(err, f"ring buffer: {os.strerror(err)}")
        self._ring: int | None = ptr

    def poll(self, timeout_ms: int) -> int:
        """Waits up to timeout_ms for records; returns how many were handed over (0 when a
        signal cut the wait short)."""
        ret = _lib().ring_buffer__poll(self._ring, timeout_ms)
        return 0 if ret == -errno.EINTR else _check(ret, "ring buffer poll")

    def drain(self) -> int:
        """Hands over what waits now, without waiting."""
        return _check(_lib().ring_buffer__consume(self._ring), "ring buffer consume")

    def close(self) -> None:
        if self._ring:
            _lib().ring_buffer__free(self._ring)
            self._ring = None

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- fds


class Fd(int):
    """An fd that closes itself at the end of a `with` block."""

    def __enter__(self) -> Fd:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self)


def opened(path: str | os.PathLike[str]) -> Fd:
    return Fd(obj_get(path))

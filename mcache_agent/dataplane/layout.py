"""Bytes as the data plane reads them: struct layouts taken from the compiler (BTF, through
bcc's ctypes), values packed into them, the byte orders of addresses, and the key hash."""

from __future__ import annotations

import ctypes as ct
import socket
from typing import Any

from mcache_agent import constants

Layout = dict[str, Any]


class LayoutError(Exception):
    pass


def ctype_layout(t: Any) -> Layout:
    """A ctypes type as JSON: scalars by size, arrays and structs recursively, with offsets.
    The loader worker sends these to the daemon, which never imports bcc."""
    if hasattr(t, "_fields_"):
        fields = {}
        for f in t._fields_:
            name, ftype = f[0], f[1]
            desc = getattr(t, name)
            fields[name] = {"offset": desc.offset, **ctype_layout(ftype)}
        return {"kind": "struct", "size": ct.sizeof(t), "fields": fields}
    if hasattr(t, "_length_"):
        return {
            "kind": "array",
            "size": ct.sizeof(t),
            "length": t._length_,
            "elem": ctype_layout(t._type_),
        }
    return {"kind": "int", "size": ct.sizeof(t)}


def pack(layout: Layout, value: Any) -> bytes:
    """Bytes of a C value from its layout: ints little-endian, arrays from lists or bytes,
    structs from dicts; whatever is not given is zero."""
    buf = bytearray(layout["size"])
    _pack_into(buf, 0, layout, value)
    return bytes(buf)


def _pack_into(buf: bytearray, off: int, layout: Layout, value: Any) -> None:
    kind = layout["kind"]
    if kind == "int":
        buf[off : off + layout["size"]] = int(value).to_bytes(layout["size"], "little")
    elif kind == "array":
        elem = layout["elem"]
        if len(value) > layout["length"]:
            raise LayoutError(f"{len(value)} items for an array of {layout['length']}")
        for i, v in enumerate(value):
            _pack_into(buf, off + i * elem["size"], elem, v)
    else:
        for name, v in value.items():
            if name not in layout["fields"]:
                raise LayoutError(f"no field {name!r} in the struct")
            f = layout["fields"][name]
            _pack_into(buf, off + f["offset"], f, v)


def net_u32(addr: str) -> int:
    """An IPv4 address as the kernel reads it from a packet into a u32 on this host."""
    return int.from_bytes(socket.inet_aton(addr), "little")


def net_u32x4(addr: str) -> list[int]:
    """An IPv6 address as the kernel reads it from a packet into a __u32[4] on this host:
    four words, each as net_u32 reads its four bytes."""
    raw = socket.inet_pton(socket.AF_INET6, addr)
    return [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4)]


def net_u16(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def key_hash(data: bytes) -> int:
    """The data plane's key hash (mc_hash in bpf/mcache_parse.h): 8 bytes per step."""
    mul = constants.const("MC_HASH_MUL")
    mask = (1 << 64) - 1
    h = constants.const("MC_HASH_SEED") ^ len(data)
    for i in range(0, len(data), 8):
        h = ((h ^ int.from_bytes(data[i:i + 8], "little")) * mul) & mask
        h ^= h >> 32
    h = (h * mul) & mask
    return (h ^ (h >> 32)) & 0xFFFFFFFF


def bucket(hash_: int, entries: int) -> int:
    """The first slot of a hash's bucket (mc_bucket in bpf/mcache_maps.h)."""
    ways = constants.const("MC_WAYS")
    return (hash_ & (entries // ways - 1)) * ways

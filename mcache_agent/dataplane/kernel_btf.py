"""Where this kernel keeps the TCP receive state the write scanner checks segments against.

XDP reads a connection's `struct tcp_sock` through `bpf_skc_to_tcp_sock` (a BTF pointer):
the verifier checks each read against the running kernel's BTF, but bcc compiles against
headers that may be of another kernel, so the field offsets are taken from
/sys/kernel/btf/vmlinux itself and passed to the compiler (-DMC_TCP_RCV_NXT=...). The BTF
format is small and stable (include/uapi/linux/btf.h); reading it here needs no tool.
"""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

# The members read, by struct: the -D name each offset is passed as.
WANTED: dict[str, dict[str, str]] = {
    "tcp_sock": {
        "rcv_nxt": "MC_TCP_RCV_NXT",
        "bytes_received": "MC_TCP_BYTES_RECEIVED",
        "rcv_wnd": "MC_TCP_RCV_WND",
        "rcv_wup": "MC_TCP_RCV_WUP",
    },
    "tcp_request_sock": {"rcv_isn": "MC_TCP_REQ_RCV_ISN"},
}

_BTF_MAGIC = 0xEB9F
# Bytes that follow a struct btf_type (12 bytes), by kind: fixed, and per vlen item.
_KIND_STRUCT, _KIND_UNION = 4, 5
_EXTRA_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
# STRUCT, UNION, ENUM, FUNC_PROTO, DATASEC, ENUM64
_EXTRA_PER_ITEM = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


class BtfError(RuntimeError):
    pass


def _name(strings: bytes, off: int) -> str:
    end = strings.index(b"\0", off)
    return strings[off:end].decode()


def member_offsets(data: bytes, wanted: dict[str, dict[str, str]]) -> dict[str, int]:
    """The byte offsets of the wanted members, by their -D name, from raw BTF."""
    magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != _BTF_MAGIC:
        raise BtfError("not BTF (bad magic)")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    types = hdr_len + type_off
    strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
    out: dict[str, int] = {}
    pos, end = types, types + type_len
    while pos < end and len(out) < sum(len(m) for m in wanted.values()):
        name_off, info, _size = struct.unpack_from("<III", data, pos)
        pos += 12
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        if kind in (_KIND_STRUCT, _KIND_UNION) and name_off:
            members = wanted.get(_name(strings, name_off))
            if members:
                for i in range(vlen):
                    m_name, _m_type, m_off = struct.unpack_from("<III", data, pos + 12 * i)
                    field = _name(strings, m_name) if m_name else ""
                    if field in members:
                        bits = m_off & 0xFFFFFF if kflag else m_off
                        if bits % 8:
                            raise BtfError(f"{field} is a bit field")
                        out[members[field]] = bits // 8
        pos += _EXTRA_FIXED.get(kind, 0) + _EXTRA_PER_ITEM.get(kind, 0) * vlen
    missing = sorted(d for m in wanted.values() for d in m.values() if d not in out)
    if missing:
        raise BtfError(f"not in this kernel's BTF: {', '.join(missing)}")
    return out


@cache
def tcp_offsets() -> dict[str, int]:
    """This kernel's offsets of the TCP receive state (read once per process)."""
    try:
        data = VMLINUX.read_bytes()
    except OSError as e:
        raise BtfError(f"{VMLINUX}: {e.strerror}: the data plane needs the kernel's BTF") from e
    return member_offsets(data, WANTED)


def cflags() -> list[str]:
    return [f"-D{name}={off}" for name, off in sorted(tcp_offsets().items())]

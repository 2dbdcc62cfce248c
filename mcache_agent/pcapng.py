"""A pcapng writer: what `mcache-agent capture` needs of the format, nothing more.

One section (little-endian), Ethernet interfaces with nanosecond timestamps, and Enhanced
Packet Blocks carrying a comment, the direction (epb_flags) and the verdict (epb_verdict:
the eBPF XDP or TC action), as the pcapng specification (draft-ietf-opsawg-pcapng) defines
them; Wireshark and tshark show all three.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

SHB, IDB, EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
LINKTYPE_ETHERNET = 1

OPT_END, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_NAME, IF_TSRESOL = 2, 9
EPB_FLAGS, EPB_VERDICT = 2, 7

INBOUND, OUTBOUND = 1, 2  # epb_flags bits 0-1
VERDICT_TC, VERDICT_XDP = 1, 2  # epb_verdict's first byte: whose verdict


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    return b"".join(_option(c, v) for c, v in opts) + struct.pack("<HH", OPT_END, 0)


def _block(kind: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", kind, total) + body + struct.pack("<I", total)


class Writer:
    """Writes blocks to a binary stream as they come, flushing each packet (a pipe to tshark
    sees every frame as soon as it is captured)."""

    def __init__(self, out: BinaryIO, application: str) -> None:
        self.out = out
        self.interfaces: dict[int, int] = {}  # key -> interface id
        body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
        body += _options([(SHB_USERAPPL, application.encode())])
        self._write(_block(SHB, body))

    def interface(self, key: int, name: str, snaplen: int) -> int:
        """The id of the interface known as key, described (IDB) the first time."""
        if key not in self.interfaces:
            body = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen)
            body += _options([(IF_NAME, name.encode()), (IF_TSRESOL, bytes([9]))])
            self._write(_block(IDB, body))
            self.interfaces[key] = len(self.interfaces)
        return self.interfaces[key]

    def packet(self, interface_id: int, ts_ns: int, data: bytes, frame_len: int, *,
               comment: str, outbound: bool, verdict: tuple[int, int] | None) -> None:
        """One frame: its interface, time (ns since the epoch), bytes (maybe cut short of
        frame_len), and options: comment, direction, (verdict type, action)."""
        opts = [(OPT_COMMENT, comment.encode()),
                (EPB_FLAGS, struct.pack("<I", OUTBOUND if outbound else INBOUND))]
        if verdict is not None:
            opts.append((EPB_VERDICT, struct.pack("<Bq", verdict[0], verdict[1])))
        body = struct.pack("<IIIII", interface_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data),
                           frame_len)
        body += _pad(data) + _options(opts)
        self._write(_block(EPB, body))

    def _write(self, block: bytes) -> None:
        self.out.write(block)
        self.out.flush()

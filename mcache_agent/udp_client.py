"""A minimal memcached UDP client (ASCII and binary GETs).

pymemcache speaks TCP only; the cache answers UDP, so the probe and the tests
need this. It frames requests with the 8-byte UDP header and reassembles
multi-datagram replies by sequence number.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

FRAME = struct.Struct("!HHHH")  # request id, sequence, datagrams in reply, reserved
# magic opcode keylen extlen dtype status/vbucket bodylen opaque cas
BIN_HDR = struct.Struct("!BBHBBHIIQ")

OP_GET = 0x00
OP_GETQ = 0x09
OP_GETK = 0x0C
OP_GETKQ = 0x0D
OP_NOOP = 0x0A

_ids = itertools.count(os.getpid() & 0x7FFF)


class UdpTimeout(TimeoutError):
    pass


def next_request_id() -> int:
    return next(_ids) & 0xFFFF


def family(host: str) -> socket.AddressFamily:
    """The socket family for host: an IPv6 address is the only form with a colon (a name or
    an IPv4 address has none)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def frame(request_id: int, payload: bytes) -> bytes:
    return FRAME.pack(request_id, 0, 1, 0) + payload


def exchange(
    host: str,
    port: int,
    payload: bytes,
    timeout: float = 1.0,
    *,
    sock: socket.socket | None = None,
    request_id: int | None = None,
    complete: Callable[[bytes], bool] | None = None,
) -> bytes:
    """Send one framed request and return the reassembled reply payload.

    memcached answers a multi-key get with one message per item (each its own "datagram 0
    of 1"), so a caller that knows what ends a reply passes `complete` to keep reading.
    """
    rid = next_request_id() if request_id is None else request_id
    own = sock is None
    s = sock or socket.socket(family(host), socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(frame(rid, payload), (host, port))
        reply = b""
        while True:
            parts: dict[int, bytes] = {}
            total = None
            while total is None or len(parts) < total:
                try:
                    data = s.recv(65535)
                except TimeoutError as exc:
                    raise UdpTimeout(f"no reply from {host}:{port} within {timeout}s") from exc
                if len(data) < FRAME.size:
                    continue
                r_id, seq, count, _reserved = FRAME.unpack_from(data)
                if r_id != rid:
                    continue  # a late reply to an earlier request
                total = count
                parts[seq] = data[FRAME.size :]
            reply += b"".join(parts[i] for i in sorted(parts))
            if complete is None or complete(reply):
                return reply
    finally:
        if own:
            s.close()


def ascii_complete(reply: bytes) -> bool:
    return reply.endswith((b"END\r\n", b"ERROR\r\n")) or b"ERROR " in reply


def parse_ascii_values(reply: bytes) -> dict[bytes, tuple[int, bytes]]:
    """Parse `VALUE key flags bytes [cas]\\r\\n data\\r\\n ... END\\r\\n`."""
    out: dict[bytes, tuple[int, bytes]] = {}
    pos = 0
    while True:
        eol = reply.index(b"\r\n", pos)
        line = reply[pos:eol]
        if line == b"END":
            return out
        parts = line.split(b" ")
        if parts[0] != b"VALUE" or len(parts) not in (4, 5):
            raise ValueError(f"unexpected reply line {line!r}")
        n = int(parts[3])
        data = reply[eol + 2 : eol + 2 + n]
        if reply[eol + 2 + n : eol + 4 + n] != b"\r\n":
            raise ValueError("value not terminated by CRLF")
        out[parts[1]] = (int(parts[2]), data)
        pos = eol + 4 + n


def udp_get_ascii(
    host: str, port: int, keys: list[bytes], timeout: float = 1.0, *, command: bytes = b"get"
) -> dict[bytes, bytes]:
    reply = exchange(
        host, port, command + b" " + b" ".join(keys) + b"\r\n", timeout, complete=ascii_complete
    )
    return {k: v for k, (_flags, v) in parse_ascii_values(reply).items()}


@dataclass(frozen=True)
class BinaryReply:
    opcode: int
    status: int
    opaque: int
    cas: int
    extras: bytes
    key: bytes
    value: bytes


def binary_request(opcode: int, key: bytes, opaque: int = 0, extras: bytes = b"",
                   value: bytes = b"", cas: int = 0) -> bytes:
    body = len(extras) + len(key) + len(value)
    return BIN_HDR.pack(0x80, opcode, len(key), len(extras), 0, 0, body, opaque, cas) + (
        extras + key + value
    )


def parse_binary(reply: bytes) -> list[BinaryReply]:
    out = []
    pos = 0
    while pos < len(reply):
        magic, op, klen, elen, _dtype, status, body, opaque, cas = BIN_HDR.unpack_from(reply, pos)
        if magic != 0x81:
            raise ValueError(f"bad response magic {magic:#x}")
        start = pos + BIN_HDR.size
        extras = reply[start : start + elen]
        key = reply[start + elen : start + elen + klen]
        value = reply[start + elen + klen : start + body]
        out.append(BinaryReply(op, status, opaque, cas, extras, key, value))
        pos = start + body
    return out


def udp_get_binary(
    host: str, port: int, key: bytes, *, opcode: int = OP_GET, opaque: int = 0x1234,
    timeout: float = 1.0,
) -> BinaryReply:
    payload = binary_request(opcode, key, opaque)
    if opcode in (OP_GETQ, OP_GETKQ):
        # A quiet get answers nothing on a miss: a NOOP closes the exchange.
        payload += binary_request(OP_NOOP, b"", opaque + 1)
    replies = parse_binary(exchange(host, port, payload, timeout))
    return replies[0]

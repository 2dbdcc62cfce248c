"""Hand-built Ethernet/IPv4/UDP/TCP frames and a BPF_PROG_TEST_RUN runner."""

from __future__ import annotations

import ctypes as ct
import os
import socket
import struct

CMAC = bytes.fromhex("02000000c0de")
SMAC = bytes.fromhex("02000000beef")
BIN = struct.Struct("!BBHBBHIIQ")

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long
SYS_BPF = 321
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src: str, dst: str, proto: int, l4: bytes, *, frag: int = 0, options: bytes = b"",
         ident: int = 0, ttl: int = 64, tot_len: int | None = None) -> bytes:
    ihl = 5 + len(options) // 4
    tot = tot_len if tot_len is not None else ihl * 4 + len(l4)
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, ident, frag, ttl, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst)) + options
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + l4


def eth(payload: bytes, dst: bytes = SMAC, src: bytes = CMAC, etype: int = 0x0800) -> bytes:
    return dst + src + struct.pack("!H", etype) + payload


def udp_frame(payload: bytes, *, src="198.19.9.2", dst="198.19.9.1", sport=40000, dport=11211,
              ulen: int | None = None, smac=CMAC, dmac=SMAC, **ipkw) -> bytes:
    ln = ulen if ulen is not None else 8 + len(payload)
    u = struct.pack("!HHHH", sport, dport, ln, 0) + payload
    return eth(ipv4(src, dst, 17, u, **ipkw), dst=dmac, src=smac)


def mc_udp(rid: int, body: bytes, **kw) -> bytes:
    """A client's memcached UDP request (frame header + body)."""
    return udp_frame(struct.pack("!HHHH", rid, 0, 1, 0) + body, **kw)


def mc_reply(rid: int, body: bytes, *, client="198.19.9.2", cport=40000, server="198.19.9.1",
             **kw) -> bytes:
    """memcached's UDP reply to a client."""
    return udp_frame(struct.pack("!HHHH", rid, 0, 1, 0) + body, src=server, dst=client,
                     sport=11211, dport=cport, smac=SMAC, dmac=CMAC, **kw)


def tcp_frame(payload: bytes, *, seq: int, sport=45000, src="198.19.9.2", dst="198.19.9.1",
              dport=11211, flags=0x18) -> bytes:
    t = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, flags, 65535, 0, 0) + payload
    return eth(ipv4(src, dst, 6, t))


def bin_req(op: int, key: bytes, *, opaque=0, extras=b"", value=b"", cas=0) -> bytes:
    body = len(extras) + len(key) + len(value)
    return BIN.pack(0x80, op, len(key), len(extras), 0, 0, body, opaque, cas) + extras + key + value


def bin_res(op: int, *, key=b"", value=b"", flags=0, opaque=0, cas=0, status=0) -> bytes:
    ex = struct.pack("!I", flags)
    body = len(ex) + len(key) + len(value)
    return BIN.pack(0x81, op, len(key), 4, 0, status, body, opaque, cas) + ex + key + value


def obj_get(path: str) -> int:
    p = ct.create_string_buffer(path.encode())
    attr = (ct.c_uint8 * 128)()
    struct.pack_into("=QII", attr, 0, ct.addressof(p), 0, 0)
    fd = _libc.syscall(SYS_BPF, BPF_OBJ_GET, attr, 128)
    if fd < 0:
        raise OSError(ct.get_errno(), f"BPF_OBJ_GET {path}")
    return fd


class Prog:
    def __init__(self, path: str) -> None:
        self.fd = obj_get(path)

    def close(self) -> None:
        os.close(self.fd)

    def run(self, data: bytes, ctx: bytes | None = None) -> tuple[int, bytes]:
        din = ct.create_string_buffer(data, len(data))
        dout = ct.create_string_buffer(4096)
        cin = ct.create_string_buffer(ctx, len(ctx)) if ctx else None
        attr = (ct.c_uint8 * 128)()
        # prog_fd retval data_size_in data_size_out data_in data_out repeat duration
        # ctx_size_in ctx_size_out ctx_in ctx_out flags cpu batch_size
        struct.pack_into("=IIIIQQIIIIQQIII", attr, 0, self.fd, 0, len(data), 4096,
                         ct.addressof(din), ct.addressof(dout), 1, 0,
                         len(ctx) if ctx else 0, 0, ct.addressof(cin) if cin else 0, 0, 0, 0, 0)
        r = _libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, attr, 128)
        if r != 0:
            raise OSError(ct.get_errno(), "BPF_PROG_TEST_RUN")
        _, retval, _, size_out = struct.unpack_from("=IIII", attr, 0)
        return retval, dout.raw[:size_out]


def xdp_ctx(data_len: int, ifindex: int) -> bytes:
    # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    return struct.pack("=IIIIII", 0, data_len, 0, ifindex, 0, 0)

"""Hand-built Ethernet/IPv4/UDP/TCP and memcached frames (the runner: harness/testrun.py)."""

from __future__ import annotations

import socket
import struct

CMAC = bytes.fromhex("02000000c0de")
SMAC = bytes.fromhex("02000000beef")
BIN = struct.Struct("!BBHBBHIIQ")



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


CLIENT6, SERVER6 = "fd00:9::2", "fd00:9::1"


def ipv6(src: str, dst: str, nh: int, l4: bytes, *, ext: list[tuple[int, bytes]] = (),
         payload_len: int | None = None) -> bytes:
    """An IPv6 header, extension headers (kind, body: padded to 8-byte units; a fragment
    header's body is its 6 bytes after the next header and reserved byte), then l4."""
    chain = b""
    kinds = [k for k, _ in ext] + [nh]
    for (kind, body), nxt in zip(ext, kinds[1:], strict=True):
        if kind == 44:  # fragment: fixed 8 bytes
            chain += struct.pack("!BB", nxt, 0) + body[:6].ljust(6, b"\0")
        else:
            raw = body.ljust(max(6, len(body) + (-(len(body) + 2) % 8)), b"\0")
            chain += struct.pack("!BB", nxt, (len(raw) + 2) // 8 - 1) + raw
    plen = payload_len if payload_len is not None else len(chain) + len(l4)
    first = kinds[0]
    return struct.pack("!IHBB16s16s", 6 << 28, plen, first, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + chain + l4


def udp6_frame(payload: bytes, *, src=CLIENT6, dst=SERVER6, sport=40000, dport=11211,
               ext: list[tuple[int, bytes]] = ()) -> bytes:
    u = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return eth(ipv6(src, dst, 17, u, ext=ext), etype=0x86DD)


def tcp6_frame(payload: bytes, *, seq: int, sport=45000, src=CLIENT6, dst=SERVER6, dport=11211,
               flags=0x18, ext: list[tuple[int, bytes]] = ()) -> bytes:
    t = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, flags, 65535, 0, 0) + payload
    return eth(ipv6(src, dst, 6, t, ext=ext), etype=0x86DD)


def udp6_checksum(src: str, dst: str, udp: bytes) -> int:
    """The UDP checksum of an IPv6 datagram (udp: its header with the checksum field 0, and
    its payload); 0 is sent as 0xffff."""
    pseudo = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
              + struct.pack("!I3xB", len(udp), 17))
    return csum(pseudo + udp) or 0xFFFF


def udp6_checksum_ok(frame: bytes) -> bool:
    """An Ethernet/IPv6/UDP frame (no extension headers) whose UDP checksum verifies."""
    ip, udp = frame[14:54], frame[54:]
    pseudo = ip[8:40] + struct.pack("!I3xB", len(udp), 17)
    return udp[6:8] != b"\0\0" and csum(pseudo + udp) == 0


def mc_udp6(rid: int, body: bytes, **kw) -> bytes:
    """A client's memcached UDP request over IPv6."""
    return udp6_frame(struct.pack("!HHHH", rid, 0, 1, 0) + body, **kw)


def mc_reply6(rid: int, body: bytes, *, client=CLIENT6, cport=40000, server=SERVER6) -> bytes:
    """memcached's UDP reply over IPv6, as the kernel sends it: hop limit 64, the checksum."""
    payload = struct.pack("!HHHH", rid, 0, 1, 0) + body
    u = struct.pack("!HHHH", 11211, cport, 8 + len(payload), 0) + payload
    u = u[:6] + struct.pack("!H", udp6_checksum(server, client, u)) + u[8:]
    return eth(ipv6(server, client, 17, u), dst=CMAC, src=SMAC, etype=0x86DD)

"""Structure-aware fuzzing of the pinned XDP and TC programs with BPF_PROG_TEST_RUN.

    python -m tests.correctness.fuzz --frames 100000 [--seed S] [--report out.json]

An interface d0 (198.19.100.1/24; a veth, this kernel has no dummy driver) in a namespace of
its own carries a real config; the pinned roots (<bpffs>/xdp_root, <bpffs>/tc_root) run with
ingress_ifindex = d0. A few keys are cached through the real path (an XDP miss, then
memcached's reply through TC), so the fuzzer has hits to aim at. Frames are built around real
memcached requests and then bent: truncations, lying IP/UDP/binary lengths, odd frame headers,
IP options, fragments, VLAN tags, IPv6, huge and empty keys, bad binary magic/extras/key
lengths, TCP writes split at random points, spoofed and out-of-list sources, random byte flips.

Invariant (XDP): XDP_PASS with the frame unchanged, or XDP_TX of a well-formed reply (L2-L4
mirrored, checksums right, the request id, "0 of 1") to an allowed client's plain GET that
carries exactly the cached bytes of cached keys, in order, or XDP_DROP of a frame that would
hide a write from the scanner (docs/HOSTILE_INPUT.md: a first fragment of TCP to memcached's
port or one too short for its TCP/UDP header, an IPv6 chain longer than the scanner walks,
data on a SYN). Nothing else (no XDP_ABORTED, no changed pass). TC: TC_ACT_OK, frame
unchanged.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import socket
import struct
import sys
import time
from pathlib import Path

from harness.frames import CLIENT6, SERVER6, csum, ipv6, udp6_checksum_ok
from harness.testrun import Prog, xdp_ctx
from tests.correctness import lab as L

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3
TC_ACT_OK = 0
CMAC = bytes.fromhex("02000000c0de")
SMAC = bytes.fromhex("02000000beef")
BIN = struct.Struct("!BBHBBHIIQ")
REGRESSIONS = Path(__file__).parent / "regressions" / "xdp_frames.txt"



# ---------------------------------------------------------------- frames

def ipv4(src: str, dst: str, proto: int, l4: bytes, *, frag: int = 0, options: bytes = b"",
         tot_len: int | None = None, ihl: int | None = None, ident: int = 0) -> bytes:
    ihl = ihl if ihl is not None else 5 + len(options) // 4
    tot = tot_len if tot_len is not None else 20 + len(options) + len(l4)
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | (ihl & 15), 0, tot & 0xFFFF, ident, frag, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst)) + options
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + l4


def eth(payload: bytes, *, dst=SMAC, src=CMAC, etype=0x0800, vlan: int | None = None) -> bytes:
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return dst + src + tag + struct.pack("!H", etype) + payload


def udp(payload: bytes, *, src=L.CADDR, dst=L.SADDR, sport=40000, dport=L.PORT,
        ulen: int | None = None, **ipkw) -> bytes:
    ln = ulen if ulen is not None else 8 + len(payload)
    return ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, ln & 0xFFFF, 0) + payload, **ipkw)


def tcp(payload: bytes, *, seq: int, src=L.CADDR, dst=L.SADDR, sport=45000, dport=L.PORT,
        flags=0x18, doff=5, **ipkw) -> bytes:
    opts = b"\x01" * ((doff - 5) * 4) if doff > 5 else b""
    t = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 1, (doff & 15) << 4, flags,
                    65535, 0, 0) + opts + payload
    return ipv4(src, dst, 6, t, **ipkw)


def mframe(rid: int, body: bytes, seq: int = 0, count: int = 1, res: int = 0) -> bytes:
    return struct.pack("!HHHH", rid, seq, count, res) + body


def bin_req(op: int, key: bytes, *, opaque=0, extras=b"", value=b"", magic=0x80,
            klen=None, elen=None, body=None) -> bytes:
    b = len(extras) + len(key) + len(value)
    return BIN.pack(magic, op, len(key) if klen is None else klen,
                    len(extras) if elen is None else elen, 0, 0, b if body is None else body,
                    opaque, 0) + extras + key + value


# ---------------------------------------------------------------- test runs

# ---------------------------------------------------------------- the environment

CACHED = {  # key -> (value, flags); filled through the real miss + reply path
    b"fz:a": (b"alpha", 0),
    b"fz:b": (b"B" * 700, 4294967295),
    b"fz:c": (b"", 17),
    b"fz:d": (b"delta\r\nEND\r\n", 3),   # a value that looks like protocol
}
BIN_CACHED = {b"fz:e": (b"echo-binary", 99, 0x1122334455667788)}  # filled from a binary reply
KEYS = [*CACHED, *BIN_CACHED, b"fz:miss", b"other"]
ALLOWED6 = "fd00:9::/64"  # CLIENT6's network; l2()'s fd00::2 is outside it


class Env:
    def __init__(self, *, tag: str = "fuzz", hold_ms: int = 0, dual: bool = False) -> None:
        """dual: memcached.address '::' (GETs answered over both families, to any unicast
        address), else memcached's IPv4 address (IPv6 GETs never answered)."""
        from mcache_agent.dataplane import Dataplane

        self.ns = f"mccf-{tag}"
        self.pin = Path(f"/sys/fs/bpf/mcache-corr-{tag}")
        self.dual = dual
        L.sh(f"ip netns del {self.ns}", check=False)
        L.sh(f"ip netns add {self.ns}")
        L.sh(f"ip -n {self.ns} link add d0 type veth peer name d1 && "
             f"ip -n {self.ns} link set d1 up && ip -n {self.ns} addr add "
             f"{L.SADDR}/24 dev d0 && ip -n {self.ns} link set d0 up && "
             f"ip -n {self.ns} link set lo up")
        self.dp = Dataplane(self.pin)
        # dual: GETs over IPv6 are answered too, from CLIENT6's network only
        text = L.config_text(1, "d0", hold_ms=hold_ms, ttl_ms=3_600_000, ipv6=dual,
                             allowed6=ALLOWED6)
        with L.in_ns(self.ns):
            self.dp.apply(L.load(text), None)
            self.ifindex = socket.if_nametoindex("d0")
        self.xdp = Prog(f"{self.pin}/xdp_root")
        self.tc = Prog(f"{self.pin}/tc_root")
        self.rid = 0
        self.allowed = ipaddress.IPv4Network(L.ALLOWED)
        self.allowed6 = ipaddress.IPv6Network(ALLOWED6)

    def close(self) -> None:
        self.xdp.close()
        self.tc.close()
        with L.in_ns(self.ns):
            self.dp.teardown()
        L.sh(f"ip netns del {self.ns}", check=False)

    def x(self, frame: bytes) -> tuple[int, bytes]:
        with L.in_ns(self.ns):
            return self.xdp.run(frame, xdp_ctx(len(frame), self.ifindex))

    def t(self, frame: bytes) -> tuple[int, bytes]:
        return self.tc.run(frame)

    def clear_hold(self) -> None:
        """Undo fuzzed flushes' effect on fills (a pending delayed flush, the hold after a
        flush), which would keep the cache empty for the rest of the run. The generation is
        kept."""
        from mcache_agent.dataplane import libbpf

        zero = (0).to_bytes(4, "little")
        with libbpf.opened(self.dp.state_path("state")) as fd:
            state = libbpf.map_lookup(fd, zero, 24) or bytes(24)
            # keep the generation; no delayed flush pending, no recent flush holding fills
            libbpf.map_update(fd, zero, state[:8] + bytes(16))

    def fill(self) -> None:
        """(Re)fill the model keys through the real path: a miss, then memcached's reply."""
        self.clear_hold()
        for k, (v, fl) in CACHED.items():
            self.rid = (self.rid + 1) & 0xFFFF
            req = eth(udp(mframe(self.rid, b"get " + k + b"\r\n"), sport=40001))
            rc, _ = self.x(req)
            if rc == XDP_TX:
                continue  # already cached
            body = b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (k, fl, len(v), v)
            rep = eth(udp(mframe(self.rid, body), src=L.SADDR, dst=L.CADDR, sport=L.PORT,
                          dport=40001, frag=0x4000), dst=CMAC, src=SMAC)
            self.t(rep)
        for k, (v, fl, cas) in BIN_CACHED.items():
            self.rid = (self.rid + 1) & 0xFFFF
            req = eth(udp(mframe(self.rid, bin_req(0x0C, k, opaque=7)), sport=40002))
            rc, _ = self.x(req)
            if rc == XDP_TX:
                continue
            ex = struct.pack("!I", fl)
            res = BIN.pack(0x81, 0x0C, len(k), 4, 0, 0, 4 + len(k) + len(v), 7, cas) + ex + k + v
            rep = eth(udp(mframe(self.rid, res), src=L.SADDR, dst=L.CADDR, sport=L.PORT,
                          dport=40002), dst=CMAC, src=SMAC)
            self.t(rep)

    def cached_now(self) -> set[bytes]:
        """Which model keys the cache answers right now (probe GETs; they are not fuzz)."""
        out = set()
        for k in [*CACHED, *BIN_CACHED]:
            rc, _ = self.x(eth(udp(mframe(1, b"get " + k + b"\r\n"), sport=40003)))
            if rc == XDP_TX:
                out.add(k)
        return out


# ---------------------------------------------------------------- the oracle

def may_drop(env: Env, frame: bytes) -> bool:
    """The frame is one XDP drops because it would hide a write (mirrors ipv4_l3, ipv6_l3
    and tcp_segment of bpf/xdp_ingress.c, in their order)."""
    n = len(frame)
    if n < 14:
        return False
    etype = frame[12:14]
    if etype == b"\x08\x00":
        if n < 34:
            return False
        ihl, proto = (frame[14] & 0x0F) * 4, frame[23]
        if not env.dual and frame[30:34] != socket.inet_aton(L.SADDR):
            return False
        if frame[14] >> 4 != 4 or ihl < 20 or proto not in (6, 17):
            return False
        frag = struct.unpack_from("!H", frame, 20)[0]
        if frag & 0x1FFF:
            return False
        tot = struct.unpack_from("!H", frame, 16)[0]
        if tot < ihl or 14 + tot > n:
            return False
        l4, mf = 14 + ihl, bool(frag & 0x2000)
        end = 14 + tot
    elif etype == b"\x86\xdd":
        if n < 54 or frame[14] >> 4 != 6:
            return False
        end = 54 + struct.unpack_from("!H", frame, 18)[0]
        if end > n:
            return False
        proto, l4, mf = frame[20], 54, False
        for _ in range(4):
            if proto in (6, 17):
                break
            if proto in (0, 43, 60):
                if l4 + 2 > n:
                    return False
                proto, l4 = frame[l4], l4 + (frame[l4 + 1] + 1) * 8
            elif proto == 44:
                if l4 + 8 > n or struct.unpack_from("!H", frame, l4 + 2)[0] & 0xFFF8:
                    return False
                proto, l4, mf = frame[l4], l4 + 8, True
            else:
                return False
        if proto not in (6, 17):
            return True  # a chain longer than walked
        if l4 > end or l4 > 0xFFFF:
            return False
        ihl = 0
    else:
        return False
    hdr = 20 if proto == 6 else 8
    if l4 + hdr > n:
        return mf  # a first fragment too short for its header
    if struct.unpack_from("!H", frame, l4 + 2)[0] != L.PORT:
        return False
    if proto == 17:
        return False  # the guard is off here
    doff = (frame[l4 + 12] >> 4) * 4
    if doff < 20 or l4 + doff > end:
        return False
    if mf:
        return True  # a first fragment of TCP to memcached
    return end - l4 - doff > 0 and bool(frame[l4 + 13] & 0x02)  # data on a SYN


def check_xdp(env: Env, frame: bytes, rc: int, out: bytes) -> str | None:
    """None if the outcome is allowed, else what is wrong."""
    if rc == XDP_PASS:
        return None if out == frame else "XDP_PASS with a changed frame"
    if rc == XDP_DROP:
        return None if may_drop(env, frame) else "XDP_DROP of a frame that hides nothing"
    if rc != XDP_TX:
        return f"verdict {rc}"
    # A TX must answer a well-formed, allowed, plain IPv4 or IPv6 UDP GET to memcached, sent
    # to this host (not to an Ethernet group address).
    if len(frame) < 14 or frame[0] & 1:
        return "TX of a frame sent to an Ethernet group address"
    ipv6 = frame[12:14] == b"\x86\xdd"
    if ipv6 and not env.dual:
        return "TX over IPv6 while memcached.address is IPv4"
    req = request6(env, frame) if ipv6 else request4(env, frame)
    if isinstance(req, str):
        return req
    payload, rid = req
    if len(out) > 14 + 1500:
        return f"reply of {len(out)} bytes: over 1500 on the wire"
    if out[0:6] != frame[6:12] or out[6:12] != frame[0:6] or out[12:14] != frame[12:14]:
        return "reply L2 not mirrored"
    err = reply6(frame, out) if ipv6 else reply4(frame, out)
    if err:
        return err
    rp = out[62:] if ipv6 else out[42:]
    rrid, rseq, rcnt, rres = struct.unpack_from("!HHHH", rp)
    if rrid != rid or rseq != 0 or rcnt != 1 or rres != 0:
        return "reply frame header"
    body, rb = payload[8:], rp[8:]
    if body[:1] == b"\x80":
        return check_binary(body, rb)
    return check_ascii(body, rb)


def request4(env: Env, frame: bytes) -> tuple[bytes, int] | str:
    """An answered IPv4 request's UDP payload and request id, or what is wrong with it."""
    if len(frame) < 14 + 20 + 8 + 8 or frame[12:14] != b"\x08\x00":
        return "TX of a frame that is neither IPv4 nor IPv6"
    ip = frame[14:34]
    if ip[0] != 0x45 or ip[9] != 17:
        return "TX of a frame with IP options or not UDP"
    tot = struct.unpack_from("!H", ip, 2)[0]
    if struct.unpack_from("!H", ip, 6)[0] & 0x3FFF:
        return "TX of an IP fragment"
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    if ipaddress.IPv4Address(src) not in env.allowed and not src.startswith("127."):
        return f"TX to a client outside the allow-list ({src})"
    if dst != L.SADDR and (not env.dual or ipaddress.IPv4Address(dst).is_multicast
                           or dst == "255.255.255.255"):
        return f"TX for a request to {dst}"  # (a wildcard address: any unicast one)
    _sport, dport, ulen = struct.unpack_from("!HHH", frame, 34)
    if dport != L.PORT or 14 + tot > len(frame) or 20 + ulen > tot:
        return "TX of a request with bad ports/lengths"
    return request_payload(frame[42:42 + ulen - 8])


def request6(env: Env, frame: bytes) -> tuple[bytes, int] | str:
    """The same for IPv6: no extension headers, an allowed client, a unicast destination."""
    if len(frame) < 14 + 40 + 8 + 8:
        return "TX of a short IPv6 frame"
    ip = frame[14:54]
    plen = struct.unpack_from("!H", ip, 4)[0]
    if ip[0] >> 4 != 6 or ip[6] != 17:
        return "TX of an IPv6 frame with extension headers or not UDP"
    src = ipaddress.IPv6Address(ip[8:24])
    dst = ipaddress.IPv6Address(ip[24:40])
    if src not in env.allowed6 and src != ipaddress.IPv6Address("::1"):
        return f"TX to an IPv6 client outside the allow-list ({src})"
    if dst.is_multicast or dst.is_link_local:
        return f"TX for a request to {dst}"
    _sport, dport, ulen = struct.unpack_from("!HHH", frame, 54)
    if dport != L.PORT or 54 + plen > len(frame) or ulen > plen:
        return "TX of an IPv6 request with bad ports/lengths"
    return request_payload(frame[62:62 + ulen - 8])


def request_payload(payload: bytes) -> tuple[bytes, int] | str:
    rid, seq, cnt, _ = struct.unpack_from("!HHHH", payload)
    if seq != 0 or cnt != 1:
        return "TX of a request that is not datagram 0 of 1"
    return payload, rid


def reply4(frame: bytes, out: bytes) -> str | None:
    """What is wrong with an IPv4 reply's headers (None: nothing)."""
    ip, rip = frame[14:34], out[14:34]
    if rip[0] != 0x45 or csum(rip) != 0 or rip[9] != 17:
        return "reply IPv4 header bad (version/ihl/checksum/proto)"
    rtot = struct.unpack_from("!H", rip, 2)[0]
    if 14 + rtot != len(out):
        return f"reply tot_len {rtot} vs frame {len(out)}"
    if rip[12:16] != ip[16:20] or rip[16:20] != ip[12:16]:
        return "reply addresses not mirrored"
    sport, dport = struct.unpack_from("!HH", frame, 34)
    rs, rd, rl, _ = struct.unpack_from("!HHHH", out, 34)
    if rs != dport or rd != sport or rl != rtot - 20:
        return "reply UDP ports/length"
    return None


def reply6(frame: bytes, out: bytes) -> str | None:
    """What is wrong with an IPv6 reply's headers, its mandatory UDP checksum among them."""
    ip, rip = frame[14:54], out[14:54]
    plen = struct.unpack_from("!H", rip, 4)[0]
    if rip[0] >> 4 != 6 or rip[6] != 17 or rip[7] != 64 or 54 + plen != len(out):
        return "reply IPv6 header bad (version/next header/hop limit/payload length)"
    if rip[8:24] != ip[24:40] or rip[24:40] != ip[8:24]:
        return "reply IPv6 addresses not mirrored"
    sport, dport = struct.unpack_from("!HH", frame, 54)
    rs, rd, rl, _ = struct.unpack_from("!HHHH", out, 54)
    if rs != dport or rd != sport or rl != plen:
        return "reply UDP ports/length"
    if not udp6_checksum_ok(out):
        return "reply UDP checksum wrong"
    return None


def model(key: bytes) -> tuple[bytes, int] | None:
    """(value, flags) of a key the model caches, else None."""
    if key in CACHED:
        return CACHED[key]
    if key in BIN_CACHED:
        return BIN_CACHED[key][:2]
    return None


def check_meta(req: bytes, rb: bytes) -> str | None:
    """An mg answered by the kernel: only flags it may answer (v f k s O q, each once), a
    cached key, and memcached's reply for them, return flags in the order asked."""
    if not req.endswith(b"\r\n") or req.count(b"\r\n") != 1:
        return f"mg TX for a request that is not one line: {req[:60]!r}"
    toks = [t for t in req[:-2].split(b" ") if t]
    if len(toks) < 2:
        return "mg TX without a key"
    k, flags = toks[1], toks[2:]
    if (cached := model(k)) is None:
        return f"mg TX answering an uncached key {k[:40]!r}"
    v, fl = cached
    if len({f[:1] for f in flags}) != len(flags):
        return f"mg TX with a repeated flag: {req[:60]!r}"
    ret = b""
    for f in flags:
        if f in (b"v", b"q"):
            continue
        if f == b"f":
            ret += b" f%d" % fl
        elif f == b"k":
            ret += b" k" + k
        elif f == b"s":
            ret += b" s%d" % len(v)
        elif f[:1] == b"O" and len(f) <= 33:
            ret += b" " + f
        else:
            return f"mg TX with flag {f[:20]!r}"
    want = b"VA %d%s\r\n%s\r\n" % (len(v), ret, v) if b"v" in flags else b"HD%s\r\n" % ret
    if rb != want:
        return f"mg reply differs: {rb[:80]!r} != {want[:80]!r}"
    return None


def check_ascii(req: bytes, rb: bytes) -> str | None:
    if req.startswith(b"mg "):
        return check_meta(req, rb)
    if not req.startswith(b"get ") or not req.endswith(b"\r\n") or req.count(b"\r\n") != 1:
        return f"ASCII TX for a request that is not one get line: {req[:60]!r}"
    keys = req[4:-2].split(b" ")
    keys = [k for k in keys if k]
    want = b""
    for k in keys:
        if (cached := model(k)) is None:
            return f"TX answering an uncached key {k[:40]!r}"
        v, fl = cached
        want += b"VALUE %s %d %d\r\n%s\r\n" % (k, fl, len(v), v)
    want += b"END\r\n"
    if rb != want:
        return f"ASCII reply differs: {rb[:80]!r} != {want[:80]!r}"
    return None


def check_binary(req: bytes, rb: bytes) -> str | None:
    if len(req) < 24:
        return "binary TX for a short request"
    _magic, op, klen, elen, _, _, body, opaque, _ = BIN.unpack_from(req)
    if op not in (0x00, 0x09, 0x0C, 0x0D) or elen != 0 or klen != body or 24 + body != len(req):
        return f"binary TX for a request that is not one plain GET: {req[:40].hex()}"
    key = req[24:24 + klen]
    if key not in BIN_CACHED:
        return f"binary TX for a key not filled from a binary reply: {key[:40]!r}"
    v, fl, cas = BIN_CACHED[key]
    with_key = op in (0x0C, 0x0D)
    k = key if with_key else b""
    want = BIN.pack(0x81, op, len(k), 4, 0, 0, 4 + len(k) + len(v), opaque, cas) + \
        struct.pack("!I", fl) + k + v
    if rb != want:
        return f"binary reply differs: {rb[:60].hex()} != {want[:60].hex()}"
    return None


# ---------------------------------------------------------------- the generator

def rand_key(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.6:
        return rng.choice(KEYS)
    if r < 0.7:
        return b""
    if r < 0.8:
        return b"k" * rng.choice([1, 63, 64, 65, 249, 250, 251, 255, 300, 400])
    if r < 0.9:
        return bytes(rng.randrange(33, 127) for _ in range(rng.randint(1, 20)))
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))


def ascii_body(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.45:
        keys = [rand_key(rng) for _ in range(rng.choice([1, 1, 1, 2, 3, 8, 9, 12]))]
        sep = b" " if rng.random() < 0.9 else rng.choice([b"  ", b"\t", b" \r\n"])
        cmd = rng.choice([b"get", b"get", b"get", b"gets", b"GET", b"gat 0", b"mg", b"ge"])
        end = rng.choice([b"\r\n"] * 8 + [b"\n", b"", b"\r", b"\r\n\r\n", b"\r\nget fz:a\r\n"])
        return cmd + b" " + sep.join(keys) + end
    if r < 0.8:
        k = rand_key(rng)
        v = os.urandom(rng.choice([0, 1, 5, 100]))
        n = len(v) if rng.random() < 0.8 else rng.randint(0, 2000)
        cmd = rng.choice([b"set", b"add", b"replace", b"append", b"prepend", b"cas", b"ms"])
        nr = b" noreply" if rng.random() < 0.3 else b""
        if cmd == b"ms":
            return b"ms %s %d%s\r\n%s\r\n" % (k, n, b" b" if rng.random() < 0.2 else b"", v)
        extra = b" 1" if cmd == b"cas" else b""
        return b"%s %s 0 0 %d%s%s\r\n%s\r\n" % (cmd, k, n, extra, nr, v)
    if r < 0.93:
        k = rand_key(rng)
        return rng.choice([b"delete %s\r\n", b"incr %s 1\r\n", b"decr %s 1\r\n",
                           b"touch %s 10\r\n", b"md %s\r\n", b"ma %s\r\n", b"mg %s v\r\n",
                           b"gat 10 %s\r\n"]) % k
    return rng.choice([b"flush_all\r\n", b"flush_all 0\r\n", b"version\r\n", b"stats\r\n",
                       b"\r\n", b"", os.urandom(rng.randint(1, 64))])


def binary_body(rng: random.Random) -> bytes:
    k = rand_key(rng)[:300]
    op = rng.choice([0x00, 0x09, 0x0C, 0x0D] * 3 + [0x01, 0x04, 0x05, 0x0E, 0x11, 0x1C, 0x08,
                                                    0x0A, rng.randrange(256)])
    extras = b"" if op in (0x00, 0x09, 0x0C, 0x0D, 0x04) else os.urandom(rng.choice([0, 4, 8]))
    value = os.urandom(rng.choice([0, 0, 3, 50])) if op not in (0x00, 0x09, 0x0C, 0x0D) else b""
    kw = {}
    r = rng.random()
    if r < 0.1:
        kw["magic"] = rng.choice([0x81, 0x00, 0xFF, 0x7F])
    elif r < 0.2:
        kw["klen"] = rng.randrange(0x10000)
    elif r < 0.3:
        kw["elen"] = rng.randrange(256)
    elif r < 0.4:
        kw["body"] = rng.choice(
            [0, max(0, len(k) - 1), len(k) + 1, 0xFFFFFFFF, rng.randrange(1 << 32)]
        )
    b = bin_req(op, k, opaque=rng.randrange(1 << 32), extras=extras, value=value, **kw)
    if rng.random() < 0.1:  # two requests in one datagram
        b += bin_req(0x00, rng.choice(KEYS), opaque=1)
    return b


def udp_frame(rng: random.Random, body: bytes) -> bytes:
    rid = rng.randrange(0x10000)
    r = rng.random()
    if r < 0.85:
        fh = mframe(rid, b"")
    else:
        fh = struct.pack("!HHHH", rid, rng.choice([0, 1, 5]), rng.choice([0, 1, 2]),
                         rng.choice([0, 1]))
    pay = fh + body
    src = L.CADDR
    r = rng.random()
    if r < 0.08:  # spoofed: anywhere, or this network but outside the allow-list
        src = rng.choice([f"{L.NET}.{rng.randint(128, 255)}", socket.inet_ntoa(os.urandom(4))])
    elif r < 0.1:
        src = "127.0.0.1"
    kw: dict = {}
    r = rng.random()
    if r < 0.05:
        kw["options"] = b"\x01" * (4 * rng.randint(1, 10))
    elif r < 0.1:
        kw["frag"] = rng.choice([0x2000, 0x2000 | 5, 5, 0x4000 | 1, 0x3FFF])
    elif r < 0.15:
        kw["tot_len"] = rng.choice([0, 20, 27, 28 + len(pay) - 1, 28 + len(pay) + 1, 0xFFFF])
    elif r < 0.2:
        kw["ulen"] = rng.choice([0, 7, 8, 9, 16, 17, 8 + len(pay) - 1, 8 + len(pay) + 1, 0xFFFF])
    elif r < 0.22:
        kw["ihl"] = rng.choice([0, 1, 4, 6, 15])
    dst, dport, sport = L.SADDR, L.PORT, rng.choice([40000, 40001, 53, 11211, 65535])
    r = rng.random()
    if r < 0.03:
        dst = rng.choice(["198.19.100.3", "10.0.0.1"])
    elif r < 0.06:
        dport = rng.choice([11212, 53, 0])
    return udp(pay, src=src, dst=dst, sport=sport, dport=dport, **kw)


def tcp_frames(rng: random.Random) -> list[bytes]:
    """A write stream split into segments at random points (commands cut across them)."""
    stream = b"".join(ascii_body(rng) for _ in range(rng.randint(1, 5)))
    if rng.random() < 0.2:
        stream = binary_body(rng) + stream
    seq = rng.randrange(1 << 32)
    sport = rng.choice([45000, 45001])
    cuts = sorted(rng.sample(range(1, max(2, len(stream))), k=min(rng.randint(0, 3),
                                                                  max(0, len(stream) - 2))))
    out, prev = [], 0
    for c in [*cuts, len(stream)]:
        seg = stream[prev:c]
        s = seq + prev
        if rng.random() < 0.05:
            s += rng.randint(1, 100)  # a gap
        kw = {}
        if rng.random() < 0.05:
            kw["frag"] = rng.choice([0x2000, 5])
        out.append(tcp(seg, seq=s, sport=sport, flags=rng.choice([0x18] * 9 + [0x11, 0x04]),
                       doff=rng.choice([5] * 9 + [8, 4]), **kw))
        prev = c
    return out


def l2(rng: random.Random, ip: bytes) -> bytes:
    r = rng.random()
    if r < 0.04:
        return eth(ip, vlan=rng.randrange(4096))
    if r < 0.12:  # IPv6 carrying the same UDP payload, from an allowed client or not
        ip6 = struct.pack("!IHBB16s16s", 0x60000000, len(ip) - 20, 17, 64,
                          socket.inet_pton(socket.AF_INET6, rng.choice(["fd00::2", CLIENT6])),
                          socket.inet_pton(socket.AF_INET6, SERVER6)) + ip[20:]
        return eth(ip6, etype=0x86DD)
    if r < 0.14:
        return eth(ip, etype=rng.choice([0x0806, 0x88A8, 0x0000]))
    return eth(ip)


def mutate(rng: random.Random, f: bytes) -> bytes:
    r = rng.random()
    if r < 0.1:
        return f[: rng.randint(14, max(14, len(f) - 1))]  # truncated
    if r < 0.2:
        b = bytearray(f)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] = rng.randrange(256)
        return bytes(b)
    if r < 0.25:
        return f + os.urandom(rng.randint(1, 40))  # Ethernet padding / trailing garbage
    return f


MG_FLAGS = [b"v", b"f", b"k", b"s", b"q", b"Oop", b"O", b"t", b"c", b"N30", b"b", b"v",
            b"O" + b"x" * 33, b"h", b"u"]


def get_body(rng: random.Random) -> bytes:
    """A plain GET of cached keys (the frames that can be answered), maybe bent a little."""
    if rng.random() < 0.15:  # a meta get, with flags the cache may answer for or not
        flags = rng.sample(MG_FLAGS, rng.randint(0, 5))
        k = rng.choice([*CACHED, *BIN_CACHED, b"fz:miss"])
        return b"mg " + b" ".join([k, *flags]) + b"\r\n"
    if rng.random() < 0.3:
        k = rng.choice([*BIN_CACHED, *CACHED])
        return bin_req(rng.choice([0x00, 0x09, 0x0C, 0x0D]), k, opaque=rng.randrange(1 << 32))
    keys = [rng.choice([*CACHED, *BIN_CACHED]) for _ in range(rng.choice([1, 1, 2, 3, 8]))]
    return b"get " + b" ".join(keys) + b"\r\n"


def ipv6_frame(rng: random.Random) -> bytes:
    """IPv6 to memcached's port (or not): UDP or TCP, maybe behind extension headers or in a
    fragment, with any body, or a GET of cached keys: answered only when plain (no extension
    headers), else passed unchanged, writes invalidated."""
    kinds = [0, 43, 60, 44, 0, 60]
    ext = [(k, os.urandom(rng.choice([0, 4, 6, 14])) if k != 44 else
            struct.pack("!HI", rng.choice([0, 1, 8, 9]), 5))
           for k in rng.sample(kinds, rng.choice([0, 0, 1, 2, 3, 5]))]
    r = rng.random()
    body = get_body(rng) if r < 0.4 else ascii_body(rng) if r < 0.8 else binary_body(rng)
    port = L.PORT if rng.random() < 0.9 else rng.randrange(1, 65536)
    if rng.random() < 0.5:
        l4 = struct.pack("!HHHH", 40000, port, 16 + len(body), 0) + mframe(rng.randrange(65536),
                                                                           body)
        nh = 17
    else:
        l4 = struct.pack("!HHIIBBHHH", 45000, port, rng.randrange(1 << 32), 1, 5 << 4, 0x18,
                         65535, 0, 0) + body
        nh = 6
    return eth(ipv6(CLIENT6, SERVER6, nh, l4, ext=ext), etype=0x86DD)


def generate(rng: random.Random) -> list[bytes]:
    r = rng.random()
    if r < 0.4:
        return [mutate(rng, l2(rng, udp_frame(rng, get_body(rng))))]
    if r < 0.5:
        f = ipv6_frame(rng)
        return [mutate(rng, f) if rng.random() < 0.3 else f]
    r = rng.random()
    if r < 0.15:
        return [mutate(rng, l2(rng, f)) if rng.random() < 0.3 else eth(f)
                for f in tcp_frames(rng)]
    body = binary_body(rng) if r < 0.4 else ascii_body(rng)
    return [mutate(rng, l2(rng, udp_frame(rng, body)))]


# ---------------------------------------------------------------- a run

def run(frames: int, seed: int = 1, env: Env | None = None, regressions: Path | None = None,
        refill_every: int = 10) -> dict:
    own = env is None
    env = env or Env()
    rng = random.Random(seed)
    stats = {"frames": 0, "tx": 0, "tx6": 0, "pass": 0, "tx_spoofed": 0, "spoofed": 0,
             "rejected": 0, "tc_frames": 0, "failures": 0, "failure_examples": []}
    found: list[str] = []
    before = env.dp.counters()
    t0 = time.monotonic()

    def one(f: bytes) -> None:
        try:
            rc, out = env.x(f)
        except OSError:
            stats["rejected"] += 1  # the kernel refused the test input (e.g. shorter than ETH_HLEN)
            return
        stats["frames"] += 1
        stats["tx" if rc == XDP_TX else "pass"] += rc in (XDP_TX, XDP_PASS)
        stats["tx6"] += rc == XDP_TX and f[12:14] == b"\x86\xdd"
        if len(f) >= 34 and f[12:14] == b"\x08\x00":
            src = ipaddress.IPv4Address(f[26:30])
            if src not in env.allowed and not src.is_loopback:
                stats["spoofed"] += 1
                stats["tx_spoofed"] += rc == XDP_TX
        if rc == XDP_TX:
            stats["max_reply"] = max(stats.get("max_reply", 0), len(out))
            stats["max_amplification"] = round(max(stats.get("max_amplification", 0),
                                                   len(out) / len(f)), 2)
        err = check_xdp(env, f, rc, out)
        if err:
            stats["failures"] += 1
            if len(stats["failure_examples"]) < 10:
                stats["failure_examples"].append({"error": err, "frame": f.hex()})
            found.append(f"# {err}\n{f.hex()}\n")

    try:
        env.fill()
        assert env.cached_now() == {*CACHED, *BIN_CACHED}, "the model keys did not get cached"
        if regressions and regressions.exists():
            for line in regressions.read_text().splitlines():
                if line and not line.startswith("#"):
                    one(bytes.fromhex(line))
        n = 0
        while stats["frames"] + stats["rejected"] < frames:
            for f in generate(rng):
                one(f)
            n += 1
            if n % refill_every == 0:
                env.fill()
            if n % 10 == 0:  # TC: any frame leaves unchanged with TC_ACT_OK
                f = mutate(rng, l2(rng, udp(mframe(rng.randrange(0x10000), ascii_body(rng)),
                                            src=L.SADDR, dst=L.CADDR, sport=L.PORT,
                                            dport=rng.choice([40000, 40001]))))
                try:
                    rc, out = env.t(f)
                except OSError:
                    stats["rejected"] += 1
                    continue
                stats["tc_frames"] += 1
                if rc != TC_ACT_OK or out != f:
                    stats["failures"] += 1
                    found.append(f"# TC verdict {rc}, changed={out != f}\n{f.hex()}\n")
        stats["seconds"] = round(time.monotonic() - t0, 1)
        stats["counters"] = L.delta(before, env.dp.counters())
        stats["seed"] = seed
        stats["found"] = found
        return stats
    finally:
        if own:
            env.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.correctness.fuzz")
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--report", default="")
    ap.add_argument("--save-failures", action="store_true",
                    help=f"append failing frames to {REGRESSIONS}")
    a = ap.parse_args(argv)
    rep = run(a.frames, a.seed, regressions=REGRESSIONS)
    found = rep.pop("found")
    if a.save_failures and found:
        with REGRESSIONS.open("a") as f:
            f.writelines(found)
    text = json.dumps(rep, indent=2)
    if a.report:
        Path(a.report).write_text(text + "\n")
    print(text)
    return 1 if rep["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

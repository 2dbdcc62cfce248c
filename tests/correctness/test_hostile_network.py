"""Hostile network: segments an attacker on the client's link forges (no connection, RST and
FIN, out of the window, ahead of what was read, duplicates, fragments) never move the write
scanner, never empty the cache and never make it serve a value memcached would not.

Each test runs a real memcached behind the real data plane in a namespace pair; the attacker
writes Ethernet frames straight onto the client's veth (AF_PACKET), with correct checksums,
from an allowed address and from one outside the allow-list.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import struct
import subprocess
import threading
import time

import pytest

from harness.frames import csum
from tests.correctness import checker
from tests.correctness import lab as L

TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_SEND_QUEUE = 19, 20, 21, 2
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
CI_OPS = 8000


def link_mac(ns: str, dev: str) -> bytes:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", dev], check=True,
                         capture_output=True, text=True).stdout
    return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))


class Attacker:
    """Frames onto the client's veth, addressed to memcached's (real MACs, real checksums)."""

    def __init__(self, lab: L.Lab) -> None:
        self.dmac = link_mac(lab.s, lab.sif)
        self.smac = link_mac(lab.c, lab.cif)
        with L.in_ns(lab.c):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            self.sock.bind((lab.cif, 0))
        self.sent = 0

    def close(self) -> None:
        self.sock.close()

    def ip(self, src: str, proto: int, l4: bytes, *, frag: int = 0x4000) -> bytes:
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), random.getrandbits(16), frag,
                        64, proto, 0, socket.inet_aton(src), socket.inet_aton(L.SADDR))
        h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
        return self.dmac + self.smac + b"\x08\x00" + h + l4

    @staticmethod
    def tcp_l4(src: str, sport: int, seq: int, flags: int, payload: bytes, ack: int = 0) -> bytes:
        t = struct.pack("!HHIIBBHHH", sport, L.PORT, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4,
                        flags, 65535, 0, 0) + payload
        pseudo = (socket.inet_aton(src) + socket.inet_aton(L.SADDR)
                  + struct.pack("!BBH", 0, 6, len(t)))
        return t[:16] + struct.pack("!H", csum(pseudo + t)) + t[18:]

    def tcp(self, src: str, sport: int, seq: int, flags: int = PSH | ACK, payload: bytes = b"",
            ack: int = 0) -> None:
        self.send(self.ip(src, 6, self.tcp_l4(src, sport, seq, flags, payload, ack)))

    def udp(self, src: str, sport: int, payload: bytes, *, frag: int = 0) -> None:
        u = struct.pack("!HHHH", sport, L.PORT, 8 + len(payload), 0) + payload
        self.send(self.ip(src, 17, u, frag=frag))

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)
        self.sent += 1


class Conn:
    """A client connection whose every send() is one segment (TCP_NODELAY, a pause after)."""

    def __init__(self, lab: L.Lab) -> None:
        with L.in_ns(lab.c):
            self.s = socket.create_connection((L.SADDR, L.PORT), timeout=2)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sport = self.s.getsockname()[1]
        self.sent = 0

    def next_seq(self) -> int:
        """The sequence number of the next byte this client sends (read in repair mode)."""
        self.s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        try:
            self.s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
            return int.from_bytes(self.s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4),
                                  "little")
        finally:
            self.s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)

    def send(self, data: bytes) -> None:
        self.s.sendall(data)
        time.sleep(0.03)  # its own segment, read before the next

    def expect(self, reply: bytes) -> None:
        got = b""
        while len(got) < len(reply):
            chunk = self.s.recv(4096)
            assert chunk, f"connection closed after {got!r}"
            got += chunk
        assert got == reply

    def close(self) -> None:
        self.s.close()


@pytest.fixture(scope="module")
def lab():
    lb = L.Lab("h", hold_ms=50).up()
    yield lb
    lb.down()


@pytest.fixture
def attacker(lab):
    a = Attacker(lab)
    yield a
    a.close()


def store(lab: L.Lab, key: bytes, value: bytes) -> None:
    c = Conn(lab)
    c.send(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
    c.expect(b"STORED\r\n")
    c.close()


def kernel_read(lab: L.Lab, key: bytes) -> bytes:
    """The value a UDP get returns, asserted to come from the kernel (a hit counted)."""
    before = lab.counters()
    with L.in_ns(lab.c):
        reply = L.udp_get_from(L.CADDR, key, random.getrandbits(16))
    d = L.delta(before, lab.counters())
    assert d.get("hit") == 1, (d, reply)
    return reply


def cached(lab: L.Lab, key: bytes, value: bytes) -> None:
    """key holds value in memcached and in the cache (a miss fills it, the next read hits)."""
    store(lab, key, value)
    with L.in_ns(lab.c):
        L.udp_get_from(L.CADDR, key, random.getrandbits(16))
    for _ in range(50):
        with contextlib.suppress(AssertionError):
            assert value in kernel_read(lab, key)
            return
        time.sleep(0.01)
    raise AssertionError(f"{key!r} was never served from the cache")


FORGED = [b"set k", b"delete %s\r\n", b"flush_all\r\n", b"set x 0 0 99999\r\n", b"\x80\x01",
          b"gat 0 %s"]


def forge_all(a: Attacker, conn_sport: int, real_seq: int, key: bytes) -> int:
    """Every forgery of the suite against one connection (and against none), from an allowed
    address and one outside the allow-list. The number of frames sent."""
    n0 = a.sent
    for src in (L.CADDR, L.OUTSIDER):
        for body in FORGED:
            p = body.replace(b"%s", key)
            a.tcp(src, random.randint(20000, 60000), random.getrandbits(32), payload=p)  # none
            if src != L.CADDR:
                continue  # only the connection's own address reaches its socket
            a.tcp(src, conn_sport, real_seq + 3_000_000, payload=p)  # out of the window
            a.tcp(src, conn_sport, real_seq - 70_000, payload=p)  # far behind
            a.tcp(src, conn_sport, real_seq + 200, payload=p)  # in the window, past a gap
        a.tcp(src, conn_sport, real_seq + 1_000_000, flags=RST)
        a.tcp(src, conn_sport, real_seq + 1_000_000, flags=FIN | ACK)
        a.tcp(src, conn_sport, real_seq - 5, flags=RST | ACK)
        a.tcp(src, conn_sport, random.getrandbits(32), flags=SYN)
    return a.sent - n0


# Where the scanner stands when the forgeries arrive: the bytes sent before them, and the
# bytes that finish the command after them (the value holds commands, as an attacker's would).
VALUE = b"0123456789\r\nset zz 0 0 999999\r\nflush_all\r\n"
STATES = {
    "line": (b"get a\r\n", b""),
    "value": (b"set big 0 0 %d\r\n" % len(VALUE) + VALUE[:10], VALUE[10:] + b"\r\n"),
    "carry": (b"set cut 0 0 ", b"3\r\nabc\r\n"),
    "long": (b"get " + b"k" * 200 + b" " + b"j" * 200, b" end\r\n"),  # past a window
}


@pytest.mark.parametrize("state", sorted(STATES))
def test_forged_segments_move_nothing_at_any_scanner_state(lab, attacker, state):
    """The connection is put in a scanner state, the attacker forges around it, then the
    connection writes a key: the write invalidates (no stale read), the keys the forgeries name
    stay cached, and nothing emptied the cache."""
    cached(lab, b"victim", b"old")
    cached(lab, b"bystander", b"kept")
    c = Conn(lab)
    head, tail = STATES[state]
    c.send(head)
    before = lab.counters()
    sent = forge_all(attacker, c.sport, c.next_seq(), b"bystander")
    time.sleep(0.1)
    d = L.delta(before, lab.counters())
    assert "fallback_flush" not in d and "flush" not in d and "invalidate" not in d, d
    assert d.get("unread", 0) + d.get("out_of_order", 0) >= 6, (sent, d)
    assert b"kept" in kernel_read(lab, b"bystander")
    c.send(tail + b"set victim 0 0 3\r\nnew\r\n")
    want = {"line": b"END\r\n", "value": b"STORED\r\n", "carry": b"STORED\r\n", "long": b"END\r\n"}
    c.expect(want[state] + b"STORED\r\n")
    c.close()
    with L.in_ns(lab.c):
        for _ in range(5):
            reply = L.udp_get_from(L.CADDR, b"victim", random.getrandbits(16))
            assert b"old" not in reply, reply
    assert b"kept" in kernel_read(lab, b"bystander")
    d = L.delta(before, lab.counters())
    assert "fallback_flush" not in d, d


def test_a_duplicate_of_a_read_segment_is_not_read_again(lab, attacker):
    """A replayed segment (same sequence number as one already read) changes nothing: the
    kernel drops it, and so does the scanner's reading."""
    c = Conn(lab)
    seq = c.next_seq()
    c.send(b"delete dup\r\n")
    c.expect(b"NOT_FOUND\r\n")
    cached(lab, b"dup", b"v1")
    before = lab.counters()
    attacker.tcp(L.CADDR, c.sport, seq, payload=b"delete dup\r\n")
    time.sleep(0.05)
    assert "invalidate" not in L.delta(before, lab.counters())
    assert b"v1" in kernel_read(lab, b"dup")
    c.send(b"delete dup\r\n")  # the connection goes on, read in order
    c.expect(b"DELETED\r\n")
    c.close()


def test_tcp_fragments_are_dropped_without_a_flush(lab, attacker):
    cached(lab, b"frag", b"kept")
    before = lab.counters()
    l4 = Attacker.tcp_l4(L.CADDR, 40001, 1, PSH | ACK, b"delete frag\r\n")
    attacker.send(attacker.ip(L.CADDR, 6, l4, frag=0x2000))  # a first fragment (MF)
    attacker.send(attacker.ip(L.CADDR, 6, l4[:8], frag=0x2000))  # too short for its header
    attacker.send(attacker.ip(L.CADDR, 6, l4[8:], frag=0x0001))  # a later fragment
    time.sleep(0.05)
    d = L.delta(before, lab.counters())
    assert d.get("hidden") == 2 and "fallback_flush" not in d, d
    assert b"kept" in kernel_read(lab, b"frag")


def attack_loop(lab: L.Lab, stop: threading.Event, seen: dict[str, int]) -> None:
    """Forgeries against the checker's live connections (their ports read from the server,
    as a sniffer would know them) until the run stops."""
    a = Attacker(lab)
    try:
        while not stop.is_set():
            out = subprocess.run(["ip", "netns", "exec", lab.s, "ss", "-Htn", "state",
                                  "established", f"( sport = :{L.PORT} )"],
                                 capture_output=True, text=True).stdout
            ports = [int(line.split()[-1].rsplit(":", 1)[1]) for line in out.splitlines()
                     if line.strip()]
            for port in ports[:8]:
                for body in FORGED:
                    p = body.replace(b"%s", b"k%d" % random.randrange(64))
                    seq = random.getrandbits(32)
                    a.tcp(L.CADDR, port, seq, payload=p)
                    a.tcp(L.CADDR, port, seq, flags=random.choice([RST, FIN | ACK, RST | ACK]))
            a.tcp(L.OUTSIDER, random.randint(20000, 60000), random.getrandbits(32),
                  payload=b"set k1")
            time.sleep(0.01)
        seen["frames"] = a.sent
    finally:
        a.close()


def test_checker_under_attack_reads_nothing_stale_and_nothing_is_flushed():
    """The coherence checker (TCP writers, UDP readers) while an attacker forges RST, FIN and
    data segments into its live connections: 0 stale reads, and no fallback flush."""
    lb = L.Lab("x", hold_ms=50).up()
    seen: dict[str, int] = {}
    try:
        rep = checker.run(CI_OPS, lab=lb, writers=4,
                          during=lambda stop: attack_loop(lb, stop, seen))
    finally:
        lb.down()
    print(rep, seen)
    assert rep["stale"] == 0, rep["stale_examples"]
    assert rep["bogus"] == 0 and rep["malformed"] == 0 and rep["lost"] == 0, rep
    assert seen.get("frames", 0) > 500, seen
    counters = rep["counters"]
    assert counters.get("hit", 0) > 100, counters
    assert counters.get("unread", 0) + counters.get("out_of_order", 0) > 100, counters
    assert counters.get("fallback_flush", 0) == 0, counters

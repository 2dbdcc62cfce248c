"""Coherence checker: real memcached with the cache attached, concurrent TCP writers and UDP
readers on a small hot keyset, a timestamped history, and a stale-read count.

    python -m tests.correctness.checker --ops 100000 --report out.json [--no-guard]

Writers (threads, each with its own TCP connection, in the client namespace):
  - pymemcache, acknowledged: set add replace append prepend cas touch delete incr decr
  - pymemcache, noreply: set append prepend delete touch
  - a raw socket writer that pipelines 2..6 commands per send (some noreply), one recv
Every write carries a unique token ("w<writer>.<seq>"): set/add/replace/cas store it,
append adds "+<token>", prepend "<token>-". Counter keys hold unique numbers (set N*1000)
and are changed by incr/decr (acknowledged: memcached returns the new number).

Readers (threads, UDP): ASCII get of one key, ASCII multi-get of 2..4 keys, meta get (mg),
binary GET and GETK; each sends a burst of requests (several GETs in flight at once: that
widens the race window the fill guard closes) and collects the replies. --reads picks one
kind only: "get" (single-key ASCII gets), "mg" (a meta-only client: mg with the client
flags, and mg of the value alone) or "multi32" (multi-gets of 32 keys: the written keys and
QUIET_KEYS, all stored once before the run, in a new order each time; no deletes then).

With --bypass (a lab with local_bypass on): the writers run on memcached's host (in its
namespace), so their connections join the local bypass and every write reaches the cache
through the sk_msg scanner; TCP readers on the bypass besides (gets, multi-gets and mgs
pipelined in one send, each reply read back in order: a reply lost, cut or out of order is
counted as lost or malformed).

Stale read. Write times are real-time intervals [invoke, ack] (a noreply write's ack is the
ack of the next acknowledged command on its connection; unknown if none). A read R of key k
returning value v is explained by the writes P(v) that produced it (the tokens in v, or the
writes whose result was the number v). R is STALE when some write W' to k that certainly
changed the value (acknowledged success) was invoked after every write of P(v) was
acknowledged (so memcached applied it after them: v was gone) and acknowledged before R was
sent. A read returning nothing is stale when a write that stored the key was acknowledged
before R was sent and no delete could have followed it. Only upper bounds of acks and lower
bounds of invokes are used, so a reported stale read is a real one (no false positives).
BOGUS: a value no write produced (a corrupted or mixed-up answer).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
import re
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from tests.correctness import lab as L

now = time.monotonic_ns
INF = 1 << 62
TOKEN = re.compile(rb"w\d+\.\d+")
MG_OPAQUE = b"Oq7"  # the opaque token the checker's mg readers send
READS = ("all", "get", "mg", "multi32")  # what the UDP readers send (Reader.request)
BIN = struct.Struct("!BBHBBHIIQ")


@dataclass
class Write:
    wid: int
    key: bytes
    kind: str
    invoke: int
    ack: int = INF          # upper bound of when memcached applied it (INF: unknown)
    ok: bool | None = None  # None: unknown (noreply)
    token: bytes = b""
    number: int | None = None  # counter keys: the value it produced
    conn: int = 0


@dataclass
class Read:
    key: bytes
    send: int
    recv: int
    value: bytes | None
    via: str


@dataclass
class History:
    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    lost: int = 0
    lost_at: list[int] = field(default_factory=list)
    requests: int = 0  # UDP requests the readers sent
    malformed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


TOKEN_KEYS = [f"ck:t{i}".encode() for i in range(6)]
COUNT_KEYS = [f"ck:n{i}".encode() for i in range(2)]
ALL_KEYS = TOKEN_KEYS + COUNT_KEYS
# multi32 readers: with ALL_KEYS, the 32 keys of one multi-get (values short enough for
# memcached's and the cache's reply to stay one datagram)
QUIET_KEYS = [f"ck:q{i}".encode() for i in range(32 - len(ALL_KEYS))]
# Writes are skewed: the first keys are hammered (races), the last stay quiet long enough
# (> fill_hold_ms) to be cached and served from the kernel.
WRITE_WEIGHTS = [30, 16, 8, 4, 2, 1, 6, 1]


# ---------------------------------------------------------------- writers

class Writer(threading.Thread):
    def __init__(self, wid: int, hist: History, stop: threading.Event, mode: str, pace: float,
                 ns: str, seed: int, pad: int = 0, server: str | None = None,
                 deletes: bool = True):
        super().__init__(daemon=True, name=f"writer{wid}")
        # deletes=False (multi32 readers): a deleted key stays absent until written again,
        # and while it is absent every multi-get naming it is memcached's
        self.deletes = deletes
        self.server = server or L.SADDR  # memcached's address: IPv4, or IPv6 in a dual lab
        self.pad = b"-" * pad  # after a stored value's token: values past XDP's frame room
        self.wid, self.h, self.stop, self.mode, self.pace, self.ns = wid, hist, stop, mode, pace, ns
        self.rng = random.Random(seed)
        self.seq = itertools.count(1)
        self.conn = 0
        self.pending: list[Write] = []  # noreply writes waiting for an ack on this connection
        self.errors = 0

    def token(self) -> bytes:
        return b"w%d.%d" % (self.wid, next(self.seq))

    def record(self, w: Write) -> None:
        with self.h.lock:
            self.h.writes.append(w)

    def acked(self, t: int) -> None:
        for w in self.pending:
            w.ack = t
        self.pending.clear()

    def run(self) -> None:
        L.enter_ns(self.ns)
        while not self.stop.is_set():
            try:
                if self.mode == "pipeline":
                    self.run_pipeline()
                else:
                    self.run_pymemcache()
            except (OSError, Exception) as exc:  # memcached restarts in the fault tests
                self.errors += 1
                self.pending.clear()  # their ack is unknown for good
                if self.errors < 5:
                    print(f"writer {self.wid}: {exc!r}", file=sys.stderr)
                time.sleep(0.05)

    def pick(self) -> bytes:
        return self.rng.choices(ALL_KEYS, WRITE_WEIGHTS)[0]

    # -------- pymemcache (acknowledged, or noreply)
    def run_pymemcache(self) -> None:
        from pymemcache.client.base import Client

        c = Client((self.server, L.PORT), timeout=2, connect_timeout=2)
        self.conn += 1
        try:
            while not self.stop.is_set():
                self.one(c)
                if self.pace:
                    time.sleep(self.rng.uniform(0, 2 * self.pace))
        finally:
            c.close()

    def one(self, c) -> None:
        key = self.pick()
        noreply = self.mode == "noreply" and self.rng.random() < 0.6
        w = Write(self.wid, key, "", now(), conn=self.conn)
        if key in COUNT_KEYS:
            kind = self.rng.choice(["set", "incr", "incr", "decr", "delete", "touch", "add"])
            if kind == "delete" and not self.deletes:
                kind = "set"
            w.kind = kind
            if kind in ("set", "add"):
                n = (self.wid * 10_000_000 + next(self.seq)) * 1000
                w.number = n
                w.invoke = now()
                r = getattr(c, kind)(key, b"%d" % n, noreply=False)
                w.ack, w.ok = now(), bool(r)
            elif kind in ("incr", "decr"):
                d = self.rng.randint(1, 9)
                w.invoke = now()
                r = getattr(c, kind)(key, d, noreply=False)
                w.ack = now()
                w.ok = r is not None
                w.number = int(r) if r is not None else None
            elif kind == "delete":
                w.invoke = now()
                w.ok = c.delete(key, noreply=False)
                w.ack = now()
            else:
                w.invoke = now()
                c.touch(key, 0, noreply=False)
                w.ack, w.ok = now(), True
            self.record(w)
            self.acked(w.ack)
            return
        kind = self.rng.choice(["set", "set", "set", "add", "replace", "append", "prepend",
                                "cas", "touch", "delete"])
        if kind == "delete" and not self.deletes:
            kind = "set"
        if noreply and kind in ("add", "replace", "cas"):
            kind = "set"
        w.kind = kind
        tok = w.token = self.token()
        if kind == "cas":
            got = c.gets(key)
            self.acked(now())
            if got[0] is None:
                kind = w.kind = "add"
            else:
                w.invoke = now()
                r = c.cas(key, tok, got[1], noreply=False)
                w.ack, w.ok = now(), r is True
                self.record(w)
                self.acked(w.ack)
                return
        val = {"append": b"+" + tok, "prepend": tok + b"-"}.get(kind, tok + self.pad)
        w.invoke = now()
        if kind == "delete":
            r = c.delete(key, noreply=noreply)
            w.token = b""
        elif kind == "touch":
            r = c.touch(key, 0, noreply=noreply)
            w.token = b""
        else:
            r = getattr(c, kind)(key, val, noreply=noreply)
        if noreply:
            w.ok = True if kind == "set" else None
            self.pending.append(w)
        else:
            w.ack = now()
            w.ok = bool(r)
            self.acked(w.ack)
        self.record(w)

    # -------- raw pipelined socket
    def run_pipeline(self) -> None:
        s = socket.create_connection((self.server, L.PORT), timeout=2)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn += 1
        buf = b""
        try:
            while not self.stop.is_set():
                cmds, ws, expect = [], [], []
                for _ in range(self.rng.randint(2, 6)):
                    key = self.rng.choices(TOKEN_KEYS, WRITE_WEIGHTS[:6])[0]
                    kind = self.rng.choice(["set", "set", "append", "prepend", "delete"])
                    if kind == "delete" and not self.deletes:
                        kind = "set"
                    noreply = self.rng.random() < 0.3
                    tok = self.token()
                    w = Write(self.wid, key, kind, 0, token=tok if kind != "delete" else b"",
                              conn=self.conn)
                    nr = b" noreply" if noreply else b""
                    if kind == "delete":
                        cmds.append(b"delete " + key + nr + b"\r\n")
                    else:
                        val = {"append": b"+" + tok, "prepend": tok + b"-"}.get(
                            kind, tok + self.pad)
                        cmds.append(b"%s %s 0 0 %d%s\r\n%s\r\n" % (kind.encode(), key, len(val),
                                                                    nr, val))
                    ws.append(w)
                    expect.append(not noreply)
                # an acknowledged command at the end closes the batch (acks the noreply ones)
                cmds.append(b"mn\r\n")
                t0 = now()
                for w in ws:
                    w.invoke = t0
                s.sendall(b"".join(cmds))
                lines: list[bytes] = []
                while True:
                    while b"\r\n" in buf:
                        line, buf = buf.split(b"\r\n", 1)
                        lines.append(line)
                    if lines and lines[-1] == b"MN":
                        break
                    data = s.recv(65536)
                    if not data:
                        raise ConnectionError("memcached closed the connection")
                    buf += data
                t1 = now()
                replies = iter(lines[:-1])
                for w, exp in zip(ws, expect, strict=True):
                    w.ack = t1
                    if exp:
                        r = next(replies, b"")
                        w.ok = r in (b"STORED", b"DELETED")
                    else:
                        w.ok = True if w.kind == "set" else None
                    self.record(w)
                if self.pace:
                    time.sleep(self.rng.uniform(0, 2 * self.pace))
        finally:
            s.close()


# ---------------------------------------------------------------- readers

class Reader(threading.Thread):
    def __init__(self, rid: int, hist: History, stop: threading.Event, ns: str, seed: int,
                 burst: int, src: str = L.CADDR, keys=ALL_KEYS, budget: list | None = None,
                 pace: float = 0.0, server: str | None = None, reads: str = "all"):
        super().__init__(daemon=True, name=f"reader{rid}")
        if reads not in READS:
            raise ValueError(f"reads: one of {READS}, not {reads!r}")
        self.reads = reads
        self.h, self.stop, self.ns, self.burst, self.src = hist, stop, ns, burst, src
        self.server = server or L.SADDR
        self.rng = random.Random(seed)
        self.keys = keys
        self.budget = budget
        self.pace = pace
        self.ids = itertools.count(rid * 4096)

    def run(self) -> None:
        L.enter_ns(self.ns)
        s = socket.socket(socket.AF_INET6 if ":" in self.src else socket.AF_INET,
                          socket.SOCK_DGRAM)
        s.bind((self.src, 0))
        try:
            while not self.stop.is_set():
                if self.budget is not None:
                    with self.h.lock:
                        if self.budget[0] <= 0:
                            self.stop.set()
                            break
                        self.budget[0] -= self.burst
                self.round(s)
                if self.pace:
                    time.sleep(self.rng.uniform(0, 2 * self.pace))
        finally:
            s.close()

    def request(self) -> tuple[str, list[bytes], bytes]:
        r = self.rng.random()
        if self.reads == "get":
            k = self.rng.choice(self.keys)
            return "ascii", [k], b"get " + k + b"\r\n"
        if self.reads == "multi32":
            ks = self.rng.sample(ALL_KEYS + QUIET_KEYS, len(ALL_KEYS) + len(QUIET_KEYS))
            return "multi32", ks, b"get " + b" ".join(ks) + b"\r\n"
        if self.reads == "mg":  # a meta-only client: mg with the flags, or the value alone
            k = self.rng.choice(self.keys)
            if r < 2 / 3:
                return "mg", [k], b"mg " + k + b" s v k f " + MG_OPAQUE + b"\r\n"
            return "mg_v", [k], b"mg " + k + b" v\r\n"
        if r < 0.35:
            k = self.rng.choice(self.keys)
            return "ascii", [k], b"get " + k + b"\r\n"
        if r < 0.45:  # meta get: the cache answers it, and memcached's replies fill it
            k = self.rng.choice(self.keys)
            return "mg", [k], b"mg " + k + b" s v k f " + MG_OPAQUE + b"\r\n"
        if r < 0.65:
            ks = self.rng.sample(self.keys, self.rng.randint(2, 4))
            return "multi", ks, b"get " + b" ".join(ks) + b"\r\n"
        k = self.rng.choice(self.keys)
        if r < 0.85:
            return "bin_get", [k], BIN.pack(0x80, 0x00, len(k), 0, 0, 0, len(k), 0xABCD, 0) + k
        return "bin_getk", [k], BIN.pack(0x80, 0x0C, len(k), 0, 0, 0, len(k), 0xABCE, 0) + k

    def round(self, s: socket.socket) -> None:
        out: dict[int, tuple[str, list[bytes], int, bytearray]] = {}
        for _ in range(self.burst):
            via, keys, payload = self.request()
            rid = next(self.ids) & 0xFFFF
            t = now()
            s.sendto(struct.pack("!HHHH", rid, 0, 1, 0) + payload, (self.server, L.PORT))
            out[rid] = (via, keys, t, bytearray())
        with self.h.lock:
            self.h.requests += len(out)
        done: dict[int, int] = {}
        deadline = time.monotonic() + 1.0
        while len(done) < len(out):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                break
            data = s.recv(65535)
            t = now()
            if len(data) < 8:
                continue
            rid, seq, count, _ = struct.unpack_from("!HHHH", data)
            if rid not in out or rid in done:
                continue
            if count == 0 and seq == 0 and len(data) == 8:
                continue  # memcached's own empty message before a multi-get's misses
            if count != 1 or seq != 0:
                # our values fit one datagram: memcached and the cache both send 0 of 1
                self.bad(f"frame seq {seq} of {count} via {out[rid][0]}: {data[:48]!r}")
            via, keys, t0, acc = out[rid]
            acc += data[8:]
            if via.startswith(("bin", "mg")) or acc.endswith(b"END\r\n") or \
                    b"ERROR" in acc:
                done[rid] = t
        with self.h.lock:
            self.h.lost += len(out) - len(done)
            self.h.lost_at += [out[r][2] for r in out if r not in done]
        for rid, t1 in done.items():
            via, keys, t0, acc = out[rid]
            try:
                vals = self.parse(via, keys, bytes(acc))
            except Exception as exc:
                self.bad(f"{via} {keys}: {exc}: {bytes(acc)[:200]!r}")
                continue
            with self.h.lock:
                for k in keys:
                    self.h.reads.append(Read(k, t0, t1, vals.get(k), via))

    def bad(self, what: str) -> None:
        with self.h.lock:
            self.h.malformed.append(what)

    @staticmethod
    def parse(via: str, keys: list[bytes], reply: bytes) -> dict[bytes, bytes]:
        if via == "mg_v":  # "VA <n>\r\n<data>\r\n", or "EN"
            if reply == b"EN\r\n":
                return {}
            eol = reply.index(b"\r\n")
            p = reply[:eol].split(b" ")
            if len(p) != 2 or p[0] != b"VA" or not p[1].isdigit():
                raise ValueError(f"mg reply line {reply[:eol]!r}")
            n = int(p[1])
            if reply[eol + 2 + n:] != b"\r\n":
                raise ValueError("mg value not CRLF-terminated")
            return {keys[0]: reply[eol + 2:eol + 2 + n]}
        if via == "mg":  # "VA <n> s<n> k<key> f<flags> O..\r\n<data>\r\n", or "EN ..."
            if reply in (b"EN\r\n", b"EN k" + keys[0] + b" " + MG_OPAQUE + b"\r\n"):
                return {}  # memcached echoes k and O on a miss too
            eol = reply.index(b"\r\n")
            p = reply[:eol].split(b" ")
            n = int(p[1]) if len(p) > 1 and p[0] == b"VA" else -1
            if n < 0 or p[2:4] != [b"s%d" % n, b"k" + keys[0]] or len(p) != 6 or \
                    not p[4].startswith(b"f") or not p[4][1:].isdigit() or p[5] != MG_OPAQUE:
                raise ValueError(f"mg reply line {reply[:eol]!r}")
            if reply[eol + 2 + n:] != b"\r\n":
                raise ValueError("mg value not CRLF-terminated")
            return {keys[0]: reply[eol + 2:eol + 2 + n]}
        if via.startswith("bin"):
            magic, _op, klen, elen, _, status, body, opaque, _cas = BIN.unpack_from(reply)
            if magic != 0x81 or len(reply) != 24 + body:
                raise ValueError("bad binary reply")
            if opaque != (0xABCD if via == "bin_get" else 0xABCE):
                raise ValueError("opaque not echoed")
            if status == 1:
                return {}
            if status != 0 or elen != 4:
                raise ValueError(f"status {status} extras {elen}")
            key = reply[28:28 + klen]
            if via == "bin_getk" and key != keys[0]:
                raise ValueError(f"GETK key {key!r}")
            if via == "bin_get" and klen:
                raise ValueError("GET reply with a key")
            return {keys[0]: reply[28 + klen:]}
        out: dict[bytes, bytes] = {}
        pos = 0
        while True:
            eol = reply.index(b"\r\n", pos)
            line = reply[pos:eol]
            if line == b"END":
                if eol + 2 != len(reply):
                    raise ValueError("bytes after END")
                return out
            p = line.split(b" ")
            if p[0] != b"VALUE" or len(p) != 4 or p[1] not in keys or p[1] in out:
                raise ValueError(f"line {line!r}")
            n = int(p[3])
            int(p[2])
            if reply[eol + 2 + n:eol + 4 + n] != b"\r\n":
                raise ValueError("value not CRLF-terminated")
            out[p[1]] = reply[eol + 2:eol + 2 + n]
            pos = eol + 4 + n


class TcpReader(threading.Thread):
    """Reads over one TCP connection: a burst of get, multi-get and mg requests in one send,
    the replies taken back in order, each checked against its own request."""

    def __init__(self, rid: int, hist: History, stop: threading.Event, ns: str, seed: int,
                 burst: int, pace: float = 0.0, server: str | None = None):
        super().__init__(daemon=True, name=f"tcp-reader{rid}")
        self.h, self.stop, self.ns, self.burst = hist, stop, ns, burst
        self.server = server or L.SADDR
        self.rng = random.Random(seed)
        self.pace = pace

    def run(self) -> None:
        L.enter_ns(self.ns)
        while not self.stop.is_set():
            try:
                with socket.create_connection((self.server, L.PORT), timeout=2) as s:
                    while not self.stop.is_set():  # the UDP readers' budget ends the run
                        self.round(s)
                        if self.pace:
                            time.sleep(self.rng.uniform(0, 2 * self.pace))
            except OSError:
                time.sleep(0.05)  # the round counted what it lost; a new connection

    def request(self) -> tuple[str, list[bytes], bytes]:
        r = self.rng.random()
        if r < 0.5:
            k = self.rng.choice(ALL_KEYS)
            return "ascii", [k], b"get " + k + b"\r\n"
        if r < 0.7:
            k = self.rng.choice(ALL_KEYS)
            return "mg", [k], b"mg " + k + b" s v k f " + MG_OPAQUE + b"\r\n"
        ks = self.rng.sample(ALL_KEYS, self.rng.randint(2, 4))
        return "multi", ks, b"get " + b" ".join(ks) + b"\r\n"

    @staticmethod
    def reply_len(via: str, buf: bytes) -> int | None:
        """The length of the first whole reply of this form in buf, None if it is not all in."""
        pos = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            line = buf[pos:eol].split(b" ")
            if via == "mg" and line[0] != b"VA":
                return eol + 2
            if line[0] in (b"VALUE", b"VA"):
                n = int(line[3] if line[0] == b"VALUE" else line[1])
                end = eol + 2 + n + 2
                if len(buf) < end:
                    return None
                if via == "mg":
                    return end
                pos = end
                continue
            return eol + 2  # END, or an error line

    def round(self, s: socket.socket) -> None:
        reqs = [self.request() for _ in range(self.burst)]
        t0 = now()
        s.sendall(b"".join(p for _via, _keys, p in reqs))
        buf = b""
        for i, (via, keys, _p) in enumerate(reqs):
            try:
                while (n := self.reply_len(via, buf)) is None:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    buf += chunk
            except (OSError, ValueError):
                with self.h.lock:
                    self.h.lost += len(reqs) - i
                    self.h.lost_at += [t0] * (len(reqs) - i)
                raise ConnectionError("replies lost") from None
            t1 = now()
            reply, buf = buf[:n], buf[n:]
            try:
                vals = Reader.parse(via, keys, reply)
            except Exception as exc:
                with self.h.lock:
                    self.h.malformed.append(f"tcp {via} {keys}: {exc}: {reply[:200]!r}")
                continue
            with self.h.lock:
                for k in keys:
                    self.h.reads.append(Read(k, t0, t1, vals.get(k), "tcp_" + via))
        if buf:
            with self.h.lock:
                self.h.malformed.append(f"tcp: bytes after the last reply: {buf[:100]!r}")


# ---------------------------------------------------------------- the check

def check(h: History) -> dict:
    by_key: dict[bytes, list[Write]] = {k: [] for k in ALL_KEYS}
    tokens: dict[bytes, Write] = {}
    numbers: dict[tuple[bytes, int], list[Write]] = {}
    for w in h.writes:
        by_key.setdefault(w.key, []).append(w)
        if w.token:
            tokens[w.token] = w
        if w.number is not None:
            numbers.setdefault((w.key, w.number), []).append(w)
    # W' candidates: value-changing writes of certain success, sorted by invoke; suffix-min ack
    changers: dict[bytes, tuple[list[int], list[int], list[Write]]] = {}
    for k, ws in by_key.items():
        cw = sorted((w for w in ws if w.ok is True and w.kind != "touch" and w.ack < INF),
                    key=lambda w: w.invoke)
        inv = [w.invoke for w in cw]
        suf = [INF] * (len(cw) + 1)
        for i in range(len(cw) - 1, -1, -1):
            suf[i] = min(cw[i].ack, suf[i + 1])
        changers[k] = (inv, suf, cw)
    creators = {k: sorted((w for w in ws if w.ok is True and w.kind not in ("delete", "touch")
                           and w.ack < INF), key=lambda w: w.ack) for k, ws in by_key.items()}
    deletes = {k: [w for w in ws if w.kind == "delete" and w.ok is not False]
               for k, ws in by_key.items()}

    stale, bogus, unjudged, values, misses = [], [], 0, 0, 0
    for r in h.reads:
        inv, suf, cw = changers[r.key]
        if r.value is None:
            misses += 1
            cr = creators[r.key]
            i = bisect.bisect_left([w.ack for w in cr], r.send) - 1
            if i < 0:
                continue
            wstar = max(cr[: i + 1], key=lambda w: w.invoke)
            if not any(d.invoke < r.recv and d.ack > wstar.invoke for d in deletes[r.key]):
                stale.append({"key": r.key.decode(), "via": r.via, "value": None,
                              "send": r.send, "write": wstar.token.decode() or wstar.number,
                              "write_ack": wstar.ack})
            continue
        values += 1
        if r.key in COUNT_KEYS:
            try:
                prod = numbers.get((r.key, int(r.value.strip())), [])
            except ValueError:
                prod = []
        else:
            toks = TOKEN.findall(r.value)
            prod = [tokens.get(t) for t in toks]
            if TOKEN.sub(b"", r.value).strip(b"+-"):
                prod = []  # bytes that no write wrote
            if any(p is None or p.key != r.key for p in prod):
                prod = []
        if not prod:
            bogus.append({"key": r.key.decode(), "via": r.via, "value": r.value[:100].decode(
                "latin-1")})
            continue
        floor = max(p.ack for p in prod)
        if floor >= INF:
            unjudged += 1
            continue
        i = bisect.bisect_right(inv, floor)
        if suf[i] < r.send:
            j = next(j for j in range(i, len(cw)) if cw[j].ack < r.send)
            stale.append({"key": r.key.decode(), "via": r.via, "value": r.value[:80].decode(
                "latin-1"), "send": r.send, "newer_write": (cw[j].token.decode() or
                                                            cw[j].number or cw[j].kind),
                "newer_invoke": cw[j].invoke, "newer_ack": cw[j].ack,
                "age_ms": (r.send - cw[j].ack) / 1e6})
    by_via: dict[str, int] = {}
    for r in h.reads:
        if r.value is not None:
            by_via[r.via] = by_via.get(r.via, 0) + 1
    return {
        "writes": len(h.writes), "reads": len(h.reads), "ops": len(h.writes) + len(h.reads),
        "requests": h.requests,
        "values_read": values, "misses_read": misses, "unjudged": unjudged,
        "values_by_via": dict(sorted(by_via.items())),
        "lost": h.lost, "malformed": len(h.malformed), "malformed_examples": h.malformed[:5],
        "stale": len(stale), "stale_examples": stale[:10], "bogus": len(bogus),
        "bogus_examples": bogus[:5],
    }


# ---------------------------------------------------------------- a run

def seed_keys(h: History, ns: str, server: str) -> None:
    """Every key of a multi32 request stored once before the run, each write in the history
    (writer 0): a key the writers have not stored yet would make every multi-get naming it
    memcached's."""
    from pymemcache.client.base import Client

    with L.in_ns(ns):
        c = Client((server, L.PORT), timeout=2, connect_timeout=2)
        try:
            for i, key in enumerate(ALL_KEYS + QUIET_KEYS, 1):
                w = Write(0, key, "set", now())
                if key in COUNT_KEYS:
                    w.number = i * 1000
                    value = b"%d" % w.number
                else:
                    value = w.token = b"w0.%d" % i
                w.invoke = now()
                w.ok = bool(c.set(key, value, noreply=False))
                w.ack = now()
                h.writes.append(w)
        finally:
            c.close()


def run(ops: int, *, lab: L.Lab | None = None, writers: int = 4, readers: int = 3,
        burst: int = 6, pace: float = 0.004, read_pace: float = 0.003,
        max_seconds: float = 600, during=None, pad: int = 0, ipv6: bool = False,
        tcp_readers: int = 0, reads: str = "all") -> dict:
    """Drive `ops` reads (key reads, counted per key) plus the writes made meanwhile.
    reads: what the UDP readers send (READS). The report's kernel_hit_ratio: the kernel's
    answers (hit counter) per UDP request sent.
    `during(stop_event)` runs in a thread alongside (fault injection). ipv6 (a dual-stack lab):
    every reader over IPv6, writers over both families in turn. In a lab with the local
    bypass on, the writers run in the server's namespace (they join the bypass), and
    tcp_readers read over it."""
    own = lab is None
    lab = lab or L.Lab("k").up()
    try:
        h = History()
        stop = threading.Event()
        budget = [ops * 10 // 13]  # ~ reads; the writes make up the rest
        modes = ["ack", "noreply", "pipeline", "ack", "noreply", "pipeline"]
        wns = lab.s if lab.bypass else lab.c
        ts = [Writer(i + 1, h, stop, modes[i % len(modes)], pace, wns, seed=i, pad=pad,
                     server=L.SADDR6 if ipv6 and i % 2 else L.SADDR,
                     deletes=reads != "multi32")
              for i in range(writers)]
        # the UDP readers' budget decides how long the run is: the TCP readers read alongside
        ts += [TcpReader(50 + i, h, stop, wns, seed=200 + i, burst=burst, pace=read_pace)
               for i in range(tcp_readers)]
        ts += [Reader(i + 1, h, stop, lab.c, seed=100 + i, burst=burst, budget=budget,
                      pace=read_pace, src=L.CADDR6 if ipv6 else L.CADDR,
                      server=L.SADDR6 if ipv6 else L.SADDR, reads=reads)
               for i in range(readers)]
        if reads == "multi32":
            seed_keys(h, lab.c, L.SADDR6 if ipv6 else L.SADDR)
        before = lab.counters()
        t0 = time.monotonic()
        for t in ts:
            t.start()
        extra = None
        if during is not None:
            extra = threading.Thread(target=during, args=(stop,), daemon=True)
            extra.start()
        stop.wait(max_seconds)
        stop.set()
        for t in ts:
            t.join(5)
        if extra:
            extra.join(30)
        secs = time.monotonic() - t0
        after = lab.counters()
        rep = check(h)
        rep["seconds"] = round(secs, 1)
        rep["counters"] = L.delta(before, after)
        rep["kernel_hit_ratio"] = round(rep["counters"].get("hit", 0) / max(1, h.requests), 4)
        rep["reads_kind"] = reads
        rep["hold_ms"], rep["cflags"] = lab.hold_ms, lab.extra_cflags
        return rep
    finally:
        if own:
            lab.down()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.correctness.checker")
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--report", default="")
    ap.add_argument("--no-guard", action="store_true",
                    help="build with -DMC_TEST_NO_FILL_GUARD (must find stale reads)")
    ap.add_argument("--hold-ms", type=int, default=50)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--readers", type=int, default=3)
    ap.add_argument("--burst", type=int, default=6)
    ap.add_argument("--pace", type=float, default=0.004, help="mean seconds between a writer's ops")
    ap.add_argument("--read-pace", type=float, default=0.003)
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--ipv6", action="store_true",
                    help="a dual-stack lab: readers over IPv6, writers over both families")
    ap.add_argument("--bypass", action="store_true",
                    help="local_bypass on: writers and TCP readers on memcached's host")
    ap.add_argument("--tcp-readers", type=int, default=2, help="with --bypass")
    ap.add_argument("--reads", choices=READS, default="all",
                    help="what the UDP readers send: every kind, single-key gets, or mg only")
    a = ap.parse_args(argv)
    lab = L.Lab("k", hold_ms=a.hold_ms, ipv6=a.ipv6, bypass=a.bypass,
                extra_cflags="-DMC_TEST_NO_FILL_GUARD" if a.no_guard else "").up()
    try:
        rep = run(a.ops, lab=lab, writers=a.writers, readers=a.readers, burst=a.burst,
                  pace=a.pace, read_pace=a.read_pace, max_seconds=a.max_seconds, ipv6=a.ipv6,
                  tcp_readers=a.tcp_readers if a.bypass else 0, reads=a.reads)
    finally:
        lab.down()
    rep["no_guard"] = a.no_guard
    text = json.dumps(rep, indent=2)
    if a.report:
        with open(a.report, "w") as f:
            f.write(text + "\n")
    print(text)
    bad = rep["stale"] + rep["bogus"] + rep["malformed"]
    # --no-guard: finding stale reads is the expected outcome
    return (0 if rep["stale"] else 1) if a.no_guard else (1 if bad else 0)


if __name__ == "__main__":
    sys.exit(main())

"""The local bypass (config local_bypass): TCP connections between a process on the host and
memcached skip the TCP/IP stack (sockmap), and every client message is read for writes first,
so the UDP cache stays coherent. Real sockets, a real memcached, the real programs on the
cgroup v2 root: a client in memcached's namespace is local, one in the client namespace is
not."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from nsutil import NsClient, Pair, in_ns

from mcache_agent.dataplane import bypass


@pytest.fixture(scope="module")
def pair():
    p = Pair("byp", 43, ipv6=True, bypass=True).up()
    yield p
    p.down()


@pytest.fixture(scope="module")
def remote(pair):
    return NsClient(pair, pair.c)


def paths(pair: Pair) -> dict[str, dict[str, int]]:
    return pair.dp.stats().total().by_path


def delta(before: dict, after: dict, path: str) -> dict[str, int]:
    return {v: after[path][v] - before[path][v] for v in after[path]
            if after[path][v] != before[path][v]}


def lo_bytes(ns: str) -> int:
    with in_ns(ns):
        for line in Path("/proc/net/dev").read_text().splitlines():
            if line.strip().startswith("lo:"):
                f = line.split(":", 1)[1].split()
                return int(f[0]) + int(f[8])
    raise AssertionError("no lo")


def local(pair: Pair, addr: str | None = None) -> socket.socket:
    """A connection from the host itself to memcached's own address: it joins."""
    with in_ns(pair.s):
        s = socket.create_connection((addr or pair.saddr, 11211), timeout=3)
    return s


def ask(s: socket.socket, req: bytes, end: bytes) -> bytes:
    s.sendall(req)
    return read_until(s, end)


def read_until(s: socket.socket, end: bytes) -> bytes:
    got = b""
    while not got.endswith(end):
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {got!r}"
        got += chunk
    return got


def test_a_local_connection_joins_and_lo_carries_none_of_it(pair):
    before = paths(pair)
    sockets = bypass.sockets(pair.dp.pins)
    with local(pair) as s:
        time.sleep(0.05)
        assert bypass.sockets(pair.dp.pins) == sockets + 2  # both ends
        lo = lo_bytes(pair.s)
        for i in range(50):
            assert ask(s, b"set j%d 0 0 2\r\nhi\r\n" % i, b"\r\n") == b"STORED\r\n"
            assert ask(s, b"get j%d\r\n" % i, b"END\r\n") == b"VALUE j%d 0 2\r\nhi\r\nEND\r\n" % i
        assert lo_bytes(pair.s) == lo, "the bypass sent bytes over lo"
    after = paths(pair)
    assert delta(before, after, "sockops") == {"joined": 2}
    d = delta(before, after, "sk_msg")
    assert d["redirect"] == 200 and d["invalidate"] == 50 and "left" not in d, d


def test_a_remote_client_never_joins(pair, remote):
    before = paths(pair)
    sockets = bypass.sockets(pair.dp.pins)
    with in_ns(pair.c), socket.create_connection((pair.saddr, 11211), timeout=3) as s:
        assert ask(s, b"set far 0 0 1\r\nx\r\n", b"\r\n") == b"STORED\r\n"
        assert bypass.sockets(pair.dp.pins) == sockets
    after = paths(pair)
    assert delta(before, after, "sockops") == {}
    assert delta(before, after, "sk_msg") == {}  # no program ran for it
    assert delta(before, after, "xdp_scan") == {"invalidate": 1}  # XDP read its write


def test_each_host_joins_only_its_own_namespace(pair):
    """Two hosts on one machine (network namespaces, each with its own data plane), both with
    the bypass on: both sockops roots sit on the cgroup root and see every namespace's
    connections; each joins only its own namespace's (pair's memcached address is '::', so
    only the namespace check keeps it from taking the other's)."""
    other = Pair("byq", 44, bypass=True).up()
    try:
        mine, theirs = paths(pair), paths(other)
        with local(other) as s:
            assert ask(s, b"set q 0 0 1\r\nx\r\n", b"\r\n") == b"STORED\r\n"
        assert delta(theirs, paths(other), "sockops") == {"joined": 2}
        assert delta(mine, paths(pair), "sockops") == {}
    finally:
        other.down()
    with local(pair) as s:  # the other's teardown left this one's root in place
        before = paths(pair)
        assert ask(s, b"get q\r\n", b"END\r\n") == b"END\r\n"
        assert delta(before, paths(pair), "sk_msg") == {"redirect": 2}


BIN_SET = bytes.fromhex("80 01 0002 08 00 0000 0000000d 00000000 0000000000000000") + \
    bytes(8) + b"bw" + b"new"
BIN_DELETE = bytes.fromhex("80 04 0002 00 00 0000 00000002 00000000 0000000000000000") + b"bw"


@pytest.mark.parametrize("key,write,reply,after", [
    (b"w1", b"set w1 0 0 3\r\nnew\r\n", b"STORED\r\n", b"new"),
    (b"w2", b"set w2 0 0 3 noreply\r\nnew\r\n", None, b"new"),
    (b"w3", b"delete w3\r\n", b"DELETED\r\n", None),
    (b"w4", b"append w4 0 0 2\r\n+4\r\n", b"STORED\r\n", b"old+4"),
    (b"w5", b"touch w5 1\r\n", b"TOUCHED\r\n", b"old"),
    (b"w6", b"gat 0 w6\r\n", b"END\r\n", b"old"),
    (b"w7", b"ms w7 3\r\nmsv\r\n", b"HD\r\n", b"msv"),
    (b"w8", b"md w8\r\n", b"HD\r\n", None),
    (b"bw", BIN_SET, None, b"new"),
    (b"bw", BIN_DELETE, None, None),
])
def test_a_write_over_the_bypass_invalidates(pair, remote, key, write, reply, after):
    remote.cached(key, b"old")
    with local(pair) as s:
        before = paths(pair)
        s.sendall(write)
        if reply is not None:
            assert read_until(s, reply).endswith(reply)
        elif write[0] == 0x80:
            assert s.recv(24)[0] == 0x81  # the binary reply's header
        else:
            assert ask(s, b"mn\r\n", b"MN\r\n") == b"MN\r\n"  # the noreply write is done
        d = delta(before, paths(pair), "sk_msg")
        assert d.get("invalidate") == 1 and "left" not in d, d
    assert remote.udp_get(key).get(key) == after


def test_flush_all_over_the_bypass_empties_the_cache(pair, remote):
    remote.cached(b"fl", b"old")
    with local(pair) as s:
        assert ask(s, b"flush_all\r\n", b"OK\r\n") == b"OK\r\n"
    assert remote.udp_get(b"fl") == {}


def test_pipelined_requests_come_back_in_order(pair):
    """200 set/get pairs in one send: one program run per command, each get sees its set."""
    with local(pair) as s:
        req = b"".join(b"set p%d 0 0 %d\r\n%d\r\nget p%d\r\n" % (i % 7, len(b"%d" % i), i, i % 7)
                       for i in range(200))
        want = b"".join(b"STORED\r\nVALUE p%d 0 %d\r\n%d\r\nEND\r\n" % (i % 7, len(b"%d" % i), i)
                        for i in range(200))
        before = paths(pair)
        s.sendall(req)
        got = b""
        while len(got) < len(want):
            chunk = s.recv(65536)
            assert chunk
            got += chunk
        assert got == want
        d = delta(before, paths(pair), "sk_msg")
        assert d["invalidate"] == 200 and "left" not in d, d


def test_a_value_across_messages_is_skipped_and_the_next_write_read(pair, remote):
    """A 5000-byte value sent in pieces: its bytes are not read as commands (the verdict
    covers them without running the program), the write after it is."""
    remote.cached(b"after", b"old")
    value = b"delete after\r\n" * 357 + b"xx"
    with local(pair) as s:
        before = paths(pair)
        s.sendall(b"set big 0 0 %d\r\n" % len(value))
        for i in range(0, len(value), 1700):
            time.sleep(0.02)
            s.sendall(value[i:i + 1700])
        time.sleep(0.02)
        s.sendall(b"\r\nset after 0 0 3\r\nnew\r\n")
        assert read_until(s, b"STORED\r\nSTORED\r\n") == b"STORED\r\nSTORED\r\n"
        d = delta(before, paths(pair), "sk_msg")
        assert d["invalidate"] == 2 and "left" not in d, d  # big and after, nothing else
        assert ask(s, b"get big\r\n", b"END\r\n") == \
            b"VALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(value), value)
    assert remote.udp_get(b"after") == {b"after": b"new"}


@pytest.mark.parametrize("cut", [b"\r", b""])
def test_a_long_line_is_skipped_to_its_end(pair, remote, cut):
    """A multi-get longer than the window, its end in the next message (cut between "\\r"
    and "\\n", or before both): the write after it is read."""
    remote.cached(b"ll", b"old")
    keys = b" ".join(b"nokey%d" % i for i in range(100))
    with local(pair) as s:
        before = paths(pair)
        s.sendall(b"get " + keys + cut)
        time.sleep(0.05)
        s.sendall(b"\r\n"[len(cut):] + b"set ll 0 0 3\r\nnew\r\n")
        assert read_until(s, b"STORED\r\n") == b"END\r\nSTORED\r\n"
        d = delta(before, paths(pair), "sk_msg")
        assert d["invalidate"] == 1 and "left" not in d, d
    assert remote.udp_get(b"ll") == {b"ll": b"new"}


def test_a_command_cut_between_messages_leaves_the_bypass_for_xdp(pair, remote):
    """A command line cut by a message's end is not held back (the kernel frees the rest of a
    held message): the connection takes TCP from there, where XDP reads it, in order. Its
    first TCP segment is the stream's first (the bypassed bytes never took TCP), so XDP
    reads the cut line whole (kept until the rest comes) and needs no flush."""
    remote.cached(b"cut", b"old")
    with local(pair) as s:
        assert ask(s, b"get cut\r\n", b"END\r\n").startswith(b"VALUE cut")
        before = paths(pair)
        s.sendall(b"get cut\r\nset c")
        time.sleep(0.05)
        s.sendall(b"ut 0 0 3\r\nnew\r\n")
        assert read_until(s, b"STORED\r\n") == b"VALUE cut 0 3\r\nold\r\nEND\r\nSTORED\r\n"
        after = paths(pair)
        assert delta(before, after, "sk_msg").get("left") == 1
        assert delta(before, after, "xdp_scan").get("invalidate", 0) == 1
        assert not any(delta(before, after, p).get("fallback_flush") for p in after)
        for i in range(20):  # over TCP from now on, in order
            assert ask(s, b"set cut 0 0 2\r\n%02d\r\nget cut\r\n" % i, b"END\r\n") == \
                b"STORED\r\nVALUE cut 0 2\r\n%02d\r\nEND\r\n" % i
    assert remote.udp_get(b"cut") == {b"cut": b"19"}


@pytest.mark.parametrize("proto", ["-a", "-b"])
def test_memccapable_passes_over_the_bypass(pair, proto):
    """libmemcached's protocol test suite (ASCII, binary: quiet commands, noreply, pipelined
    and large items), from memcached's host: every connection on the bypass."""
    before = paths(pair)
    r = subprocess.run(["nsenter", f"--net=/var/run/netns/{pair.s}", "memccapable", "-h",
                        pair.saddr, "-p", "11211", "-t", "3", proto],
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    print(out[-1500:])
    failed = len(re.findall(r"\[fail", out, re.I))
    assert r.returncode == 0 and "All tests passed" in out and failed == 0, out
    assert len(re.findall(r"\[pass\]", out)) >= 20, out
    after = paths(pair)
    assert delta(before, after, "sockops").get("joined", 0) >= 2
    d = delta(before, after, "sk_msg")
    print(d)
    assert d.get("redirect", 0) > 100 and d.get("invalidate", 0) > 10, d


def test_a_local_ipv6_connection_joins(pair, remote):
    remote.cached(b"six", b"old")
    before = paths(pair)
    with local(pair, "::1") as s:
        assert ask(s, b"set six 0 0 3\r\nnew\r\n", b"\r\n") == b"STORED\r\n"
    after = paths(pair)
    assert delta(before, after, "sockops") == {"joined": 2}
    assert delta(before, after, "sk_msg")["invalidate"] == 1
    assert remote.udp_get(b"six") == {b"six": b"new"}


class Traffic:
    """Set/get pairs on a bypass connection in a thread, each reply checked, until stopped.
    A reply that does not come within 3 s is a hang, one that differs from memcached's is
    truncated or out of order: both are errors. With `reconnect`, a connection memcached
    closed (it restarted) is opened again."""

    def __init__(self, pair: Pair, tag: bytes, *, reconnect: bool = False) -> None:
        self.pair, self.reconnect = pair, reconnect
        self.s = local(pair)
        self.tag, self.n, self.error, self.reconnects = tag, 0, "", 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.exchange()
            except TimeoutError:
                self.error = f"{self.n}: no reply within 3 s (a hang)"
                return
            except (OSError, AssertionError) as exc:
                if not self.reconnect:
                    self.error = f"{self.n}: {exc}"
                    return
                self.s.close()
                self.s = self.connect()
                self.reconnects += 1
            if self.error:
                return

    def connect(self) -> socket.socket:
        while True:  # memcached may be restarting
            try:
                return local(self.pair)
            except OSError:
                time.sleep(0.02)

    def exchange(self) -> None:
        i = self.n
        got = ask(self.s, b"set %s 0 0 6\r\n%06d\r\nget %s\r\n" % (self.tag, i, self.tag),
                  b"END\r\n")
        want = b"STORED\r\nVALUE %s 0 6\r\n%06d\r\nEND\r\n" % (self.tag, i)
        if got != want:
            self.error = f"{i}: {got!r}"
        else:
            self.n += 1

    def finish(self) -> int:
        time.sleep(0.2)
        self.stop.set()
        self.thread.join(10)
        self.s.close()
        assert not self.error, self.error
        return self.n


def test_turning_the_option_off_moves_connections_to_tcp_without_a_loss(pair):
    t = Traffic(pair, b"off")
    time.sleep(0.2)
    before = paths(pair)
    pair.bypass = False
    try:
        pair.apply()
        time.sleep(0.2)
        mid = paths(pair)
        assert delta(before, mid, "sk_msg").get("left", 0) >= 1
        n = t.finish()
        after = paths(pair)
        # from the switch on, the connection's messages take TCP: XDP reads its writes
        assert delta(mid, after, "sk_msg").get("redirect", 0) == 0
        assert delta(mid, after, "xdp_scan").get("invalidate", 0) > 0
        assert n > 10
        with local(pair) as s:  # a new connection does not join
            assert ask(s, b"get off\r\n", b"END\r\n").startswith(b"VALUE off")
        assert delta(after, paths(pair), "sockops") == {}
    finally:
        pair.bypass = True
        pair.apply()
    with local(pair) as s:  # on again: new connections join
        time.sleep(0.05)
        before = paths(pair)
        assert ask(s, b"get off\r\n", b"END\r\n").startswith(b"VALUE off")
        assert delta(before, paths(pair), "sk_msg") == {"redirect": 2}


def test_a_program_swap_keeps_connections_in_the_bypass(pair, remote):
    """The connections run the sk_msg root, which calls the running set's program: after a
    swap that brings a new cache, a write over an old connection invalidates in the new one."""
    t = Traffic(pair, b"swap")
    time.sleep(0.2)
    before = paths(pair)
    r = pair.apply(entries=8192)  # a new shape: a new cache and a new program set
    assert r.strategy == "program_swap" and not r.cache_kept
    n = t.finish()
    assert n > 10
    assert delta(before, paths(pair), "sk_msg").get("left", 0) == 0
    with local(pair) as s:
        remote.cached(b"sw", b"old")
        assert ask(s, b"set sw 0 0 3\r\nnew\r\n", b"\r\n") == b"STORED\r\n"
    assert remote.udp_get(b"sw") == {b"sw": b"new"}


def test_a_client_killed_mid_value_hangs_nothing(pair):
    """A client gone halfway through a value: memcached drops the connection; the others go
    on, and the socket left the map when it closed."""
    sockets = bypass.sockets(pair.dp.pins)
    t = Traffic(pair, b"kill")
    s = local(pair)
    s.sendall(b"set half 0 0 100000\r\n" + b"x" * 30000)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # an RST, as a killed process's socket with unread data would send
    assert t.finish() > 10
    time.sleep(0.1)
    assert bypass.sockets(pair.dp.pins) == sockets


def test_teardown_leaves_connections_working_over_tcp(pair):
    """The agent torn down with connections in the bypass: nothing is unlinked (a queued
    reply would be lost); their sk_msg root finds no program set and leaves the bypass."""
    t = Traffic(pair, b"down")
    time.sleep(0.2)
    with in_ns(pair.s):
        pair.dp.teardown()
    try:
        assert t.finish() > 10
        assert not pair.pin.exists()
    finally:
        pair.apply()


def test_clients_killed_and_memcached_and_the_agent_restarted_under_load(pair, tmp_path):
    """The real agent owns the data plane; under load on the bypass, clients are killed
    halfway through a value, the agent is killed and started again (the kernel serves while
    it is down, and it adopts what is pinned), memcached is killed and started again (its
    connections close): no connection hangs, and every reply is memcached's, whole and in
    order."""
    from nsutil import start_memcached, stop_pid

    from tests.agentproc import AgentProc

    with in_ns(pair.s):
        pair.dp.teardown()
    agent = AgentProc(pair, tmp_path)
    pair.version += 1
    agent.start(pair.config_text())
    loads = [Traffic(pair, b"f%d" % i, reconnect=True) for i in range(4)]
    stop = threading.Event()
    killed = [0]

    def kill_clients() -> None:
        while not stop.is_set():
            try:
                s = local(pair)
                s.sendall(b"set half 0 0 100000\r\n" + b"x" * 20000)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, (1).to_bytes(4, "little") +
                             bytes(4))
                s.close()
                killed[0] += 1
            except OSError:
                pass
            time.sleep(0.01)

    killer = threading.Thread(target=kill_clients)
    killer.start()
    try:
        time.sleep(0.3)
        agent.kill9()
        time.sleep(0.3)  # served by the kernel meanwhile
        progress = [t.n for t in loads]
        agent.start()
        time.sleep(0.3)
        stop_pid(pair.pid)
        time.sleep(0.2)
        pair.pid = start_memcached(pair.s, pair.saddr, pair.pidfile, "::1", "127.0.0.1",
                                   pair.saddr6)
        time.sleep(0.5)
    finally:
        stop.set()
        killer.join(10)
        done = [t.finish() for t in loads]
        agent.kill9()
    assert killed[0] > 10
    assert all(d > p for d, p in zip(done, progress, strict=True)), (progress, done)
    assert all(t.reconnects >= 1 for t in loads)  # memcached's restart closed them
    pair.apply()

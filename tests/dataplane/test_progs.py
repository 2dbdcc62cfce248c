"""BPF_PROG_TEST_RUN unit tests of the XDP and TC programs, through the pinned roots."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from pathlib import Path

import pytest
from nsutil import TcpStream, in_ns, make_config, same_bucket_keys, sh

from harness.frames import (
    CLIENT6,
    CMAC,
    SERVER6,
    SMAC,
    bin_req,
    bin_res,
    csum,
    eth,
    ipv6,
    mc_reply,
    mc_reply6,
    mc_udp,
    mc_udp6,
    tcp6_frame,
    tcp_frame,
    udp6_checksum_ok,
    udp6_frame,
    udp_frame,
)
from harness.testrun import Prog, xdp_ctx
from mcache_agent import capture
from mcache_agent.dataplane import Dataplane, libbpf

NS = "mctp-progs"
PIN = "/sys/fs/bpf/mcache-test-progs"
XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
TC_ACT_OK = 0

BASE = """
apiVersion: mcache/v1
version: {version}
memcached: {{address: '{address}', port: 11211}}
interfaces: [{{name: d0, xdp_mode: auto}}]
cache:
  entries: 4096
  max_key_bytes: 64
  max_value_bytes: 256
  ttl_ms: {ttl}
  fill_hold_ms: 0
  enabled: {enabled}
  allowed_clients: [{allowed}]
"""


def cfg(version=1, ttl=60000, enabled="true", allowed="198.19.9.0/24", address="198.19.9.1"):
    return make_config(BASE.format(version=version, ttl=ttl, enabled=enabled, allowed=allowed,
                                   address=address))


class Env:
    def __init__(self):
        self.dp = Dataplane(PIN)
        self.version = 1
        with in_ns(NS):
            self.dp.apply(cfg(), None)
            self.ifindex = socket.if_nametoindex("d0")
        self.xdp = Prog(f"{PIN}/xdp_root")
        self.tc = Prog(f"{PIN}/tc_root")
        self.rid = 100
        self.port = 41000
        self.streams: list[TcpStream] = []

    def stream(self, v6: bool = False) -> TcpStream:
        """A real connection from the test client to memcached's port: the scanner reads
        only segments a socket of the host takes."""
        st = (TcpStream(NS, CLIENT6, SERVER6) if v6 else
              TcpStream(NS, "198.19.9.2", "198.19.9.1"))
        self.streams.append(st)
        return st

    def reconfigure(self, **kw):
        self.version += 1
        with in_ns(NS):
            self.dp.apply(cfg(version=self.version, **kw), None)

    def next_rid(self):
        self.rid += 1
        return self.rid

    def x(self, frame: bytes) -> tuple[int, bytes]:
        with in_ns(NS):  # the test run resolves ingress_ifindex in the current netns
            return self.xdp.run(frame, xdp_ctx(len(frame), self.ifindex))

    def t(self, frame: bytes) -> tuple[int, bytes]:
        return self.tc.run(frame)

    def delta(self, fn):
        before = self.dp.counters()
        out = fn()
        after = self.dp.counters()
        return out, {k: after[k] - before[k] for k in after if after[k] != before[k]}

    # ---- a whole exchange: miss, memcached's reply fills, returns the hit reply
    def fill_ascii(self, key: bytes, value: bytes, flags: int = 0, cport: int = 40000):
        rid = self.next_rid()
        req = mc_udp(rid, b"get " + key + b"\r\n", sport=cport)
        (rc, out), d = self.delta(lambda: self.x(req))
        assert rc == XDP_PASS and out == req, d
        assert d.get("miss") == 1, d
        body = b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, flags, len(value), value)
        (rc, out), d = self.delta(lambda: self.t(mc_reply(rid, body, cport=cport)))
        assert rc == TC_ACT_OK
        return d

    def get(self, keys: bytes, cport: int = 40000):
        rid = self.next_rid()
        req = mc_udp(rid, b"get " + keys + b"\r\n", sport=cport)
        (rc, out), d = self.delta(lambda: self.x(req))
        return rid, req, rc, out, d


@pytest.fixture(scope="module")
def env():
    sh(f"ip netns del {NS}", check=False)
    sh(f"ip netns add {NS}")
    sh(f"ip -n {NS} link add d0 type veth peer name d1")
    # d1 only keeps d0 up: without IPv6 it sends nothing (no router solicitations or MLD
    # reports), which XDP on d0 would count as "pass" in the middle of a test's delta
    with in_ns(NS):
        Path("/proc/sys/net/ipv6/conf/d1/disable_ipv6").write_text("1")
    sh(f"ip -n {NS} link set d1 up && ip -n {NS} addr add 198.19.9.1/24 dev d0 && "
       f"ip -n {NS} link set d0 up && ip -n {NS} link set lo up")
    # the test client's and server's addresses as local ones too: the segments the tests
    # build belong to real connections between them (Env.stream)
    sh(f"ip -n {NS} addr add 198.19.9.2/32 dev lo && "
       f"ip -n {NS} addr add fd00:9::1/128 dev lo nodad && "
       f"ip -n {NS} addr add fd00:9::2/128 dev lo nodad")
    e = Env()
    yield e
    for st in e.streams:
        st.close()
    TcpStream.close_listeners(NS)
    e.xdp.close()
    e.tc.close()
    with in_ns(NS):
        e.dp.teardown()
    sh(f"ip netns del {NS}", check=False)


@pytest.fixture
def dp(env):
    """Each test starts from the base config and an empty cache."""
    env.reconfigure()
    env.dp.flush()
    return env


def expected_reply(rid, body, *, cport=40000):
    u = struct.pack("!HHHH", 11211, cport, 8 + 8 + len(body), 0)
    u += struct.pack("!HHHH", rid, 0, 1, 0) + body
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(u), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton("198.19.9.1"), socket.inet_aton("198.19.9.2"))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return CMAC + SMAC + b"\x08\x00" + ip + u


# --------------------------------------------------------------------------- GET paths


def test_ascii_miss_fill_hit_byte_exact(dp):
    d = dp.fill_ascii(b"k", b"hello", flags=0)
    assert d.get("fill") == 1, d
    rid, _req, rc, out, d = dp.get(b"k")
    assert rc == XDP_TX, d
    assert d.get("hit") == 1 and "miss" not in d, d
    assert out == expected_reply(rid, b"VALUE k 0 5\r\nhello\r\nEND\r\n")
    assert csum(out[14:34]) == 0  # IPv4 header checksum valid
    assert out[0:6] == CMAC and out[6:12] == SMAC


def test_flags_are_echoed_as_memcached_printed_them(dp):
    dp.fill_ascii(b"fk", b"v", flags=4294967295)
    rid, _, rc, out, _ = dp.get(b"fk")
    assert rc == XDP_TX
    assert out == expected_reply(rid, b"VALUE fk 4294967295 1\r\nv\r\nEND\r\n")


@pytest.mark.parametrize("klen", [1, 7, 8, 9, 15, 16, 17, 31, 63, 64])
@pytest.mark.parametrize("vlen", [0, 1, 8, 13, 256])
def test_single_key_hit_for_every_word_boundary(dp, klen, vlen):
    """The common GET is hashed, compared and copied 8 bytes at a time, the last word
    partial: every length around a word boundary, up to max_key_bytes and max_value_bytes."""
    key = bytes(b"k%03d" % klen + bytes(range(0x41, 0x41 + 60)))[:klen]
    value = bytes((i * 7) % 251 for i in range(vlen))
    assert dp.fill_ascii(key, value, flags=vlen).get("fill") == 1
    rid, _req, rc, out, d = dp.get(key)
    assert rc == XDP_TX and d.get("hit") == 1, d
    assert out == expected_reply(rid, b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, vlen, vlen,
                                                                            value))


@pytest.mark.parametrize("at", [0, 6, 7, 8, 15, 16])
def test_keys_that_differ_in_one_byte_miss(dp, at):
    """Only the whole key hits: a key that differs in any byte of a word (the top byte too,
    which a word hash could lose) or of the partial last word is another key."""
    key = b"abcdefghijklmnopq"  # 17 bytes: two words and one byte
    dp.fill_ascii(key, b"v")
    other = key[:at] + b"Z" + key[at + 1:]
    _, _, rc, _, d = dp.get(other)
    assert rc == XDP_PASS and d.get("miss") == 1, d
    _, _, rc, _, d = dp.get(key)
    assert rc == XDP_TX and d.get("hit") == 1, d


@pytest.mark.parametrize("line,key", [(b"get  spaced", b"spaced"), (b"get trail ", b"trail"),
                                      (b"get a\rb", b"a\rb")])
def test_other_spellings_of_one_key_are_still_served(dp, line, key):
    """What the common path does not take (two spaces, a trailing space, a CR inside the key)
    goes to the general parser, which reads it as memcached's tokenizer does."""
    dp.fill_ascii(key, b"val")
    rid = dp.next_rid()
    (rc, out), d = dp.delta(lambda: dp.x(mc_udp(rid, line + b"\r\n")))
    assert rc == XDP_TX and d.get("hit") == 1, d
    assert out == expected_reply(rid, b"VALUE %s 0 3\r\nval\r\nEND\r\n" % key)


def test_the_probe_hit_proves_the_agents_key_hash(dp):
    """The config carries layout.key_hash of the probe key (the agent's twin of mc_hash); the
    data plane counts probe_hit only when its own hash of the key matches it."""
    key = cfg().probe_key.encode()
    dp.fill_ascii(key, b"alive")
    _, _, rc, _, d = dp.get(key)
    assert rc == XDP_TX and d.get("hit") == 1 and d.get("probe_hit") == 1, d
    dp.fill_ascii(key + b"x", b"alive")
    _, _, rc, _, d = dp.get(key + b"x")
    assert rc == XDP_TX and d.get("hit") == 1 and "probe_hit" not in d, d


def test_hit_only_for_the_same_client_port_reply(dp):
    """A reply for another request id is not a fill."""
    rid = dp.next_rid()
    dp.x(mc_udp(rid, b"get other\r\n"))
    (_, _), d = dp.delta(lambda: dp.t(mc_reply(rid + 500, b"VALUE other 0 1\r\nx\r\nEND\r\n")))
    assert "fill" not in d
    _, _, rc, _, d = dp.get(b"other")
    assert rc == XDP_PASS and d.get("miss") == 1


@pytest.mark.parametrize("opcode,with_key", [(0x00, False), (0x0C, True)])
def test_binary_get_and_getk_hit(dp, opcode, with_key):
    key = b"bkey%d" % opcode
    rid = dp.next_rid()
    req = mc_udp(rid, bin_req(0x00, key, opaque=0x11))
    (rc, out), d = dp.delta(lambda: dp.x(req))
    assert rc == XDP_PASS and out == req and d.get("miss") == 1, d
    reply = bin_res(0x00, value=b"world", flags=0xDEADBEEF, opaque=0x11, cas=0x0102030405060708)
    (rc, _), d = dp.delta(lambda: dp.t(mc_reply(rid, reply)))
    assert rc == TC_ACT_OK and d.get("fill") == 1, d
    rid = dp.next_rid()
    (rc, out), d = dp.delta(lambda: dp.x(mc_udp(rid, bin_req(opcode, key, opaque=0xCAFE))))
    assert rc == XDP_TX and d.get("hit") == 1, d
    want = bin_res(opcode, key=key if with_key else b"", value=b"world", flags=0xDEADBEEF,
                   opaque=0xCAFE, cas=0x0102030405060708)
    assert out == expected_reply(rid, want)


def test_ascii_fill_does_not_serve_binary(dp):
    """An ASCII reply carries no cas: binary GETs must go to memcached."""
    dp.fill_ascii(b"ak", b"v")
    rid = dp.next_rid()
    req = mc_udp(rid, bin_req(0x00, b"ak", opaque=1))
    (rc, out), d = dp.delta(lambda: dp.x(req))
    assert rc == XDP_PASS and out == req and d.get("miss") == 1


def test_multiget_all_hit_and_one_miss(dp):
    rid = dp.next_rid()
    dp.x(mc_udp(rid, b"get a b\r\n"))
    reply = b"VALUE a 1 1\r\nA\r\nVALUE b 2 2\r\nBB\r\nEND\r\n"
    (_, _), d = dp.delta(lambda: dp.t(mc_reply(rid, reply)))
    assert d.get("fill") == 2, d
    rid, _, rc, out, d = dp.get(b"a b")
    assert rc == XDP_TX and d.get("hit") == 1, d
    assert out == expected_reply(rid, b"VALUE a 1 1\r\nA\r\nVALUE b 2 2\r\nBB\r\nEND\r\n")
    rid, req, rc, out, d = dp.get(b"a zz b")
    assert rc == XDP_PASS and out == req, d
    assert d.get("miss") == 1 and "hit" not in d


def test_memcached_split_multiget_reply_fills_each_item(dp):
    """memcached sends one message per item plus END: each item fills."""
    rid = dp.next_rid()
    dp.x(mc_udp(rid, b"get s1 s2\r\n"))
    for body in (b"VALUE s1 0 1\r\n1\r\n", b"VALUE s2 0 1\r\n2\r\n", b"END\r\n"):
        dp.t(mc_reply(rid, body))
    rid, _, rc, out, _ = dp.get(b"s1 s2")
    assert rc == XDP_TX
    assert out == expected_reply(rid, b"VALUE s1 0 1\r\n1\r\nVALUE s2 0 1\r\n2\r\nEND\r\n")


# --------------------------------------------------------------------------- invalidation


def _assert_invalidated(dp, key, frames, *, flush=False):
    dp.fill_ascii(key, b"old")
    assert dp.get(key)[2] == XDP_TX
    def send():
        for f in frames:
            rc, out = dp.x(f)
            assert rc == XDP_PASS and out == f  # writes always reach memcached untouched
    _, d = dp.delta(send)
    if flush:
        assert d.get("flush", 0) + d.get("fallback_flush", 0) >= 1, d
    else:
        assert d.get("invalidate", 0) >= 1, d
    _, _, rc, _, d = dp.get(key)
    assert rc == XDP_PASS and d.get("miss") == 1, d


TCP_WRITES = {
    "set": b"set {k} 0 0 3\r\nnew\r\n",
    "add": b"add {k} 0 0 3\r\nnew\r\n",
    "replace": b"replace {k} 0 0 3\r\nnew\r\n",
    "append": b"append {k} 0 0 3\r\nnew\r\n",
    "prepend": b"prepend {k} 0 0 3\r\nnew\r\n",
    "cas": b"cas {k} 0 0 3 12345\r\nnew\r\n",
    "incr": b"incr {k} 1\r\n",
    "decr": b"decr {k} 1\r\n",
    "touch": b"touch {k} 10\r\n",
    "delete": b"delete {k}\r\n",
    "delete_noreply": b"delete {k} noreply\r\n",
    "gat": b"gat 10 zz {k}\r\n",
    "gats": b"gats 10 {k}\r\n",
    "ms": b"ms {k} 3 T0\r\nnew\r\n",
    "md": b"md {k} q\r\n",
    "ma": b"ma {k}\r\n",
}


@pytest.mark.parametrize("cmd", sorted(TCP_WRITES))
def test_tcp_write_invalidates(dp, cmd):
    key = b"t_" + cmd.encode()
    st = dp.stream()
    payload = TCP_WRITES[cmd].replace(b"{k}", key)
    _assert_invalidated(dp, key, [tcp_frame(payload, seq=st.seq(), sport=st.sport)])


def test_tcp_flush_all(dp):
    st = dp.stream()
    _assert_invalidated(dp, b"fa", [tcp_frame(b"flush_all\r\n", seq=st.seq(), sport=st.sport)],
                        flush=True)


def test_binary_set_over_tcp_invalidates(dp):
    st = dp.stream()
    req = bin_req(0x01, b"bset", extras=struct.pack("!II", 0, 0), value=b"new")
    _assert_invalidated(dp, b"bset", [tcp_frame(req, seq=st.seq(), sport=st.sport)])


def test_binary_delete_quiet_over_udp_invalidates(dp):
    req = mc_udp(dp.next_rid(), bin_req(0x14, b"bdq"))
    _assert_invalidated(dp, b"bdq", [req])


@pytest.mark.parametrize("payload", [b"set {k} 0 0 3\r\nnew\r\n", b"delete {k}\r\n",
                                     b"incr {k} 5\r\n", b"flush_all 0\r\n"])
def test_udp_write_invalidates(dp, payload):
    key = b"u%d" % len(payload)
    req = mc_udp(dp.next_rid(), payload.replace(b"{k}", key))
    _assert_invalidated(dp, key, [req], flush=payload.startswith(b"flush"))


def test_pipelined_segment_invalidates_the_write(dp):
    st = dp.stream()
    dp.fill_ascii(b"b", b"bee")
    seg = tcp_frame(b"get a\r\nset k 0 0 1\r\nx\r\nget b\r\n", seq=st.seq(), sport=st.sport)
    _assert_invalidated(dp, b"k", [seg])
    # the gets around it changed nothing
    assert dp.get(b"b")[2] == XDP_TX


def test_value_spanning_segments_then_write(dp):
    st = dp.stream()
    dp.fill_ascii(b"victim", b"v")  # must survive: its delete is only inside value bytes
    seg1 = b"set big 0 0 30\r\n0123456789"
    seg2 = b"delete victim\r\n0123456\r\ndelete k2\r\n"  # 15 + 15 value bytes, then the write
    f1 = tcp_frame(seg1, seq=st.seq(), sport=st.sport)
    f2 = tcp_frame(seg2, seq=st.seq(len(seg1)), sport=st.sport)
    _assert_invalidated(dp, b"k2", [f1, f2])
    assert dp.get(b"victim")[2] == XDP_TX, "value bytes were parsed as a command"
    assert "fallback_flush" not in dp.delta(lambda: None)[1]


def test_segment_past_a_gap_is_dropped_and_read_when_resent_in_order(dp):
    """Bytes we never saw come first: the segment after them is dropped (TCP sends it again),
    nothing is flushed, and once the gap is filled the resent segment is read."""
    st = dp.stream()
    dp.fill_ascii(b"gk", b"old")
    f1 = tcp_frame(b"set big 0 0 4\r\n", seq=st.seq(), sport=st.sport)
    f3 = tcp_frame(b"delete gk\r\n", seq=st.seq(21), sport=st.sport)  # 6 bytes unseen
    assert dp.x(f1)[0] == XDP_PASS
    (rc, _), d = dp.delta(lambda: dp.x(f3))
    assert rc == XDP_DROP and d.get("out_of_order") == 1 and "fallback_flush" not in d, d
    assert dp.get(b"gk")[2] == XDP_TX  # nothing read, nothing flushed
    f2 = tcp_frame(b"1234\r\n", seq=st.seq(15), sport=st.sport)
    for f in (f2, f3):
        (rc, _), d = dp.delta(lambda f=f: dp.x(f))
        assert rc == XDP_PASS and "fallback_flush" not in d, d
    assert d.get("invalidate") == 1, d
    assert dp.get(b"gk")[2] == XDP_PASS


def test_command_line_cut_by_segment_end_is_read_whole(dp):
    """A line cut by a segment's end is kept and read with the next segment: its key is
    invalidated, and no flush is needed."""
    st = dp.stream()
    f1 = tcp_frame(b"delete gc", seq=st.seq(), sport=st.sport)
    f2 = tcp_frame(b"ut\r\n", seq=st.seq(9), sport=st.sport)
    _assert_invalidated(dp, b"gcut", [f1, f2])
    assert dp.get(b"gc")[2] == XDP_PASS  # only the whole key was written


# --------------------------------------------------------------------------- passed untouched


def _bad_frames():
    return {
        "udp_len_past_end": mc_udp(1, b"get k\r\n", ulen=200),
        "ip_tot_len_past_end": mc_udp(1, b"get k\r\n", tot_len=400),
        "wrong_port": mc_udp(1, b"get k\r\n", dport=11212),
        "ipv6": mc_udp(1, b"get k\r\n")[:12] + b"\x86\xdd" + mc_udp(1, b"get k\r\n")[14:],
        "arp": b"\xff" * 6 + CMAC + b"\x08\x06" + b"\x00" * 28,
        "ip_options": mc_udp(1, b"get k\r\n", options=b"\x01\x01\x01\x00"),
        "runt": SMAC + CMAC + b"\x08\x00" + b"\x45",
        "bad_frame_header": udp_frame(struct.pack("!HHHH", 1, 3, 1, 0) + b"get k\r\n"),
        "no_crlf": mc_udp(1, b"get k"),
        "other_server": mc_udp(1, b"get k\r\n", dst="198.19.9.77"),
        "key_too_long": mc_udp(1, b"get " + b"K" * 65 + b"\r\n"),
        "gets": mc_udp(1, b"gets k\r\n"),
        "later_fragment": mc_udp(1, b"get k\r\n", frag=0x10),
    }


@pytest.mark.parametrize("name", sorted(_bad_frames()))
def test_not_answered_and_unchanged(dp, name):
    dp.fill_ascii(b"k", b"cached")  # a hit would be possible for a well-formed get k
    frame = _bad_frames()[name]
    (rc, out), d = dp.delta(lambda: dp.x(frame))
    assert rc == XDP_PASS, d
    assert out == frame
    assert "hit" not in d
    expect = {"key_too_long": "too_big", "gets": "gets", "udp_len_past_end": "malformed",
              "ip_tot_len_past_end": "malformed", "no_crlf": "malformed",
              "bad_frame_header": "malformed", "wrong_port": "pass",
              "ipv6": "malformed",  # an IPv4 packet under the IPv6 ethertype
              "other_server": "pass", "ip_options": "pass"}.get(name)
    if expect:
        assert d.get(expect) == 1, d


def test_value_over_max_value_bytes_is_not_filled(dp):
    rid = dp.next_rid()
    dp.x(mc_udp(rid, b"get big\r\n"))
    v = b"x" * 257
    (rc, out), d = dp.delta(lambda: dp.t(mc_reply(rid, b"VALUE big 0 257\r\n%s\r\nEND\r\n" % v)))
    assert rc == TC_ACT_OK and d.get("too_big") == 1 and "fill" not in d, d
    _, req, rc, out, d = dp.get(b"big")
    assert rc == XDP_PASS and out == req and d.get("miss") == 1


def test_value_at_max_value_bytes_is_served(dp):
    v = bytes(range(256))
    v = v.replace(b"\r", b"r").replace(b"\n", b"n")
    d = dp.fill_ascii(b"max", v)
    assert d.get("fill") == 1, d
    rid, _, rc, out, d = dp.get(b"max")
    assert rc == XDP_TX, d
    assert out == expected_reply(rid, b"VALUE max 0 256\r\n" + v + b"\r\nEND\r\n")


def test_write_between_get_and_reply_refuses_fill(dp):
    dp.reconfigure()
    rid = dp.next_rid()
    dp.x(mc_udp(rid, b"get race\r\n"))
    time.sleep(0.001)
    dp.x(mc_udp(dp.next_rid(), b"delete race\r\n"))
    (_, _), d = dp.delta(lambda: dp.t(mc_reply(rid, b"VALUE race 0 3\r\nold\r\nEND\r\n")))
    assert d.get("fill_rejected") == 1 and "fill" not in d, d
    assert dp.get(b"race")[2] == XDP_PASS


def test_a_retry_keeps_the_first_gets_time(dp):
    """The same client and request id asking again after a write (a retry): the miss record
    keeps the first GET's arrival, so the reply, which memcached may have read before the
    write, is refused."""
    rid = dp.next_rid()
    dp.x(mc_udp(rid, b"get retry\r\n"))
    time.sleep(0.001)
    dp.x(mc_udp(dp.next_rid(), b"delete retry\r\n"))
    time.sleep(0.001)
    dp.x(mc_udp(rid, b"get retry\r\n"))
    (_, _), d = dp.delta(lambda: dp.t(mc_reply(rid, b"VALUE retry 0 3\r\nold\r\nEND\r\n")))
    assert d.get("fill_rejected") == 1 and "fill" not in d, d


def test_a_refused_reply_uses_up_its_miss_record(dp):
    """A reply refused by the guard (here: a flush since its GET, as when the agent flushes
    at start) still answers its GET: the next GET with the same client and request id
    (clients that reuse ids, like the agent's probe) is judged on its own time and fills."""
    rid = dp.next_rid()
    dp.x(mc_udp(rid, b"get reuse\r\n"))
    time.sleep(0.001)
    dp.x(mc_udp(dp.next_rid(), b"flush_all\r\n"))
    reply = mc_reply(rid, b"VALUE reuse 0 3\r\nnew\r\nEND\r\n")
    (_, _), d = dp.delta(lambda: dp.t(reply))
    assert d.get("fill_rejected") == 1, d
    time.sleep(0.001)
    dp.x(mc_udp(rid, b"get reuse\r\n"))
    (_, _), d = dp.delta(lambda: dp.t(reply))
    assert d.get("fill") == 1, d
    assert dp.get(b"reuse")[2] == XDP_TX


def test_misses_in_one_bucket_wait_in_their_own_ways(dp):
    """Single-key misses wait for their replies in the ways of their bucket: four at once all
    fill; a fifth while the four wait takes the first way's record, and that GET's reply
    fills nothing (a lost fill, never a wrong one)."""
    keys = same_bucket_keys(5)
    rids = []
    for key in keys:
        rids.append(dp.next_rid())
        (rc, _), d = dp.delta(lambda k=key, r=rids[-1]: dp.x(mc_udp(r, b"get " + k + b"\r\n")))
        assert rc == XDP_PASS and d.get("miss") == 1, d
    fills = []
    for key, rid in zip(keys, rids, strict=True):
        (_, _), d = dp.delta(lambda k=key, r=rid: dp.t(
            mc_reply(r, b"VALUE %s 0 2\r\nok\r\nEND\r\n" % k)))
        fills.append(d.get("fill", 0))
    assert fills == [0, 1, 1, 1, 1], fills
    for key, hit in zip(keys, fills, strict=True):
        assert (dp.get(key)[2] == XDP_TX) == bool(hit), key


# --------------------------------------------------------------------------- config


def test_ttl_expiry(dp):
    dp.reconfigure(ttl=200)
    dp.fill_ascii(b"ttl", b"v")
    assert dp.get(b"ttl")[2] == XDP_TX
    time.sleep(0.3)
    _, req, rc, out, d = dp.get(b"ttl")
    assert rc == XDP_PASS and out == req
    assert d.get("expired") == 1 and d.get("miss") == 1, d


def test_kill_switch(dp):
    dp.fill_ascii(b"ks", b"v")
    dp.reconfigure(enabled="false")
    _, req, rc, out, d = dp.get(b"ks")
    assert rc == XDP_PASS and out == req and d.get("disabled") == 1, d


def test_client_outside_allowed_clients_is_denied(dp):
    dp.fill_ascii(b"dn", b"v")
    dp.reconfigure(allowed="198.19.9.128/25")
    _, req, rc, out, d = dp.get(b"dn")
    assert rc == XDP_PASS and out == req and d.get("denied") == 1, d


# --------------------------------------------------------------------------- regressions


def test_new_connection_on_a_reused_port_is_a_fresh_stream(dp):
    """A connection that died mid-value (memcached killed) leaves "skip until seq S"; a new
    connection on the same port must not inherit it, or its writes would be skipped."""
    old = dp.stream()
    sport = old.sport
    assert dp.x(tcp_frame(b"set big 0 0 100000\r\n0123", seq=old.seq(), sport=sport))[0] == XDP_PASS
    old.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    old.close()  # with a RST: no TIME_WAIT holds the port
    # a new connection from the same port: another first sequence number, a fresh stream
    new = TcpStream(NS, "198.19.9.2", "198.19.9.1", sport=sport)
    dp.streams.append(new)
    _assert_invalidated(dp, b"synk", [tcp_frame(b"delete synk\r\n", seq=new.seq(),
                                                sport=new.sport)])


def test_multiget_of_eight_keys_is_answered(dp):
    keys = [b"m%d" % i for i in range(8)]
    for k in keys:
        dp.fill_ascii(k, k.upper())
    _, _, rc, out, d = dp.get(b" ".join(keys))
    assert rc == XDP_TX, d
    body = b"".join(b"VALUE %s 0 2\r\n%s\r\n" % (k, k.upper()) for k in keys) + b"END\r\n"
    assert out.endswith(body)


@pytest.mark.parametrize("n", [9, 31, 32])
def test_multiget_of_up_to_32_keys_is_answered(dp, n):
    """Up to MC_MAX_MULTIGET keys, MC_MGET_PER_CALL per xdp_get_key run: byte for byte."""
    keys = [b"m%d" % i for i in range(n)]
    for k in keys:
        dp.fill_ascii(k, k.upper())
    rid, _, rc, out, d = dp.get(b" ".join(keys))
    assert rc == XDP_TX and d.get("hit") == 1 and "miss" not in d, d
    body = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(k), k.upper()) for k in keys)
    assert out == expected_reply(rid, body + b"END\r\n")


def test_multiget_over_32_keys_is_memcached_s_and_fills(dp):
    """One key more than MC_MAX_MULTIGET: memcached answers, and its reply (here one datagram
    of 31 items, a key missing) fills every item, a tail call each."""
    keys = [b"o%d" % i for i in range(33)]
    rid, req, rc, out, d = dp.get(b" ".join(keys))
    assert rc == XDP_PASS and out == req and d.get("miss") == 1, d
    items = [k for k in keys if k != b"o7"][:31]
    reply = b"".join(b"VALUE %s 3 1\r\nv\r\n" % k for k in items) + b"END\r\n"
    (_, _), d = dp.delta(lambda: dp.t(mc_reply(rid, reply)))
    assert d.get("fill") == 31, d
    rid, _, rc, out, d = dp.get(b" ".join(items))
    assert rc == XDP_TX and d.get("hit") == 1, d
    assert out == expected_reply(rid, reply)
    # one miss among 32 keys: the whole request is memcached's, nothing answered
    rid, req, rc, out, d = dp.get(b" ".join([*items, b"o7"]))
    assert rc == XDP_PASS and out == req and d.get("miss") == 1 and "hit" not in d, d


def test_delayed_flush_kills_entries_known_before_it(dp):
    dp.reconfigure()
    dp.fill_ascii(b"df", b"before")
    assert dp.get(b"df")[2] == XDP_TX
    dp.x(mc_udp(dp.next_rid(), b"flush_all 1\r\n"))
    assert dp.get(b"df")[2] == XDP_TX  # memcached still has it until the flush time
    # a GET that arrives before the flush time, answered after it, must not fill
    rid = dp.next_rid()
    dp.x(mc_udp(rid, b"get df2\r\n"))
    time.sleep(1.1)
    (_, _), d = dp.delta(lambda: dp.t(mc_reply(rid, b"VALUE df2 0 3\r\nold\r\nEND\r\n")))
    assert d.get("fill_rejected") == 1 and "fill" not in d, d
    _, _, rc, _, d = dp.get(b"df")
    assert rc == XDP_PASS, d  # dead at the flush time
    dp.fill_ascii(b"df", b"after")  # stored after the flush: lives
    assert dp.get(b"df")[2] == XDP_TX


# --------------------------------------------------------------------------- capture


@contextlib.contextmanager
def capturing(**spec):
    """A capture of the test environment's data plane; yields (frames, drain): drain() hands
    what the kernel copied so far to frames, decoded."""
    frames: list[capture.Frame] = []
    with in_ns(NS), capture.Session(Path(PIN), capture.Spec(**spec)) as session:
        session.start()
        with session.ring(lambda raw: frames.append(capture.decode(raw))) as ring:
            def drain():
                ring.drain()
                return frames
            yield frames, drain, session


def test_capture_records_each_decision_with_its_frame(dp):
    """A miss, its fill, the hit's request and the reply XDP_TX sent, and a write: each frame
    as it was at that point, with its verdicts, path, stage, action, key and version."""
    with capturing() as (_, drain, _s):
        rid = dp.next_rid()
        req = mc_udp(rid, b"get capk\r\n", sport=40000)
        dp.x(req)
        reply = mc_reply(rid, b"VALUE capk 3 2\r\nhi\r\nEND\r\n")
        dp.t(reply)
        _, req2, rc, out, _ = dp.get(b"capk")
        assert rc == XDP_TX
        st = dp.stream()
        write = tcp_frame(b"delete capk\r\n", seq=st.seq(), sport=st.sport)
        dp.x(write)
        frames = drain()
    got = [(f.verdicts, f.path, f.stage, f.action_name(), f.key, f.version) for f in frames]
    v = dp.version
    assert got == [
        (("miss",), "xdp_main", "in", "XDP_PASS", b"capk", v),
        (("fill",), "tc_main", "egress", "TC_ACT_OK", b"capk", v),
        (("hit",), "xdp_main", "in", "XDP_TX", b"capk", v),
        (("hit",), "xdp_main", "tx", "XDP_TX", b"capk", v),
        (("invalidate",), "xdp_scan", "in", "XDP_PASS", b"capk", v),
    ], got
    assert [f.data for f in frames] == [req, reply, req2, out, write]
    assert all(f.frame_len == len(f.data) and f.ifindex for f in frames[:1] + frames[2:])
    assert frames[3].comment() == (f"mcache verdict=hit path=xdp_main stage=tx action=XDP_TX "
                                   f"version={v} key=capk")


def test_capture_filters_run_in_the_kernel(dp):
    dp.fill_ascii(b"fa1", b"x")
    dp.fill_ascii(b"fb1", b"y")
    with capturing(verdicts=["hit"]) as (_, drain, _s):
        dp.get(b"fa1")
        dp.get(b"nothere")
        assert {f.verdicts for f in drain()} == {("hit",)} and len(drain()) == 2
    with capturing(key_prefix=b"fb", verdicts=["all"]) as (_, drain, _s):
        dp.get(b"fa1")
        dp.get(b"fb1")
        dp.x(udp_frame(b"not memcached", dport=53))
        assert [f.key for f in drain()] == [b"fb1", b"fb1"]
    with capturing(interface="lo") as (_, drain, _s):
        dp.get(b"fa1")
        assert drain() == []
    with capturing(verdicts=["pass"]) as (_, drain, _s):
        dp.get(b"fa1")
        dp.x(udp_frame(b"not memcached", dport=53))
        assert [(f.verdicts, f.key) for f in drain()] == [(("pass",), b"")]


def test_capture_never_changes_an_answer_and_stops_with_its_lease(dp):
    dp.fill_ascii(b"same", b"value")
    frames_in = [mc_udp(7, b"get same\r\n"), mc_udp(8, b"get other\r\n"),
                 tcp_frame(b"set z 0 0 1\r\nz\r\n", seq=3, sport=dp.port),  # no connection
                 mc_udp(9, b"get same\r\n")[:-3]]  # truncated: passed as is
    off = [dp.x(f) for f in frames_in]
    with capturing(verdicts=["all"]) as (_, drain, session):
        on = [dp.x(f) for f in frames_in]
        assert len(drain()) >= len(frames_in)
        # The lease: a capture process that stops renewing (killed) gets nothing more.
        ctl = Path(session.state) / "capture_ctl"
        with libbpf.opened(ctl) as fd:
            raw = bytearray(libbpf.map_lookup(fd, bytes(4), capture.CTL.size))
            struct.pack_into("<Q", raw, 16, time.monotonic_ns() - 1)
            libbpf.map_update(fd, bytes(4), bytes(raw))
        n = len(drain())
        dp.x(frames_in[0])
        assert len(drain()) == n
    assert on == off
    dp.x(frames_in[0])  # capture off again: nothing copied
    with in_ns(NS), capture.Session(Path(PIN), capture.Spec()) as session, \
            session.ring(lambda raw: pytest.fail("copied with no capture on")) as ring:
        ring.drain()


def test_a_full_ring_counts_what_it_lost(dp):
    frame = mc_udp(11, b"get lost\r\n")
    with in_ns(NS):
        ctx = xdp_ctx(len(frame), dp.ifindex)
    with capturing(verdicts=["miss"]) as (_, _drain, session):
        before = session.lost()
        libbpf.prog_test_run(dp.xdp.fd, frame, ctx, repeat=30000)  # ~200 B a record: > 4 MiB
        lost = session.lost() - before
    assert lost > 0


def test_a_second_capture_is_refused_while_one_runs(dp):
    with capturing(), in_ns(NS):
        other = capture.Session(Path(PIN), capture.Spec())
        ctl = Path(other.state) / "capture_ctl"
        with libbpf.opened(ctl) as fd:  # as if another live process held it
            raw = bytearray(libbpf.map_lookup(fd, bytes(4), capture.CTL.size))
            struct.pack_into("<I", raw, 24, 1)  # pid 1 is alive
            libbpf.map_update(fd, bytes(4), bytes(raw))
        with other, pytest.raises(capture.CaptureError, match="already"):
            other.start()


# --------------------------------------------------------------------------- counters


def test_counters_keep_each_versions_totals_across_swaps(dp):
    dp.fill_ascii(b"ver", b"v")
    for _ in range(3):
        dp.get(b"ver")
    first = dp.version
    assert dp.dp.stats().by_version[first].by_path["xdp_main"]["hit"] == 3
    # More versions than lines: the first one's line goes to the archive, intact.
    slots = len(dp.dp.stats().slots)
    for _ in range(10):
        dp.reconfigure()
        dp.get(b"ver")
    st = dp.dp.stats()
    assert st.by_version[first].by_path["xdp_main"]["hit"] == 3
    assert st.by_version[first].by_path["xdp_main"]["miss"] == 1
    assert st.by_version[first].by_path["tc_main"]["fill"] == 1
    assert first not in st.slots.values() and slots <= len(st.slots) == 8
    assert all(st.by_version[v].by_path["xdp_main"]["hit"] == 1
               for v in range(first + 1, dp.version + 1))
    assert st.total().by_verdict() == dp.dp.counters()


def test_paths_count_what_they_decided(dp):
    dp.fill_ascii(b"pa", b"1")
    dp.fill_ascii(b"pb", b"2")
    st = dp.stream()  # its handshake over lo is counted before the test's delta
    before = dp.dp.stats().by_version[dp.version]
    dp.get(b"pa pb")  # multi-get: xdp_get_key twice, then xdp_reply
    dp.x(tcp_frame(b"delete pa\r\n", seq=st.seq(), sport=st.sport))
    after = dp.dp.stats().by_version[dp.version]
    diff = {(p, v): after.by_path[p][v] - before.by_path[p][v]
            for p in after.by_path for v in after.by_path[p]
            if after.by_path[p][v] != before.by_path[p][v]}
    assert diff == {("xdp_reply", "hit"): 1, ("xdp_scan", "invalidate"): 1}, diff


def test_a_fill_that_replaces_another_key_counts_an_eviction(dp):
    keys = same_bucket_keys(5)
    for k in keys[:4]:
        assert "evict" not in dp.fill_ascii(k, b"v")
    assert dp.fill_ascii(keys[4], b"v").get("evict") == 1


# --------------------------------------------------------------------------- meta get (mg)


@pytest.mark.parametrize("req,body", [
    (b"mg mk v", b"VA 5\r\nhello\r\n"),
    (b"mg mk", b"HD\r\n"),
    (b"mg mk k", b"HD kmk\r\n"),
    (b"mg mk v f", b"VA 5 f42\r\nhello\r\n"),
    (b"mg mk s v f k Oab12 q", b"VA 5 s5 f42 kmk Oab12\r\nhello\r\n"),
    (b"mg mk O v", b"VA 5 O\r\nhello\r\n"),
    (b"mg  mk  v  k", b"VA 5 kmk\r\nhello\r\n"),
])
def test_meta_get_hits_are_answered_as_memcached_does(dp, req, body):
    """Byte for byte what memcached 1.6.18 answers (tests/dataplane/test_functional.py asks
    the real one): the return flags in the order asked, v for the value, q changes nothing
    on a hit."""
    dp.fill_ascii(b"mk", b"hello", flags=42)
    rid = dp.next_rid()
    (rc, out), d = dp.delta(lambda: dp.x(mc_udp(rid, req + b"\r\n")))
    assert rc == XDP_TX and d == {"hit": 1}, d
    assert out == expected_reply(rid, body)


@pytest.mark.parametrize("req", [b"mg mk N30 v", b"mg mk T30 v", b"mg mk v x", b"mg mk E5 v",
                                 b"mg mk R30 v", b"mg bWs= b N30 v"])
def test_meta_gets_that_may_change_the_item_go_to_memcached_as_writes(dp, req):
    """Flags that change the item (N vivifies, T touches, E and R), or that we do not know:
    passed unchanged, and the scanner treats the mg as a write (the key is invalidated, or
    the cache emptied when the key is base64)."""
    dp.fill_ascii(b"mk", b"hello")
    frame = mc_udp(dp.next_rid(), req + b"\r\n")
    (rc, out), d = dp.delta(lambda: dp.x(frame))
    assert rc == XDP_PASS and out == frame, d
    assert "hit" not in d
    assert d.get("invalidate", 0) + d.get("fallback_flush", 0) >= 1, d


@pytest.mark.parametrize("req", [b"mg mk t v", b"mg mk c v", b"mg mk v v", b"mg mk h l u v",
                                 b"mg bWs= b v", b"mg mk O" + b"o" * 33 + b" v"])
def test_meta_gets_the_cache_cannot_answer_that_only_read_pass(dp, req):
    """Flags that need memcached's item (t, c, h, l), a base64 key, or what memcached refuses
    (a repeated flag, an opaque too long): passed unchanged, and, reading only, they
    invalidate nothing (TCP readers of mg must not keep the cache empty)."""
    dp.fill_ascii(b"mk", b"hello")
    frame = mc_udp(dp.next_rid(), req + b"\r\n")
    (rc, out), d = dp.delta(lambda: dp.x(frame))
    assert rc == XDP_PASS and out == frame, d
    assert "hit" not in d and "invalidate" not in d and "fallback_flush" not in d, d
    _, _, rc, _, d = dp.get(b"mk")
    assert rc == XDP_TX, d


def test_a_meta_get_miss_passes_and_invalidates_nothing(dp):
    dp.fill_ascii(b"other", b"kept")
    frame = mc_udp(dp.next_rid(), b"mg absent v f\r\n")
    (rc, out), d = dp.delta(lambda: dp.x(frame))
    assert rc == XDP_PASS and out == frame and d == {"miss": 1}, d
    # memcached's miss, "EN", fills nothing
    (_, _), d = dp.delta(lambda: dp.t(mc_reply(dp.rid, b"EN\r\n")))
    assert "fill" not in d and "fill_rejected" not in d, d
    _, _, rc, _, d = dp.get(b"other")
    assert rc == XDP_TX, d
    (rc, _), d = dp.delta(lambda: dp.x(mc_udp(dp.next_rid(), b"mg absent v\r\n")))
    assert rc == XDP_PASS and d == {"miss": 1}, d


# --------------------------------------------------------------------------- mg fills


def mg_exchange(dp, key: bytes, flags: bytes, reply: bytes, *, cport: int = 40000) -> dict:
    """An mg that misses, then memcached's reply to it through TC egress: the counters the
    reply moved."""
    rid = dp.next_rid()
    req = mc_udp(rid, b"mg " + key + b" " + flags + b"\r\n", sport=cport)
    (rc, out), d = dp.delta(lambda: dp.x(req))
    assert rc == XDP_PASS and out == req and d.get("miss") == 1 and "hit" not in d, d
    (rc, _), d = dp.delta(lambda: dp.t(mc_reply(rid, reply, cport=cport)))
    assert rc == TC_ACT_OK
    return d


def mg_hit(dp, key: bytes, flags: bytes) -> tuple[int, int, bytes, dict]:
    rid = dp.next_rid()
    req = mc_udp(rid, b"mg " + key + (b" " + flags if flags else b"") + b"\r\n")
    (rc, out), d = dp.delta(lambda: dp.x(req))
    return rid, rc, out, d


# What memcached 1.6.18 sends for "mg mk <flags>" with mk = "hello", client flags 42: the
# return flags in the order asked (tests/dataplane/test_functional.py compares with the real
# one), v for the value, q nothing on a hit.
MG_FORMS = [
    (b"v", b"VA 5\r\nhello\r\n"),
    (b"v k", b"VA 5 kmk\r\nhello\r\n"),
    (b"s v", b"VA 5 s5\r\nhello\r\n"),
    (b"k s v O123 q", b"VA 5 kmk s5 O123\r\nhello\r\n"),
    (b"O v", b"VA 5 O\r\nhello\r\n"),
    (b"k", b"HD kmk\r\n"),
    (b"", b"HD\r\n"),
    (b"v f", b"VA 5 f42\r\nhello\r\n"),
    (b"v f k s Oab q", b"VA 5 f42 kmk s5 Oab\r\nhello\r\n"),
    (b"f", b"HD f42\r\n"),
]

# The mg whose miss fills, and memcached's reply to it: with and without the client flags.
MG_FILLS = {
    "v": (b"v", b"VA 5\r\nhello\r\n"),
    "v_k_s_O": (b"v k s Oz9 q", b"VA 5 kmk s5 Oz9\r\nhello\r\n"),
    "v_f": (b"v f", b"VA 5 f42\r\nhello\r\n"),
    "s_v_f_k_O": (b"s v f k Oab12 q", b"VA 5 s5 f42 kmk Oab12\r\nhello\r\n"),
}


def test_an_mg_miss_is_filled_from_memcached_s_reply(dp):
    """An mg miss is remembered with its key (the reply has none without k); memcached's VA
    reply fills, and the same mg is then answered by the kernel, byte for byte."""
    d = mg_exchange(dp, b"mk", b"v", b"VA 5\r\nhello\r\n")
    assert d.get("fill") == 1 and "fill_rejected" not in d, d
    rid, rc, out, d = mg_hit(dp, b"mk", b"v")
    assert rc == XDP_TX and d == {"hit": 1}, d
    assert out == expected_reply(rid, b"VA 5\r\nhello\r\n")
    assert csum(out[14:34]) == 0


@pytest.mark.parametrize("fill", sorted(MG_FILLS))
@pytest.mark.parametrize("form,body", MG_FORMS)
def test_an_mg_filled_entry_answers_the_forms_it_has_data_for(dp, fill, form, body):
    """An entry an mg filled answers every mg form byte for byte as memcached does, f only
    when the filling reply carried the client flags; an mg with f is passed otherwise (a
    miss, whose reply then fills the flags in)."""
    fill_flags, reply = MG_FILLS[fill]
    assert mg_exchange(dp, b"mk", fill_flags, reply).get("fill") == 1
    knows_flags = b"f" in fill_flags.split()
    asks_flags = b"f" in form.split()
    rid, rc, out, d = mg_hit(dp, b"mk", form)
    if asks_flags and not knows_flags:
        assert rc == XDP_PASS and "hit" not in d and d.get("miss") == 1, d
        return
    assert rc == XDP_TX and d == {"hit": 1}, d
    assert out == expected_reply(rid, body)


def test_f_is_refused_without_flags_and_its_reply_fills_them(dp):
    assert mg_exchange(dp, b"mk", b"v", b"VA 5\r\nhello\r\n").get("fill") == 1
    d = mg_exchange(dp, b"mk", b"v f", b"VA 5 f42\r\nhello\r\n")  # the miss: asserted
    assert d.get("fill") == 1, d
    for form, body in ((b"v f", b"VA 5 f42\r\nhello\r\n"), (b"v", b"VA 5\r\nhello\r\n")):
        rid, rc, out, d = mg_hit(dp, b"mk", form)
        assert rc == XDP_TX and out == expected_reply(rid, body), d
    rid, _req, rc, out, d = dp.get(b"mk")  # the flags are known now: get hits too
    assert rc == XDP_TX and out == expected_reply(rid, b"VALUE mk 42 5\r\nhello\r\nEND\r\n")


def test_get_after_an_mg_fill_without_flags_misses_and_its_reply_fills(dp):
    assert mg_exchange(dp, b"mk", b"v k", b"VA 5 kmk\r\nhello\r\n").get("fill") == 1
    dp.fill_ascii(b"k2", b"two", flags=1)
    _, _, rc, _, d = dp.get(b"k2 mk")  # the multi-get path refuses it as well
    assert rc == XDP_PASS and d.get("miss") == 1 and "hit" not in d, d
    rid, req, rc, out, d = dp.get(b"mk")
    assert rc == XDP_PASS and out == req and d.get("miss") == 1 and "hit" not in d, d
    body = b"VALUE mk 42 5\r\nhello\r\nEND\r\n"
    (_, _), d = dp.delta(lambda: dp.t(mc_reply(rid, body)))
    assert d.get("fill") == 1, d
    rid, _req, rc, out, d = dp.get(b"mk")
    assert rc == XDP_TX and out == expected_reply(rid, body), d
    rid, rc, out, d = mg_hit(dp, b"mk", b"v f")  # and the mg forms with f
    assert rc == XDP_TX and out == expected_reply(rid, b"VA 5 f42\r\nhello\r\n"), d


@pytest.mark.parametrize("flags,reply", [MG_FILLS["v_f"], MG_FILLS["s_v_f_k_O"],
                                         (b"v f", b"VA 0 f4294967295\r\n\r\n")])
def test_get_after_an_mg_fill_with_flags_hits_byte_exact(dp, flags, reply):
    assert mg_exchange(dp, b"mk", flags, reply).get("fill") == 1
    rid, _req, rc, out, d = dp.get(b"mk")
    assert rc == XDP_TX and d.get("hit") == 1, d
    value = reply.split(b"\r\n")[1]
    fl = next(t[1:] for t in reply.split(b"\r\n")[0].split() if t.startswith(b"f"))
    item = b"VALUE mk %s %d\r\n%s\r\n" % (fl, len(value), value)
    assert out == expected_reply(rid, item + b"END\r\n")
    dp.fill_ascii(b"k2", b"two", flags=1)  # a multi-get's item too
    rid, _req, rc, out, d = dp.get(b"mk k2")
    assert rc == XDP_TX and out == expected_reply(
        rid, item + b"VALUE k2 1 3\r\ntwo\r\nEND\r\n"), d


def test_binary_get_after_an_mg_fill_misses(dp):
    """An mg's reply has no CAS: a binary GET is memcached's (as after an ASCII fill)."""
    assert mg_exchange(dp, b"mk", *MG_FILLS["v_f"]).get("fill") == 1
    (rc, _), d = dp.delta(lambda: dp.x(mc_udp(dp.next_rid(), bin_req(0x00, b"mk"))))
    assert rc == XDP_PASS and d.get("miss") == 1 and "hit" not in d, d


def test_mg_after_get_keeps_working(dp):
    dp.fill_ascii(b"mk", b"hello", flags=42)
    for form, body in MG_FORMS:
        rid, rc, out, d = mg_hit(dp, b"mk", form)
        assert rc == XDP_TX and out == expected_reply(rid, body), (form, d)


def test_a_write_between_the_mg_and_its_reply_rejects_the_fill(dp):
    rid = dp.next_rid()
    (rc, _), d = dp.delta(lambda: dp.x(mc_udp(rid, b"mg race v f\r\n")))
    assert rc == XDP_PASS and d.get("miss") == 1, d
    time.sleep(0.001)
    dp.x(mc_udp(dp.next_rid(), b"ms race 3\r\nnew\r\n"))
    (_, _), d = dp.delta(lambda: dp.t(mc_reply(rid, b"VA 3 f0\r\nold\r\n")))
    assert d.get("fill_rejected") == 1 and "fill" not in d, d
    _, rc, _, d = mg_hit(dp, b"race", b"v")
    assert rc == XDP_PASS and d.get("miss") == 1, d


def test_a_flush_between_the_mg_and_its_reply_rejects_the_fill(dp):
    rid = dp.next_rid()
    dp.x(mc_udp(rid, b"mg fl v\r\n"))
    time.sleep(0.001)
    dp.x(mc_udp(dp.next_rid(), b"flush_all\r\n"))
    (_, _), d = dp.delta(lambda: dp.t(mc_reply(rid, b"VA 3\r\nold\r\n")))
    assert d.get("fill_rejected") == 1 and "fill" not in d, d


@pytest.mark.parametrize("flags,reply", [
    (b"v", b"EN\r\n"),                       # a miss
    (b"v k Oxy", b"EN kmk Oxy\r\n"),           # memcached's miss with k and O
    (b"v", b"HD\r\n"),                       # no value
    (b"v", b"SERVER_ERROR out of memory\r\n"),
    (b"v k", b"VA 5 f42\r\nhello\r\n"),       # not the flags asked for
    (b"v k", b"VA 5\r\nhello\r\n"),           # a flag missing
    (b"v k", b"VA 5 kmk s5\r\nhello\r\n"),    # one more
    (b"v k", b"VA 5 kother\r\nhello\r\n"),    # another key's length
    (b"v s", b"VA 5 s4\r\nhello\r\n"),        # s and the length disagree
    (b"v", b"VA 5\r\nhell\r\n"),              # cut
    (b"v", b"VA 5\r\nhello\r\nVA 1\r\nx\r\n"),  # more than one reply
    (b"v", b"VALUE mk 0 5\r\nhello\r\nEND\r\n"),  # a get's reply
])
def test_replies_an_mg_fill_cannot_trust_fill_nothing(dp, flags, reply):
    d = mg_exchange(dp, b"mk", flags, reply)
    assert "fill" not in d, d
    _, rc, _, d = mg_hit(dp, b"mk", b"v")
    assert rc == XDP_PASS and d.get("miss") == 1, d


def test_an_mg_without_v_or_quiet_fills_nothing(dp):
    """Without v memcached answers HD (no value): the miss is not remembered, and a VA reply
    with its request id fills nothing; a quiet mg's miss has no reply at all."""
    d = mg_exchange(dp, b"mk", b"k s", b"VA 5 kmk s5\r\nhello\r\n")
    assert "fill" not in d, d
    _, rc, _, d = mg_hit(dp, b"mk", b"v")
    assert rc == XDP_PASS and d.get("miss") == 1, d


def test_an_mg_reply_to_another_client_port_fills_nothing(dp):
    rid = dp.next_rid()
    dp.x(mc_udp(rid, b"mg mk v\r\n", sport=40000))
    (_, _), d = dp.delta(lambda: dp.t(mc_reply(rid, b"VA 5\r\nhello\r\n", cport=40001)))
    assert "fill" not in d, d
    (_, _), d = dp.delta(lambda: dp.t(mc_reply(rid, b"VA 5\r\nhello\r\n")))
    assert d.get("fill") == 1, d


@pytest.mark.parametrize("klen,vlen", [(1, 0), (8, 7), (9, 8), (64, 256)])
def test_mg_fills_for_every_length(dp, klen, vlen):
    key = bytes(97 + i % 26 for i in range(klen))
    value = bytes(33 + i % 90 for i in range(vlen))
    reply = b"VA %d f7 k%s\r\n%s\r\n" % (vlen, key, value)
    assert mg_exchange(dp, key, b"v f k", reply).get("fill") == 1
    rid, rc, out, d = mg_hit(dp, key, b"v f k")
    assert rc == XDP_TX and out == expected_reply(rid, reply), d
    rid, _req, rc, out, d = dp.get(key)
    assert rc == XDP_TX and out == expected_reply(
        rid, b"VALUE %s 7 %d\r\n%s\r\nEND\r\n" % (key, vlen, value)), d


@pytest.mark.parametrize("cut", [3, 6, 9, 12])
def test_truncated_meta_gets_pass_unchanged(dp, cut):
    dp.fill_ascii(b"mk", b"hello")
    frame = mc_udp(dp.next_rid(), b"mg mk v\r\n")[:-cut]
    rc, out = dp.x(frame)
    assert rc == XDP_PASS and out == frame


# --------------------------------------------------------------------------- IPv6 writes


def _invalidated(dp, key: bytes, frames: list[bytes], *, verdict="invalidate"):
    dp.fill_ascii(key, b"old")
    for f in frames:
        (rc, out), d = dp.delta(lambda f=f: dp.x(f))
        assert rc == XDP_PASS and out == f, d  # passed to memcached, untouched
    assert d.get(verdict, 0) >= 1, d
    _, _, rc, _, d = dp.get(key)
    assert rc == XDP_PASS and d.get("miss") == 1, d


def test_ipv6_tcp_write_invalidates_a_key_read_over_ipv4(dp):
    st = dp.stream(v6=True)
    _invalidated(dp, b"v6t", [tcp6_frame(b"set v6t 0 0 3\r\nnew\r\n", seq=st.seq(),
                                         sport=st.sport)])


def test_ipv6_udp_write_invalidates(dp):
    _invalidated(dp, b"v6u", [udp6_frame(struct.pack("!HHHH", 9, 0, 1, 0) + b"delete v6u\r\n")])


def test_ipv6_extension_headers_are_walked(dp):
    ext = [(0, b"\x01\x04\0\0\0\0"), (60, b"\x01\x02\0\0"), (43, b"\0\0\0\0\0\0")]
    st = dp.stream(v6=True)
    _invalidated(dp, b"v6e", [tcp6_frame(b"delete v6e\r\n", seq=st.seq(), sport=st.sport,
                                         ext=ext)])


def test_ipv6_tcp_stream_state_follows_the_ipv6_connection(dp):
    """A set whose value spans two IPv6 segments, then a delete: the delete is seen (the
    stream's state is kept under the IPv6 addresses)."""
    seg1 = b"set big6 0 0 10\r\n01234"
    seg2 = b"56789\r\ndelete v6s\r\n"
    st = dp.stream(v6=True)
    _invalidated(dp, b"v6s", [tcp6_frame(seg1, seq=st.seq(), sport=st.sport),
                              tcp6_frame(seg2, seq=st.seq(len(seg1)), sport=st.sport)])


def test_ipv6_udp_first_fragment_to_memcached_empties_the_cache(dp):
    """The head of a fragmented datagram to memcached's port: a write may be in it, read
    only once reassembled; the cache is emptied (fallback flush)."""
    fh = struct.pack("!HI", 0x0001, 77)
    l4 = udp6_frame(struct.pack("!HHHH", 1, 0, 1, 0) + b"delete f6\r\n")[54:]
    frame = eth(ipv6(CLIENT6, SERVER6, 17, l4, ext=[(44, fh)]), etype=0x86DD)
    before = dp.dp.flush_reasons()
    _invalidated(dp, b"f6", [frame], verdict="fallback_flush")
    after = dp.dp.flush_reasons()
    assert {r: after[r] - before[r] for r in after if after[r] != before[r]} == \
        {"udp_fragment": 1}  # counted under its reason (status, Prometheus)


@pytest.mark.parametrize("frag_off,verdict", [(0x0001, "hidden"), (0x0008, "pass")])
def test_ipv6_tcp_fragments_never_empty_the_cache(dp, frag_off, verdict):
    """No TCP stack fragments a segment: a first fragment to memcached's port is dropped
    (its rest would go unread), a later one passes (the kernel cannot reassemble it without
    its first). Neither empties the cache: a forged fragment is free to send."""
    dp.fill_ascii(b"f6t", b"old")
    fh = struct.pack("!HI", frag_off, 77)
    l4 = tcp6_frame(b"set f6t 0 0 1\r\nx\r\n", seq=5)[54:]
    frame = eth(ipv6(CLIENT6, SERVER6, 6, l4, ext=[(44, fh)]), etype=0x86DD)
    (rc, _), d = dp.delta(lambda: dp.x(frame))
    assert rc == (XDP_DROP if verdict == "hidden" else XDP_PASS), d
    assert d.get(verdict) == 1 and "fallback_flush" not in d, d
    assert dp.get(b"f6t")[2] == XDP_TX


def test_a_longer_ipv6_chain_than_walked_is_dropped(dp):
    dp.fill_ascii(b"c6", b"old")
    ext = [(60, b"")] * 5
    (rc, _), d = dp.delta(lambda: dp.x(tcp6_frame(b"delete c6\r\n", seq=3, ext=ext)))
    assert rc == XDP_DROP and d.get("hidden") == 1 and "fallback_flush" not in d, d
    assert dp.get(b"c6")[2] == XDP_TX


def test_ipv6_gets_pass_untouched_while_memcached_address_is_ipv4(dp):
    dp.fill_ascii(b"g6", b"kept")
    for f in [udp6_frame(struct.pack("!HHHH", 3, 0, 1, 0) + b"get g6\r\n"),
              udp6_frame(b"dns?", dport=53),
              eth(ipv6(CLIENT6, SERVER6, 58, b"\x80\0\0\0\0\0\0\0"), etype=0x86DD)]:
        (rc, out), d = dp.delta(lambda f=f: dp.x(f))
        assert rc == XDP_PASS and out == f and "invalidate" not in d, d
    _, _, rc, _, d = dp.get(b"g6")
    assert rc == XDP_TX, d


def test_truncated_ipv6_frames_pass_unchanged(dp):
    full = tcp6_frame(b"set t6 0 0 1\r\nx\r\n", seq=9, ext=[(0, b"")])
    for cut in range(14, len(full)):
        frame = full[:cut]
        rc, out = dp.x(frame)
        assert rc == XDP_PASS and out == frame, cut


# --------------------------------------------------------------------------- IPv6 GETs

DUAL = {"address": "::", "allowed": "198.19.9.0/24, 'fd00:9::/64'"}


@pytest.fixture
def dp6(dp):
    """memcached.address '::': GETs answered over both families."""
    dp.reconfigure(**DUAL)
    return dp


def exchange6(dp, req: bytes, reply_body: bytes, *, cport=40000, client="fd00:9::2"):
    """A GET over IPv6 that misses, then memcached's reply to it through TC egress."""
    (rc, out), d = dp.delta(lambda: dp.x(req))
    assert rc == XDP_PASS and out == req and d.get("miss", 0) >= 1, d
    rid = struct.unpack_from("!H", req, 62)[0]
    (rc, _), d = dp.delta(lambda: dp.t(mc_reply6(rid, reply_body, cport=cport, client=client)))
    assert rc == TC_ACT_OK
    return d


def test_ipv6_miss_fill_hit_byte_exact(dp6):
    """A GET over IPv6 misses, memcached's IPv6 reply fills, the next GET is answered with
    XDP_TX: memcached's reply frame byte for byte, its mandatory UDP checksum right."""
    body = b"VALUE k6 5 6\r\nvalue6\r\nEND\r\n"
    d = exchange6(dp6, mc_udp6(dp6.next_rid(), b"get k6\r\n"), body)
    assert d.get("fill") == 1, d
    rid = dp6.next_rid()
    (rc, out), d = dp6.delta(lambda: dp6.x(mc_udp6(rid, b"get k6\r\n")))
    assert rc == XDP_TX and d.get("hit") == 1, d
    assert out == mc_reply6(rid, body)
    assert udp6_checksum_ok(out)
    rid, _req, rc, out, d = dp6.get(b"k6")  # one cache for both families
    assert rc == XDP_TX and out == expected_reply(rid, body), d


@pytest.mark.parametrize("klen,vlen", [(1, 0), (3, 1), (7, 8), (13, 255), (64, 256)])
def test_ipv6_hits_for_every_length(dp6, klen, vlen):
    """The checksum covers an odd or even payload, a value up to max_value_bytes."""
    key = bytes(97 + i % 26 for i in range(klen))
    value = bytes(33 + i % 90 for i in range(vlen))
    dp6.fill_ascii(key, value, flags=vlen)
    rid = dp6.next_rid()
    (rc, out), d = dp6.delta(lambda: dp6.x(mc_udp6(rid, b"get " + key + b"\r\n")))
    body = b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, vlen, vlen, value)
    assert rc == XDP_TX and out == mc_reply6(rid, body) and udp6_checksum_ok(out), d


@pytest.mark.parametrize("req,body", [
    (b"get m6a m6b\r\n", b"VALUE m6a 1 2\r\naa\r\nVALUE m6b 2 2\r\nbb\r\nEND\r\n"),
    (b"get  m6a\r\n", b"VALUE m6a 1 2\r\naa\r\nEND\r\n"),
    (b"mg m6b v f k O9\r\n", b"VA 2 f2 km6b O9\r\nbb\r\n"),
    (b"mg m6a s\r\n", b"HD s2\r\n"),
])
def test_ipv6_multiget_and_meta_get_hits(dp6, req, body):
    dp6.fill_ascii(b"m6a", b"aa", flags=1)
    dp6.fill_ascii(b"m6b", b"bb", flags=2)
    rid = dp6.next_rid()
    (rc, out), d = dp6.delta(lambda: dp6.x(mc_udp6(rid, req)))
    assert rc == XDP_TX and d.get("hit") == 1, d
    assert out == mc_reply6(rid, body) and udp6_checksum_ok(out)


def test_ipv6_multiget_miss_fills_from_the_ipv6_reply(dp6):
    """The general path: the miss is kept in mc_pending under the client's IPv6 address."""
    d = exchange6(dp6, mc_udp6(dp6.next_rid(), b"get p6a p6b\r\n"),
                  b"VALUE p6a 0 1\r\nA\r\nVALUE p6b 0 1\r\nB\r\nEND\r\n")
    assert d.get("fill") == 2, d
    rid = dp6.next_rid()
    rc, out = dp6.x(mc_udp6(rid, b"get p6b\r\n"))
    assert rc == XDP_TX and out == mc_reply6(rid, b"VALUE p6b 0 1\r\nB\r\nEND\r\n")


@pytest.mark.parametrize("flags,reply", [(b"v", b"VA 3\r\nmg6\r\n"),
                                         (b"s v f k O6", b"VA 3 s3 f9 km6 O6\r\nmg6\r\n")])
def test_ipv6_mg_miss_fills_from_the_ipv6_reply(dp6, flags, reply):
    """An mg miss over IPv6 waits under the client's IPv6 address; memcached's IPv6 reply
    fills; the same mg is answered over IPv6 byte for byte, and over IPv4 too (one cache)."""
    req = mc_udp6(dp6.next_rid(), b"mg m6 " + flags + b"\r\n")
    d = exchange6(dp6, req, reply)
    assert d.get("fill") == 1, d
    rid = dp6.next_rid()
    (rc, out), d = dp6.delta(lambda: dp6.x(mc_udp6(rid, b"mg m6 " + flags + b"\r\n")))
    assert rc == XDP_TX and d.get("hit") == 1, d
    assert out == mc_reply6(rid, reply) and udp6_checksum_ok(out)
    rid = dp6.next_rid()
    rc, out = dp6.x(mc_udp(rid, b"mg m6 " + flags + b"\r\n"))
    assert rc == XDP_TX and out == expected_reply(rid, reply)
    rid, _req, rc, _out, d = dp6.get(b"m6")  # with the flags known (f), get hits too
    assert (rc == XDP_TX) == (b"f" in flags.split()), d


def test_ipv6_binary_getk_miss_fill_hit(dp6):
    req = bin_req(0x0C, b"b6", opaque=0x51)
    res = bin_res(0x0C, key=b"b6", value=b"bin6", flags=3, opaque=0x51, cas=9)
    d = exchange6(dp6, mc_udp6(dp6.next_rid(), req), res)
    assert d.get("fill") == 1, d
    rid = dp6.next_rid()
    rc, out = dp6.x(mc_udp6(rid, req))
    assert rc == XDP_TX and out == mc_reply6(rid, res) and udp6_checksum_ok(out)


@pytest.mark.parametrize("client", ["fd00:9::3", "fd00:8::2", "::ffff:198.19.9.2"])
def test_ipv6_reply_to_another_client_fills_nothing(dp6, client):
    """The miss waits under the client's whole IPv6 address: a reply with the same port and
    request id to any other address (or to the IPv4 client of the same last word) is not its
    reply."""
    rid = dp6.next_rid()
    req = mc_udp6(rid, b"get who6\r\n")
    (rc, _), d = dp6.delta(lambda: dp6.x(req))
    assert rc == XDP_PASS and d.get("miss") == 1, d
    body = b"VALUE who6 0 1\r\nx\r\nEND\r\n"
    (rc, _), d = dp6.delta(lambda: dp6.t(mc_reply6(rid, body, client=client)))
    assert "fill" not in d, d
    (rc, _), d = dp6.delta(lambda: dp6.t(mc_reply6(rid, body)))
    assert d.get("fill") == 1, d


def test_ipv6_client_outside_allowed_clients_is_denied(dp6):
    dp6.fill_ascii(b"den6", b"v")
    req = mc_udp6(dp6.next_rid(), b"get den6\r\n", src="fd00:8::2")
    (rc, out), d = dp6.delta(lambda: dp6.x(req))
    assert rc == XDP_PASS and out == req and d.get("denied") == 1, d


@pytest.mark.parametrize("dst,served", [("fd00:9::1", True), ("fd00:9::7", False),
                                        ("fe80::1", False)])
def test_ipv6_gets_are_answered_at_memcached_s_address_only(dp, dst, served):
    dp.reconfigure(address="fd00:9::1", allowed="'fd00:9::/64'")
    d = exchange6(dp, mc_udp6(dp.next_rid(), b"get at6\r\n"), b"VALUE at6 0 1\r\nv\r\nEND\r\n")
    assert d.get("fill") == 1, d
    _, _, rc, _, d = dp.get(b"at6")  # IPv4 is not memcached's here: never answered
    assert rc == XDP_PASS, d
    req = mc_udp6(dp.next_rid(), b"get at6\r\n", dst=dst)
    (rc, out), d = dp.delta(lambda: dp.x(req))
    assert (rc == XDP_TX) == served, d
    if not served:
        assert out == req and d.get("pass") == 1, d


def test_ipv6_get_behind_an_extension_header_passes_unchanged(dp6):
    dp6.fill_ascii(b"ext6", b"v")
    req = udp6_frame(struct.pack("!HHHH", 5, 0, 1, 0) + b"get ext6\r\n", ext=[(60, b"")])
    (rc, out), d = dp6.delta(lambda: dp6.x(req))
    assert rc == XDP_PASS and out == req and d.get("pass") == 1, d


def test_an_ipv6_get_shorter_than_its_payload_length_passes_unchanged(dp6):
    """The kernel drops such a datagram: memcached never answers it, nor may the cache."""
    dp6.fill_ascii(b"short6", b"v")
    full = mc_udp6(78, b"get short6\r\n")
    frame = full[:18] + struct.pack("!H", len(full) - 54 + 8) + full[20:]
    (rc, out), d = dp6.delta(lambda: dp6.x(frame))
    assert rc == XDP_PASS and out == frame and d.get("malformed") == 1, d


def test_truncated_ipv6_gets_pass_unchanged(dp6):
    dp6.fill_ascii(b"tr6", b"value")
    full = mc_udp6(77, b"get tr6\r\n")
    for cut in range(14, len(full)):
        frame = full[:cut]
        rc, out = dp6.x(frame)
        assert rc == XDP_PASS and out == frame, cut

"""The data plane in front of a real memcached, between two network namespaces."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from nsutil import NsClient, Pair, assert_large_forms_served_at_tc_ingress, in_ns, same_bucket_keys
from pymemcache.client.base import Client

from harness.frames import csum
from mcache_agent import capture, constants
from mcache_agent import udp_client as uc


@pytest.fixture(scope="module")
def pair():
    p = Pair("f", 10).up()
    yield p
    p.down()


@pytest.fixture(scope="module")
def cli(pair):
    return NsClient(pair, pair.c)


def test_hit_served_by_the_kernel(cli):
    cli.cached(b"hk", b"hello")
    before, gets = cli.counters(), cli.cmd_get()
    for _ in range(5):
        assert cli.udp_get(b"hk") == {b"hk": b"hello"}
    assert cli.counters()["hit"] - before["hit"] == 5
    assert cli.cmd_get() == gets


def _gets_cas(c: Client, key: bytes) -> bytes:
    return c.gets(key)[1]


WRITES = {
    "set": (lambda c, k: c.set(k, b"new"), b"new"),
    "add_existing": (lambda c, k: c.add(k, b"new"), b"old"),
    "replace": (lambda c, k: c.replace(k, b"new"), b"new"),
    "append": (lambda c, k: c.append(k, b"+a"), b"old+a"),
    "prepend": (lambda c, k: c.prepend(k, b"p+"), b"p+old"),
    "cas": (lambda c, k: c.cas(k, b"new", _gets_cas(c, k)), b"new"),
    "touch": (lambda c, k: c.touch(k, 100), b"old"),
    "delete": (lambda c, k: c.delete(k), None),
    "flush_all": (lambda c, k: c.flush_all(), None),
    "gat": (lambda c, k: c.raw_command(b"gat 100 " + k, b"END"), b"old"),
}


@pytest.mark.parametrize("name", sorted(WRITES))
def test_tcp_write_then_udp_get_sees_memcached(cli, name):
    key = b"w_" + name.encode()
    cli.cached(key, b"old")
    op, want = WRITES[name]
    before = cli.counters()
    op(cli.mc, key)
    after = cli.counters()
    assert (after["invalidate"] - before["invalidate"]) + (after["flush"] - before["flush"]) >= 1
    got = cli.udp_get(key)
    assert got.get(key) == want
    assert got.get(key) == cli.mc.get(key)


@pytest.mark.parametrize("op,want", [("incr", b"11"), ("decr", b"9")])
def test_tcp_incr_decr(cli, op, want):
    key = b"n_" + op.encode()
    cli.cached(key, b"10")
    getattr(cli.mc, op)(key, 1)
    # memcached decrements in place, padding with spaces ("10" - 1 = "9 ")
    assert cli.udp_get(key)[key].rstrip() == want
    assert cli.udp_get(key) == {key: cli.mc.get(key)}


@pytest.mark.parametrize("payload,want", [
    (b"set {k} 0 0 3\r\nnew\r\n", b"new"),
    (b"delete {k}\r\n", None),
    (b"append {k} 0 0 2\r\n+u\r\n", b"old+u"),
])
def test_udp_write_then_get(cli, payload, want):
    key = b"u_" + payload.split()[0]
    cli.cached(key, b"old")
    reply = cli.udp_raw(payload.replace(b"{k}", key))
    assert reply in (b"STORED\r\n", b"DELETED\r\n")
    assert cli.udp_get(key).get(key) == want


def test_binary_set_over_tcp(cli):
    key = b"bin_set"
    cli.cached(key, b"old")
    with in_ns(cli.ns):
        s = socket.create_connection((cli.p.saddr, 11211), timeout=2)
    with s:
        s.sendall(uc.binary_request(0x01, key, extras=struct.pack("!II", 7, 0), value=b"new"))
        hdr = s.recv(24)
        assert hdr[0] == 0x81 and struct.unpack("!H", hdr[6:8])[0] == 0
    assert cli.udp_get(key) == {key: b"new"}


def test_value_split_across_tcp_segments_then_write(cli):
    """A set whose value spans segments (sent in two writes with a pause), then a delete of a
    cached key in the next segment: the delete is seen."""
    cli.cached(b"seg_victim", b"old")
    with in_ns(cli.ns):
        s = socket.create_connection((cli.p.saddr, 11211), timeout=2)
    with s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"set seg_big 0 0 20\r\n0123456789")
        time.sleep(0.05)
        s.sendall(b"0123456789\r\n")
        time.sleep(0.05)
        s.sendall(b"delete seg_victim\r\n")
        data = b""
        while data.count(b"\r\n") < 2:
            data += s.recv(100)
    assert data == b"STORED\r\nDELETED\r\n"
    assert cli.udp_get(b"seg_victim") == {}


def test_ttl_expiry(pair, cli):
    pair.apply(ttl_ms=300)
    try:
        cli.cached(b"ttl_k", b"v")
        time.sleep(0.4)
        before = cli.counters()
        assert cli.udp_get(b"ttl_k") == {b"ttl_k": b"v"}
        after = cli.counters()
        assert after["expired"] == before["expired"] + 1
        assert after["hit"] == before["hit"]
    finally:
        pair.apply()


def test_multiget(cli):
    cli.mc.set_many({b"m1": b"one", b"m2": b"two"})
    assert cli.udp_get(b"m1", b"m2") == {b"m1": b"one", b"m2": b"two"}
    before, gets = cli.counters(), cli.cmd_get()
    assert cli.udp_get(b"m1", b"m2") == {b"m1": b"one", b"m2": b"two"}
    assert cli.counters()["hit"] == before["hit"] + 1
    assert cli.cmd_get() == gets
    # one key missing: memcached answers, with only the keys it has
    assert cli.udp_get(b"m1", b"m_none", b"m2") == {b"m1": b"one", b"m2": b"two"}


@pytest.mark.parametrize("opcode", [uc.OP_GET, uc.OP_GETK])
def test_binary_get_hit(cli, opcode):
    key = b"bg%d" % opcode
    cli.mc.set(key, b"bval", flags=42) if False else cli.mc.raw_command(
        b"set " + key + b" 42 0 4\r\nbval", b"STORED")
    first = cli.udp_bin(key, opcode)
    assert first.status == 0 and first.value == b"bval"
    before, gets = cli.counters(), cli.cmd_get()
    r = cli.udp_bin(key, opcode)
    assert cli.counters()["hit"] == before["hit"] + 1
    assert cli.cmd_get() == gets
    assert r.value == b"bval" and r.extras == struct.pack("!I", 42) and r.opaque == 0x1234
    assert r.key == (key if opcode == uc.OP_GETK else b"")
    assert r.cas == first.cas != 0


def test_binary_getkq(cli):
    cli.mc.set(b"bgkq", b"q")
    for _ in range(2):
        r = cli.udp_bin(b"bgkq", uc.OP_GETKQ)
        assert (r.opcode, r.key, r.value) == (uc.OP_GETKQ, b"bgkq", b"q")


def test_kill_switch(pair, cli):
    cli.cached(b"ks", b"v")
    pair.apply(enabled="false")
    try:
        before, gets = cli.counters(), cli.cmd_get()
        assert cli.udp_get(b"ks") == {b"ks": b"v"}
        assert cli.counters()["disabled"] == before["disabled"] + 1
        assert cli.cmd_get() == gets + 1
    finally:
        pair.apply()


def test_keys_of_one_bucket_share_it(cli):
    """A bucket holds MC_WAYS keys at once; a write kills only its key; one key more evicts
    the way filled longest ago, which memcached then answers."""
    ways = constants.const("MC_WAYS")
    keys = same_bucket_keys(ways + 1)
    for k in keys[:ways]:
        cli.cached(k, b"v-" + k)
    before, gets = cli.counters(), cli.cmd_get()
    assert cli.udp_get(*keys[:ways]) == {k: b"v-" + k for k in keys[:ways]}
    assert cli.counters()["hit"] == before["hit"] + 1 and cli.cmd_get() == gets
    cli.mc.set(keys[1], b"new")
    assert cli.udp_get(keys[1]) == {keys[1]: b"new"}  # memcached's answer, then cached
    # Filled longest ago now: keys[0], then keys[2]; keys[0] is written and filled again.
    cli.cached(keys[0], b"v-" + keys[0])
    cli.cached(keys[ways], b"v-" + keys[ways])  # takes keys[2]'s way
    for k in (keys[0], keys[1], keys[3], keys[ways]):
        before, gets = cli.counters(), cli.cmd_get()
        assert cli.udp_get(k) == {k: b"new" if k == keys[1] else b"v-" + k}
        assert cli.counters()["hit"] == before["hit"] + 1 and cli.cmd_get() == gets, k
    before, gets = cli.counters(), cli.cmd_get()
    assert cli.udp_get(keys[2]) == {keys[2]: b"v-" + keys[2]}
    assert cli.counters()["miss"] == before["miss"] + 1 and cli.cmd_get() == gets + 1


def test_value_within_generic_headroom_is_served(cli):
    """Generic XDP grows a frame by its 256-byte headroom plus what tailroom the skb has."""
    cli.cached(b"mid", b"M" * 180)


def raw_udp_get(cli, key: bytes, rid: int = 4242) -> bytes:
    """The reply's payload, as sent, to one "get <key>"."""
    with in_ns(cli.ns):
        return uc.exchange(cli.p.saddr, 11211, b"get " + key + b"\r\n", timeout=2,
                           request_id=rid)


def udp_checksum_ok(frame: bytes) -> bool:
    """An Ethernet/IPv4/UDP frame's UDP checksum verifies, or holds the pseudo header's sum
    for the offload to complete (CHECKSUM_PARTIAL: a request from a local socket over a veth
    is such an skb, and so is the reply written over it)."""
    ip = frame[14:34]
    udp = frame[34:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    return csum(pseudo + udp) == 0 or udp[6:8] == struct.pack("!H", ~csum(pseudo) & 0xFFFF)


@pytest.mark.parametrize("size", [600, 1000, 1024])
def test_values_larger_than_the_xdp_frame_are_served_at_tc_ingress(pair, cli, size):
    """Generic XDP cannot grow a frame past ~200 bytes of value: xdp_main hands the hit to
    tc_ingress (to_tc), which answers it from the skb, byte for byte as memcached does, with
    a valid UDP checksum; memcached's cmd_get does not move."""
    key = b"large%d" % size
    v = bytes((i * 7 + size) % 94 + 33 for i in range(size))
    cli.mc.set(key, v, flags=size)
    memcached_reply = raw_udp_get(cli, key)  # a miss: memcached's own reply, which fills
    before, gets = cli.counters(), cli.cmd_get()
    records: list[capture.Frame] = []
    with in_ns(pair.s), capture.Session(pair.pin, capture.Spec(verdicts=["hit"])) as session:
        session.start()
        with session.ring(lambda raw: records.append(capture.decode(raw))) as ring:
            assert raw_udp_get(cli, key) == memcached_reply
            ring.drain()
    replies = [r for r in records if r.path == "tc_ingress" and r.stage == "tx"]
    assert len(replies) == 1 and udp_checksum_ok(replies[0].data), records
    after = cli.counters()
    assert cli.cmd_get() == gets, "memcached answered a GET the cache should have"
    assert after["hit"] == before["hit"] + 1 and after["to_tc"] == before["to_tc"] + 1, after
    by_path = pair.dp.stats().total().by_path
    assert by_path["tc_ingress"]["hit"] >= 1
    # Marked: from now on xdp_main hands it over at once; still the value memcached holds.
    before = cli.counters()
    assert cli.udp_get(key) == {key: v}
    after = cli.counters()
    assert (after["hit"], after["to_tc"], after["too_big"]) == (
        before["hit"] + 1, before["to_tc"] + 1, before["too_big"]), (before, after)
    # A write reaches XDP first: the next GET is memcached's, then served again.
    cli.mc.set(key, v[::-1])
    assert cli.udp_get(key) == {key: v[::-1]}
    assert cli.udp_get(key) == {key: v[::-1]}


def test_multiget_binary_and_meta_hits_past_the_xdp_frame_are_served_at_tc_ingress(cli):
    assert_large_forms_served_at_tc_ingress(cli, b"tcx:")


def test_the_largest_value_of_one_datagram_is_served_at_tc_ingress(pair, cli):
    """max_value_bytes 1400: memcached sends a reply in one datagram while its payload is at
    most 1,400 bytes; the largest such value is served by tc_ingress, one byte more is
    memcached's (two datagrams, never filled)."""
    pair.apply(max_value_bytes=1400)
    try:
        key = b"k" * 20
        head = b"VALUE %s 0 %d\r\n" % (key, 1400)
        largest = 1400 - len(head) - len(b"\r\nEND\r\n") - 8  # 8: the frame header
        for size, served in ((largest, True), (largest + 1, False)):
            v = b"Z" * size
            cli.mc.set(key, v)
            assert cli.udp_get(key) == {key: v}
            before, gets = cli.counters(), cli.cmd_get()
            assert cli.udp_get(key) == {key: v}
            after = cli.counters()
            assert (after["hit"] == before["hit"] + 1) == served, (size, before, after)
            assert (cli.cmd_get() == gets) == served
    finally:
        pair.apply()


@pytest.mark.parametrize("size", [1100, 1400])
def test_a_value_over_max_value_bytes_is_answered_by_memcached(cli, size):
    """A value over max_value_bytes (1024) is never cached: memcached answers every GET (its
    reply is refused as too_big at the fill, or comes in several datagrams, never filled)."""
    key = b"huge%d" % size
    v = b"H" * size
    cli.mc.set(key, v)
    assert cli.udp_get(key) == {key: v}
    before, gets = cli.counters(), cli.cmd_get()
    assert cli.udp_get(key) == {key: v}
    after = cli.counters()
    assert after["hit"] == before["hit"] and after["miss"] == before["miss"] + 1
    assert cli.cmd_get() == gets + 1


def test_attached_modes(pair):
    modes = {a["interface"]: a["mode"] for a in pair.dp.attached()}
    assert modes == {pair.sif: "generic", "lo": "generic"}


def test_local_client_over_lo(pair):
    local = NsClient(pair, pair.s)
    local.cached(b"lo_k", b"local")
    local.mc.set(b"lo_k", b"changed")
    assert local.udp_get(b"lo_k") == {b"lo_k": b"changed"}


@pytest.mark.parametrize("flags", [b"v", b"", b"k", b"v f", b"s v f k Oab12 q", b"O v",
                                   b"v k s", b"q"])
def test_meta_get_hits_match_memcached_byte_for_byte(cli, flags):
    """memcached (1.6.18) answers an mg first (a miss: with v its reply fills the cache, the
    client flags known only with f); a get then fills the whole entry, or hits; then the
    kernel answers the same mg, and the two replies are the same bytes."""
    key = b"meta_" + (flags.replace(b" ", b"_") or b"none")
    cli.mc.set(key, b"meta value", flags=77)
    req = b"mg " + key + (b" " + flags if flags else b"") + b"\r\n"
    before = cli.counters()
    from_memcached = cli.udp_raw(req)
    assert cli.counters()["hit"] == before["hit"]
    assert cli.udp_get(key) == {key: b"meta value"}  # fills
    before, gets = cli.counters(), cli.cmd_get()
    from_kernel = cli.udp_raw(req)
    assert cli.counters()["hit"] == before["hit"] + 1
    assert cli.cmd_get() == gets
    assert from_kernel == from_memcached


def test_meta_writes_over_udp_and_tcp_invalidate(cli):
    cli.cached(b"mw", b"old")
    assert cli.udp_raw(b"ms mw 3\r\nnew\r\n") == b"HD\r\n"
    assert cli.udp_raw(b"mg mw v\r\n") == b"VA 3\r\nnew\r\n"  # memcached's: not cached now
    cli.cached(b"mw", b"new")
    cli.mc.raw_command(b"md mw", b"HD")
    assert cli.udp_raw(b"mg mw v\r\n") == b"EN\r\n"


def udp_datagram(cli: NsClient, payload: bytes, rid: int) -> bytes:
    """One request with request id rid, and the whole datagram that answers it (the frame
    header included)."""
    with in_ns(cli.ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(2)
        s.sendto(struct.pack("!HHHH", rid, 0, 1, 0) + payload, (cli.p.saddr, 11211))
        while True:
            data = s.recv(65535)
            if struct.unpack_from("!H", data)[0] == rid:
                return data


@pytest.mark.parametrize("flags", [b"v", b"v f", b"s v f k Oab12 q", b"v k s"])
def test_a_meta_only_client_gets_hits(cli, flags):
    """A key set over TCP, then the same mg five times over UDP: memcached answers the first
    (a miss, whose reply fills), the kernel the other four, each datagram byte for byte the
    one memcached sent; memcached's cmd_get moves once."""
    key = b"mo_" + flags.replace(b" ", b"_")
    cli.mc.set(key, b"meta only", flags=31)
    req = b"mg " + key + b" " + flags + b"\r\n"
    before, gets = cli.counters(), cli.cmd_get()
    replies = [udp_datagram(cli, req, rid=700) for _ in range(5)]
    after = cli.counters()
    print(f"{flags!r}: {after['hit'] - before['hit']} of 5 answered by the kernel")
    assert after["hit"] - before["hit"] >= 4, (before, after)
    assert after["fill"] - before["fill"] == 1, (before, after)
    assert cli.cmd_get() - gets <= 1
    assert replies[0][8:].startswith(b"VA 9") and replies[0].endswith(b"\r\nmeta only\r\n")
    assert all(r == replies[0] for r in replies), replies
    # a get: answered by the kernel when the mg's reply carried the client flags (f), else
    # a miss whose reply fills the whole entry; the same bytes as memcached's either way
    from_kernel = raw_udp_get(cli, key)
    assert from_kernel == b"VALUE %s 31 9\r\nmeta only\r\nEND\r\n" % key
    assert cli.counters()["hit"] - after["hit"] == (1 if b"f" in flags.split() else 0)
    before = cli.counters()
    assert udp_datagram(cli, req, rid=700) == replies[0]  # mg after get: still a hit
    assert cli.counters()["hit"] == before["hit"] + 1


def test_a_write_after_an_mg_fill_is_seen_by_the_next_mg(cli):
    """meta writes (ms, md) invalidate what an mg filled, over UDP and TCP."""
    key = b"mo_write"
    cli.mc.set(key, b"old")
    assert cli.udp_raw(b"mg mo_write v\r\n") == b"VA 3\r\nold\r\n"  # memcached's, fills
    before = cli.counters()
    assert cli.udp_raw(b"mg mo_write v\r\n") == b"VA 3\r\nold\r\n"
    assert cli.counters()["hit"] == before["hit"] + 1
    assert cli.udp_raw(b"ms mo_write 3\r\nnew\r\n") == b"HD\r\n"
    assert cli.udp_raw(b"mg mo_write v\r\n") == b"VA 3\r\nnew\r\n"
    assert cli.udp_raw(b"mg mo_write v\r\n") == b"VA 3\r\nnew\r\n"
    cli.mc.raw_command(b"md mo_write", b"HD")
    assert cli.udp_raw(b"mg mo_write v\r\n") == b"EN\r\n"

"""A dual-stack host: memcached listening on IPv4 and IPv6 (as Debian's default 127.0.0.1 and
::1 do), memcached.address '::'. GETs are answered over both families from one cache, and a
write over either family reaches the cache: no reader gets a value a writer has replaced."""

from __future__ import annotations

import socket
import struct

import pytest
from nsutil import NsClient, Pair, assert_large_forms_served_at_tc_ingress, in_ns, make_config

from harness.frames import csum, udp6_checksum_ok
from mcache_agent import capture
from mcache_agent import udp_client as uc


@pytest.fixture(scope="module")
def pair():
    p = Pair("six", 22, ipv6=True).up()
    yield p
    p.down()


@pytest.fixture(scope="module")
def cli(pair):
    return NsClient(pair, pair.c)


@pytest.fixture(scope="module")
def cli6(pair):
    return NsClient(pair, pair.c, pair.saddr6)


def tcp6(pair: Pair, payload: bytes, expect: bytes) -> None:
    with in_ns(pair.c), socket.create_connection((pair.saddr6, 11211), timeout=2) as s:
        s.sendall(payload)
        got = b""
        while not got.endswith(expect):
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk


def udp6(pair: Pair, body: bytes) -> bytes:
    with in_ns(pair.c), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(struct.pack("!HHHH", 77, 0, 1, 0) + body, (pair.saddr6, 11211))
        return s.recv(65535)[8:]


@pytest.mark.parametrize("write,expect,after", [
    (b"set w6 0 0 3\r\nnew\r\n", b"STORED\r\n", b"new"),
    (b"delete w6\r\n", b"DELETED\r\n", None),
    (b"append w6 0 0 2\r\n+6\r\n", b"STORED\r\n", b"old+6"),
    (b"ms w6 3\r\nmsv\r\n", b"HD\r\n", b"msv"),
])
def test_tcp_writes_over_ipv6_invalidate(pair, cli, write, expect, after):
    cli.cached(b"w6", b"old")
    before = cli.counters()
    tcp6(pair, write, expect)
    assert cli.counters()["invalidate"] == before["invalidate"] + 1
    assert cli.udp_get(b"w6").get(b"w6") == after


def test_udp_writes_over_ipv6_invalidate(pair, cli):
    cli.cached(b"u6", b"old")
    assert udp6(pair, b"set u6 0 0 3\r\nnew\r\n") == b"STORED\r\n"
    assert cli.udp_get(b"u6") == {b"u6": b"new"}


def test_gets_over_ipv6_are_answered_from_the_cache(pair, cli6):
    """Stored over IPv6 TCP, a miss over IPv6 UDP fills from memcached's IPv6 reply, the next
    GET is the kernel's: memcached's cmd_get does not move."""
    cli6.cached(b"g6", b"kept")


def test_one_cache_for_both_families(cli, cli6):
    cli.cached(b"f4", b"filled over IPv4")
    before, gets = cli.counters(), cli.cmd_get()
    assert cli6.udp_get(b"f4") == {b"f4": b"filled over IPv4"}
    assert cli.counters()["hit"] == before["hit"] + 1 and cli.cmd_get() == gets
    cli6.cached(b"f6", b"filled over IPv6")
    before = cli.counters()
    assert cli.udp_get(b"f6") == {b"f6": b"filled over IPv6"}
    assert cli.counters()["hit"] == before["hit"] + 1


@pytest.mark.parametrize("req", [b"get {k}", b"mg {k} v f k s Oq1", b"mg {k} s"])
def test_ipv6_hits_match_memcached_byte_for_byte(cli6, req):
    """The same request, first to memcached (the key not cached yet), then to the kernel."""
    key = b"same6_%d" % len(req)
    cli6.mc.set(key, b"v6 value", flags=6)
    cli6.mc.set(key + b"2", b"second", flags=7)
    req = req.replace(b"{k}", key) + b"\r\n"
    from_memcached = cli6.udp_raw(req, request_id=606)
    cli6.udp_get(key, key + b"2")  # fills both, flags included
    before, gets = cli6.counters(), cli6.cmd_get()
    assert cli6.udp_raw(req, request_id=606) == from_memcached
    assert cli6.counters()["hit"] == before["hit"] + 1 and cli6.cmd_get() == gets


def test_ipv6_multiget_hits(cli6):
    cli6.cached(b"mg6a", b"first")
    cli6.cached(b"mg6b", b"second")
    before, gets = cli6.counters(), cli6.cmd_get()
    assert cli6.udp_get(b"mg6a", b"mg6b") == {b"mg6a": b"first", b"mg6b": b"second"}
    assert cli6.counters()["hit"] == before["hit"] + 1 and cli6.cmd_get() == gets


def checksum_ok(frame: bytes) -> bool:
    """An IPv6 UDP frame's checksum verifies, or holds the pseudo header's sum for the offload
    to complete (CHECKSUM_PARTIAL: see test_functional.udp_checksum_ok)."""
    udp = frame[54:]
    pseudo = frame[22:54] + struct.pack("!I3xB", len(udp), 17)
    return udp6_checksum_ok(frame) or udp[6:8] == struct.pack("!H", ~csum(pseudo) & 0xFFFF)


@pytest.mark.parametrize("size,path", [(20, "xdp_main"), (1000, "tc_ingress")])
def test_ipv6_replies_carry_a_valid_checksum(pair, cli6, size, path):
    """Small values are answered in XDP, values past XDP's frame at TC ingress (to_tc): the
    replies as they left, captured, have the UDP checksum IPv6 requires."""
    key = b"ck6_%d" % size
    v = bytes(33 + (i * 5) % 90 for i in range(size))
    cli6.mc.set(key, v)
    assert cli6.udp_get(key) == {key: v}  # fills
    records: list[capture.Frame] = []
    before, gets = cli6.counters(), cli6.cmd_get()
    with in_ns(pair.s), capture.Session(pair.pin, capture.Spec(verdicts=["hit"])) as session:
        session.start()
        with session.ring(lambda raw: records.append(capture.decode(raw))) as ring:
            assert cli6.udp_get(key) == {key: v}
            ring.drain()
    assert cli6.cmd_get() == gets and cli6.counters()["hit"] == before["hit"] + 1
    replies = [r for r in records if r.stage == "tx"]
    assert [r.path for r in replies] == [path], records
    assert replies[0].data[12:14] == b"\x86\xdd" and checksum_ok(replies[0].data)


def test_ipv6_multiget_binary_and_meta_hits_past_the_xdp_frame(cli6):
    assert_large_forms_served_at_tc_ingress(cli6, b"tcx6:")


def test_local_ipv6_client_over_lo(pair):
    """A client on the host itself, over ::1: lo is always served, ::1 always allowed."""
    local = NsClient(pair, pair.s, "::1")
    local.cached(b"lo6", b"local")
    local.mc.set(b"lo6", b"changed")
    assert local.udp_get(b"lo6") == {b"lo6": b"changed"}


def test_the_probe_proves_a_kernel_hit_over_ipv6(pair):
    """memcached.address an IPv6 address: the agent's probe (SET over TCP, GETs over UDP to
    that address, from the host itself: over lo) gets its second GET from the kernel."""
    from mcache_agent.probe import run_probe

    over = {"address": f"'{pair.saddr6}'"}
    pair.apply(**over)
    try:
        with in_ns(pair.s):
            result = run_probe(make_config(pair.config_text(**over)), pair.dp)
        assert result["ok"], result
    finally:
        pair.apply()


def test_the_ipv4_side_is_still_served(cli):
    cli.cached(b"v4", b"served")
    with in_ns(cli.ns):
        assert uc.udp_get_ascii(cli.p.saddr, 11211, [b"v4"], timeout=2) == {b"v4": b"served"}

"""A dual-stack host: memcached listening on IPv4 and IPv6 (as Debian's default 127.0.0.1 and
::1 do), the cache answering over IPv4. A write over IPv6 must reach the cache as surely as
one over IPv4: no IPv4 reader may get a value an IPv6 writer has replaced."""

from __future__ import annotations

import socket
import struct

import pytest
from nsutil import NsClient, Pair, in_ns

from mcache_agent import udp_client as uc


@pytest.fixture(scope="module")
def pair():
    p = Pair("six", 22, ipv6=True).up()
    yield p
    p.down()


@pytest.fixture(scope="module")
def cli(pair):
    return NsClient(pair, pair.c)


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


def test_gets_over_ipv6_are_memcached_s_and_change_nothing(pair, cli):
    cli.cached(b"g6", b"kept")
    assert udp6(pair, b"get g6\r\n") == b"VALUE g6 0 4\r\nkept\r\nEND\r\n"
    before, gets = cli.counters(), cli.cmd_get()
    assert cli.udp_get(b"g6") == {b"g6": b"kept"}
    assert cli.counters()["hit"] == before["hit"] + 1 and cli.cmd_get() == gets


def test_the_ipv4_side_is_still_served(cli):
    cli.cached(b"v4", b"served")
    with in_ns(cli.ns):
        assert uc.udp_get_ascii(cli.p.saddr, 11211, [b"v4"], timeout=2) == {b"v4": b"served"}

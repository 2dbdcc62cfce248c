"""The UDP client (the probe's GETs) and where the probe reaches memcached, over either
family: a stand-in memcached on loopback answers one GET."""

from __future__ import annotations

import socket
import threading

import pytest

from mcache_agent import udp_client as uc
from mcache_agent.memcached_stats import connect_host


@pytest.mark.parametrize(
    ("address", "host"),
    [("0.0.0.0", "127.0.0.1"), ("::", "127.0.0.1"), ("0::0", "127.0.0.1"),
     ("198.18.0.11", "198.18.0.11"), ("fd00::1", "fd00::1"), ("localhost", "localhost")],
)
def test_the_probe_reaches_a_wildcard_memcached_on_ipv4_loopback(address: str, host: str) -> None:
    # :: is a dual-stack memcached: IPv4 loopback reaches it, as it does for 0.0.0.0
    assert connect_host(address) == host


@pytest.mark.parametrize(
    ("host", "family"),
    [("::1", socket.AF_INET6), ("fd00::1", socket.AF_INET6), ("127.0.0.1", socket.AF_INET),
     ("localhost", socket.AF_INET)],
)
def test_family(host: str, family: socket.AddressFamily) -> None:
    assert uc.family(host) == family


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_get_over_either_family(host: str) -> None:
    server = socket.socket(uc.family(host), socket.SOCK_DGRAM)
    server.bind((host, 0))
    server.settimeout(2)
    requests: list[bytes] = []

    def answer() -> None:
        data, peer = server.recvfrom(65535)
        requests.append(data[uc.FRAME.size :])
        rid = uc.FRAME.unpack_from(data)[0]
        server.sendto(uc.frame(rid, b"VALUE k 0 1\r\nv\r\nEND\r\n"), peer)

    t = threading.Thread(target=answer)
    t.start()
    try:
        assert uc.udp_get_ascii(host, server.getsockname()[1], [b"k"], 2.0) == {b"k": b"v"}
    finally:
        t.join()
        server.close()
    assert requests == [b"get k\r\n"]

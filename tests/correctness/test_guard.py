"""The amplification guard (cache.amplification_guard): memcached's UDP port answers no source
outside the allow-list. Without it memcached answers anyone, forged sources included, with
replies many times a request's size (CVE-2018-1000115); with it, those datagrams are dropped in
XDP before memcached sees them."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from harness.frames import bin_req
from tests.correctness import lab as L

BIG = b"x" * 1200  # a value whose get reply is ~25x the request


def requests() -> dict[str, bytes]:
    frame = struct.pack("!HHHH", 7, 0, 1, 0)
    return {
        "get": frame + b"get amp\r\n",
        "multiget": frame + b"get amp amp amp amp amp amp amp amp amp amp\r\n",
        "gets": frame + b"gets amp\r\n",
        "mg": frame + b"mg amp v\r\n",
        "stats": frame + b"stats\r\n",
        "stats_slabs": frame + b"stats slabs\r\n",
        "binary_get": frame + bin_req(0x00, b"amp"),
        "binary_stat": frame + bin_req(0x10, b""),
        "version": frame + b"version\r\n",
        "malformed": b"\0\x01" + b"get amp\r\n",
    }


def answered_bytes(lab: L.Lab, src: str, payloads: dict[str, bytes]) -> dict[str, int]:
    """Bytes that came back from memcached's UDP port to src, per request."""
    out = {}
    with L.in_ns(lab.c):
        for name, p in payloads.items():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((src, 0))
                s.settimeout(0.3)
                s.sendto(p, (L.SADDR, L.PORT))
                got = 0
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:
                    try:
                        got += len(s.recv(65536))
                    except TimeoutError:
                        break
                out[name] = got
    return out


@pytest.fixture(scope="module")
def lab():
    lb = L.Lab("g", hold_ms=0).up()
    from pymemcache.client.base import Client

    with L.in_ns(lb.c):
        Client((L.SADDR, L.PORT)).set(b"amp", BIG, noreply=False)
    yield lb
    lb.down()


def test_without_the_guard_memcached_amplifies_for_anyone(lab):
    lab.apply()
    got = answered_bytes(lab, L.OUTSIDER, requests())
    assert got["get"] > 1200 and got["stats"] > 500, got  # the attack the guard stops


def test_with_the_guard_no_byte_goes_to_a_source_outside_the_allow_list(lab):
    lab.apply(guard=True)
    before = lab.counters()
    got = answered_bytes(lab, L.OUTSIDER, requests())
    d = L.delta(before, lab.counters())
    assert sum(got.values()) == 0, got
    assert d.get("guarded") == len(requests()), d
    # allowed clients are served as before: by memcached, then by the cache
    ok = answered_bytes(lab, L.CADDR, {"stats": requests()["stats"], "get": requests()["get"]})
    assert ok["stats"] > 500 and ok["get"] > 1200, ok


def test_the_guard_holds_with_the_cache_switched_off(lab):
    lab.apply(guard=True, enabled=False)
    got = answered_bytes(lab, L.OUTSIDER, {"get": requests()["get"]})
    assert got == {"get": 0}


def test_the_guard_drops_forged_fragments_from_outside_before_they_empty_the_cache(lab):
    """The head of a fragmented datagram to memcached empties the cache (memcached reads the
    reassembled datagram, the scanner cannot): from outside the allow-list, with the guard on,
    it is dropped first, so a forger cannot empty the cache that way."""
    import random

    from tests.correctness.test_hostile_network import Attacker

    lab.apply(guard=True)
    with L.in_ns(lab.c):
        L.udp_get_from(L.CADDR, b"amp", 1)  # cached (a miss fills it)
    a = Attacker(lab)
    try:
        before = lab.counters()
        head = struct.pack("!HHHH", 5, 0, 1, 0) + b"delete amp\r\n"
        a.udp(L.OUTSIDER, random.randint(20000, 60000), head, frag=0x2000)
        time.sleep(0.05)
        d = L.delta(before, lab.counters())
        assert d.get("guarded") == 1 and "fallback_flush" not in d, d
        # from an allowed address (UDP is forgeable: the allow-list is what the guard has),
        # the same head empties the cache, as documented
        before = lab.counters()
        a.udp(L.CADDR, random.randint(20000, 60000), head, frag=0x2000)
        time.sleep(0.05)
        assert L.delta(before, lab.counters()).get("fallback_flush") == 1
    finally:
        a.close()

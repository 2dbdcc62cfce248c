"""Multi-gets of 1 to 32 keys in front of a real memcached, over IPv4 and IPv6: the kernel's
reply is memcached's, byte for byte (memcached sends one datagram per item and one for END,
the kernel one datagram; the payloads read back are the same bytes). Replies that fit the
frame generic XDP can grow are sent from XDP; larger ones from TC ingress (to_tc). A miss
among the keys sends the whole request to memcached, whose reply fills the others."""

from __future__ import annotations

import socket

import pytest
from nsutil import NsClient, Pair, in_ns

from mcache_agent import constants

MAX = constants.const("MC_MAX_MULTIGET")


@pytest.fixture(scope="module")
def pair():
    p = Pair("mget", 61, ipv6=True).up()
    yield p
    p.down()


@pytest.fixture(scope="module", params=["ipv4", "ipv6"])
def cli(request, pair):
    return NsClient(pair, pair.c, pair.saddr6 if request.param == "ipv6" else None)


def keys_of(tag: bytes, n: int) -> list[bytes]:
    return [b"%s:%02d" % (tag, i) for i in range(n)]


def store(cli: NsClient, keys: list[bytes], size: int) -> dict[bytes, bytes]:
    """Values of about size bytes (each its own), flags differing per key."""
    vals = {k: bytes(48 + (i * 7 + j) % 75 for j in range(size + i % 3))
            for i, k in enumerate(keys)}
    for i, (k, v) in enumerate(vals.items()):
        cli.mc.set(k, v, flags=i * 1000)
    return vals


def multiget(cli: NsClient, keys: list[bytes], rid: int, sep: bytes = b" ") -> bytes:
    from mcache_agent import udp_client as uc

    with in_ns(cli.ns):
        return uc.exchange(cli.addr, 11211, b"get " + sep.join(keys) + b"\r\n", timeout=2,
                           request_id=rid, complete=uc.ascii_complete)


def tcp_get(cli: NsClient, keys: list[bytes]) -> bytes:
    """memcached's own reply over TCP (which nothing fills from)."""
    with in_ns(cli.ns), socket.create_connection((cli.addr, 11211), timeout=2) as s:
        s.sendall(b"get " + b" ".join(keys) + b"\r\n")
        got = b""
        while not got.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        return got


def served(cli: NsClient, keys: list[bytes], rid: int, want: bytes, sep: bytes = b" ") -> str:
    """The multi-get answered by the kernel with want: "xdp" or "tc" (where it was sent)."""
    before, gets = cli.counters(), cli.cmd_get()
    assert multiget(cli, keys, rid, sep) == want
    after = cli.counters()
    assert cli.cmd_get() == gets, f"{len(keys)} keys: memcached answered"
    assert after["hit"] == before["hit"] + 1, (len(keys), before, after)
    assert after["miss"] == before["miss"]
    return "tc" if after["to_tc"] == before["to_tc"] + 1 else "xdp"


@pytest.mark.parametrize("size", [1, 12])
def test_multigets_of_1_to_32_keys_are_memcached_s_bytes(cli, size):
    """Every count of keys from 1 to MC_MAX_MULTIGET: memcached's reply (a miss, which fills
    the keys), then the same bytes from the kernel. Short values keep small multi-gets in
    XDP's frame; the larger replies are sent at TC ingress."""
    assert MAX >= 32
    tag = b"m%s%d" % (cli.addr[-1:].encode(), size)
    paths = {}
    for n in range(1, MAX + 1):
        keys = keys_of(tag + b"n%d" % n, n)
        store(cli, keys, size)
        from_memcached = multiget(cli, keys, 700 + n)
        assert from_memcached == tcp_get(cli, keys)
        # the double space: "get  k" is the general parser's even for one key
        sep = b"  " if n == 1 else b" "
        paths[n] = served(cli, keys, 700 + n, from_memcached, sep)
    assert paths[1] == "xdp" and paths[2] == "xdp", paths


def test_a_32_key_reply_past_the_xdp_frame_is_sent_at_tc_ingress(cli):
    """Short keys, so a short request (generic XDP can grow its frame only to the buffer the
    request came in), and a reply of 1,200+ bytes: tc_ingress sends it, the same bytes."""
    keys = [b"t%s%d" % (cli.addr[-1:].encode(), i) for i in range(MAX)]
    store(cli, keys, 16)
    want = multiget(cli, keys, 600)
    assert want == tcp_get(cli, keys) and len(want) > 1200
    assert served(cli, keys, 601, want) == "tc"


def test_one_miss_goes_to_memcached_whole_and_fills_the_others(cli):
    tag = b"x" + cli.addr[-1:].encode()
    keys = keys_of(tag, MAX)
    store(cli, keys, 6)
    missing = keys[MAX // 2]
    cli.mc.delete(missing)
    present = [k for k in keys if k != missing]
    for rid in (801, 802):  # nothing cached, then all but the missing key: memcached's both times
        gets = cli.cmd_get()
        assert multiget(cli, keys, rid) == tcp_get(cli, present)
        assert cli.cmd_get() > gets
    # the first reply filled every key it carried, before and after the missing one
    assert served(cli, present, 803, tcp_get(cli, present)) in ("xdp", "tc")
    for k in (present[0], present[-1]):
        assert served(cli, [k, k], 804, tcp_get(cli, [k, k])) in ("xdp", "tc")


def test_more_keys_than_the_cache_answers_are_memcached_s_and_fill(cli):
    tag = b"o" + cli.addr[-1:].encode()
    keys = keys_of(tag, MAX + 1)
    store(cli, keys, 4)
    before, gets = cli.counters(), cli.cmd_get()
    want = tcp_get(cli, keys)
    assert multiget(cli, keys, 901) == want
    assert cli.cmd_get() > gets and cli.counters()["hit"] == before["hit"]
    # its reply filled: the first 32 of them are the kernel's
    assert served(cli, keys[:MAX], 902, tcp_get(cli, keys[:MAX])) in ("xdp", "tc")

"""Coherence: the checker's short run finds zero stale reads, and finds them when the fill race
guard is compiled out; expiry and memcached restart/flush_all serve no old value.

Long run: python -m tests.correctness.checker --ops 200000 --report out.json
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from tests.correctness import checker
from tests.correctness import lab as L

CI_OPS = int(os.environ.get("MCACHE_CORR_OPS", "20000"))


@pytest.fixture(scope="module")
def lab():
    lb = L.Lab("k", hold_ms=50).up()
    yield lb
    lb.down()


def assert_coherent(rep: dict) -> None:
    """No read returned a value memcached would not have, and every request was answered."""
    assert rep["stale"] == 0, rep["stale_examples"]
    assert rep["bogus"] == 0, rep["bogus_examples"]
    assert rep["malformed"] == 0, rep["malformed_examples"]
    assert rep["lost"] == 0


def test_no_stale_reads(lab):
    rep = checker.run(CI_OPS, lab=lab)
    print(rep)
    assert rep["ops"] >= CI_OPS
    assert_coherent(rep)
    # the check means something only if the kernel served and refused fills meanwhile
    assert rep["counters"].get("hit", 0) > 100, rep["counters"]
    assert rep["counters"].get("fill_rejected", 0) > 0, rep["counters"]
    assert rep["values_by_via"].get("mg", 0) > 100, rep["values_by_via"]  # meta get readers


def run_in_own_lab(tag: str, ops: int, *, ipv6: bool = False, bypass: bool = False,
                   **run_kw) -> dict:
    """A checker run in a lab of its own (the checker judges the values its run wrote),
    coherent."""
    lb = L.Lab(tag, hold_ms=50, ipv6=ipv6, bypass=bypass).up()
    try:
        rep = checker.run(ops, lab=lb, ipv6=ipv6, **run_kw)
    finally:
        lb.down()
    print(rep)
    assert_coherent(rep)
    return rep


def test_no_stale_reads_with_values_past_the_xdp_frame():
    """Stored values of 850+ bytes (appends grow them): generic XDP hands their hits to
    tc_ingress, which must be as coherent as XDP."""
    rep = run_in_own_lab("v", CI_OPS // 2, pad=850, pace=0.1)
    assert rep["counters"].get("to_tc", 0) > 100, rep["counters"]
    assert rep["counters"].get("hit", 0) > 100, rep["counters"]


def test_no_stale_reads_over_ipv6():
    """A dual-stack lab (memcached.address '::'): every reader over IPv6 (get, multi-get, mg,
    binary), writers over IPv6 and IPv4 in turn; the hits counted are all IPv6 ones."""
    rep = run_in_own_lab("6", CI_OPS // 2, ipv6=True)
    assert rep["counters"].get("hit", 0) > 100, rep["counters"]
    assert rep["counters"].get("fill", 0) > 10, rep["counters"]
    assert rep["values_by_via"].get("mg", 0) > 50, rep["values_by_via"]


def test_no_stale_reads_with_writers_and_readers_on_the_local_bypass():
    """local_bypass on, every writer on memcached's host: its writes (acknowledged, noreply,
    pipelined) reach the cache through the sk_msg scanner only, never through XDP. TCP readers
    on the bypass pipeline gets, multi-gets and mgs, each reply read back in order; the UDP
    readers on the client host read the cache. 0 stale, 0 lost."""
    rep = run_in_own_lab("b", CI_OPS // 2, bypass=True, tcp_readers=2)
    c = rep["counters"]
    assert c.get("joined", 0) >= 2 * 6, c  # 4 writers and 2 readers, both ends each
    assert c.get("redirect", 0) > 1000 and c.get("left", 0) == 0, c
    assert c.get("hit", 0) > 100 and c.get("invalidate", 0) > 1000, c
    by_via = rep["values_by_via"]
    assert min(by_via.get(v, 0) for v in ("tcp_ascii", "tcp_multi", "tcp_mg")) > 100, by_via


MG_OPS = int(os.environ.get("MCACHE_CORR_MG_OPS", "5000"))


def test_a_meta_only_client_hits_as_often_as_a_get_client():
    """Readers that send only mg (with the client flags, and the value alone: an entry an mg
    filled without f answers only that form), memcached's mg replies filling the cache: 0
    stale, and a kernel hit ratio (hits per request) at least 0.8 of the same run with
    single-key get readers, in the same lab (memcached flushed between the runs: each run
    judges only the values it wrote). Readers and writers slower than in the race runs
    above: at full speed the ~4,000 reads are over in under a second, mostly before any key
    is written or a fill lands, and the ratios compare noise."""
    from pymemcache.client.base import Client as Pm

    lb = L.Lab("m", hold_ms=50).up()
    reps: dict[str, dict] = {}
    try:
        for reads in ("get", "mg"):
            with L.in_ns(lb.c):
                mc = Pm((L.SADDR, L.PORT), timeout=2, connect_timeout=2)
                mc.flush_all(noreply=False)
                mc.close()
            time.sleep(lb.hold_ms / 1000 + 0.01)
            rep = reps[reads] = checker.run(MG_OPS, lab=lb, reads=reads, pace=0.05,
                                            read_pace=0.02)
            print(reads, rep["kernel_hit_ratio"], rep["values_by_via"], rep["counters"])
            assert_coherent(rep)
    finally:
        lb.down()
    get, mg = reps["get"], reps["mg"]
    assert set(get["values_by_via"]) == {"ascii"}, get["values_by_via"]
    assert set(mg["values_by_via"]) == {"mg", "mg_v"}, mg["values_by_via"]
    assert min(mg["values_by_via"].values()) > 100, mg["values_by_via"]
    assert mg["counters"].get("fill", 0) > 50, mg["counters"]  # the mg replies filled
    assert get["kernel_hit_ratio"] > 0.2, get  # the comparison means something
    assert mg["kernel_hit_ratio"] >= 0.8 * get["kernel_hit_ratio"], (
        mg["kernel_hit_ratio"], get["kernel_hit_ratio"])


def test_checker_catches_a_missing_fill_guard():
    lb = L.Lab("g", hold_ms=50, extra_cflags="-DMC_TEST_NO_FILL_GUARD").up()
    try:
        found = []
        for _ in range(3):  # the race is probabilistic: a few short runs at most
            rep = checker.run(CI_OPS, lab=lb)
            found.append(rep["stale"])
            if rep["stale"]:
                break
        print(found, rep["stale_examples"][:2])
        assert sum(found) > 0, "the checker did not see the race with the guard compiled out"
        assert rep["bogus"] == 0
    finally:
        lb.down()


# ---------------------------------------------------------------- expiry, restart, flush

class Client:
    """TCP (straight to memcached) and UDP (through the cache) from the client namespace."""

    def __init__(self, lab: L.Lab):
        from pymemcache.client.base import Client as Pm

        self.lab = lab
        with L.in_ns(lab.c):
            self.mc = Pm((L.SADDR, L.PORT), timeout=2, connect_timeout=2)
            self.mc.version()
            self.u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.u.bind((L.CADDR, 0))
        self.u.settimeout(1)
        self.rid = 0

    def get(self, key: bytes) -> bytes | None:
        self.rid = (self.rid + 1) & 0xFFFF
        self.u.sendto(struct.pack("!HHHH", self.rid, 0, 1, 0) + b"get " + key + b"\r\n",
                      (L.SADDR, L.PORT))
        acc = b""
        while not acc.endswith(b"END\r\n"):
            d = self.u.recv(65535)
            if struct.unpack_from("!H", d)[0] == self.rid:
                acc += d[8:]
        vals = checker.Reader.parse("ascii", [key], acc)
        return vals.get(key)

    def cached(self, key: bytes, value: bytes) -> None:
        self.mc.set(key, value)
        time.sleep(self.lab.hold_ms / 1000 + 0.01)
        assert self.get(key) == value  # miss, fills
        h = self.lab.counters()["hit"]
        assert self.get(key) == value
        assert self.lab.counters()["hit"] == h + 1, "not served by the kernel"


def test_exptime_not_served_past_expiry_plus_ttl():
    """The cache does not see exptime (ASCII replies carry none): an item is served at most
    ttl_ms after memcached itself stopped returning it."""
    lb = L.Lab("e", hold_ms=10, ttl_ms=300).up()
    try:
        c = Client(lb)
        key = b"exp:1"
        c.mc.set(key, b"short-lived", expire=2)
        time.sleep(0.02)
        assert c.get(key) == b"short-lived"
        t_gone = None
        late = []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            t = time.monotonic()
            v = c.get(key)
            if t_gone is None and c.mc.get(key) is None:
                t_gone = time.monotonic()
            if v is not None and t_gone is not None:
                late.append(t - t_gone)
            if t_gone is not None and t - t_gone > 1.0:
                break
            time.sleep(0.005)
        assert t_gone is not None, "memcached never expired the item"
        print("served after memcached's expiry, s:", max(late, default=0))
        assert max(late, default=0) <= lb.ttl_ms / 1000 + 0.05
    finally:
        lb.down()


def test_memcached_restart_and_flush_all_serve_no_old_value(lab):
    c = Client(lab)
    c.cached(b"rs:1", b"before-restart")
    lab.kill_memcached()
    lab.start_memcached()
    # what the agent's memcached watcher does on a restart (tested with the real daemon in
    # test_faults.py): bump the generation
    with L.in_ns(lab.s):
        lab.dp.flush()
    c2 = Client(lab)
    assert c2.get(b"rs:1") is None
    c2.cached(b"fl:1", b"before-flush")
    c2.mc.flush_all(noreply=False)  # acknowledged; XDP saw it first: a generation bump
    assert c2.get(b"fl:1") is None
    c2.cached(b"fl:2", b"before-delayed-flush")
    c2.mc.flush_all(delay=1, noreply=False)
    # until the flush time memcached still has it; after it, nothing known before is served
    assert c2.get(b"fl:2") in (None, b"before-delayed-flush")  # memcached's answer
    time.sleep(1.2)
    for _ in range(3):
        assert c2.get(b"fl:2") is None

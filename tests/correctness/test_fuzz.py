"""Structure-aware fuzzing of the pinned programs (BPF_PROG_TEST_RUN); see fuzz.py.

Long run: python -m tests.correctness.fuzz --frames 200000 --report out.json [--save-failures]
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket

import pytest

from tests.correctness import fuzz as F
from tests.correctness import lab as L

CI_FRAMES = int(os.environ.get("MCACHE_FUZZ_FRAMES", "20000"))


@pytest.fixture(scope="module")
def env():
    e = F.Env()
    yield e
    e.close()


def test_fuzz_invariant_dual_stack():
    """memcached.address '::': GETs answered over IPv6 too (their replies' headers and UDP
    checksums checked), IPv4 ones to any unicast address; the same oracle otherwise."""
    e = F.Env(tag="fuzz6", dual=True)
    try:
        rep = F.run(CI_FRAMES // 2, seed=random.randrange(1 << 30), env=e,
                    regressions=F.REGRESSIONS)
    finally:
        e.close()
    found = rep.pop("found")
    print(rep)
    assert rep["failures"] == 0, (rep["seed"], found[:5])
    assert rep["tx"] > 20 and rep["tx6"] > 20, rep


def test_regression_frames(env):
    env.fill()
    for line in F.REGRESSIONS.read_text().splitlines():
        if line and not line.startswith("#"):
            f = bytes.fromhex(line)
            rc, out = env.x(f)
            assert F.check_xdp(env, f, rc, out) is None, (F.check_xdp(env, f, rc, out), line)


def test_fuzz_invariant(env):
    rep = F.run(CI_FRAMES, seed=random.randrange(1 << 30), env=env)
    found = rep.pop("found")
    print(rep)
    assert rep["failures"] == 0, (rep["seed"], found[:5])
    assert rep["frames"] >= CI_FRAMES * 0.99
    assert rep["tx"] > 20, "the fuzzer never reached an answer: the oracle is not exercised"
    assert rep["tx_spoofed"] == 0
    assert rep.get("max_reply", 0) <= 1514


def test_spoofed_sources_get_no_answer(env):
    """Requests for cached keys from every kind of source outside the allow-list: no TX."""
    env.fill()
    rng = random.Random(7)
    allowed = ipaddress.IPv4Network(L.ALLOWED)
    tx = n = 0
    for _ in range(3000):
        src = socket.inet_ntoa(rng.randbytes(4))
        if ipaddress.IPv4Address(src) in allowed or src.startswith("127."):
            continue
        body = rng.choice([b"get fz:a\r\n", b"get fz:a fz:b\r\n",
                           F.bin_req(0x0C, b"fz:e", opaque=1)])
        rc, _ = env.x(F.eth(F.udp(F.mframe(rng.randrange(65536), body), src=src)))
        n += 1
        tx += rc == F.XDP_TX
    # the same requests from an allowed client are answered (the cache is warm)
    rc, _ = env.x(F.eth(F.udp(F.mframe(1, b"get fz:a fz:b\r\n"))))
    assert rc == F.XDP_TX
    assert n > 2500 and tx == 0


def test_multiget_reply_bounded(env):
    """A tiny request cannot draw an XDP reply over 1500 bytes: 2+ x 700-byte values pass."""
    env.fill()
    for keys in ([b"fz:b"] * 3, [b"fz:b", b"fz:b"] + [b"fz:a"] * 5):
        req = F.eth(F.udp(F.mframe(3, b"get " + b" ".join(keys) + b"\r\n")))
        before = env.dp.counters()["too_big"]
        rc, out = env.x(req)
        assert rc == F.XDP_PASS and out == req
        assert env.dp.counters()["too_big"] == before + 1
    req = F.eth(F.udp(F.mframe(4, b"get fz:b fz:a\r\n")))
    rc, out = env.x(req)
    assert rc == F.XDP_TX and len(out) - 14 <= 1500


def test_fuzz_invariant_with_a_capture_running(env):
    """The same oracle while a capture of every verdict runs: copying frames out never
    changes an answer, and every record the kernel wrote decodes (its frame as long as it
    says, its verdicts, path and stage known)."""
    from mcache_agent import capture, constants

    records: list[capture.Frame] = []
    with L.in_ns(env.ns), capture.Session(env.pin, capture.Spec(verdicts=["all"])) as s:
        s.start()
        with s.ring(lambda raw: records.append(capture.decode(raw))) as ring:
            rep = F.run(CI_FRAMES // 4, seed=random.randrange(1 << 30), env=env)
            ring.drain()
    found = rep.pop("found")
    assert rep["failures"] == 0, (rep["seed"], found[:5])
    assert records, "nothing captured"
    stages = {"in", "tx", "egress"}
    for r in records:
        assert len(r.data) == min(r.frame_len, constants.const("MC_CAP_SNAP"))
        assert r.path in constants.paths() and r.stage in stages
        assert set(r.verdicts) <= set(constants.verdicts())
    assert {"in", "tx", "egress"} <= {r.stage for r in records}

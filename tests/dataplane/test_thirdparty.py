"""Third-party memcached clients against memcached with the cache attached."""

from __future__ import annotations

import re
import subprocess

import pytest
from nsutil import Pair


@pytest.fixture(scope="module")
def pair():
    p = Pair("t", 11).up()
    yield p
    p.down()


def run_in(ns: str, cmd: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", *cmd], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("proto", ["-a", "-b"])
def test_memccapable(pair, proto):
    r = run_in(pair.c, ["memccapable", "-h", pair.saddr, "-p", "11211", "-t", "3", proto])
    out = r.stdout + r.stderr
    print(out[-1500:])
    assert r.returncode == 0, out
    passed = len(re.findall(r"\[pass\]", out))
    failed = len(re.findall(r"\[fail", out, re.I))
    print(f"memccapable {proto}: {passed} passed, {failed} failed")
    assert "All tests passed" in out and passed >= 20 and failed == 0, out


def test_memcaslap_udp_verify(pair):
    before = pair.dp.counters()
    r = run_in(pair.c, ["memcaslap", "-s", f"{pair.saddr}:11211", "-U", "--verify=1.0",
                        "-T", "1", "-c", "4", "-x", "20000", "-X", "64"])
    out = r.stdout + r.stderr
    print(out[-2500:])
    after = pair.dp.counters()
    assert r.returncode == 0, out
    assert "Run time" in out
    m = re.search(r"data_verify_failed:\s*(\d+)|verify_failed:\s*(\d+)", out)
    failed = [int(x) for x in (m.groups() if m else ()) if x]
    assert not failed or failed == [0], out
    assert not re.search(r"verify failed|data verification failed", out, re.I), out
    assert re.search(r"verify_failed: 0\b", out) and re.search(r"verify_misses: 0\b", out), out
    print("cache hits during memcaslap:", after["hit"] - before["hit"])
    assert after["hit"] > before["hit"], (before, after)

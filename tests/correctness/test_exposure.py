"""Amplification and exposure: out-of-list clients get nothing from the cache (real traffic;
spoofed sources via test runs are in test_fuzz.py), and the agent's control socket, state and
pins are root-only."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.agentproc import AgentProc
from tests.correctness import lab as L


@pytest.fixture(scope="module")
def lab():
    lb = L.Lab("x", hold_ms=10, dataplane=False).up()
    from mcache_agent.dataplane import Dataplane

    lb.dp = Dataplane(lb.pin)
    ag = AgentProc(lb)
    lb.version = 1
    ag.start(lb.config())
    lb.agent = ag
    yield lb
    ag.stop()
    lb.down()


udp_get = L.udp_get_from


@pytest.fixture(scope="module")
def dplab():
    lb = L.Lab("y", hold_ms=10).up()
    yield lb
    lb.down()


def test_out_of_list_client_gets_no_answer_from_the_cache(dplab):
    from pymemcache.client.base import Client

    lab = dplab

    with L.in_ns(lab.c):
        Client((L.SADDR, L.PORT)).set(b"amp:1", b"v" * 150)
        time.sleep(0.05)
        udp_get(L.CADDR, b"amp:1", 1)  # fills
        c0 = lab.counters()
        for i in range(5):
            assert b"v" * 150 in udp_get(L.CADDR, b"amp:1", 10 + i)
        c1 = lab.counters()
        assert c1["hit"] - c0["hit"] == 5, L.delta(c0, c1)
        for i in range(200):  # memcached itself answers these: the cache must not
            assert b"v" * 150 in udp_get(L.OUTSIDER, b"amp:1", 100 + i)
        c2 = lab.counters()
    assert c2["hit"] == c1["hit"], "the cache answered a client outside allowed_clients"
    assert c2["denied"] - c1["denied"] == 200


NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]


def test_socket_state_and_pins_are_root_only(lab):
    ag = lab.agent
    probe = f"""
import os, socket, sys, ctypes, struct
out = []
try:
    s = socket.socket(socket.AF_UNIX); s.connect({str(ag.sock)!r})
    s.sendall(b'{{"op":"status"}}\\n')
    out.append("socket:" + s.recv(100).decode())
except OSError as e: out.append("socket-denied")
for root in ({str(ag.state)!r}, {str(lab.pin)!r}):
    try:
        for dp, dn, fn in os.walk(root, onerror=lambda e: (_ for _ in ()).throw(e)):
            for f in fn:
                open(os.path.join(dp, f), "rb").read(1); out.append("read:" + os.path.join(dp, f))
        out.append("walked:" + root)
    except OSError as e: out.append("denied:" + root)
libc = ctypes.CDLL(None, use_errno=True); libc.syscall.restype = ctypes.c_long
p = ctypes.create_string_buffer({str(lab.pin / "cfg")!r}.encode()); attr = (ctypes.c_uint8 * 128)()
struct.pack_into("=QII", attr, 0, ctypes.addressof(p), 0, 0)
out.append("bpf_obj_get:" + str(libc.syscall(321, 7, attr, 128)))
print("\\n".join(out))
"""
    r = subprocess.run([*NOBODY, "/usr/bin/python3", "-c", probe], capture_output=True, text=True,
                       timeout=30)
    print(r.stdout, r.stderr)
    lines = r.stdout.split()
    assert "socket-denied" in lines
    assert f"denied:{ag.state}" in lines
    assert f"denied:{lab.pin}" in lines
    assert "bpf_obj_get:-1" in lines
    assert not any(x.startswith(("read:", "socket:")) for x in lines)

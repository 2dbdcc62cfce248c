"""Native-mode XDP on a veth, and what `xdp_mode: auto` picks.

Native XDP_TX on a veth only delivers when the peer runs an XDP program in native mode too
(measured: without one, every reply is lost), so auto must pick generic on a veth; with an
XDP_PASS program on the peer, native mode serves hits. (veth's native frames grow no further
than generic ones: measured, a 600-byte value is too_big in both; page-sized NIC frames would.)
"""

from __future__ import annotations

import pytest
from pymemcache.client.base import Client

from mcache_agent import udp_client as uc
from tests.dataplane.nsutil import Pair, in_ns, sh

PEER_PASS = r"""
int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }
"""


@pytest.fixture(scope="module")
def native_pair():
    import bcc

    p = Pair("n", 12, xdp_mode="native")
    # Bring the namespaces up without the cache first: the peer needs its program before
    # the server side attaches natively.
    p.down_ns()
    sh(f"ip netns add {p.s} && ip netns add {p.c}")
    sh(f"ip link add {p.sif} netns {p.s} type veth peer name {p.cif} netns {p.c}")
    sh(f"ip -n {p.s} addr add {p.saddr}/24 dev {p.sif} && "
       f"ip -n {p.c} addr add {p.caddr}/24 dev {p.cif} && "
       f"ip -n {p.s} link set {p.sif} up && ip -n {p.c} link set {p.cif} up && "
       f"ip -n {p.s} link set lo up && ip -n {p.c} link set lo up")
    b = bcc.BPF(text=PEER_PASS)
    fn = b.load_func("xdp_pass", bcc.BPF.XDP)
    with in_ns(p.c):
        bcc.BPF.attach_xdp(p.cif, fn, 1 << 2)  # XDP_FLAGS_DRV_MODE
    from mcache_agent.dataplane import Dataplane
    from tests.dataplane.nsutil import start_memcached

    p.pid = start_memcached(p.s, p.saddr, p.pidfile)
    p.dp = Dataplane(p.pin)
    p.apply()
    yield p
    p.down()


def test_native_mode_is_attached(native_pair):
    modes = {a["interface"]: a["mode"] for a in native_pair.dp.attached()}
    assert modes[native_pair.sif] == "native"
    assert modes["lo"] == "generic"


@pytest.mark.parametrize("size", [5, 180])
def test_native_mode_serves_hits(native_pair, size):
    p = native_pair
    key = f"nk{size}".encode()
    value = b"v" * size
    with in_ns(p.c):  # every socket of the test lives in the client namespace
        mc = Client((p.saddr, 11211))
        mc.set(key, value, noreply=False)
        mc.close()
        assert uc.udp_get_ascii(p.saddr, 11211, [key], 2) == {key: value}  # miss, fills
        before = p.dp.counters()["hit"]
        assert uc.udp_get_ascii(p.saddr, 11211, [key], 2) == {key: value}
    assert p.dp.counters()["hit"] == before + 1, p.dp.counters()


def test_auto_picks_generic_on_a_veth(native_pair):
    p = native_pair
    p.xdp_mode = "auto"
    p.apply()
    modes = {a["interface"]: a["mode"] for a in p.dp.attached()}
    assert modes[p.sif] == "generic"

"""Shared helpers for the data-plane tests: network namespaces entered in-process (setns, no
/sys remount, so bpffs pins stay visible), memcached in a namespace, and a Dataplane applied
inside a namespace."""

from __future__ import annotations

import contextlib
import os
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from pymemcache.client.base import Client

from harness.netns import in_ns, sh
from mcache_agent import udp_client as uc
from mcache_agent.dataplane.layout import bucket, key_hash

__all__ = [
    "NsClient",
    "Pair",
    "TcpStream",
    "agent_owned",
    "in_ns",
    "kernel_serves",
    "make_config",
    "same_bucket_keys",
    "sh",
    "start_memcached",
    "stop_pid",
    "versioned_config",
]


def make_config(text: str):
    from mcache_agent.config import load_config

    return load_config(textwrap.dedent(text))


def start_memcached(ns: str, addr: str, pidfile: Path, *more: str) -> int:
    """memcached on addr (and the more addresses, e.g. an IPv6 one) in namespace ns."""
    pidfile.unlink(missing_ok=True)
    listen = " ".join(f"-l {a}" for a in (addr, *more))
    sh(f"nsenter --net=/var/run/netns/{ns} memcached -u nobody {listen} -p 11211 -U 11211 "
       f"-d -P {pidfile}")
    for _ in range(50):
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        time.sleep(0.05)
    raise RuntimeError("memcached did not start")


TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_SEND_QUEUE = 19, 20, 21, 2


class TcpStream:
    """A real TCP connection to memcached's port inside a namespace, for hand-built segments
    the write scanner must take as that connection's: the scanner reads only data a socket of
    the host will take, in order (bpf/xdp_ingress.c, tcp_segment). Nothing is sent over it:
    the segments go to the programs through BPF_PROG_TEST_RUN, so the server's rcv_nxt stays
    at the stream's first byte (seq(0)). The listener is shared by every stream of a server
    address; close() closes the connection."""

    _listeners: dict[tuple[str, str, int], socket.socket] = {}

    def __init__(self, ns: str, client: str, server: str, port: int = 11211,
                 sport: int = 0) -> None:
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        with in_ns(ns):
            lkey = (ns, server, port)
            if lkey not in self._listeners:
                ls = socket.socket(family, socket.SOCK_STREAM)
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                ls.bind((server, port))
                ls.listen(128)
                self._listeners[lkey] = ls
            self.client = socket.socket(family, socket.SOCK_STREAM)
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.client.bind((client, sport))  # a port given: the last connection on it closed
            self.client.connect((server, port))
            self.server, _ = self._listeners[lkey].accept()
        self.sport = self.client.getsockname()[1]
        # the client's next sequence number: its ISN + 1, read in repair mode (root)
        self.client.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        self.client.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        self.seq0 = int.from_bytes(self.client.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4),
                                   "little")
        self.client.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)

    def seq(self, offset: int = 0) -> int:
        """The sequence number of the stream's byte at offset."""
        return (self.seq0 + offset) & 0xFFFFFFFF

    def close(self) -> None:
        self.client.close()
        self.server.close()

    @classmethod
    def close_listeners(cls, ns: str) -> None:
        for key in [k for k in cls._listeners if k[0] == ns]:
            cls._listeners.pop(key).close()


def stop_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 15)




class Pair:
    """Server namespace (memcached + Dataplane on its veth) and client namespace."""

    def __init__(self, tag: str, net: int, *, fill_hold_ms: int = 0, ttl_ms: int = 60000,
                 xdp_mode: str = "auto", ipv6: bool = False, bypass: bool = False) -> None:
        self.s, self.c = f"mct{tag}-s", f"mct{tag}-c"
        self.sif, self.cif = f"mct{tag}s0", f"mct{tag}c0"
        self.saddr, self.caddr = f"198.19.{net}.1", f"198.19.{net}.2"
        self.net = net
        self.pin = Path(f"/sys/fs/bpf/mcache-test-{tag}")
        self.pidfile = Path(f"/tmp/mcache-test-{tag}-memcached.pid")
        self.version = 0
        self.fill_hold_ms, self.ttl_ms, self.xdp_mode = fill_hold_ms, ttl_ms, xdp_mode
        self.bypass = bypass  # local_bypass.enabled
        self.pid = None
        self.dp = None
        # dual stack: ULA addresses on the veths, memcached listening on both families
        self.saddr6 = f"fd00:{net}::1" if ipv6 else None
        self.caddr6 = f"fd00:{net}::2" if ipv6 else None

    def up(self) -> Pair:
        from mcache_agent.dataplane import Dataplane

        self.down_ns()
        sh(f"ip netns add {self.s} && ip netns add {self.c}")
        sh(f"ip link add {self.sif} netns {self.s} type veth peer name {self.cif} netns {self.c}")
        sh(f"ip -n {self.s} addr add {self.saddr}/24 dev {self.sif} && "
           f"ip -n {self.c} addr add {self.caddr}/24 dev {self.cif} && "
           f"ip -n {self.s} link set {self.sif} up && ip -n {self.c} link set {self.cif} up && "
           f"ip -n {self.s} link set lo up && ip -n {self.c} link set lo up")
        if self.saddr6:
            sh(f"ip -n {self.s} addr add {self.saddr6}/64 dev {self.sif} nodad && "
               f"ip -n {self.c} addr add {self.caddr6}/64 dev {self.cif} nodad")
        # dual stack: the loopback addresses too, for clients on the host itself
        self.pid = start_memcached(self.s, self.saddr, self.pidfile,
                                   *(["::1", "127.0.0.1", self.saddr6] if self.saddr6 else []))
        self.dp = Dataplane(self.pin)
        self.apply()
        return self

    def config_text(self, **over) -> str:
        c = {"ttl_ms": self.ttl_ms, "fill_hold_ms": self.fill_hold_ms, "enabled": "true",
             "entries": 4096, "strategy": "auto", "max_value_bytes": 1024,
             "bypass": self.bypass}
        c.update(over)
        # dual stack: memcached.address '::' answers GETs over both families
        address = c.get("address") or ("'::'" if self.saddr6 else self.saddr)
        allowed = f"198.19.{self.net}.0/24" + (f", 'fd00:{self.net}::/64'" if self.saddr6 else "")
        return f"""
apiVersion: mcache/v1
version: {self.version}
memcached: {{address: {address}, port: 11211}}
interfaces: [{{name: {self.sif}, xdp_mode: {self.xdp_mode}}}]
cache:
  entries: {c['entries']}
  max_value_bytes: {c['max_value_bytes']}
  ttl_ms: {c['ttl_ms']}
  fill_hold_ms: {c['fill_hold_ms']}
  enabled: {c['enabled']}
  allowed_clients: [{allowed}]
rollout: {{strategy: {c['strategy']}}}
local_bypass: {{enabled: {str(c['bypass']).lower()}}}
"""

    def apply(self, **over):
        self.version += 1
        with in_ns(self.s):
            return self.dp.apply(make_config(self.config_text(**over)), None)

    def down_ns(self) -> None:
        sh(f"ip netns del {self.s}", check=False)
        sh(f"ip netns del {self.c}", check=False)

    def down(self) -> None:
        if self.dp is not None:
            with in_ns(self.s):
                self.dp.teardown()
        if self.pid:
            stop_pid(self.pid)
        self.down_ns()


class NsClient:
    """A client of the pair's memcached from inside a namespace: TCP (pymemcache) and UDP."""

    def __init__(self, pair: Pair, ns: str, addr: str | None = None):
        """addr: memcached's address to use, over IPv6 or IPv4 (default: the pair's IPv4)."""
        self.p, self.ns = pair, ns
        self.addr = addr or pair.saddr
        with in_ns(ns):
            self.mc = Client((self.addr, 11211), timeout=2, connect_timeout=2,
                             default_noreply=False)
            self.mc.version()  # connect now: the socket lives in this namespace

    def udp_get(self, *keys: bytes) -> dict[bytes, bytes]:
        with in_ns(self.ns):
            return uc.udp_get_ascii(self.addr, 11211, list(keys), timeout=2)

    def udp_bin(self, key: bytes, opcode=uc.OP_GET) -> uc.BinaryReply:
        with in_ns(self.ns):
            return uc.udp_get_binary(self.addr, 11211, key, opcode=opcode, timeout=2)

    def udp_raw(self, payload: bytes, request_id: int | None = None) -> bytes:
        with in_ns(self.ns):
            return uc.exchange(self.addr, 11211, payload, timeout=2, request_id=request_id)

    def cmd_get(self) -> int:
        return int(self.mc.stats()[b"cmd_get"])

    def counters(self):
        return self.p.dp.counters()

    def cached(self, key: bytes, value: bytes) -> None:
        """Store key over TCP and get it into the cache; assert the kernel serves it."""
        self.mc.set(key, value)
        assert self.udp_get(key) == {key: value}  # miss, fills
        before, gets = self.counters(), self.cmd_get()
        assert self.udp_get(key) == {key: value}
        after = self.counters()
        assert after["hit"] == before["hit"] + 1, (before, after)
        assert self.cmd_get() == gets, "memcached saw a GET the cache should have answered"


@contextlib.contextmanager
def agent_owned(p: Pair, keys: dict[bytes, bytes]) -> Iterator[Pair]:
    """A pair whose data plane the real agent will own: up, nothing loaded, keys stored; down
    afterwards, even when this set-up fails (down() stops the pair's memcached)."""
    p.up()
    try:
        with in_ns(p.s):
            p.dp.teardown()
        c = NsClient(p, p.c)
        for k, v in keys.items():
            c.mc.set(k, v)
        c.mc.close()
        yield p
    finally:
        p.down()


def same_bucket_keys(n: int, entries: int = 4096) -> list[bytes]:
    """n keys whose hashes pick the same bucket of a cache of `entries` slots."""
    found: dict[int, list[bytes]] = {}
    for i in range(1_000_000):
        key = b"assoc%d" % i
        same = found.setdefault(bucket(key_hash(key), entries), [])
        same.append(key)
        if len(same) == n:
            return same
    raise AssertionError("no bucket with enough keys")


def assert_large_forms_served_at_tc_ingress(cli: NsClient, tag: bytes) -> None:
    """A binary GETK, an mg and a multi-get whose replies do not fit XDP's frame: xdp_reply
    leaves the reply in the scratch for tc_ingress (generic XDP runs it at once, on the same
    CPU), which sends it; each the same bytes as memcached's, cmd_get not moving."""
    big = bytes(33 + (i * 3) % 90 for i in range(900))
    kb, km, k1, k2 = (tag + s for s in (b"bin", b"meta", b"m1", b"m2"))
    cli.mc.set(kb, big, flags=11)
    cli.mc.set(km, big[::-1], flags=12)
    cli.mc.set(k1, big[:400], flags=13)
    cli.mc.set(k2, big[400:800], flags=14)
    from_memcached = {"bin": cli.udp_bin(kb, opcode=uc.OP_GETK),
                      "mg": cli.udp_raw(b"mg " + km + b" v f k s Ox1\r\n", request_id=9),
                      "multi": cli.udp_get(k1, k2)}
    # fills: the binary GETK's own reply fills kb (with memcached's cas), the mg's own reply
    # km (with its client flags: f), get the rest
    assert cli.udp_bin(kb, opcode=uc.OP_GETK) == from_memcached["bin"]
    cli.udp_get(k1, k2)
    for form, ask in (("bin", lambda: cli.udp_bin(kb, opcode=uc.OP_GETK)),
                      ("mg", lambda: cli.udp_raw(b"mg " + km + b" v f k s Ox1\r\n",
                                                 request_id=9)),
                      ("multi", lambda: cli.udp_get(k1, k2))):
        before, gets = cli.counters(), cli.cmd_get()
        assert ask() == from_memcached[form], form
        after = cli.counters()
        assert cli.cmd_get() == gets, f"{form}: memcached answered a GET the cache should have"
        assert (after["hit"], after["to_tc"]) == (before["hit"] + 1, before["to_tc"] + 1), (
            form, before, after)


def versioned_config(pair: Pair, version: int, **over: object) -> str:
    """The pair's config text at a given version (the agent tests apply it themselves)."""
    pair.version = version
    return pair.config_text(**over)


def kernel_serves(pair: Pair, key: bytes, value: bytes) -> bool:
    """Two UDP gets of key return value, and the kernel answered at least one of them."""
    hits = pair.dp.counters()["hit"]
    with in_ns(pair.c):
        for _ in range(2):
            assert uc.udp_get_ascii(pair.saddr, 11211, [key], 2.0) == {key: value}
    return pair.dp.counters()["hit"] > hits

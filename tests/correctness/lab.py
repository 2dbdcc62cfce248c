"""A server namespace (memcached + the data plane on its veth) and a client namespace, on
198.19.100.0/24, for the correctness tests. Same addresses in every lab: namespaces isolate
them, so two labs may even coexist.

Namespaces are entered in-process with setns (never `ip netns exec`, which remounts /sys and
loses the bpffs pins). A thread that setns()es stays there: client threads enter once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import textwrap
import time
from pathlib import Path

from harness.netns import enter_ns, in_ns, sh

__all__ = ["enter_ns", "in_ns", "sh"]

NET = "198.19.100"
SADDR = f"{NET}.1"      # memcached
CADDR = f"{NET}.2"      # an allowed client
OUTSIDER = f"{NET}.200"  # same link, outside the allow-list (allowed_clients: .0/25)
ALLOWED = f"{NET}.0/25"
PORT = 11211
# A dual-stack lab (Lab(ipv6=True)): ULA addresses besides, memcached.address '::'
SADDR6 = "fd00:100::1"
CADDR6 = "fd00:100::2"
ALLOWED6 = "fd00:100::/64"


def config_text(version: int, iface: str, *, ttl_ms: int = 60000, hold_ms: int = 50,
                entries: int = 4096, enabled: bool = True, protocols=("ascii", "binary"),
                prefix: str = "", allowed: str | None = ALLOWED, extra_ifaces=(),
                ipv6: bool = False, allowed6: str = ALLOWED6, bypass: bool = False,
                guard: bool = False) -> str:
    ifs = ", ".join(f"{{name: {n}, xdp_mode: auto}}" for n in (iface, *extra_ifaces))
    address = "'::'" if ipv6 else SADDR
    if ipv6 and allowed:
        allowed += f", '{allowed6}'"
    lines = [
        "apiVersion: mcache/v1",
        f"version: {version}",
        f"memcached: {{address: {address}, port: {PORT}}}",
        f"interfaces: [{ifs}]",
        "cache:",
        f"  entries: {entries}",
        f"  ttl_ms: {ttl_ms}",
        f"  fill_hold_ms: {hold_ms}",
        f"  enabled: {'true' if enabled else 'false'}",
        f"  protocols: [{', '.join(protocols)}]",
    ]
    if prefix:
        lines.append(f"  key_prefix: {prefix!r}")
    if allowed:
        lines.append(f"  allowed_clients: [{allowed}]")
    if guard:
        lines.append("  amplification_guard: true")
    if bypass:
        lines.append("local_bypass: {enabled: true}")
    return "\n".join(lines) + "\n"


def load(text: str):
    from mcache_agent.config import load_config

    return load_config(textwrap.dedent(text))


class Lab:
    def __init__(self, tag: str = "a", *, hold_ms: int = 50, ttl_ms: int = 60000,
                 extra_cflags: str = "", dataplane: bool = True, ipv6: bool = False,
                 bypass: bool = False) -> None:
        self.tag = tag
        self.ipv6 = ipv6
        self.bypass = bypass  # local_bypass: clients in the server's namespace join it
        self.s, self.c = f"mcc{tag}-s", f"mcc{tag}-c"
        self.sif, self.cif = f"mcc{tag}s0", f"mcc{tag}c0"
        self.pin = Path(f"/sys/fs/bpf/mcache-corr-{tag}")
        self.pidfile = Path(f"/tmp/mcache-corr-{tag}-memcached.pid")
        self.hold_ms, self.ttl_ms = hold_ms, ttl_ms
        self.extra_cflags = extra_cflags
        self.want_dp = dataplane
        self.version = 0
        self.mc_pid: int | None = None
        self.dp = None

    # ------------------------------------------------------------ set-up
    def up(self) -> Lab:
        self.down_ns()
        sh(f"ip netns add {self.s} && ip netns add {self.c}")
        sh(f"ip link add {self.sif} netns {self.s} type veth peer name {self.cif} netns {self.c}")
        sh(f"ip -n {self.s} addr add {SADDR}/24 dev {self.sif} && "
           f"ip -n {self.c} addr add {CADDR}/24 dev {self.cif} && "
           f"ip -n {self.c} addr add {OUTSIDER}/24 dev {self.cif} && "
           f"ip -n {self.s} link set {self.sif} up && ip -n {self.c} link set {self.cif} up && "
           f"ip -n {self.s} link set lo up && ip -n {self.c} link set lo up")
        if self.ipv6:
            sh(f"ip -n {self.s} addr add {SADDR6}/64 dev {self.sif} nodad && "
               f"ip -n {self.c} addr add {CADDR6}/64 dev {self.cif} nodad")
        self.start_memcached()
        if self.want_dp:
            from mcache_agent.dataplane import Dataplane

            self.dp = Dataplane(self.pin, extra_cflags=self.extra_cflags.split())
            self.apply()
        return self

    def config(self, **kw) -> str:
        kw.setdefault("ttl_ms", self.ttl_ms)
        kw.setdefault("hold_ms", self.hold_ms)
        kw.setdefault("ipv6", self.ipv6)
        kw.setdefault("bypass", self.bypass)
        return config_text(self.version, self.sif, **kw)

    def apply(self, **kw):
        self.version += 1
        text = self.config(**kw)
        with in_ns(self.s):
            return self.dp.apply(load(text), None)

    def start_memcached(self) -> int:
        self.pidfile.unlink(missing_ok=True)
        listen = f"-l {SADDR}" + (f" -l {SADDR6}" if self.ipv6 else "")
        sh(f"nsenter --net=/var/run/netns/{self.s} memcached -u nobody {listen} -p {PORT} "
           f"-U {PORT} -t 2 -d -P {self.pidfile}")
        for _ in range(100):
            if self.pidfile.exists() and self.pidfile.read_text().strip():
                self.mc_pid = int(self.pidfile.read_text())
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("memcached did not start")
        for _ in range(100):  # listening?
            try:
                with in_ns(self.c), socket.create_connection((SADDR, PORT), timeout=0.2):
                    return self.mc_pid
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("memcached does not listen")

    def kill_memcached(self) -> None:
        if self.mc_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.mc_pid, signal.SIGKILL)
            for _ in range(200):
                if not Path(f"/proc/{self.mc_pid}").exists():
                    break
                time.sleep(0.01)
            self.mc_pid = None

    def counters(self) -> dict[str, int]:
        return self.dp.counters() if self.dp else {}

    def down_ns(self) -> None:
        sh(f"ip netns del {self.s}", check=False)
        sh(f"ip netns del {self.c}", check=False)

    def down(self) -> None:
        if self.dp is not None:
            with contextlib.suppress(Exception), in_ns(self.s):
                self.dp.teardown()
        self.kill_memcached()
        self.down_ns()


def udp_get_from(src: str, key: bytes, rid: int) -> bytes:
    """The reply to `get key` sent from address `src` (call inside the client's namespace).
    SADDR is read at call time: faults.lab_net() moves the lab to another network."""
    from mcache_agent import udp_client as uc

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        return uc.exchange(SADDR, PORT, b"get " + key + b"\r\n", 1.0, sock=s,
                           request_id=rid, complete=uc.ascii_complete)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}

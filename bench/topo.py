"""Benchmark topology: a server netns (memcached, the data plane under test) and a client netns
(load generators) joined by one veth pair on 198.19.200.0/24.

Namespaces are entered in-process with setns (never `ip netns exec`, which remounts /sys and
hides the bpffs pins); commands run in them with `nsenter --net=`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from harness.netns import in_ns, nsenter, sh

SERVER_NS, CLIENT_NS = "mcb-s", "mcb-c"
SERVER_IF, CLIENT_IF = "mcbs0", "mcbc0"
SERVER_ADDR, CLIENT_ADDR = "198.19.200.1", "198.19.200.2"
NET = "198.19.200.0/24"
PORT = 11211
ECHO_PORT = 9999
PIN = Path("/sys/fs/bpf/mcache-bench")
PIDFILE = Path("/tmp/mcache-bench-memcached.pid")


class Topology:
    def __init__(self, memcached_threads: int = 1) -> None:
        self.threads = memcached_threads
        self.mc_pid: int | None = None
        self.helpers: list[subprocess.Popen] = []

    # ---------------------------------------------------------------- namespaces
    def up(self) -> Topology:
        self.down_ns()
        sh(f"ip netns add {SERVER_NS} && ip netns add {CLIENT_NS}")
        sh(f"ip link add {SERVER_IF} netns {SERVER_NS} type veth peer name {CLIENT_IF} "
           f"netns {CLIENT_NS}")
        sh(f"ip -n {SERVER_NS} addr add {SERVER_ADDR}/24 dev {SERVER_IF} && "
           f"ip -n {CLIENT_NS} addr add {CLIENT_ADDR}/24 dev {CLIENT_IF} && "
           f"ip -n {SERVER_NS} link set {SERVER_IF} up && "
           f"ip -n {CLIENT_NS} link set {CLIENT_IF} up && "
           f"ip -n {SERVER_NS} link set lo up && ip -n {CLIENT_NS} link set lo up")
        # Static neighbours: no ARP in the measured path.
        smac = _mac(SERVER_NS, SERVER_IF)
        cmac = _mac(CLIENT_NS, CLIENT_IF)
        for ns, addr, mac, dev in ((SERVER_NS, CLIENT_ADDR, cmac, SERVER_IF),
                                   (CLIENT_NS, SERVER_ADDR, smac, CLIENT_IF)):
            sh(f"ip -n {ns} neigh replace {addr} lladdr {mac} dev {dev} nud permanent")
        # Bigger socket buffers so that bursts are not dropped in the stack.
        for ns in (SERVER_NS, CLIENT_NS):
            subprocess.run([*nsenter(ns), "sysctl", "-q", "-w", "net.core.rmem_default=4194304",
                            "net.core.rmem_max=8388608", "net.core.wmem_default=4194304"],
                           check=False, capture_output=True)
        return self

    def down_ns(self) -> None:
        sh(f"ip netns del {SERVER_NS}", check=False)
        sh(f"ip netns del {CLIENT_NS}", check=False)

    # ---------------------------------------------------------------- memcached
    def start_memcached(self) -> int:
        self.stop_memcached()
        PIDFILE.unlink(missing_ok=True)
        subprocess.run([*nsenter(SERVER_NS), "memcached", "-u", "nobody", "-l", SERVER_ADDR,
                        "-p", str(PORT), "-U", str(PORT), "-t", str(self.threads), "-m", "1024",
                        "-d", "-P", str(PIDFILE)], check=True)
        for _ in range(100):
            if PIDFILE.exists() and PIDFILE.read_text().strip():
                self.mc_pid = int(PIDFILE.read_text())
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("memcached did not start")
        for _ in range(100):  # wait until it answers
            try:
                self.mc_stats()
                return self.mc_pid
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("memcached does not answer")

    def stop_memcached(self) -> None:
        if self.mc_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.mc_pid, signal.SIGTERM)
            for _ in range(50):
                if not Path(f"/proc/{self.mc_pid}").exists():
                    break
                time.sleep(0.05)
            self.mc_pid = None

    def mc_command(self, cmd: bytes, end: bytes = b"END\r\n") -> bytes:
        with in_ns(CLIENT_NS):
            s = socket.create_connection((SERVER_ADDR, PORT), timeout=5)
        with s:
            s.sendall(cmd)
            buf = b""
            while not buf.endswith(end):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return buf

    def mc_stats(self) -> dict[str, str]:
        raw = self.mc_command(b"stats\r\n")
        out = {}
        for line in raw.decode().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "STAT":
                out[parts[1]] = parts[2]
        return out

    def preload(self, keys: list[bytes], value: bytes) -> None:
        """SET every key over TCP (pipelined)."""
        with in_ns(CLIENT_NS):
            s = socket.create_connection((SERVER_ADDR, PORT), timeout=30)
        with s:
            batch = 500
            for i in range(0, len(keys), batch):
                part = keys[i:i + batch]
                s.sendall(b"".join(b"set %s 0 0 %d noreply\r\n%s\r\n" % (k, len(value), value)
                                   for k in part))
            s.sendall(b"mn\r\n")
            buf = b""
            while not buf.endswith(b"MN\r\n"):
                buf += s.recv(4096)

    def flush_all(self) -> None:
        self.mc_command(b"flush_all\r\n", end=b"OK\r\n")

    # ---------------------------------------------------------------- helpers
    def spawn(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen([*nsenter(ns), *argv], **kw)
        self.helpers.append(p)
        return p

    def down(self) -> None:
        for p in self.helpers:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=3)
        self.stop_memcached()
        self.down_ns()


def _mac(ns: str, ifname: str) -> str:
    out = sh(f"ip -n {ns} -o link show {ifname}").stdout
    return out.split("link/ether ")[1].split()[0]


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def proc_cpu_ticks(pid: int) -> int:
    """utime+stime (clock ticks) of one process (all its threads)."""
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0
    return int(parts[11]) + int(parts[12])


def softirq_ticks() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[6]  # softirq

"""Feasibility of a sockmap bypass for local TCP clients of memcached on this kernel (issue 16):
what the bypass buys, and what a socket leaving the map does to data in flight. Not the
product (that parses every client message for writes first): a measurement to design by.

    bench/local_bypass_spike.py [--seconds S] [--rounds R] [--out FILE]

memcached on 127.0.0.1 in a network namespace of its own, memcaslap over TCP on the same
host, each on its own CPU, both started inside a cgroup v2 group that a sockops program
watches. Modes, interleaved round by round:
  stock     no programs
  bypass    sockops adds both ends of every connection to memcached's port to a sockhash; an
            sk_msg program redirects every message to the peer socket's ingress queue
  replies   the same, memcached's replies only (the client's requests take TCP over lo, where
            the XDP write scanner sees them today)
Then two checks with the bypass on: pipelined requests come back in order, and a reply
waiting in a client's queue when the client's socket leaves the map (a map delete, as an
agent that turns the bypass off would do) is still read by the client.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness.netns import in_ns, sh  # noqa: E402

NS = "mcbypass"
CGROUP = Path("/sys/fs/cgroup/unified/mcache-bypass-spike")
PORT = 11311

PROGRAM = r"""
#include <uapi/linux/bpf.h>

struct conn_key {
    u32 local_ip;
    u32 remote_ip;
    u32 local_port;   /* host order */
    u32 remote_port;  /* host order */
};

BPF_SOCKHASH(sockhash, struct conn_key, 65536);

int on_sockops(struct bpf_sock_ops *skops)
{
    if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
        skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
        return 0;
    if (skops->family != 2 /* AF_INET */)
        return 0;
    u32 lport = skops->local_port, rport = bpf_ntohl(skops->remote_port);
    if (lport != PORT && rport != PORT)
        return 0;
    struct conn_key k = {.local_ip = skops->local_ip4, .remote_ip = skops->remote_ip4,
                         .local_port = lport, .remote_port = rport};
    sockhash.sock_hash_update(skops, &k, BPF_NOEXIST);
    return 0;
}

int on_msg(struct sk_msg_md *msg)
{
    u32 lport = msg->local_port, rport = bpf_ntohl(msg->remote_port);
    if (REPLIES_ONLY && lport != PORT)
        return SK_PASS; /* a client's request: the TCP path */
    struct conn_key peer = {.local_ip = msg->remote_ip4, .remote_ip = msg->local_ip4,
                            .local_port = rport, .remote_port = lport};
    /* The peer not in the map (it left, or never joined): the helper's SK_DROP would drop
     * the message; SK_PASS without a redirect sends it over TCP instead. */
    sockhash.msg_redirect_hash(msg, &peer, BPF_F_INGRESS);
    return SK_PASS;
}
"""


class Programs:
    def __init__(self, replies_only: bool) -> None:
        from bcc import BPF, BPFAttachType

        self.bpf = BPF(text=PROGRAM, cflags=[f"-DPORT={PORT}",
                                             f"-DREPLIES_ONLY={int(replies_only)}"])
        self.ops = self.bpf.load_func("on_sockops", BPF.SOCK_OPS)
        self.msg = self.bpf.load_func("on_msg", BPF.SK_MSG)
        self.cg = os.open(CGROUP, os.O_RDONLY)
        from bcc import lib

        # bcc's Python tables do not know a sockhash: its fd, and our libbpf binding
        self.map_fd = lib.bpf_table_fd(self.bpf.module, b"sockhash")
        BPF.attach_func(self.msg, self.map_fd, BPFAttachType.SK_MSG_VERDICT)
        BPF.attach_func(self.ops, self.cg, BPFAttachType.CGROUP_SOCK_OPS)

    def delete(self, local_port: int) -> bool:
        """The sockhash entry of the local client socket on local_port."""
        from mcache_agent.dataplane import libbpf

        lo = socket.inet_aton("127.0.0.1")
        return libbpf.map_delete(self.map_fd, lo + lo + struct.pack("=II", local_port, PORT))

    def close(self) -> None:
        from bcc import BPF, BPFAttachType

        BPF.detach_func(self.ops, self.cg, BPFAttachType.CGROUP_SOCK_OPS)
        BPF.detach_func(self.msg, self.map_fd, BPFAttachType.SK_MSG_VERDICT)
        os.close(self.cg)
        self.bpf.cleanup()


def in_group(cmd: str) -> list[str]:
    """A command started inside the cgroup (a socket belongs to the cgroup of the process
    that created it) and the namespace."""
    return ["sh", "-c", f"echo $$ > {CGROUP}/cgroup.procs && exec nsenter "
            f"--net=/var/run/netns/{NS} {cmd}"]


def start_memcached() -> subprocess.Popen:
    p = subprocess.Popen(in_group(f"taskset -c 1 memcached -u nobody -l 127.0.0.1 -p {PORT} "
                                  "-U 0 -t 1"))
    for _ in range(100):
        with contextlib.suppress(OSError), in_ns(NS), \
                socket.create_connection(("127.0.0.1", PORT), timeout=0.2):
            return p
        time.sleep(0.02)
    raise RuntimeError("memcached does not listen")


def memcaslap(seconds: int, conns: int) -> dict:
    """One run: 1 thread, conns connections (1: a request-response latency), 90 % GETs."""
    r = subprocess.run(in_group(f"taskset -c 0 memcaslap -s 127.0.0.1:{PORT} -T 1 -c {conns} "
                                f"-t {seconds}s -X 64 -S {seconds}s"),
                       capture_output=True, text=True, timeout=seconds + 60, check=True)
    out = r.stdout
    tps = int(re.search(r"TPS:\s*(\d+)", out).group(1))
    # the "Total Statistics" block: Avg and the 99 % percentile line are in us
    total = out[out.rindex("Total Statistics"):]
    avg = float(re.search(r"Avg:\s*([\d.]+)", total).group(1))
    return {"tps": tps, "avg_us": avg, "raw_tail": total[:600]}


def lo_bytes() -> int:
    """Bytes lo carried in the namespace (both directions): what the bypass keeps off it."""
    with in_ns(NS):
        for line in Path("/proc/net/dev").read_text().splitlines():
            if line.strip().startswith("lo:"):
                f = line.split(":", 1)[1].split()
                return int(f[0]) + int(f[8])
    return 0


def pipelined_in_order() -> bool:
    """200 set/get pairs in one send on one connection: every get sees its own set."""
    with in_group_socket() as s:
        req = b"".join(b"set p%d 0 0 %d\r\n%d\r\nget p%d\r\n" % (i % 7, len(b"%d" % i), i, i % 7)
                       for i in range(200))
        s.sendall(req)
        want = b"".join(b"STORED\r\nVALUE p%d 0 %d\r\n%d\r\nEND\r\n" % (i % 7, len(b"%d" % i),
                                                                         i) for i in range(200))
        got = b""
        while len(got) < len(want):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got == want


@contextlib.contextmanager
def in_group_socket():
    """A client socket created by a process in the cgroup: this one, moved in and back."""
    root = Path("/sys/fs/cgroup/unified/cgroup.procs")
    (CGROUP / "cgroup.procs").write_text(str(os.getpid()))
    try:
        with in_ns(NS):
            s = socket.create_connection(("127.0.0.1", PORT), timeout=2)
    finally:
        root.write_text(str(os.getpid()))
    try:
        yield s
    finally:
        s.close()


def reply_survives_leaving_the_map(progs: Programs) -> dict:
    """A GET's reply redirected to the client's queue, the client's socket deleted from the
    map before it reads: is the reply still read, and does the connection go on over TCP?"""
    with in_group_socket() as s:
        s.sendall(b"set left 0 0 5\r\nhello\r\n")
        assert s.recv(100) == b"STORED\r\n"
        s.sendall(b"get left\r\n")
        time.sleep(0.2)  # the reply waits in the client's ingress queue
        deleted = progs.delete(s.getsockname()[1])
        s.settimeout(1)
        try:
            first = s.recv(100)
        except TimeoutError:
            first = b""
        s.sendall(b"get left\r\n")
        try:
            second = s.recv(100)
        except TimeoutError:
            second = b""
        want = b"VALUE left 0 5\r\nhello\r\nEND\r\n"
        return {"deleted": deleted, "queued_reply_read": first == want,
                "next_reply_read": second == want, "first": first.decode(errors="replace"),
                "second": second.decode(errors="replace")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    sh(f"ip netns del {NS}", check=False)
    sh(f"ip netns add {NS} && ip -n {NS} link set lo up")
    CGROUP.mkdir(exist_ok=True)
    mc = start_memcached()
    res: dict = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "kernel": os.uname().release, "seconds": a.seconds, "runs": {}}
    try:
        for _ in range(a.rounds):
            for conns in (1, 16):
                for mode in ("stock", "bypass", "replies"):
                    progs = Programs(mode == "replies") if mode != "stock" else None
                    try:
                        before = lo_bytes()
                        run = memcaslap(a.seconds, conns)
                        run["lo_bytes_per_op"] = round((lo_bytes() - before) / max(
                            1, run["tps"] * a.seconds), 1)
                    finally:
                        if progs:
                            progs.close()
                    res["runs"].setdefault(f"{mode} c{conns}", []).append(run)
        progs = Programs(False)
        try:
            res["pipelined_in_order"] = pipelined_in_order()
            res["leaving_the_map"] = reply_survives_leaving_the_map(progs)
        finally:
            progs.close()
    finally:
        mc.terminate()
        mc.wait(5)
        sh(f"ip netns del {NS}", check=False)
        with contextlib.suppress(OSError):
            CGROUP.rmdir()
    summary = {}
    for mode, runs in res["runs"].items():
        summary[mode] = {"tps": statistics.median(r["tps"] for r in runs),
                         "avg_us": statistics.median(r["avg_us"] for r in runs)}
    for mode, v in summary.items():
        stock = summary["stock " + mode.split()[1]]
        v["latency_vs_stock"] = round(v["avg_us"] / stock["avg_us"], 3)
        v["tps_vs_stock"] = round(v["tps"] / stock["tps"], 3)
    res["summary"] = summary
    print(json.dumps({k: res[k] for k in ("summary", "pipelined_in_order", "leaving_the_map")},
                     indent=1))
    print({m: [(r["tps"], r["avg_us"], r["lo_bytes_per_op"]) for r in runs]
           for m, runs in res["runs"].items()})
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

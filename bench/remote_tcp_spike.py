"""Spike (issue 26): can this kernel answer a remote client's TCP GET from a BPF map at
memcached's own (accepted) socket, with the reply going out through that socket's TCP stack,
in order with memcached's replies on a pipelined connection? A measurement to design by,
not product code.

    bench/remote_tcp_spike.py [--seconds S] [--rounds R] [--out FILE]

Set-up (all of it removed on every way out): namespaces mcrt-s (memcached, 198.19.77.1,
CPU 1, RPS of the server veth on CPU 1) and mcrt-c (clients, 198.19.77.2, CPU 0) joined by
a veth pair; a cgroup v2 directory of our own (memcached started inside it); a sockops
program on that directory that puts memcached's accepted sockets (PASSIVE_ESTABLISHED,
local port, netns cookie) into a sockhash; stream programs attached to that sockhash. No
pins: every program and map lives in this process's fds; the cgroup attachment is detached
in `finally`, and the directory removed.

Modes (the verdict program is an `sk_skb` program on memcached's server-side socket):
  stock      no programs
  pass       sockops + a BPF_SK_SKB_VERDICT program (no parser) that returns SK_PASS
  answer     the same program, but a segment that is exactly `get <key>\r\n` for a key in
             the BPF map is rewritten into the reply (bpf_skb_change_tail + store_bytes) and
             redirected to the EGRESS of the same socket (bpf_sk_redirect_hash, flags 0):
             the psock backlog worker sends it with skb_send_sock() through memcached's
             socket (tcp_sendmsg: memcached's sequence numbers, ACKs, retransmission)
  answer-strp  the same with a stream parser (BPF_SK_SKB_STREAM_PARSER + STREAM_VERDICT)
             that cuts the stream at each '\n', so each command of a pipelined segment gets
             its own verdict

Per mode: single GETs, sequential GETs on one connection, memccapable, pipelined ordering
(hit/miss/hit in one segment and in three, miss then hit, 200 misses then a hit), a GET
loop. Then interleaved cost rounds: a Python GET loop (16 connections and 1) and memcaslap.
The cost loops send `get b` padded with spaces to its reply's length: the kernel moves
copied_seq by the rewritten skb's length (tcp_eat_skb), so an unpadded answered GET leaves
the connection's next request undelivered (measured by the sequential check).
Findings: docs/REMOTE_TCP.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness.netns import in_ns, sh  # noqa: E402

SNS, CNS = "mcrt-s", "mcrt-c"
SADDR, CADDR = "198.19.77.1", "198.19.77.2"
PORT = 11211
CGROUP = Path(f"/sys/fs/cgroup/unified/mcrt-spike-{os.getpid()}")
SERVER_CPU, CLIENT_CPU = 1, 0

HIT_KEYS = {b"hit1": b"v-one", b"hit2": b"v-two", b"bench": b"x" * 32, b"b": b"x"}
# "get b" padded with spaces to the length of its reply (21 bytes): memcached ignores the
# spaces, and the verdict's in-place rewrite then keeps the skb's length (see copied_seq)
PADDED_B = b"get b" + b" " * 14 + b"\r\n"

PROGRAM = r"""
#include <uapi/linux/bpf.h>

struct conn_key { u32 rip; u32 rport; };       /* the client's address and port */
struct ckey { char k[16]; };
struct reply { u32 len; u8 data[REPLY_MAX]; };

BPF_SOCKHASH(sockhash, struct conn_key, 1024);
BPF_HASH(cache, struct ckey, struct reply, 64);
BPF_ARRAY(stats, u64, 12);
BPF_ARRAY(last_len, u32, 1);
BPF_ARRAY(parse_log, u64, 16);   /* the parser's first 16 calls: skb->len << 32 | returned */

enum { S_SOCKOPS = 0, S_ADDED, S_VERDICT, S_PASS, S_ANSWER, S_REDIR_FAIL, S_PARSE,
       S_TAIL_FAIL, S_STORE_FAIL, S_NOT_GET };

static __always_inline void bump(u32 i)
{
    u64 *v = stats.lookup(&i);
    if (v)
        __sync_fetch_and_add(v, 1);
}

static __always_inline u32 port_of(u32 p) { return p > 0xffff ? p >> 16 : p; }

int on_sockops(struct bpf_sock_ops *skops)
{
    if (skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
        return 1;
    bump(S_SOCKOPS);
    if (skops->family != 2 || skops->local_port != PORT)
        return 1;
    if (bpf_get_netns_cookie(skops) != NETNS_COOKIE)
        return 1;
    struct conn_key k = {.rip = skops->remote_ip4, .rport = port_of(skops->remote_port)};
    long err = sockhash.sock_hash_update(skops, &k, BPF_ANY);
    if (err == 0)
        bump(S_ADDED);
    return 1;
}

/* Stream parser: one message per command line (a value line of a set is its own message,
 * which the verdict passes). */
static __always_inline int parse_ret(struct __sk_buff *skb, u32 ret)
{
    u32 z = S_PARSE;
    u64 *n = stats.lookup(&z);
    if (n) {
        u32 idx = *n;
        if (idx < 16) {
            u64 *slot = parse_log.lookup(&idx);
            if (slot)
                *slot = ((u64)skb->len << 32) | ret;
        }
    }
    bump(S_PARSE);
    return ret;
}

int on_parse(struct __sk_buff *skb)
{
    u32 len = skb->len;
    char c = 0;
    for (u32 i = 0; i < 64; i++) {
        if (i >= len)
            return parse_ret(skb, 0);       /* no '\n' yet: wait for more bytes */
        if (bpf_skb_load_bytes(skb, i, &c, 1) < 0)
            return parse_ret(skb, len);
        if (c == '\n')
            return parse_ret(skb, i + 1);
    }
    return parse_ret(skb, len);             /* a long line: one message */
}

int on_verdict(struct __sk_buff *skb)
{
    bump(S_VERDICT);
    u32 z = 0, len = skb->len;
    last_len.update(&z, &len);
    if (!ANSWER)
        goto pass;
    if (len < 7 || len > 22) {
        bump(S_NOT_GET);
        goto pass;
    }
    char buf[32] = {};
    u32 n = len;
    asm volatile("" : "+r"(n));   /* keep clang from folding the bound the verifier needs */
    n &= 31;
    if (n < 7)
        goto pass;
    if (bpf_skb_load_bytes(skb, 0, buf, n) < 0)
        goto pass;
    if (buf[0] != 'g' || buf[1] != 'e' || buf[2] != 't' || buf[3] != ' ') {
        bump(S_NOT_GET);
        goto pass;
    }
    struct ckey key = {};
    int ok = 0, in_key = 1;
#pragma unroll
    for (int i = 4; i < 22; i++) {
        if (i == len - 2) {
            if (buf[i] == '\r' && buf[i + 1] == '\n' && i > 4)
                ok = 1;
            break;
        }
        if (buf[i] == ' ') {            /* trailing spaces only */
            in_key = 0;
            continue;
        }
        if (!in_key || buf[i] == '\r' || buf[i] == '\n')
            break;
        if (i - 4 < 16)
            key.k[i - 4] = buf[i];
    }
    if (!ok) {
        bump(S_NOT_GET);
        goto pass;
    }
    struct reply *r = cache.lookup(&key);
    if (!r)
        goto pass;
    u32 rl = r->len & (REPLY_MAX - 1);
    if (rl == 0)
        goto pass;
    if (bpf_skb_change_tail(skb, rl, 0) < 0) {
        bump(S_TAIL_FAIL);
        goto pass;
    }
    if (bpf_skb_store_bytes(skb, 0, r->data, rl, 0) < 0) {
        bump(S_STORE_FAIL);
        return SK_DROP;                     /* the skb is already cut: never pass it on */
    }
    struct conn_key self = {.rip = skb->remote_ip4, .rport = port_of(skb->remote_port)};
    long ret = sockhash.sk_redirect_hash(skb, &self, 0); /* flags 0: egress */
    if (ret != SK_PASS) {
        bump(S_REDIR_FAIL);
        return SK_DROP;
    }
    bump(S_ANSWER);
    return SK_PASS;
pass:
    bump(S_PASS);
    return SK_PASS;
}
"""
STAT_NAMES = ["sockops", "added", "verdict", "pass", "answer", "redirect_fail", "parse",
              "tail_fail", "store_fail", "not_get"]
REPLY_MAX = 64


# ---------------------------------------------------------------- set-up and clean-up

def netns_cookie(ns: str) -> int:
    with in_ns(ns):
        s = socket.socket()
        try:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 71, 8), "little")
        finally:
            s.close()


def make_net() -> None:
    teardown_net()
    for cmd in (f"ip netns add {SNS}", f"ip netns add {CNS}",
                f"ip link add mcrt-s0 netns {SNS} type veth peer name mcrt-c0 netns {CNS}",
                f"ip -n {SNS} addr add {SADDR}/24 dev mcrt-s0",
                f"ip -n {CNS} addr add {CADDR}/24 dev mcrt-c0",
                f"ip -n {SNS} link set lo up", f"ip -n {CNS} link set lo up",
                f"ip -n {SNS} link set mcrt-s0 up", f"ip -n {CNS} link set mcrt-c0 up"):
        sh(cmd)
    # the server's receive work on the server's CPU (a veth bills it to the sender otherwise)
    sh(f"nsenter --net=/var/run/netns/{SNS} sh -c "
       f"'echo {1 << SERVER_CPU:x} > /sys/class/net/mcrt-s0/queues/rx-0/rps_cpus'", check=False)
    sh(f"nsenter --net=/var/run/netns/{CNS} sh -c "
       f"'echo {1 << CLIENT_CPU:x} > /sys/class/net/mcrt-c0/queues/rx-0/rps_cpus'", check=False)


def teardown_net() -> None:
    sh(f"ip netns del {SNS}", check=False)
    sh(f"ip netns del {CNS}", check=False)


def start_memcached() -> subprocess.Popen:
    p = subprocess.Popen(["sh", "-c", f"echo $$ > {CGROUP}/cgroup.procs && exec nsenter "
                          f"--net=/var/run/netns/{SNS} taskset -c {SERVER_CPU} memcached "
                          f"-u nobody -l {SADDR} -p {PORT} -U 0 -t 1"])
    for _ in range(200):
        with contextlib.suppress(OSError), in_ns(CNS), \
                socket.create_connection((SADDR, PORT), timeout=0.2):
            return p
        time.sleep(0.02)
    p.kill()
    raise RuntimeError("memcached does not listen")


def stop_memcached(p: subprocess.Popen | None) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


class Programs:
    """sockops on our cgroup, stream programs on the sockhash. close() detaches all."""

    def __init__(self, mode: str, cookie: int) -> None:
        from bcc import BPF, BPFAttachType, lib

        self.mode = mode
        self.attached: list = []
        answer = mode.startswith("answer")
        self.bpf = BPF(text=PROGRAM, cflags=[
            f"-DPORT={PORT}", f"-DNETNS_COOKIE={cookie}ULL", f"-DANSWER={int(answer)}",
            f"-DREPLY_MAX={REPLY_MAX}", "-Wno-unused-function"])
        self.map_fd = lib.bpf_table_fd(self.bpf.module, b"sockhash")
        try:
            self.verdict = self.bpf.load_func("on_verdict", BPF.SK_SKB)
            if mode == "answer-strp":
                self.parser = self.bpf.load_func("on_parse", BPF.SK_SKB)
                self._attach(self.parser, self.map_fd, BPFAttachType.SK_SKB_STREAM_PARSER)
                self._attach(self.verdict, self.map_fd, BPFAttachType.SK_SKB_STREAM_VERDICT)
            else:
                self._attach(self.verdict, self.map_fd, BPFAttachType.SK_SKB_VERDICT)
            self.ops = self.bpf.load_func("on_sockops", BPF.SOCK_OPS)
            self.cg = os.open(CGROUP, os.O_RDONLY)
            self._attach(self.ops, self.cg, BPFAttachType.CGROUP_SOCK_OPS)
        except BaseException:
            self.close()
            raise
        cache = self.bpf["cache"]
        for k, v in HIT_KEYS.items():
            key = cache.Key()
            ctypes.memmove(ctypes.addressof(key), k, len(k))
            val = cache.Leaf()
            data = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k, len(v), v)
            assert len(data) < REPLY_MAX
            val.len = len(data)
            ctypes.memmove(ctypes.addressof(val) + type(val).data.offset, data, len(data))
            cache[key] = val

    def _attach(self, fn, fd, typ) -> None:
        from bcc import BPF

        BPF.attach_func(fn, fd, typ)
        self.attached.append((fn, fd, typ))

    def stats(self) -> dict:
        t = self.bpf["stats"]
        return {n: int(t[t.Key(i)].value) for i, n in enumerate(STAT_NAMES)}

    def close(self) -> None:
        from bcc import BPF

        errors = []
        # the cgroup attachment first: it sees every TCP connection made in the cgroup
        for fn, fd, typ in reversed(self.attached):
            try:
                BPF.detach_func(fn, fd, typ)
            except Exception as e:
                errors.append(str(e))
        self.attached.clear()
        if getattr(self, "cg", None) is not None:
            os.close(self.cg)
            self.cg = None
        self.bpf.cleanup()
        if errors:
            print("detach errors:", errors, file=sys.stderr)


# ---------------------------------------------------------------- measurements

def cpu_busy(cpu: int) -> float:
    """Seconds CPU `cpu` was busy (not idle/iowait) since boot."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            f = [int(x) for x in line.split()[1:]]
            return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def cpu_parts(cpu: int) -> dict:
    """Seconds CPU `cpu` spent in user, system and softirq since boot."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            f = [int(x) for x in line.split()[1:]]
            hz = os.sysconf("SC_CLK_TCK")
            return {"user": (f[0] + f[1]) / hz, "system": f[2] / hz, "softirq": f[6] / hz}
    return {}


def proc_cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def mc_stats() -> dict:
    with in_ns(CNS), socket.create_connection((SADDR, PORT), timeout=2) as s:
        s.sendall(b"stats\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    out = {}
    for line in buf.decode().splitlines():
        p = line.split()
        if len(p) == 3 and p[0] == "STAT":
            out[p[1]] = p[2]
    return out


def set_keys() -> None:
    """The same keys in memcached (a miss in the map still gets memcached's value)."""
    with in_ns(CNS), socket.create_connection((SADDR, PORT), timeout=2) as s:
        for k, v in HIT_KEYS.items():
            s.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v))
            assert s.recv(100) == b"STORED\r\n"


def get_loop(seconds: float, conns: int, key: bytes, req: bytes | None = None) -> dict:
    """`conns` connections from the client namespace, each one GET in flight, for `seconds`:
    ops, and replies that were not byte-exact."""
    os.sched_setaffinity(0, {CLIENT_CPU})
    want = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(HIT_KEYS[key]), HIT_KEYS[key])
    req = req or b"get %s\r\n" % key
    sel = selectors.DefaultSelector()
    socks = []
    with in_ns(CNS):
        for _ in range(conns):
            s = socket.create_connection((SADDR, PORT), timeout=2)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            socks.append(s)
    bufs = {s.fileno(): b"" for s in socks}
    ops = bad = 0
    lat: list[float] = []
    sent_at = {}
    try:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
            sent_at[s.fileno()] = time.perf_counter()
            s.send(req)
        end = time.perf_counter() + seconds
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            for k, _ in sel.select(timeout=0.5):
                s = k.fileobj
                d = s.recv(65536)
                if not d:
                    raise RuntimeError("connection closed by server")
                b = bufs[s.fileno()] + d
                while len(b) >= len(want):
                    if b[:len(want)] != want:
                        bad += 1
                    b = b[len(want):]
                    ops += 1
                    t = time.perf_counter()
                    if ops % 16 == 0:
                        lat.append(t - sent_at[s.fileno()])
                    sent_at[s.fileno()] = t
                    s.send(req)
                bufs[s.fileno()] = b
    finally:
        for s in socks:
            sel.unregister(s)
            s.close()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 2)))
    lat.sort()
    return {"ops": ops, "ops_s": round(ops / seconds), "bad": bad,
            "lat_mean_us": round(statistics.mean(lat) * 1e6, 1) if lat else None,
            "lat_p99_us": round(lat[int(len(lat) * 0.99)] * 1e6, 1) if lat else None}


def ctx_switches(pid: int) -> int:
    n = 0
    for st in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in st.read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                n += int(line.split()[1])
    return n


def measured(fn, mc_pid: int, *args) -> dict:
    before = mc_stats()
    x0 = ctx_switches(mc_pid)
    q0 = cpu_parts(SERVER_CPU)
    c0, p0, t0 = cpu_busy(SERVER_CPU), proc_cpu(mc_pid), time.perf_counter()
    r = fn(*args)
    c1, p1, t1 = cpu_busy(SERVER_CPU), proc_cpu(mc_pid), time.perf_counter()
    q1 = cpu_parts(SERVER_CPU)
    after = mc_stats()
    r["memcached_ctx_switches_per_op"] = round((ctx_switches(mc_pid) - x0) / (r.get("ops") or 1), 3)
    ops = r.get("ops") or 1
    for k in q0:
        r[f"server_{k}_us_per_op"] = round((q1[k] - q0[k]) / ops * 1e6, 2)
    r["server_cpu_busy_s"] = round(c1 - c0, 3)
    r["server_cpu_util"] = round((c1 - c0) / (t1 - t0), 3)
    r["server_cpu_us_per_op"] = round((c1 - c0) / ops * 1e6, 2)
    r["memcached_cpu_us_per_op"] = round((p1 - p0) / ops * 1e6, 2)
    r["memcached_cmd_get"] = int(after["cmd_get"]) - int(before["cmd_get"])
    return r


def memcaslap(seconds: int, conns: int) -> dict:
    r = subprocess.run(["nsenter", f"--net=/var/run/netns/{CNS}", "taskset", "-c",
                        str(CLIENT_CPU), "memcaslap", "-s", f"{SADDR}:{PORT}", "-T", "1",
                        "-c", str(conns), "-t", f"{seconds}s", "-X", "64",
                        "-S", f"{seconds}s"],
                       capture_output=True, text=True, timeout=seconds + 60)
    out = r.stdout
    try:
        total = out[out.rindex("Total Statistics"):]
        tps = int(re.search(r"TPS:\s*(\d+)", out).group(1))
        avg = float(re.search(r"Avg:\s*([\d.]+)", total).group(1))
        m = re.search(r"Run time:.*?Ops:\s*(\d+)", out, re.S)
        ops = int(m.group(1)) if m else tps * seconds
    except (ValueError, AttributeError):
        return {"error": (r.stdout + r.stderr)[-800:], "ops": 1}
    return {"ops": ops, "ops_s": tps, "lat_mean_us": avg}


def memccapable() -> dict:
    r = subprocess.run(["nsenter", f"--net=/var/run/netns/{CNS}", "timeout", "60",
                        "memccapable", "-h", SADDR, "-p", str(PORT), "-t", "2"],
                       capture_output=True, text=True, timeout=90)
    out = r.stdout + r.stderr
    return {"rc": r.returncode, "passed": out.count("[pass]"), "failed": out.count("[FAIL]"),
            "tail": out.strip().splitlines()[-3:] if out.strip() else []}


def pipelined(segments: list[bytes], gap: float = 0.0) -> dict:
    """One connection; the requests sent as `segments` (one send each, TCP_NODELAY, `gap`
    seconds apart); the bytes the client reads back within 1 s."""
    with in_ns(CNS):
        s = socket.create_connection((SADDR, PORT), timeout=2)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for seg in segments:
            s.sendall(seg)
            if gap:
                time.sleep(gap)
        s.settimeout(0.15)
        got = b""
        deadline = time.time() + 1.0
        while time.time() < deadline:
            try:
                d = s.recv(65536)
            except TimeoutError:
                break  # 150 ms with nothing more: all that comes
            if not d:
                break
            got += d
        return {"sent": b"".join(segments).decode(), "got": got.decode(errors="replace")}
    finally:
        s.close()


def sequential(progs) -> list:
    """One connection, one request at a time, each reply awaited (0.5 s): after the kernel
    answered one GET in place, are later requests still seen and answered?"""
    with in_ns(CNS):
        s = socket.create_connection((SADDR, PORT), timeout=2)
    out = []
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(0.5)
        for req in (b"get hit1\r\n", b"get hit1\r\n", b"get nokey\r\n", b"get hit2\r\n",
                    b"get nokey\r\n"):
            s.sendall(req)
            got = b""
            with contextlib.suppress(TimeoutError):
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
                    s.settimeout(0.1)
            s.settimeout(0.5)
            st = progs.stats() if progs else {}
            out.append({"sent": req.decode(), "got": got.decode(errors="replace") or None,
                        "verdict_runs": st.get("verdict"), "answered": st.get("answer")})
    finally:
        s.close()
    return out


def reply_of(key: bytes) -> bytes:
    v = HIT_KEYS.get(key)
    return b"END\r\n" if v is None else b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(v), v)


def ordering(trials: int) -> dict:
    """hit, miss, hit: in one segment, and as three back-to-back segments. A miss is a key
    memcached lacks (reply END); in order means hit1, END, hit2."""
    want = (reply_of(b"hit1") + reply_of(b"nokey") + reply_of(b"hit2")).decode()
    out = {}
    cases = {
        "one_segment": [b"get hit1\r\nget nokey\r\nget hit2\r\n"],
        "three_segments": [b"get hit1\r\n", b"get nokey\r\n", b"get hit2\r\n"],
    }
    for name, segs in cases.items():
        res = [pipelined(segs) for _ in range(trials)]
        kinds: dict[str, int] = {}
        for r in res:
            kinds[r["got"]] = kinds.get(r["got"], 0) + 1
        out[name] = {"trials": trials, "in_order": sum(r["got"] == want for r in res),
                     "outcomes": kinds}
    # a miss first, then a hit, back to back: can the kernel's reply overtake memcached's?
    want2 = (reply_of(b"nokey") + reply_of(b"hit1")).decode()
    res = [pipelined([b"get nokey\r\n", b"get hit1\r\n"]) for _ in range(trials)]
    kinds = {}
    for r in res:
        kinds[r["got"]] = kinds.get(r["got"], 0) + 1
    out["miss_then_hit"] = {"trials": trials, "in_order": sum(r["got"] == want2 for r in res),
                            "outcomes": kinds}
    # memcached kept busy: 200 misses in one segment, then a hit in the next: where does the
    # hit's reply land among the 200 ENDs?
    want3 = (reply_of(b"nokey") * 200 + reply_of(b"hit1")).decode()
    res = [pipelined([b"get nokey\r\n" * 200, b"get hit1\r\n"]) for _ in range(trials)]
    pos = []
    for r in res:
        i = r["got"].find("VALUE")
        pos.append(r["got"][:i].count("END") if i >= 0 else None)
    out["miss200_then_hit"] = {"trials": trials,
                               "in_order": sum(r["got"] == want3 for r in res),
                               "ends_before_value": pos}
    return out


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    res: dict = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "kernel": os.uname().release, "seconds": a.seconds, "conns": a.conns,
                 "cpus": {"server": SERVER_CPU, "client": CLIENT_CPU}, "runs": {},
                 "modes": {}}
    mc = progs = None
    try:
        make_net()
        CGROUP.mkdir(exist_ok=False)
        cookie = netns_cookie(SNS)
        res["netns_cookie"] = cookie
        mc = start_memcached()
        set_keys()
        # what each mode lets through, correctness and ordering
        for mode in ("stock", "pass", "answer", "answer-strp"):
            m: dict = {}
            try:
                progs = Programs(mode, cookie) if mode != "stock" else None
            except Exception as e:
                m["load_error"] = str(e)[-1500:]
                res["modes"][mode] = m
                print(mode, "LOAD ERROR", str(e)[-600:], flush=True)
                continue
            try:
                m["prog_loaded"] = progs is not None
                set_keys()
                m["single_get_hit1"] = pipelined([b"get hit1\r\n"])
                m["single_get_nokey"] = pipelined([b"get nokey\r\n"])
                m["sequential"] = sequential(progs)
                m["memccapable"] = memccapable()
                set_keys()  # memccapable ends with flush_all
                m["ordering"] = ordering(a.trials)
                before = mc_stats()
                m["hit_loop_1conn"] = get_loop(1.0, 1, b"bench")
                m["hit_loop_memcached_cmd_get"] = (int(mc_stats()["cmd_get"])
                                                   - int(before["cmd_get"]))
                before = mc_stats()
                m["padded_loop_1conn"] = get_loop(1.0, 1, b"b", PADDED_B)
                m["padded_loop_memcached_cmd_get"] = (int(mc_stats()["cmd_get"])
                                                      - int(before["cmd_get"]))
            except Exception as e:
                m["error"] = f"{type(e).__name__}: {e}"
            finally:
                if progs:
                    m["prog_stats"] = progs.stats()
                    pl = progs.bpf["parse_log"]
                    m["parse_log"] = [(v >> 32, v & 0xffffffff) for v in
                                      (int(pl[pl.Key(i)].value) for i in range(16)) if v]
                if progs:
                    progs.close()
                    progs = None
            res["modes"][mode] = m
            print(mode, json.dumps({k: v for k, v in m.items() if k != "ordering"})[:1500],
                  flush=True)
            print(mode, "ordering", json.dumps(m.get("ordering"))[:1500], flush=True)
        # cost: interleaved rounds
        usable = [md for md in ("stock", "pass", "answer", "answer-strp")
                  if "load_error" not in res["modes"][md] and "error" not in res["modes"][md]]
        for _ in range(a.rounds):
            for mode in usable:
                progs = Programs(mode, cookie) if mode != "stock" else None
                try:
                    r = measured(get_loop, mc.pid, a.seconds, a.conns, b"b", PADDED_B)
                    res["runs"].setdefault(f"{mode} pyget-padded", []).append(r)
                    r1 = measured(get_loop, mc.pid, a.seconds / 2, 1, b"b", PADDED_B)
                    res["runs"].setdefault(f"{mode} pyget-padded-1conn", []).append(r1)
                    if mode in ("stock", "pass"):
                        r2 = measured(memcaslap, mc.pid, a.seconds, a.conns)
                        res["runs"].setdefault(f"{mode} memcaslap", []).append(r2)
                    if progs:
                        r["prog_stats"] = progs.stats()
                finally:
                    if progs:
                        progs.close()
                        progs = None
                print(mode, "round", json.dumps(r)[:600], flush=True)
    finally:
        if progs:
            progs.close()
        stop_memcached(mc)
        teardown_net()
        with contextlib.suppress(OSError):
            CGROUP.rmdir()
    summary = {}
    for name, runs in res["runs"].items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            continue
        summary[name] = {k: statistics.median(r[k] for r in ok)
                         for k in ("ops_s", "lat_mean_us", "server_cpu_us_per_op",
                                   "memcached_cpu_us_per_op", "server_cpu_util")
                         if all(r.get(k) is not None for r in ok)}
    res["summary"] = summary
    print(json.dumps(summary, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

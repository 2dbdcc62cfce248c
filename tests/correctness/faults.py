"""Faults under load: the real agent (`mcache-agent run`) in a lab's server namespace, a steady
UDP GET load (ASCII single and multi-key gets of a small hot keyset) and acknowledged TCP writes
(pymemcache, noreply=False, unique values), while faults are injected:

  memcached   memcached SIGKILLed (by its pid) and restarted; the agent's watcher must flush the
              cache (the generation moves); afterwards no value older than the restart is served
  agent       the agent SIGKILLed and restarted in a loop; the kernel keeps answering (hits rise
              while no agent runs); the restarted agent adopts the same version
  applies     random valid configs through `mcache-agent apply` (map swaps: ttl_ms, enabled,
              protocols, key_prefix, fill_hold_ms; program swaps: entries 4096/8192)
  failing     applies that fail midway: crash_at=<step> (the agent SIGKILLs itself at that
              step), an interface whose native XDP attach is refused (the apply raises after the
              pins' commit point), a veth deleted while the apply runs; afterwards the host serves
              its previous version (status version = pinned version, probe ok, hits go on)

Counted over every read: lost (no reply within 1 s; while memcached is down, requests the kernel
cannot answer are expected to be lost and are counted apart), wrong (a value no write wrote to
that key, or a malformed reply), stale (checker.check: a read that returns a value an
acknowledged write had replaced before the read was sent, or a miss after an acknowledged store;
a memcached restart counts as a delete of every key invoked at the kill and acknowledged when
the agent's flush is seen).

    python -m tests.correctness.faults --long --report out.json
    python -m tests.correctness.faults --only agent,applies      # CI sizes

Traffic stays in the lab's namespaces, on 198.19.120.0/24.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import json
import random
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

from tests.agentproc import AgentProc
from tests.correctness import checker as C
from tests.correctness import lab as L

now = time.monotonic_ns
NET = "198.19.120"
KEYS = C.TOKEN_KEYS
WEIGHTS = C.WRITE_WEIGHTS[: len(KEYS)]
_WIDS = itertools.count(1)
CRASH_STEPS = ["loaded", "config", "ingress", "switched", "committed"]

# CI runs three crash steps under load; the other two (and a refused attach) have focused
# tests of their own in test_faults.py.
CI = {"memcached": 2, "agent": 6, "applies": 20, "crash_steps": ["loaded", "switched", "committed"],
      "attach": 0, "veth": 1}
LONG = {"memcached": 10, "agent": 50, "applies": 100, "crash_steps": CRASH_STEPS * 2,
        "attach": 3, "veth": 3}


@contextlib.contextmanager
def lab_net(net: str = NET):
    """Point the lab and checker helpers at `net` (their addresses are module constants)."""
    names = ("NET", "SADDR", "CADDR", "OUTSIDER", "ALLOWED")
    old = {n: getattr(L, n) for n in names}
    L.NET, L.SADDR, L.CADDR = net, f"{net}.1", f"{net}.2"
    L.OUTSIDER, L.ALLOWED = f"{net}.200", f"{net}.0/25"
    try:
        yield
    finally:
        for n, v in old.items():
            setattr(L, n, v)


# ---------------------------------------------------------------- load

class AckWriter(threading.Thread):
    """set (mostly), append, delete; acknowledged. A write is recorded before it is sent (ack
    unknown, success unknown) so that a write cut by a fault still explains its value."""

    def __init__(self, wid: int, h: C.History, stop: threading.Event, ns: str, seed: int,
                 pace: float):
        super().__init__(daemon=True, name=f"fw{wid}")
        self.wid, self.h, self.stop, self.ns, self.pace = wid, h, stop, ns, pace
        self.rng = random.Random(seed)
        self.seq = 0
        self.errors = 0
        self.acked = 0

    def run(self) -> None:
        from pymemcache.client.base import Client

        L.enter_ns(self.ns)
        while not self.stop.is_set():
            try:
                c = Client((L.SADDR, L.PORT), timeout=2, connect_timeout=1)
                try:
                    while not self.stop.is_set():
                        self.one(c)
                        time.sleep(self.rng.uniform(0, 2 * self.pace))
                finally:
                    c.close()
            except Exception:  # memcached killed: reconnect
                self.errors += 1
                time.sleep(0.05)

    def one(self, c) -> None:
        key = self.rng.choices(KEYS, WEIGHTS)[0]
        kind = self.rng.choices(["set", "append", "delete"], [8, 1, 1])[0]
        self.seq += 1
        tok = b"w%d.%d" % (self.wid, self.seq)
        w = C.Write(self.wid, key, kind, now(), token=tok if kind != "delete" else b"")
        with self.h.lock:
            self.h.writes.append(w)
        if kind == "delete":
            r = c.delete(key, noreply=False)
        elif kind == "append":
            r = c.append(key, b"+" + tok, noreply=False)
        else:
            r = c.set(key, tok, noreply=False)
        w.ack, w.ok = now(), bool(r)
        self.acked += 1


class AsciiReader(C.Reader):
    def request(self):
        if self.rng.random() < 0.75:
            k = self.rng.choice(self.keys)
            return "ascii", [k], b"get " + k + b"\r\n"
        ks = self.rng.sample(self.keys, self.rng.randint(2, 4))
        return "multi", ks, b"get " + b" ".join(ks) + b"\r\n"


@dataclass
class Run:
    """What a fault function tells the analysis."""
    faults: int = 0
    down: list[tuple[int, int]] = field(default_factory=list)   # memcached down windows
    restarts: list[tuple[int, int, int]] = field(default_factory=list)  # kill, up, flush seen
    notes: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    events: list[tuple[int, str]] = field(default_factory=list)

    def event(self, what: str) -> None:
        self.events.append((now(), what))


class Rig:
    """A lab (no in-process data plane: the agent owns it) plus the real agent."""

    def __init__(self, tag: str = "f", hold_ms: int = 50) -> None:
        from mcache_agent.dataplane import Dataplane

        self.lab = L.Lab(tag, hold_ms=hold_ms, dataplane=False)
        self.lab.up()
        self.lab.dp = Dataplane(self.lab.pin)  # read-only use: counters, generation, meta
        self.version = 1
        self.agent = AgentProc(self.lab)
        self.agent.start(self.text(self.version))
        self.agent.wait_serving()

    def text(self, version: int, **kw) -> str:
        kw.setdefault("hold_ms", self.lab.hold_ms)
        return L.config_text(version, self.lab.sif, allowed=L.ALLOWED, **kw)

    def hits(self) -> int:
        return self.lab.dp.counters().get("hit", 0)

    def pinned_version(self) -> int | None:
        rec = self.lab.dp.record()
        return rec.version if rec else None

    def down(self) -> None:
        with contextlib.suppress(Exception):
            self.agent.stop()
        self.lab.down()

    def clear(self) -> None:
        """Delete the test keys (acknowledged: the cache invalidates them too)."""
        from pymemcache.client.base import Client

        with L.in_ns(self.lab.c):
            c = Client((L.SADDR, L.PORT), timeout=2, connect_timeout=2)
            for k in KEYS:
                c.delete(k, noreply=False)
            c.close()

    # -------------------------------------------------------------- a loaded run
    def loaded(self, fault, *, writers: int = 2, readers: int = 2, warm: float = 1.5,
               tail: float = 1.5, seed: int = 0) -> dict:
        h = C.History()
        stop = threading.Event()
        self.clear()
        # writer ids are unique across runs: a token names one write for good
        base = next(_WIDS) * 10
        ws = [AckWriter(base + i + 1, h, stop, self.lab.c, seed * 100 + i, pace=0.004)
              for i in range(writers)]
        rs = [AsciiReader(i + 1, h, stop, self.lab.c, seed * 100 + 50 + i, burst=4,
                          src=L.CADDR, keys=KEYS, pace=0.002) for i in range(readers)]
        c0 = self.lab.dp.counters()
        t0 = time.monotonic()
        for t in ws + rs:
            t.start()
        run = Run()
        try:
            time.sleep(warm)
            try:
                fault(self, h, run)
            except Exception as exc:
                run.failures.append(f"fault injection broke: {exc!r}")
                print(traceback.format_exc(), file=sys.stderr)
            time.sleep(tail)
        finally:
            stop.set()
            for t in ws + rs:
                t.join(10)
        rep = analyse(h, run)
        rep["seconds"] = round(time.monotonic() - t0, 1)
        rep["counters"] = L.delta(c0, self.lab.dp.counters())
        rep["writer_reconnects"] = sum(w.errors for w in ws)
        return rep


def analyse(h: C.History, run: Run) -> dict:
    # a memcached restart deletes every key: invoked at the kill, "acknowledged" when the
    # agent's flush was seen (from then on no older value may be served)
    for kill, _up, flush in run.restarts:
        for k in KEYS:
            h.writes.append(C.Write(0, k, "delete", kill, ack=flush, ok=True))
    rep = C.check(h)
    grace = 300_000_000  # a request sent just before the kill may be lost with it

    def in_down(t: int) -> bool:
        return any(a - grace <= t <= b + grace for a, b in run.down)

    lost_down = sum(1 for t in h.lost_at if in_down(t))
    tokens = {w.token: w for w in h.writes if w.token}
    old_before_flush = served_while_down = 0
    for kill, up, flush in run.restarts:
        for r in h.reads:
            if r.value is None or not (kill <= r.send <= flush):
                continue
            prod = [tokens.get(t) for t in C.TOKEN.findall(r.value)]
            if prod and all(p is not None and p.ack < kill for p in prod):
                if r.send < up:
                    served_while_down += 1
                else:
                    old_before_flush += 1
    def label(t: int) -> str:
        before = [e for e in run.events if e[0] <= t]
        return f"{before[-1][1]} (+{(t - before[-1][0]) / 1e6:.0f} ms)" if before else "-"

    for ex in rep["stale_examples"]:
        ex["after_event"] = label(ex["send"])
    stale_by_event = _stale_by_event(h, run, label) if rep["stale"] else {}
    return {
        "operations": rep["ops"], "writes": rep["writes"], "reads": rep["reads"],
        "values_read": rep["values_read"], "unjudged": rep["unjudged"],
        "lost": rep["lost"] - lost_down, "lost_while_memcached_down": lost_down,
        "wrong": rep["bogus"] + rep["malformed"], "stale": rep["stale"],
        "faults": run.faults, "failures": run.failures, **run.notes,
        **({"old_values_served_while_memcached_down": served_while_down,
            "old_values_served_after_restart_before_flush": old_before_flush}
           if run.restarts else {}),
        **({"stale_by_event": stale_by_event} if stale_by_event else {}),
        "examples": {k: rep[k] for k in ("stale_examples", "bogus_examples",
                                         "malformed_examples") if rep[k]},
    }


def _stale_by_event(h: C.History, run: Run, label) -> dict[str, int]:
    """check() keeps only examples: count stale reads per interval between fault events."""
    cuts = [t for t, _ in run.events]
    buckets: dict[int, list] = {}
    for r in h.reads:
        buckets.setdefault(bisect.bisect_right(cuts, r.send), []).append(r)
    out: dict[str, int] = {}
    for i, reads in buckets.items():
        n = C.check(C.History(writes=h.writes, reads=reads))["stale"]
        if n:
            name = run.events[i - 1][1] if i else "-"
            out[name] = out.get(name, 0) + n
    return out


def ok_report(rep: dict) -> bool:
    return not (rep["lost"] or rep["wrong"] or rep["stale"] or rep["failures"])


# ---------------------------------------------------------------- the faults

def _wait(pred, timeout: float, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return False


def memcached_restarts(rounds: int, down_s: float = 0.5):
    def fault(rig: Rig, h: C.History, run: Run) -> None:
        lab = rig.lab
        flush_ms = []
        for _ in range(rounds):
            gen0 = lab.dp.generation()
            kill = now()
            run.event("memcached killed")
            lab.kill_memcached()
            time.sleep(down_s)
            lab.start_memcached()
            up = now()
            run.event("memcached up")
            if not _wait(lambda g=gen0: lab.dp.generation() > g, 10):
                run.failures.append("no flush within 10 s of the memcached restart")
            flush = now()
            run.event("flush seen")
            run.faults += 1
            run.down.append((kill, up))
            run.restarts.append((kill, up, flush))
            flush_ms.append(round((flush - up) / 1e6))
            time.sleep(1.5)
        run.notes["flush_after_restart_ms"] = flush_ms
    return fault


def agent_kills(rounds: int, down_s: float = 0.5, seed: int = 1):
    def fault(rig: Rig, h: C.History, run: Run) -> None:
        rng = random.Random(seed)
        rises, restart_ms = [], []
        v0 = rig.agent.status().get("version")
        for i in range(rounds):
            time.sleep(rng.uniform(0.05, 0.4))
            rig.agent.kill9()
            run.event("agent killed")
            run.faults += 1
            h0 = rig.hits()
            time.sleep(down_s)
            rises.append(rig.hits() - h0)
            t = time.monotonic()
            rig.agent.start()
            rig.agent.wait_serving()
            restart_ms.append(round((time.monotonic() - t) * 1000))
            st = rig.agent.status()
            if st.get("version") != v0 or rig.pinned_version() != v0:
                run.failures.append(f"kill {i}: version {st.get('version')} pinned "
                                    f"{rig.pinned_version()}, expected {v0}")
        run.notes["hits_while_agent_down"] = rises
        run.notes["kills_with_hits_while_down"] = sum(1 for r in rises if r > 0)
        run.notes["agent_restart_ms_max"] = max(restart_ms)
        if sum(1 for r in rises if r > 0) < 0.8 * rounds:
            run.failures.append(f"kernel did not answer while the agent was down: {rises}")
    return fault


def random_config(rig: Rig, version: int, rng: random.Random) -> tuple[str, dict]:
    kw = {
        "ttl_ms": rng.choice([500, 2000, 10000, 60000, 300000]),
        "enabled": rng.random() < 0.85,
        "protocols": rng.choice([("ascii", "binary"), ("ascii", "binary"), ("ascii",),
                                 ("binary",)]),
        "prefix": rng.choice(["", "", "ck:", "ck:t", "zz:"]),
        "hold_ms": rng.choice([10, 50, 50, 100, 250]),
        "entries": rng.choice([4096, 4096, 4096, 8192]),
    }
    return rig.text(version, **kw), kw


def random_applies(n: int, seed: int = 7):
    def fault(rig: Rig, h: C.History, run: Run) -> None:
        rng = random.Random(seed)
        strategies: dict[str, int] = {}
        ms = []
        for _ in range(n):
            rig.version += 1
            text, kw = random_config(rig, rig.version, rng)
            t = time.monotonic()
            run.event(f"apply v{rig.version} {kw}")
            r = rig.agent.apply(text)
            ms.append((time.monotonic() - t) * 1000)
            run.faults += 1
            res = r.get("result") or {}
            if not r.get("ok"):
                run.failures.append(f"apply v{rig.version} {kw}: {r.get('error')}")
                continue
            strategies[res.get("strategy")] = strategies.get(res.get("strategy"), 0) + 1
            if rig.pinned_version() != rig.version:
                run.failures.append(f"v{rig.version} applied, pins say {rig.pinned_version()}")
            time.sleep(rng.uniform(0.05, 0.3))
        # back to a serving config for whatever comes next
        rig.version += 1
        if not rig.agent.apply(rig.text(rig.version)).get("ok"):
            run.failures.append("could not apply the base config back")
        run.notes["strategies"] = strategies
        run.notes["apply_ms_max"] = round(max(ms))
    return fault


def _serving_previous(rig: Rig, v_prev: int, what: str, run: Run) -> None:
    """The host serves v_prev: status, pins, probe, and the kernel still answers."""
    st = rig.agent.status()
    pinned = rig.pinned_version()
    if st.get("version") != v_prev or pinned != v_prev:
        run.failures.append(f"{what}: status version {st.get('version')}, pinned {pinned}, "
                            f"expected {v_prev}")
    pr = rig.agent.ctl("probe", "--json", check=False)
    res = (json.loads(pr.stdout or "{}").get("result") or {})
    run.notes.setdefault("probes", {"ok": 0, "not_ok_under_load": 0})
    if pr.returncode == 0:
        run.notes["probes"]["ok"] += 1
    elif res.get("value_ok") and (res.get("hits_after") or 0) > (res.get("hits_before") or 0):
        # the probe compares memcached's global cmd_get: other clients' GETs fail it
        run.notes["probes"]["not_ok_under_load"] += 1
    else:
        run.failures.append(f"{what}: probe failed: {res.get('detail')}")
    h0 = rig.hits()
    time.sleep(0.6)
    if rig.hits() <= h0:
        run.failures.append(f"{what}: the kernel stopped answering hits")


def failing_applies(steps: list[str], attach: int, veth: int):
    """Each failing config also moves key_prefix to 'zz:' (no test key cached): a kernel that
    wrongly ran it would stop answering hits."""
    def fault(rig: Rig, h: C.History, run: Run) -> None:
        lab = rig.lab
        outcomes: dict[str, list] = {}
        # 1. the agent SIGKILLs itself at a step of the apply
        for step in steps:
            v_prev = rig.version
            v_run = rig.agent.status().get("version")
            rig.agent.kill9()
            rig.agent.start(crash_at=step)
            rig.agent.wait_serving()
            cur = rig.lab.dp.record().shape[0]
            # steps before `switched` exist only in a program swap: change the shape there
            entries = (8192 if cur == 4096 else 4096) if step in CRASH_STEPS[:3] else cur
            text = rig.text(v_prev + 1, entries=entries, ttl_ms=30000 + v_prev)
            run.event(f"crash at {step}: apply v{v_prev + 1}")
            resp = rig.agent.apply(text)
            try:
                rc = rig.agent.wait_dead(10)
            except subprocess.TimeoutExpired:
                run.failures.append(f"crash at {step}: the agent did not die: {resp}")
                rig.agent.kill9()
                rc = None
            run.faults += 1
            h0 = rig.hits()
            time.sleep(0.5)
            alive = rig.hits() - h0
            rig.agent.start()
            rig.agent.wait_serving()
            run.event(f"crash at {step}: agent restarted")
            committed = step == "committed"
            want = v_prev + 1 if committed else v_run
            rig.version = v_prev + 1  # used by the attempt either way: never reused
            st = rig.agent.status()
            outcomes.setdefault("crash", []).append(
                {"step": step, "rc": rc, "hits_while_dead": alive, "version": st.get("version"),
                 "expected": want})
            if rc != -9:
                run.failures.append(f"crash at {step}: agent exit {rc}, not SIGKILL")
            if alive <= 0 and step != "ingress":
                # killed after the ingress switch of a shape change: the new XDP reads a cache
                # that the old TC never fills: misses (memcached answers) until reconcile
                run.failures.append(f"crash at {step}: no hits while the agent was dead")
            _serving_previous(rig, want, f"crash at {step}", run)
        # 2. an apply that raises after the commit point: native XDP refused on an ifb
        for i in range(attach):
            dummy = f"{lab.tag}ifb{i}"  # ifb: no native XDP (dummy may be missing)
            L.sh(f"ip -n {lab.s} link add {dummy} type ifb && ip -n {lab.s} link set {dummy} up")
            v_prev = rig.version
            text = rig.text(v_prev + 1, prefix="zz:").replace(
                "xdp_mode: auto}]", f"xdp_mode: auto}}, {{name: {dummy}, xdp_mode: native}}]")
            run.event("attach refused: apply")
            r = rig.agent.apply(text)
            run.faults += 1
            outcomes.setdefault("attach_refused", []).append(
                {"ok": r.get("ok"), "error": (r.get("error") or {}).get("message", "")[:200],
                 "status_version": rig.agent.status().get("version"),
                 "pinned_version": rig.pinned_version()})
            if r.get("ok"):
                run.failures.append("native XDP on a dummy: the apply succeeded")
            _serving_previous(rig, v_prev, "attach refused", run)
            rig.version = max(v_prev, rig.pinned_version() or 0) + 1
            L.sh(f"ip -n {lab.s} link del {dummy}", check=False)
            # put the host back on a known version whatever happened
            if rig.agent.apply(rig.text(rig.version)).get("ok") is not True:
                run.failures.append("could not re-apply the base config")
        # 3. a veth named by the config deleted while the apply runs (program swap: the
        #    compile leaves time to delete it after validation)
        for i in range(veth):
            va, vb = f"{lab.tag}vx{i}", f"{lab.tag}vy{i}"
            L.sh(f"ip -n {lab.s} link add {va} type veth peer name {vb} && "
                 f"ip -n {lab.s} link set {va} up && ip -n {lab.s} link set {vb} up")
            v_prev = rig.version
            cur = rig.lab.dp.record().shape[0]
            text = rig.text(v_prev + 1, prefix="zz:", entries=8192 if cur == 4096 else 4096,
                            extra_ifaces=(va,))
            killer = threading.Timer(0.25 + 0.2 * i, L.sh,
                                     args=(f"ip -n {lab.s} link del {va}",),
                                     kwargs={"check": False})
            run.event("veth deleted: apply")
            killer.start()
            r = rig.agent.apply(text)
            killer.join()
            run.faults += 1
            err = r.get("error") or {}
            outcomes.setdefault("veth_deleted", []).append(
                {"ok": r.get("ok"), "kind": err.get("kind"), "error": err.get("message", "")[:200],
                 "status_version": rig.agent.status().get("version"),
                 "pinned_version": rig.pinned_version()})
            if r.get("ok"):
                run.notes.setdefault("veth_deleted_too_late", 0)
                run.notes["veth_deleted_too_late"] += 1
                rig.version = v_prev + 1
            else:
                _serving_previous(rig, v_prev, "veth deleted", run)
                rig.version = max(v_prev, rig.pinned_version() or 0) + 1
            if rig.agent.apply(rig.text(rig.version)).get("ok") is not True:
                run.failures.append("could not re-apply the base config")
        run.notes["outcomes"] = outcomes
    return fault


# ---------------------------------------------------------------- main

SCENARIOS = ("memcached", "agent", "applies", "failing")


def scenario(rig: Rig, name: str, sizes: dict, seed: int = 0) -> dict:
    if name == "memcached":
        f = memcached_restarts(sizes["memcached"])
    elif name == "agent":
        f = agent_kills(sizes["agent"], seed=seed + 1)
    elif name == "applies":
        f = random_applies(sizes["applies"], seed=seed + 7)
    else:
        f = failing_applies(sizes["crash_steps"], sizes["attach"], sizes["veth"])
    return rig.loaded(f, seed=seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.correctness.faults")
    ap.add_argument("--long", action="store_true", help="long sizes (50 agent kills, 100 applies)")
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--report", default="")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    sizes = LONG if a.long else CI
    out: dict = {"sizes": sizes, "scenarios": {}}
    t0 = time.monotonic()
    with lab_net():
        rig = Rig("f")
        try:
            for name in a.only.split(","):
                t = time.monotonic()
                rep = scenario(rig, name, sizes, a.seed)
                rep["wall_seconds"] = round(time.monotonic() - t, 1)
                out["scenarios"][name] = rep
                print(f"{name}: ops {rep['operations']} lost {rep['lost']} wrong {rep['wrong']} "
                      f"stale {rep['stale']} faults {rep['faults']} failures "
                      f"{len(rep['failures'])}", file=sys.stderr)
        finally:
            rig.down()
    out["seconds"] = round(time.monotonic() - t0, 1)
    tot = {k: sum(s[k] for s in out["scenarios"].values())
           for k in ("operations", "lost", "wrong", "stale", "faults")}
    out["total"] = tot
    text = json.dumps(out, indent=2, default=str)
    if a.report:
        with open(a.report, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0 if all(ok_report(s) for s in out["scenarios"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

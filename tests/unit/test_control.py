"""The control socket and the daemon's request handling, over a real Unix socket.

The kernel side is a FakeDataplane here; the lead's real-kernel tests cover dataplane.py.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import select
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mcache_agent import control
from mcache_agent.config import Config, Fault, load_config
from mcache_agent.daemon import Agent
from mcache_agent.dataplane import ApplyResult, CacheUsage, Memory, Plan
from mcache_agent.dataplane.pins import Attachment, Record, cache_pin
from mcache_agent.dataplane.plan import plan
from mcache_agent.dataplane.stats import Counts, Stats
from mcache_agent.versions import VersionStore


def cfg_text(version: int, ttl: int = 60000, entries: int = 1024) -> str:
    return (
        f"apiVersion: mcache/v1\nversion: {version}\n"
        "memcached: {address: 127.0.0.1, port: 11211}\n"
        "interfaces: [{name: lo, xdp_mode: generic}]\n"
        f"cache: {{entries: {entries}, ttl_ms: {ttl}, allowed_clients: [127.0.0.0/8]}}\n"
    )


class FakeDataplaneError(Exception):
    pass


class FakeDataplane:
    """Records calls; `fail_next` makes the next apply raise like a verifier refusal, `gate`
    holds an apply until it is set. Plans with the real planner, over a record it keeps."""

    def __init__(self, pinned: int | None = None) -> None:
        self.pinned = pinned
        self.shape = (1024, 250, 1024)
        self.applied: list[int] = []
        self.flushes = 0
        self.torn_down = False
        self.fail_next: str | None = None
        self.reconciled: list[int] = []
        self.gate: threading.Event | None = None

    def record(self) -> Record | None:
        if self.pinned is None:
            return None
        return Record(version=self.pinned, shape=self.shape, code="c", abi="", set="s",
                      interfaces=(Attachment("lo", "generic", "generic", "serve", False),),
                      maps=((cache_pin(self.shape), "1"),))

    def adopt(self) -> int | None:
        return self.pinned

    def reconcile(self, cfg: Config) -> None:
        self.reconciled.append(cfg.version)

    def plan(self, cfg: Config, previous: Config | None) -> Plan:
        return plan(cfg, previous, self.record(), "c", {cache_pin(cfg.shape()): "1"})

    def apply(self, cfg: Config, previous: Config | None) -> ApplyResult:
        p = self.plan(cfg, previous)
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail_next:
            msg, self.fail_next = self.fail_next, None
            raise FakeDataplaneError(msg)
        self.applied.append(cfg.version)
        self.pinned, self.shape = cfg.version, cfg.shape()
        return ApplyResult(p.strategy, 2.54321, 0.0512, p.cache_kept, p.reasons)

    def counters(self) -> dict[str, int]:
        return self.stats().total().by_verdict()

    def stats(self) -> Stats:
        """Two versions: 1 holds hits, a miss and its fill, 2 a pass."""
        v1, v2 = Counts.zero(), Counts.zero()
        v1.by_path["xdp_main"].update(hit=2, miss=1)
        v1.by_path["xdp_get_key"].update(hit=1)
        v1.by_path["tc_main"].update(fill=1, evict=1)
        v2.by_path["xdp_main"].update({"pass": 7})
        return Stats({1: v1, 2: v2}, {0: 1, 1: 2})

    def cache_usage(self) -> CacheUsage:
        return CacheUsage(1024, 4)

    def memory(self) -> Memory:
        return Memory(3_000_000, {"mc_cache": 2_000_000, "mc_pending": 1_000_000})

    def attached(self) -> list[dict[str, str]]:
        return [{"interface": "lo", "mode": "generic", "role": "serve"}]

    def local_bypass(self) -> dict[str, object]:
        return {"cgroup": "/sys/fs/cgroup", "sockets": 6}

    def flush(self) -> None:
        self.flushes += 1

    def teardown(self) -> None:
        self.torn_down = True


@dataclass
class Running:
    agent: Agent
    dp: FakeDataplane
    store: VersionStore
    server: control.ControlServer
    sock: Path
    thread: threading.Thread

    def call(self, req: Any) -> dict[str, Any]:
        return control.request(self.sock, req, timeout=10)

    def raw(self, data: bytes) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.sock))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            return json.loads(_recv_all(s))


def _recv_all(s: socket.socket) -> bytes:
    buf = b""
    while chunk := s.recv(65536):
        buf += chunk
    return buf


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Running]:
    dp = FakeDataplane()
    store = VersionStore(tmp_path / "state")
    a = Agent(dp, store, probe_fn=lambda cfg, dp: {"ok": True, "detail": f"fake {cfg.version}"})
    a.start(load_config(cfg_text(1)))
    # Not under pytest's tmp_path: that is 0700 root, and the tests that connect as nobody
    # must be stopped by the socket's own directory, not by an ancestor.
    base = Path(tempfile.mkdtemp(prefix="mcache-ctl-"))
    os.chmod(base, 0o755)
    sock = base / "run" / "agent.sock"
    server = control.ControlServer(sock, a.handle, read_timeout=1.0)
    server.bind()
    a.on_stop = server.stop
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    r = Running(a, dp, store, server, sock, t)
    yield r
    server.stop()
    t.join(5)
    shutil.rmtree(base, ignore_errors=True)


def snapshot(r: Running) -> tuple[Any, ...]:
    files = sorted(p.name for p in (r.store.dir).iterdir())
    return (r.store.current(), r.store.previous(), files, list(r.dp.applied),
            r.agent.running.version if r.agent.running else None, r.dp.torn_down)


# --------------------------------------------------------------------------- transport


def test_socket_and_dir_modes(agent: Running) -> None:
    assert stat.S_IMODE(agent.sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(agent.sock.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(agent.sock.stat().st_mode)


def test_second_server_on_a_live_socket_refuses(agent: Running) -> None:
    other = control.ControlServer(agent.sock, agent.agent.handle)
    with pytest.raises(RuntimeError, match="another agent"):
        other.bind()
    assert agent.call({"op": "status"})["ok"]


@pytest.mark.parametrize(
    "payload",
    [
        b"this is not json\n",
        b"\n",
        b"[1, 2, 3]\n",
        b'"apply"\n',
        b'{"op": "format_disk"}\n',
        b'{"no_op": 1}\n',
        b'{"op": 7}\n',
        b'{"op": "apply"}\n',
        b'{"op": "apply", "config": 12}\n',
        b'{"op": "apply", "config": "x", "check": "yes"}\n',
        b'{"op": "rollback", "to": "1"}\n',
        b'{"op": "rollback", "to": true}\n',
        b'{"op": "rollback", "to": 0}\n',
        b'{"op": "status", "verbose": true}\n',
        b"\xff\xfe\xfd\n",
        b'{"op": "stop"',  # no newline, then EOF
    ],
)
def test_garbage_is_invalid_and_changes_nothing(agent: Running, payload: bytes) -> None:
    before = snapshot(agent)
    resp = agent.raw(payload)
    assert resp["ok"] is False
    assert resp["error"]["kind"] == "invalid"
    assert snapshot(agent) == before
    assert agent.call({"op": "status"})["ok"]  # still serving


def test_huge_request_is_refused(agent: Running) -> None:
    before = snapshot(agent)
    big = b'{"op": "apply", "config": "' + b"a" * (3 << 20) + b'"}\n'
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(agent.sock))
        try:
            s.sendall(big)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading at the cap, as it should
        resp = json.loads(_recv_all(s))
    assert resp["ok"] is False and resp["error"]["kind"] == "invalid"
    assert "over" in resp["error"]["message"]
    assert snapshot(agent) == before


def test_slow_client_times_out_and_others_are_served(agent: Running) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.settimeout(10)
        slow.connect(str(agent.sock))
        slow.sendall(b'{"op": "sta')
        resp = json.loads(_recv_all(slow))
    assert resp["error"]["kind"] == "invalid" and "within" in resp["error"]["message"]
    assert agent.call({"op": "status"})["ok"]


def _as_nobody(sock: Path) -> tuple[str, dict[str, Any] | None]:
    """Connect from a forked child running as nobody; returns (outcome, response)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgid(65534)
            os.setgroups([])
            os.setuid(65534)
            try:
                resp = control.request(sock, {"op": "stop"}, timeout=5)
                out = json.dumps(["response", resp])
            except control.AgentUnreachable as e:
                out = json.dumps(["unreachable", str(e)])
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    kind, body = json.loads(data)
    return kind, body


def test_non_root_cannot_reach_the_socket(agent: Running) -> None:
    kind, _ = _as_nobody(agent.sock)
    assert kind == "unreachable"
    assert not agent.dp.torn_down


def test_non_root_is_refused_by_peercred_even_if_perms_are_loosened(agent: Running) -> None:
    # Someone chmods the directory open: SO_PEERCRED is the second line of defence.
    os.chmod(agent.sock.parent, 0o777)
    os.chmod(agent.sock, 0o777)
    kind, resp = _as_nobody(agent.sock)
    assert kind == "response" and resp is not None, (kind, resp)
    assert resp["ok"] is False and resp["error"]["kind"] == "denied"
    assert "65534" in resp["error"]["message"]
    assert not agent.dp.torn_down and not agent.agent.stop_event.is_set()
    assert agent.call({"op": "status"})["ok"]


def _connect_errno_as_nobody(sock: Path) -> int:
    """connect() from a forked child running as nobody: 0, or the errno it failed with."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = -1
        try:
            os.close(r)
            os.setgid(65534)
            os.setgroups([])
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(sock))
                code = 0
            except OSError as e:
                code = e.errno or -1
            os.write(w, str(code).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return int(data)


def test_non_root_connect_gets_eacces(agent: Running) -> None:
    assert _connect_errno_as_nobody(agent.sock) == errno.EACCES
    # An existing directory is used as it is (see the bind tests below): even in one anybody
    # may search, the socket itself (0600, root's) refuses the connect.
    os.chmod(agent.sock.parent, 0o755)
    assert _connect_errno_as_nobody(agent.sock) == errno.EACCES
    assert agent.call({"op": "status"})["ok"]


@pytest.mark.parametrize("payload", [
    b"[" * 100_000 + b"]" * 100_000 + b"\n",
    b'{"op": "status", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
    b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"\n",
    b"[" * 100_000 + b"\n",  # and never closed
], ids=["arrays", "in-a-request", "objects", "unclosed"])
def test_deeply_nested_json_gets_an_error_answer(agent: Running, payload: bytes) -> None:
    before = snapshot(agent)
    resp = agent.raw(payload)
    assert resp["ok"] is False and resp["error"]["kind"] == "invalid"
    assert "deeper than" in resp["error"]["message"]
    assert snapshot(agent) == before
    assert agent.call({"op": "status"})["ok"]


def test_depth_check_skips_strings_and_stays_linear() -> None:
    assert not control.too_deep('{"op": "apply", "config": "' + "[" * 1000 + '"}')
    assert not control.too_deep('["\\"' + "[" * 100 + '"]')  # an escaped quote inside
    assert control.too_deep("[" * 33 + "]" * 33) and not control.too_deep("[" * 32 + "]" * 32)
    t0 = time.monotonic()
    # unterminated strings full of escaped quotes: no quote is scanned twice
    assert control.too_deep("[" * 40 + '"' + '\\"' * 500_000) is True
    assert not control.too_deep('"' + '\\"' * 500_000 + "[" * 40 + "\\")
    assert time.monotonic() - t0 < 2


@contextlib.contextmanager
def serving(path: Path, **kw: Any) -> Iterator[control.ControlServer]:
    """A server with a trivial handler (the transport is what is under test)."""
    server = control.ControlServer(path, lambda req: control.ok({"op": req["op"]}), **kw)
    server.bind()
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.stop()
        t.join(10)


def _trickle(path: Path, out: list[Any], i: int) -> None:
    """One byte every 0.5 s of a request that never ends, until the server answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        t0 = time.monotonic()
        for b in itertools.chain(b'{"op": "status", "pad": "', itertools.repeat(ord("a"))):
            try:
                s.send(bytes([b]))
            except OSError:
                break
            if select.select([s], [], [], 0.5)[0] or time.monotonic() - t0 > 20:
                break
        s.settimeout(5)
        buf = b""
        try:
            while not buf.endswith(b"\n") and (chunk := s.recv(4096)):
                buf += chunk
        except ConnectionResetError:
            pass  # the server closed with our last byte unread: the answer came first
        out[i] = (time.monotonic() - t0, json.loads(buf) if buf else None)


def test_tricklers_are_cut_off_at_the_deadline_and_their_slots_freed(tmp_path: Path) -> None:
    """Every slot held by a client sending a byte per 0.5 s (each recv well within the read
    timeout): each is answered and dropped REQUEST_DEADLINE_S after it connected, and then as
    many clients as there are slots are served at once."""
    n = control.MAX_CLIENTS
    with serving(tmp_path / "run" / "s.sock") as server:
        results: list[Any] = [None] * n
        threads = [threading.Thread(target=_trickle, args=(server.path, results, i))
                   for i in range(n)]
        for t in threads:
            t.start()
        time.sleep(1.5)  # all of them connected and trickling
        busy = control.request(server.path, {"op": "status"}, timeout=5)
        assert busy["ok"] is False and busy["error"]["kind"] == "busy", busy
        for t in threads:
            t.join(30)
        for took, resp in results:
            assert resp is not None and resp["error"]["kind"] == "invalid", resp
            assert "no complete request within 5 s" in resp["error"]["message"]
            assert control.REQUEST_DEADLINE_S - 0.5 < took < control.REQUEST_DEADLINE_S + 4
        deadline = time.monotonic() + 5
        while server._threads and time.monotonic() < deadline:  # the slots come back
            time.sleep(0.02)
        answers: list[Any] = [None] * n
        barrier = threading.Barrier(n)

        def call(i: int) -> None:
            barrier.wait()
            answers[i] = control.request(server.path, {"op": "status"}, timeout=10)

        callers = [threading.Thread(target=call, args=(i,)) for i in range(n)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(20)
        assert answers == [{"ok": True, "result": {"op": "status"}}] * n


def test_bind_creates_a_missing_directory_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "s.sock"
    with serving(path):
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o711, 0o700], ids=oct)
def test_bind_leaves_an_existing_directory_as_it_is(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "run"
    d.mkdir()
    os.chmod(d, mode)
    with serving(d / "s.sock") as server:
        assert stat.S_IMODE(d.stat().st_mode) == mode
        assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
        assert control.request(server.path, {"op": "status"}, timeout=5)["ok"]
    assert stat.S_IMODE(d.stat().st_mode) == mode


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o722], ids=oct)
def test_bind_refuses_a_directory_others_can_write(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "run"
    d.mkdir()
    os.chmod(d, mode)
    server = control.ControlServer(d / "s.sock", lambda req: control.ok(None))
    with pytest.raises(RuntimeError, match="writable by group or others"):
        server.bind()
    assert stat.S_IMODE(d.stat().st_mode) == mode and not (d / "s.sock").exists()


def test_bind_refuses_a_directory_someone_else_owns(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    server = control.ControlServer(d / "s.sock", lambda req: control.ok(None))
    with pytest.raises(RuntimeError, match="owned by uid 65534"):
        server.bind()
    assert not (d / "s.sock").exists()


# --------------------------------------------------------------------------- ops


def test_start_applied_the_file_and_stored_it(agent: Running) -> None:
    assert agent.dp.applied == [1]
    assert agent.store.current() == 1
    assert agent.store.get(1) == cfg_text(1)


def test_status_built_while_the_start_finishes_is_one_moment(tmp_path: Path) -> None:
    """A status asked for right after the start's apply commits, and built while the start
    finishes, says "starting" or has the config file's fate: never the new version, not
    starting, and no config file (what a fleet test saw after a reboot)."""
    dp = FakeDataplane()
    a = Agent(dp, VersionStore(tmp_path / "state"))
    in_stats, release = threading.Event(), threading.Event()
    docs: list[dict[str, Any]] = []
    slow_stats = dp.stats

    def stats_after_the_start() -> Stats:
        in_stats.set()
        assert release.wait(10)
        return slow_stats()

    def status_now(_new: Config, _previous: Config | None) -> None:
        dp.stats = stats_after_the_start  # type: ignore[method-assign]
        t = threading.Thread(target=lambda: docs.append(a.status()))
        t.start()
        assert in_stats.wait(10)  # the status has begun, mid-start
        threads.append(t)

    threads: list[threading.Thread] = []
    a.on_config = status_now
    a.start(load_config(cfg_text(1)), path="/etc/mcache/mcache.yml")
    assert not a.starting and a.config_file is not None
    release.set()
    threads[0].join(10)
    (doc,) = docs
    assert doc["version"] == 1
    assert doc["starting"] or doc["config_file"] is not None, doc


def test_status_shape(agent: Running) -> None:
    resp = agent.call({"op": "status"})
    assert resp["ok"] is True
    st = resp["result"]
    for key in ("version", "running", "last_apply", "attached", "counters", "hit_ratio",
                "cache", "probe"):
        assert key in st
    assert st["version"] == 1 and st["running"] is True
    assert st["hit_ratio"] == 0.75
    assert st["cache"]["entries"] == 1024 and st["cache"]["used"] == 4
    assert st["cache"]["memory_bytes"] == 3_000_000  # the kernel's account, not an estimate
    assert st["cache"]["memory_by_map"]["mc_cache"] == 2_000_000
    assert st["cache"]["memory_estimate_bytes"] > 1024 * 88
    assert st["last_apply"]["version"] == 1 and st["last_apply"]["result"] == "ok"
    assert st["attached"] == [{"interface": "lo", "mode": "generic", "role": "serve"}]
    assert st["counters"]["hit"] == 3 and st["counters"]["pass"] == 7
    assert st["counters_by_version"] == {"1": {"hit": 3, "miss": 1, "fill": 1, "evict": 1},
                                         "2": {"pass": 7}}
    assert st["counters_by_path"] == {"xdp_main": {"hit": 2, "miss": 1, "pass": 7},
                                      "xdp_get_key": {"hit": 1},
                                      "tc_main": {"fill": 1, "evict": 1}}
    assert st["cache"]["fill_ratio"] == round(4 / 1024, 4)
    assert (st["cache"]["inserts"], st["cache"]["inserts_per_hit"]) == (1, round(1 / 3, 4))
    assert (st["cache"]["evictions"], st["cache"]["expired"]) == (1, 0)


def test_signals_are_counters_with_their_time(agent: Running) -> None:
    # the canary's bake reads these twice and compares the window (issue 24)
    first = agent.call({"op": "signals"})["result"]
    assert first["version"] == 1 and first["counters"]["hit"] == 3
    assert first["counters"]["miss"] == 1 and first["counters"]["pass"] == 7
    assert first["probes"] == {"runs": 0, "failures": 0}
    assert first["memcached"]["errors"] == 0
    assert first["release"] and isinstance(first["at_unix"], float)
    assert agent.call({"op": "probe"})["ok"]
    second = agent.call({"op": "signals"})["result"]
    assert second["at_monotonic"] > first["at_monotonic"]
    assert second["probes"] == {"runs": 1, "failures": 0}
    assert second["boot_id"] == first["boot_id"]
    refused = agent.call({"op": "signals", "window": 3})
    assert refused["ok"] is False and "takes no field" in refused["error"]["message"]


def test_apply_new_version_round_trip(agent: Running) -> None:
    resp = agent.call({"op": "apply", "config": cfg_text(2, ttl=5000)})
    assert resp["ok"] is True, resp
    res = resp["result"]
    assert res["version"] == 2 and res["strategy"] == "map_swap" and res["cache_kept"] is True
    assert (agent.store.current(), agent.store.previous()) == (2, 1)
    assert agent.dp.applied == [1, 2]
    st = agent.call({"op": "status"})["result"]
    assert st["version"] == 2 and st["last_apply"]["strategy"] == "map_swap"


def test_apply_is_idempotent(agent: Running) -> None:
    resp = agent.call({"op": "apply", "config": "# same, with a comment\n" + cfg_text(1)})
    assert resp["ok"] and resp["result"]["strategy"] == "none"
    assert resp["result"]["changed"] is False
    assert agent.dp.applied == [1]


def test_apply_check_changes_nothing(agent: Running) -> None:
    before = snapshot(agent)
    resp = agent.call({"op": "apply", "config": cfg_text(2, entries=2048), "check": True})
    assert resp["ok"], resp
    res = resp["result"]
    assert res["check"] is True and res["strategy"] == "program_swap"
    assert "-cache: {entries: 1024" in res["diff"] and "+cache: {entries: 2048" in res["diff"]
    assert res["diff"].startswith("--- version 1\n+++ version 2\n")
    assert snapshot(agent) == before


def test_invalid_config_gives_faults_and_changes_nothing(agent: Running) -> None:
    before = snapshot(agent)
    bad = cfg_text(2).replace("entries: 1024", "entries: 1000").replace("port: 11211", "port: 0")
    resp = agent.call({"op": "apply", "config": bad})
    assert resp["ok"] is False and resp["error"]["kind"] == "invalid"
    assert [f["path"] for f in resp["error"]["faults"]] == ["$.cache.entries", "$.memcached.port"]
    assert snapshot(agent) == before


def test_version_rules_over_the_socket(agent: Running) -> None:
    agent.call({"op": "apply", "config": cfg_text(2)})
    back = agent.call({"op": "apply", "config": cfg_text(1)})
    same = agent.call({"op": "apply", "config": cfg_text(2, ttl=1)})
    for resp in (back, same):
        assert resp["error"]["kind"] == "invalid"
        assert resp["error"]["faults"][0]["path"] == "$.version"


def test_dataplane_failure_keeps_current_and_reports_in_full(agent: Running) -> None:
    agent.dp.fail_next = "verifier: R2 invalid mem access 'scalar' at insn 1234"
    resp = agent.call({"op": "apply", "config": cfg_text(2)})
    assert resp["ok"] is False and resp["error"]["kind"] == "runtime"
    assert "R2 invalid mem access 'scalar' at insn 1234" in resp["error"]["message"]
    assert agent.store.current() == 1 and agent.agent.running.version == 1
    assert agent.store.outcome(2)["result"] == "failed"
    st = agent.call({"op": "status"})["result"]
    assert st["version"] == 1 and st["last_apply"]["result"] == "failed"
    # The same version can be fixed up and applied once the cause is gone.
    assert agent.call({"op": "apply", "config": cfg_text(2)})["ok"]
    assert agent.store.current() == 2


def test_versions_and_rollback_round_trip(agent: Running) -> None:
    agent.call({"op": "apply", "config": cfg_text(2)})
    agent.call({"op": "apply", "config": cfg_text(3)})
    v = agent.call({"op": "versions"})["result"]
    assert (v["current"], v["previous"]) == (3, 2)
    assert [x["version"] for x in v["versions"]] == [1, 2, 3]

    rb = agent.call({"op": "rollback"})
    assert rb["ok"], rb
    assert rb["result"]["rolled_back_to"] == 2 and rb["result"]["version"] == 2
    assert (agent.store.current(), agent.store.previous()) == (2, 3)
    assert agent.agent.running.version == 2

    rb = agent.call({"op": "rollback", "to": 1})
    assert rb["ok"] and agent.store.current() == 1 and agent.dp.applied[-1] == 1

    missing = agent.call({"op": "rollback", "to": 42})
    assert missing["ok"] is False and missing["error"]["kind"] == "invalid"
    assert "not stored" in missing["error"]["message"]

    # Version 3 served once: its number cannot be reused for other content.
    reuse = agent.call({"op": "apply", "config": cfg_text(3, ttl=7)})
    assert reuse["error"]["faults"][0]["path"] == "$.version"


def test_rollback_with_nothing_to_roll_back_to(agent: Running) -> None:
    before = snapshot(agent)
    resp = agent.call({"op": "rollback"})
    assert resp["ok"] is False and "nothing to roll back to" in resp["error"]["message"]
    assert snapshot(agent) == before


def test_probe_is_recorded_in_status(agent: Running) -> None:
    resp = agent.call({"op": "probe"})
    assert resp["ok"] and resp["result"]["detail"] == "fake 1"
    probe = agent.call({"op": "status"})["result"]["probe"]
    assert probe["ok"] is True and probe["at"].endswith("Z")


def test_stop_tears_down_and_ends_the_server(agent: Running) -> None:
    resp = agent.call({"op": "stop"})
    assert resp["ok"] and resp["result"]["teardown"] is True
    assert agent.dp.torn_down
    agent.thread.join(5)
    assert not agent.thread.is_alive()
    assert not agent.sock.exists()
    with pytest.raises(control.AgentUnreachable):
        agent.call({"op": "status"})


# --------------------------------------------------------------------------- start-up


def test_start_adopts_the_pinned_current_version_without_reload(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    first = Agent(FakeDataplane(), store)
    first.start(load_config(cfg_text(4)))
    dp = FakeDataplane(pinned=4)
    again = Agent(dp, store)
    again.start(load_config(cfg_text(4)))
    assert dp.applied == [] and again.running is not None and again.running.version == 4
    assert again.config_file["result"] == "running"
    # A newer file is news: applied on top of what was adopted.
    dp2 = FakeDataplane(pinned=4)
    third = Agent(dp2, store)
    third.start(load_config(cfg_text(5)))
    assert dp2.applied == [5] and store.current() == 5
    assert third.config_file["result"] == "applied"


def test_start_keeps_a_rollback(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    a = Agent(FakeDataplane(), store)
    a.start(load_config(cfg_text(1)))
    a.apply_text(cfg_text(2))
    assert a.rollback(None)["ok"]
    dp = FakeDataplane(pinned=1)
    b = Agent(dp, store)
    # The file still says 2, which was rolled back from (rejected): do not undo the rollback.
    b.start(load_config(cfg_text(2)))
    assert dp.applied == [] and b.running.version == 1
    assert b.config_file["result"] == "refused"
    assert b.config_file["faults"][0]["path"] == "$.version"
    assert "version 2 was rejected" in b.config_file["faults"][0]["message"]


def test_start_reapplies_when_pins_disagree(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    dp = FakeDataplane(pinned=9)
    a = Agent(dp, store)
    a.start(load_config(cfg_text(1)))
    assert dp.applied == [1]


def test_start_failure_with_nothing_running_keeps_the_agent_up(tmp_path: Path) -> None:
    dp = FakeDataplane()
    dp.fail_next = "no XDP for you"
    a = Agent(dp, VersionStore(tmp_path))
    a.start(load_config(cfg_text(1)), path="/etc/mcache/mcache.yml")
    st = a.status()
    assert st["running"] is True and st["version"] is None and st["starting"] is False
    assert st["config_file"]["result"] == "failed"
    assert "no XDP for you" in st["config_file"]["message"]
    assert "serving nothing" in st["config_file"]["message"]
    # and the next apply through the socket works once the cause is gone
    assert a.apply_text(cfg_text(1))["ok"] and a.running.version == 1


def test_start_with_a_refused_config_file_serves_what_is_pinned(tmp_path: Path) -> None:
    """Both ways a start-up config is refused: schema faults, and a version number that was
    applied before with other content (a host's left-over state). The agent comes up, keeps
    the pinned version, and status names the faults with their JSON paths."""
    store = VersionStore(tmp_path)
    Agent(FakeDataplane(), store).start(load_config(cfg_text(1)))
    # schema faults (the daemon's loader reports them; start gets the faults)
    dp = FakeDataplane(pinned=1)
    a = Agent(dp, store)
    a.start(None, path="bad.yml",
            faults=[Fault("$.cache.entries", "must be a power of two from 16 to 1048576")])
    st = a.status()
    assert st["version"] == 1 and st["running"] is True
    assert st["config_file"]["result"] == "refused"
    assert st["config_file"]["faults"] == [
        {"path": "$.cache.entries", "message": "must be a power of two from 16 to 1048576"}]
    assert "serving version 1" in st["config_file"]["message"]
    # the same version number, other content
    dp = FakeDataplane(pinned=1)
    b = Agent(dp, store)
    b.start(load_config(cfg_text(1, ttl=5)), path="other.yml")
    st = b.status()
    assert st["version"] == 1 and dp.applied == []
    assert st["config_file"]["result"] == "refused"
    assert st["config_file"]["faults"][0]["path"] == "$.version"


def test_start_without_a_config_file_waits_for_an_apply(tmp_path: Path) -> None:
    a = Agent(FakeDataplane(), VersionStore(tmp_path))
    a.start(None, path="/etc/mcache/mcache.yml")
    st = a.status()
    assert st["version"] is None and st["config_file"]["result"] == "absent"
    assert a.apply_text(cfg_text(1))["ok"] and a.status()["version"] == 1


def test_start_keeps_a_newer_running_version_over_an_older_file(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    a = Agent(FakeDataplane(), store)
    a.start(load_config(cfg_text(1)))
    assert a.apply_text(cfg_text(3))["ok"]
    dp = FakeDataplane(pinned=3)
    b = Agent(dp, store)
    b.start(load_config(cfg_text(1)))
    assert dp.applied == [] and b.running.version == 3
    assert b.config_file["result"] == "kept" and "older" in b.config_file["message"]


def test_status_answers_while_an_apply_runs(agent: Running) -> None:
    agent.dp.gate = threading.Event()
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(
        agent.call({"op": "apply", "config": cfg_text(2, entries=2048)})))
    t.start()
    try:
        deadline = time.monotonic() + 5
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            st = agent.call({"op": "status"})["result"]
            took = time.monotonic() - t0
            if st["apply_in_progress"]:
                break
            time.sleep(0.01)
        assert st["apply_in_progress"]["version"] == 2, st
        assert st["version"] == 1  # still the running one
        assert took < 1.0
    finally:
        agent.dp.gate.set()
        t.join(10)
    assert result["ok"], result
    st = agent.call({"op": "status"})["result"]
    assert st["version"] == 2 and st["apply_in_progress"] is None


def test_durations_are_rounded(agent: Running) -> None:
    res = agent.call({"op": "apply", "config": cfg_text(2, ttl=5000)})["result"]
    assert res["duration_ms"] == 2.5 and res["swap_ms"] == 0.1
    assert agent.store.outcome(2)["duration_ms"] == 2.5


# --------------------------------------------------------------------------- memcached watch


def test_memcached_restart_or_flush_flushes_the_cache(tmp_path: Path) -> None:
    from mcache_agent.memcached_stats import RestartDetector

    d = RestartDetector()
    assert d.observe({"pid": 10, "uptime": 100, "cmd_flush": 0}) is None
    assert d.observe({"pid": 10, "uptime": 101, "cmd_flush": 0}) is None
    assert "flushed" in (d.observe({"pid": 10, "uptime": 102, "cmd_flush": 1}) or "")
    assert "restarted" in (d.observe({"pid": 11, "uptime": 1, "cmd_flush": 0}) or "")
    assert "backwards" in (d.observe({"pid": 11, "uptime": 0, "cmd_flush": 0}) or "")


def test_fetch_stats_against_a_fake_memcached() -> None:
    from mcache_agent.memcached_stats import fetch_stats

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        c, _ = srv.accept()
        with c:
            assert c.recv(100) == b"stats\r\n"
            c.sendall(b"STAT pid 4242\r\nSTAT uptime 77\r\nSTAT version 1.6.18\r\n"
                      b"STAT cmd_get 5\r\nEND\r\n")

    t = threading.Thread(target=serve)
    t.start()
    stats = fetch_stats("127.0.0.1", srv.getsockname()[1])
    t.join()
    srv.close()
    assert stats == {"pid": 4242, "uptime": 77, "version": "1.6.18", "cmd_get": 5}


# --------------------------------------------------------------------------- metrics and probe


def test_metrics_render_from_status(agent: Running) -> None:
    from prometheus_client import generate_latest

    from mcache_agent.metrics import make_registry

    text = generate_latest(make_registry(agent.agent.status)).decode()
    assert 'mcache_verdicts_total{verdict="hit"} 3.0' in text
    assert 'mcache_path_verdicts_total{path="xdp_get_key",verdict="hit"} 1.0' in text
    assert 'mcache_version_verdicts_total{verdict="pass",version="2"} 7.0' in text
    assert "mcache_cache_fill_ratio 0.0039" in text
    assert "mcache_hit_ratio 0.75" in text
    assert "mcache_config_version 1.0" in text
    assert 'mcache_last_apply_info{result="ok",strategy="program_swap"} 1.0' in text
    assert "mcache_cache_memory_bytes 3e+06" in text
    assert "mcache_local_bypass_sockets 6.0" in text
    assert "mcache_last_apply_success 1.0" in text
    assert "mcache_config_file_refused 0.0" in text
    assert "mcache_last_apply_timestamp_seconds 1." in text
    assert "mcache_agent_start_time_seconds 1." in text
    agent.call({"op": "probe"})
    text = generate_latest(make_registry(agent.agent.status)).decode()
    assert "mcache_probe_success 1.0" in text


def test_the_agent_probes_by_itself(tmp_path: Path) -> None:
    calls: list[int] = []
    a = Agent(FakeDataplane(), VersionStore(tmp_path),
              probe_fn=lambda cfg, dp: calls.append(cfg.version) or {"ok": True, "detail": "x"})
    a.start(load_config(cfg_text(1) + "probe: {interval_s: 1}\n"))
    t = threading.Thread(target=a.probe_forever, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert calls[:2] == [1, 1]
        assert a.status()["probe"]["ok"] is True
    finally:
        a.stop_event.set()
        t.join(10)


@pytest.fixture
def memcached() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["memcached", "-u", "nobody", "-l", "127.0.0.1", "-p", str(port),
                             "-U", str(port), "-m", "16"])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


def test_probe_sees_that_memcached_served_the_gets(memcached: int) -> None:
    """No kernel cache in front: both UDP GETs reach memcached, so the probe must fail,
    with the value right and the evidence saying why."""
    from mcache_agent.probe import run_probe

    cfg = load_config(cfg_text(1).replace("port: 11211", f"port: {memcached}")
                      + "probe: {timeout_ms: 500}\n")
    result = run_probe(cfg, FakeDataplane())
    assert result["ok"] is False
    assert result["value_ok"] is True
    assert result["hits_before"] == result["hits_after"] == 0  # no probe_hit counter
    assert result["cmd_get_after"] - result["cmd_get_before"] >= 2
    assert "no kernel hit for the probe key" in result["detail"]
    assert 0 < result["duration_ms"] < 2000

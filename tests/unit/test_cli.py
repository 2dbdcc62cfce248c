"""The CLI: validate without a daemon, exit codes, --json output, client commands."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from mcache_agent import cli, control

REPO = Path(__file__).resolve().parents[2]
GOOD = (
    "apiVersion: mcache/v1\nversion: 3\nmemcached: {address: 127.0.0.1, port: 11211}\n"
    "interfaces: [{name: lo, xdp_mode: generic}]\ncache: {allowed_clients: [127.0.0.0/8]}\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "good.yml", GOOD)
    code, out, err = run_cli(capsys, "validate", str(f))
    assert code == 0 and "ok (version 3)" in out and err == ""


def test_validate_faults_exit_2_with_paths(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "bad.yml", GOOD.replace("port: 11211", "port: 0").replace(
        "generic", "warp"))
    code, out, err = run_cli(capsys, "validate", str(f))
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert any(line.startswith("$.memcached.port: ") for line in lines)
    assert any(line.startswith("$.interfaces[0].xdp_mode: ") for line in lines)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (GOOD.replace("version: 3", "version: 3.0"), "$.version: expected an integer"),
        (GOOD.replace("port: 11211", "port: 11211.0"), "$.memcached.port: expected an integer"),
        (GOOD.replace("[127.0.0.0/8]", "[0.0.0.0/0]"),
         "$.cache.allowed_clients[0]: '0.0.0.0/0' is every IPv4 address"),
        (GOOD + "metrics: {listen: '0.0.0.0:99999'}\n", "$.metrics.listen: '0.0.0.0:99999' has"),
        ("a: " + "[" * 100_000 + "]" * 100_000, "$.a: nests deeper than"),
    ],
)
def test_validate_refuses_what_used_to_pass_or_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: str
) -> None:
    f = write(tmp_path, "bad.yml", text)
    code, out, err = run_cli(capsys, "validate", str(f))
    assert code == 2 and out == "" and "Traceback" not in err
    assert any(x.startswith(line) for x in err.splitlines()), err


def test_validate_a_fifo_without_waiting(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import os

    fifo = tmp_path / "fifo.yml"
    os.mkfifo(fifo)
    code, _, err = run_cli(capsys, "validate", str(fifo))
    assert code == 2 and "$: cannot read" in err and "not a regular file (a FIFO)" in err
    code, _, err = run_cli(capsys, "apply", str(fifo), "--socket", str(tmp_path / "x.sock"))
    assert code == 2 and "not a regular file" in err  # refused before the socket is tried


def test_validate_exits_1_when_the_checks_themselves_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kw: object) -> list[object]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "check_semantics", broken)
    f = write(tmp_path, "good.yml", GOOD)
    code, out, err = run_cli(capsys, "validate", "--json", str(f))
    assert code == 1 and "Traceback" not in err
    assert json.loads(out)["files"][0]["faults"] == [
        {"path": "$", "message": "could not be checked: RuntimeError: a bug"}]


def test_validate_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.yml", GOOD)
    bad = write(tmp_path, "bad.yml", "not: [valid")
    code, out, _ = run_cli(capsys, "validate", "--json", str(good), str(bad))
    assert code == 2
    doc = json.loads(out)
    assert doc["ok"] is False
    assert [f["ok"] for f in doc["files"]] == [True, False]
    assert doc["files"][0] == {"file": str(good), "ok": True, "version": 3, "faults": []}
    assert doc["files"][1]["faults"][0]["path"] == "$"
    assert set(doc["files"][1]["faults"][0]) == {"path", "message"}


def test_validate_json_flag_before_the_command(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.yml", GOOD)
    code, out, _ = run_cli(capsys, "--json", "validate", str(good))
    assert code == 0 and json.loads(out)["ok"] is True


def test_validate_host_checks_and_no_host_checks(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "elsewhere.yml", GOOD.replace("name: lo", "name: mcnope0"))
    code, _, err = run_cli(capsys, "validate", str(f))
    assert code == 2 and "$.interfaces[0].name: " in err
    code, _, _ = run_cli(capsys, "validate", "--no-host-checks", str(f))
    assert code == 0


def test_validate_examples_off_host(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in (REPO / "examples").glob("*.yml"))
    assert files
    code, out, _ = run_cli(capsys, "validate", "--no-host-checks", "--json", *files)
    assert code == 0, out


def test_usage_error_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rollback", "--to", "notanumber"]) == 2
    assert cli.main([]) == 2


def test_unreachable_agent_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "none.sock"
    code, out, _ = run_cli(capsys, "--socket", str(sock), "versions", "--json")
    assert code == 3
    assert json.loads(out)["error"]["kind"] == "unreachable"
    f = write(tmp_path, "good.yml", GOOD)
    code, _, err = run_cli(capsys, "apply", str(f), "--socket", str(sock))
    assert code == 3 and "not reachable" in err


def test_status_without_daemon_is_exit_3_and_says_what_is_pinned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcache_agent.config import load_config
    from mcache_agent.dataplane import CacheUsage, Memory
    from mcache_agent.dataplane.stats import Counts, Stats
    from mcache_agent.versions import VersionStore

    class FakeDataplane:
        def __init__(self, bpffs: Path) -> None:
            self.bpffs = bpffs

        def adopt(self) -> int:
            return 3

        def stats(self) -> Stats:
            counts = Counts.zero()
            counts.by_path["xdp_main"].update(hit=9, miss=1)
            return Stats({3: counts}, {0: 3})

        def cache_usage(self) -> CacheUsage:
            return CacheUsage(4096, 12)

        def memory(self) -> Memory:
            return Memory(7 << 20, {"mc_cache": 7 << 20})

        def attached(self) -> list[dict[str, str]]:
            return [{"interface": "lo", "mode": "generic", "role": "serve"}]

    import mcache_agent.dataplane as real

    fake_module = types.ModuleType("mcache_agent.dataplane")
    fake_module.Dataplane = FakeDataplane  # type: ignore[attr-defined]
    fake_module.Plan, fake_module.PlanRefused = real.Plan, real.PlanRefused  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mcache_agent.dataplane", fake_module)
    store = VersionStore(tmp_path / "state")
    store.store(load_config(GOOD), {"applied_at": "x", "strategy": "map_swap", "result": "ok",
                                    "duration_ms": 1.0, "error": None})
    store.set_current(3)

    code, out, _ = run_cli(capsys, "status", "--json", "--socket", str(tmp_path / "x.sock"),
                           "--state-dir", str(tmp_path / "state"),
                           "--bpffs", str(tmp_path / "bpffs"))
    assert code == 3  # the README's "agent not reachable"
    doc = json.loads(out)
    assert doc["ok"] is False and doc["error"]["kind"] == "unreachable"
    st = doc["offline"]
    assert st["running"] is False
    assert st["version"] == 3 and st["hit_ratio"] == 0.9
    assert st["cache"]["used"] == 12 and st["last_apply"]["strategy"] == "map_swap"
    assert st["cache"]["memory_bytes"] == 7 << 20
    assert any(e.startswith("agent: ") for e in st["errors"])

    code, out, err = run_cli(capsys, "status", "--socket", str(tmp_path / "x.sock"),
                             "--state-dir", str(tmp_path / "state"))
    assert code == 3 and "not running" in out and "90.00%" in out and "7.0 MiB" in out
    assert "not reachable" in err and "None" not in out


def test_status_of_a_bare_host_prints_no_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No agent, no pins, no versions: dashes, never None, and exit 3."""
    code, out, err = run_cli(capsys, "status", "--socket", str(tmp_path / "x.sock"),
                             "--state-dir", str(tmp_path / "state"),
                             "--bpffs", str(tmp_path / "bpffs"))
    assert code == 3 and "not reachable" in err
    assert "None" not in out and "version" in out and "not running" in out


def test_status_lines_for_people() -> None:
    from mcache_agent.cli import format_status

    st = {"running": True, "starting": False, "version": 7,
          "last_apply": {"version": 7, "result": "ok", "strategy": "program_swap",
                         "duration_ms": 5135.5193480000025},
          "apply_in_progress": {"version": 8, "since": "2026-12-02T10:00:00Z"},
          "config_file": {"result": "refused", "message": "config has 1 fault(s)",
                          "faults": [{"path": "$.cache.entries", "message": "not a power"}]},
          "attached": [], "counters": {"hit": 0}, "hit_ratio": None,
          "cache": {"entries": 4096, "used": None, "memory_bytes": None}, "probe": None}
    out = format_status(st)
    assert "local bypass  off" in out
    assert "v7 ok program_swap 5135.5 ms" in out
    assert "applying" in out and "v8" in out
    assert "$.cache.entries: not a power" in out
    assert "None" not in out
    st["local_bypass"] = {"cgroup": "/sys/fs/cgroup", "sockets": 6}
    assert "local bypass  on at /sys/fs/cgroup, 6 sockets" in format_status(st)
    st["local_bypass"] = {"cgroup": "", "sockets": 2}
    assert "local bypass  off, 2 sockets leaving" in format_status(st)
    assert "flushed for" not in format_status(st)
    st["flush_reasons"] = {"cut_line": 0, "unknown_stream": 3, "udp_fragment": 1}
    assert "flushed for   unknown_stream=3 udp_fragment=1" in format_status(st)


class FakeAgentHandler:
    """Answers like the daemon does, so the client side can be checked alone."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def __call__(self, req: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(req)
        if req["op"] == "apply" and req.get("check"):
            return control.ok({"check": True, "changed": True, "version": 3,
                               "running_version": 2, "strategy": "map_swap",
                               "diff": "--- version 2\n+++ version 3\n-a\n+b\n"})
        if req["op"] == "apply":
            return control.error("invalid", "config has 1 fault(s)",
                                 [{"path": "$.version", "message": "lower"}])
        if req["op"] == "rollback":
            return control.error("runtime", "apply of version 1 failed: boom")
        if req["op"] == "status":
            return control.ok({"version": 2, "running": True, "last_apply": None,
                               "attached": [], "counters": {"hit": 1}, "hit_ratio": 1.0,
                               "cache": {"entries": 16, "used": 1, "memory_bytes": 100,
                                         "kept_across_last_apply": None}, "probe": None})
        return control.ok({"ok": False, "detail": "no hit"})


@pytest.fixture
def fake_agent(tmp_path: Path) -> Any:
    handler = FakeAgentHandler()
    server = control.ControlServer(tmp_path / "run" / "a.sock", handler)
    server.bind()
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield handler, server.path
    server.stop()
    t.join(5)


def test_client_commands_map_errors_to_exit_codes(
    fake_agent: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handler, sock = fake_agent
    f = write(tmp_path, "good.yml", GOOD)
    code, out, _ = run_cli(capsys, "--socket", str(sock), "apply", str(f), "--check")
    assert code == 0 and "+b" in out and "strategy map_swap" in out
    assert handler.requests[-1] == {"op": "apply", "config": GOOD, "check": True}

    code, _, err = run_cli(capsys, "--socket", str(sock), "apply", str(f))
    assert code == 2 and "$.version: lower" in err

    code, out, _ = run_cli(capsys, "--socket", str(sock), "rollback", "--to", "1", "--json")
    assert code == 1 and json.loads(out)["error"]["kind"] == "runtime"
    assert handler.requests[-1] == {"op": "rollback", "to": 1}

    code, out, _ = run_cli(capsys, "--socket", str(sock), "status")
    assert code == 0 and "hit ratio" in out and "100.00%" in out

    code, _, _ = run_cli(capsys, "--socket", str(sock), "probe")
    assert code == 1  # a failed probe is a failure


def test_console_entry_runs_as_a_module(tmp_path: Path) -> None:
    f = write(tmp_path, "good.yml", GOOD)
    proc = subprocess.run([sys.executable, "-m", "mcache_agent.cli", "validate", "--json", str(f)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"][0]["version"] == 3


def test_status_and_versions_show_the_rejected_versions() -> None:
    from mcache_agent.cli import format_status, format_versions

    rej = {"version": 3, "reason": "probe failed on version 3: no hit",
           "at": "2026-12-02T10:00:00Z", "rolled_back_to": 2}
    st = {"running": True, "version": 2, "attached": [], "counters": {}, "cache": {},
          "rejected": [rej]}
    out = format_status(st)
    assert ("rejected      v3 at 2026-12-02T10:00:00Z, rolled back to v2: probe failed on "
            "version 3: no hit") in out
    assert "rejected" not in format_status({**st, "rejected": []})
    out = format_versions({"versions": [
        {"version": 2, "current": True, "result": "ok"},
        {"version": 3, "previous": True, "result": "ok", "rejected": True}], "rejected": [rej]})
    assert "\nx       3  ok" in out and "\n*       2  ok" in out
    assert "rejected v3 at 2026-12-02T10:00:00Z, rolled back to v2: probe failed" in out


def test_rollback_sends_its_reason(fake_agent: Any, capsys: pytest.CaptureFixture[str]) -> None:
    handler, sock = fake_agent
    code, _, _ = run_cli(capsys, "--socket", str(sock), "rollback", "--reason", "bad ttl")
    assert code == 1  # the fake agent's rollback fails; the request is what counts here
    assert handler.requests[-1] == {"op": "rollback", "reason": "bad ttl"}

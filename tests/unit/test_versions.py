"""The versions store: atomic files, pointers, list, rollback targets."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mcache_agent.config import load_config
from mcache_agent.versions import VersionsError, VersionStore, atomic_write


def cfg(version: int, ttl: int = 60000) -> object:
    return load_config(
        f"apiVersion: mcache/v1\nversion: {version}\n"
        "memcached: {address: 127.0.0.1, port: 11211}\n"
        f"interfaces: [{{name: lo}}]\ncache: {{ttl_ms: {ttl}}}\n# v{version}\n"
    )


OK = {"applied_at": "2026-11-25T16:00:00Z", "strategy": "map_swap", "result": "ok",
      "duration_ms": 1.5, "error": None}


def test_store_keeps_exact_text_and_outcome(tmp_path: Path) -> None:
    s = VersionStore(tmp_path / "state")
    c = cfg(3)
    s.store(c, OK)
    assert s.get(3) == c.text
    assert (tmp_path / "state/versions/3.yml").read_text() == c.text
    rec = json.loads((tmp_path / "state/versions/3.json").read_text())
    assert rec["version"] == 3 and rec["result"] == "ok" and rec["strategy"] == "map_swap"
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "state/versions").st_mode) == 0o700
    # Nothing but the two files: no temp files left behind.
    assert sorted(p.name for p in (tmp_path / "state/versions").iterdir()) == ["3.json", "3.yml"]
    # Storing does not move the pointers.
    assert s.current() is None and s.previous() is None


def test_atomic_write_replaces_whole_file_and_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600

    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_pointers_move_current_to_previous(tmp_path: Path) -> None:
    s = VersionStore(tmp_path)
    for n in (1, 2, 3):
        s.store(cfg(n), OK)
    s.set_current(1)
    assert (s.current(), s.previous()) == (1, None)
    s.set_current(2)
    assert (s.current(), s.previous()) == (2, 1)
    s.set_current(2)  # no-op: previous must not become 2
    assert (s.current(), s.previous()) == (2, 1)
    s.set_current(3)
    assert (s.current(), s.previous()) == (3, 2)
    assert (tmp_path / "current").read_text().strip() == "3"
    with pytest.raises(VersionsError):
        s.set_current(9)
    assert s.current() == 3


def test_list(tmp_path: Path) -> None:
    s = VersionStore(tmp_path)
    assert s.list() == []
    for n in (10, 2, 9):
        s.store(cfg(n), OK)
    s.store(cfg(11), {**OK, "result": "failed", "strategy": None, "error": "verifier said no"})
    s.set_current(9)
    s.set_current(10)
    rows = s.list()
    assert [r["version"] for r in rows] == [2, 9, 10, 11]
    by = {r["version"]: r for r in rows}
    assert by[10]["current"] and not by[10]["previous"]
    assert by[9]["previous"]
    assert by[11]["result"] == "failed" and by[11]["error"] == "verifier said no"
    assert by[2]["applied_at"] == OK["applied_at"]


def test_rollback_targets(tmp_path: Path) -> None:
    s = VersionStore(tmp_path)
    with pytest.raises(VersionsError, match="nothing to roll back to"):
        s.rollback_target()
    s.store(cfg(1), OK)
    s.set_current(1)
    with pytest.raises(VersionsError, match="nothing to roll back to"):
        s.rollback_target()
    s.store(cfg(2), OK)
    s.set_current(2)
    assert s.rollback_target() == 1
    assert s.rollback_target(to=2) == 2
    with pytest.raises(VersionsError, match="not stored"):
        s.rollback_target(to=7)
    with pytest.raises(VersionsError):
        s.get(7)


def test_garbage_pointer_reads_as_none(tmp_path: Path) -> None:
    s = VersionStore(tmp_path)
    (tmp_path / "current").write_text("banana\n")
    assert s.current() is None


def test_a_rejected_version_is_kept_with_its_reason_across_store_instances(
        tmp_path: Path) -> None:
    s = VersionStore(tmp_path)
    for n in (1, 2, 3):
        s.store(cfg(n), OK)
    s.set_current(1)
    s.set_current(3)
    rec = s.reject(3, reason="probe failed on version 3: no hit", rolled_back_to=1)
    assert rec["version"] == 3 and rec["rolled_back_to"] == 1
    assert rec["reason"] == "probe failed on version 3: no hit" and rec["at"].endswith("Z")
    assert len(rec["digest"]) == 64  # of the stored text, for the record
    # another store over the same directory (the next agent, after a reboot) reads it
    again = VersionStore(tmp_path)
    assert again.rejection(3) == rec
    assert again.rejection(2) is None
    assert [r["version"] for r in again.rejected_list()] == [3]
    rows = {r["version"]: r for r in again.list()}
    assert rows[3]["rejected"] is True and rows[3]["rejected_reason"] == rec["reason"]
    assert rows[1]["rejected"] is False and rows[1]["rejected_at"] is None
    assert stat.S_IMODE(os.stat(tmp_path / "rejected.json").st_mode) == 0o600
    # a second rejection of another version keeps the first
    s.reject(2, reason="x" * 2000, rolled_back_to=1)
    assert sorted(VersionStore(tmp_path).rejected()) == [2, 3]
    assert len(VersionStore(tmp_path).rejection(2)["reason"]) == 500  # bounded
    assert s.clear_rejected(3) is True and s.clear_rejected(3) is False
    assert sorted(VersionStore(tmp_path).rejected()) == [2]


def test_a_rejected_previous_version_is_no_rollback_target(tmp_path: Path) -> None:
    """After a rollback, `previous` is the version it left: a plain second rollback would undo
    the first. It must be named."""
    s = VersionStore(tmp_path)
    for n in (1, 2):
        s.store(cfg(n), OK)
    s.set_current(1)
    s.set_current(2)
    s.set_current(1)  # rolled back: previous is 2
    s.reject(2, reason="probe failed", rolled_back_to=1)
    with pytest.raises(VersionsError, match=r"previous version 2 was rejected .*--to 2"):
        s.rollback_target()
    assert s.rollback_target(to=2) == 2


def test_an_unreadable_rejected_list_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    s = VersionStore(tmp_path)
    (tmp_path / "rejected.json").write_text("{not json")
    with pytest.raises(VersionsError, match="not JSON"):
        s.rejected()
    (tmp_path / "rejected.json").write_text("[3]")
    with pytest.raises(VersionsError, match="not a JSON object"):
        s.rejection(3)

"""The versions store: every config applied (or tried), its outcome, and current/previous.

Layout under the state dir (mode 0700):
    versions/<N>.yml   the exact config text
    versions/<N>.json  the outcome of the last attempt to apply it
    current, previous  pointer files holding a version number

Every write is atomic (temp file in the same dir, fsync, rename, fsync dir), so a crash leaves
either the old or the new file, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from mcache_agent.config import Config

_VERSION_FILE = re.compile(r"^(\d+)\.yml$")


class VersionsError(Exception):
    pass


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class VersionStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir)
        self.dir = self.root / "versions"

    def ensure(self) -> None:
        for d in (self.root, self.dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)

    # ------------------------------------------------------------------ writes

    def store(self, cfg: Config, outcome: dict[str, Any]) -> None:
        """Keep the config text and the outcome of applying it. Does not move the pointers."""
        self.ensure()
        record = {"version": cfg.version, **outcome}
        atomic_write(self.dir / f"{cfg.version}.yml", cfg.text.encode("utf-8"))
        atomic_write(self.dir / f"{cfg.version}.json",
                     (json.dumps(record, sort_keys=True, indent=1) + "\n").encode())

    def set_current(self, n: int) -> None:
        """Make n current; the old current becomes previous (so rollback toggles back)."""
        if not (self.dir / f"{n}.yml").is_file():
            raise VersionsError(f"version {n} is not stored")
        self.ensure()
        cur = self.current()
        if cur == n:
            return
        if cur is not None:
            atomic_write(self.root / "previous", f"{cur}\n".encode())
        atomic_write(self.root / "current", f"{n}\n".encode())

    # ------------------------------------------------------------------ reads

    def get(self, n: int) -> str:
        try:
            return (self.dir / f"{n}.yml").read_text(encoding="utf-8")
        except FileNotFoundError:
            raise VersionsError(f"version {n} is not stored") from None

    def has(self, n: int) -> bool:
        return (self.dir / f"{n}.yml").is_file()

    def outcome(self, n: int) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / f"{n}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def numbers(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.dir.iterdir()
                      if (m := _VERSION_FILE.match(p.name)))

    def list(self) -> list[dict[str, Any]]:
        cur, prev = self.current(), self.previous()
        out = []
        for n in self.numbers():
            o = self.outcome(n) or {}
            out.append({
                "version": n,
                "current": n == cur,
                "previous": n == prev,
                "applied_at": o.get("applied_at"),
                "strategy": o.get("strategy"),
                "result": o.get("result"),
                "duration_ms": o.get("duration_ms"),
                "error": o.get("error"),
            })
        return out

    def current(self) -> int | None:
        return self._pointer("current")

    def previous(self) -> int | None:
        return self._pointer("previous")

    def _pointer(self, name: str) -> int | None:
        try:
            text = (self.root / name).read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def rollback_target(self, to: int | None = None) -> int:
        """The version a rollback goes to: `to` when given (must be stored), else previous."""
        if to is not None:
            if not self.has(to):
                stored = ", ".join(map(str, self.numbers())) or "none"
                raise VersionsError(f"version {to} is not stored (stored: {stored})")
            return to
        prev = self.previous()
        if prev is None:
            raise VersionsError("nothing to roll back to: no previous version")
        if not self.has(prev):
            raise VersionsError(f"previous version {prev} is not stored")
        return prev

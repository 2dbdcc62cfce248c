"""The versions store: every config applied (or tried), its outcome, and current/previous.

Layout under the state dir (mode 0700):
    versions/<N>.yml   the exact config text
    versions/<N>.json  the outcome of the last attempt to apply it
    current, previous  pointer files holding a version number
    rejected.json      the versions a rollback left: {"<N>": {"version", "reason", "at",
                       "rolled_back_to", "digest"}}; such a number is never applied again
                       (a start, an apply) until a rollback names it (`rollback --to N`)

Every write is atomic (temp file in the same dir, fsync, rename, fsync dir), so a crash leaves
either the old or the new file, never half of one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from mcache_agent.config import Config

_VERSION_FILE = re.compile(r"^(\d+)\.yml$")
REJECTED = "rejected.json"
# A rejection's reason is an operator's or a probe's words: kept, but bounded.
MAX_REASON = 500


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

    def reject(self, n: int, *, reason: str, rolled_back_to: int | None,
               at: str | None = None) -> dict[str, Any]:
        """Record that a rollback left version n: no start or apply takes that number again
        (whatever its content) until a rollback names it. Returns the record."""
        self.ensure()
        text = None
        try:
            text = self.get(n)
        except VersionsError:
            pass
        rec = {"version": n, "reason": (reason or "rolled back")[:MAX_REASON],
               "at": at or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "rolled_back_to": rolled_back_to,
               "digest": hashlib.sha256(text.encode()).hexdigest() if text is not None
               else None}
        table = self.rejected()
        table[n] = rec
        self._write_rejected(table)
        return rec

    def clear_rejected(self, n: int) -> bool:
        """Take version n off the rejected list (a rollback named it); True when it was on."""
        table = self.rejected()
        if table.pop(n, None) is None:
            return False
        self._write_rejected(table)
        return True

    def _write_rejected(self, table: dict[int, dict[str, Any]]) -> None:
        doc = {str(k): v for k, v in sorted(table.items())}
        atomic_write(self.root / REJECTED,
                     (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode())

    # ------------------------------------------------------------------ reads

    def rejected(self) -> dict[int, dict[str, Any]]:
        """Version -> its rejection record. A file that cannot be read is an error, not an
        empty list: an empty list would let a rejected version back in."""
        try:
            raw = (self.root / REJECTED).read_text()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise VersionsError(f"cannot read {self.root / REJECTED}: {e}") from e
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise VersionsError(f"{self.root / REJECTED} is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise VersionsError(f"{self.root / REJECTED} is not a JSON object")
        out: dict[int, dict[str, Any]] = {}
        for key, rec in doc.items():
            if key.isdigit() and isinstance(rec, dict):
                out[int(key)] = {**rec, "version": int(key)}
        return out

    def rejection(self, n: int) -> dict[str, Any] | None:
        """Why version n was rejected on this host, or None."""
        return self.rejected().get(n)

    def rejected_list(self) -> list[dict[str, Any]]:
        """The rejected versions, oldest number first, as status and versions show them."""
        table = self.rejected()
        return [table[n] for n in sorted(table)]

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
        rejected = self.rejected()
        out = []
        for n in self.numbers():
            o = self.outcome(n) or {}
            r = rejected.get(n)
            out.append({
                "version": n,
                "current": n == cur,
                "previous": n == prev,
                "applied_at": o.get("applied_at"),
                "strategy": o.get("strategy"),
                "result": o.get("result"),
                "duration_ms": o.get("duration_ms"),
                "error": o.get("error"),
                "rejected": r is not None,
                "rejected_reason": r.get("reason") if r else None,
                "rejected_at": r.get("at") if r else None,
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
        rej = self.rejection(prev)
        if rej is not None:
            # The previous version is the one a rollback left: a second `rollback` would undo
            # the first. Going back to it is a decision: name it.
            raise VersionsError(
                f"the previous version {prev} was rejected ({describe_rejection(rej)}); "
                f"roll back to it by naming it (--to {prev}), or to another stored version")
        return prev


def describe_rejection(rec: dict[str, Any]) -> str:
    """One line: when, to what, and why a version was rejected."""
    to = rec.get("rolled_back_to")
    return (f"rolled back{f' to version {to}' if to is not None else ''} at {rec.get('at')}: "
            f"{rec.get('reason')}")

"""The eBPF C sources as bcc gets them, and a fingerprint of the code."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from mcache_agent import constants


def inline_source(path: Path, seen: set[Path] | None = None) -> str:
    """The C file with its local includes pasted in: bcc rewrites map calls
    (table.lookup(), .call()) only in the main file, not in included headers."""
    seen = set() if seen is None else seen
    out: list[str] = []
    for line in path.read_text().splitlines(keepends=True):
        m = re.match(r'#include "(.+)"', line)
        if m:
            inc = path.parent / m.group(1)
            if inc not in seen:
                seen.add(inc)
                out.append(inline_source(inc, seen))
            continue
        out.append(line)
    return "".join(out)


def code_hash() -> str:
    """Changes whenever the data plane's code does: an upgrade is a program swap."""
    h = hashlib.sha256()
    for f in sorted(constants.source("mcache_shared.h").parent.glob("*.[ch]")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]

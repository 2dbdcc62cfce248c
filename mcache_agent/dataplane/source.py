"""The eBPF C sources as bcc gets them, their fingerprint, and the compiler flags of a set."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from mcache_agent import constants
from mcache_agent.dataplane import kernel_btf


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


def _digest(files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


@cache
def code_hash() -> str:
    """Changes whenever the data plane's code does: an upgrade is a program swap."""
    return _digest(sorted(constants.source("mcache_shared.h").parent.glob("*.[ch]")))


def cflags(pin_dir: Path, state_dir: Path, shape: tuple[int, int, int] | None,
           extra: Iterable[str] = ()) -> list[str]:
    """bcc's flags for a program set: where its maps are pinned, and the cache's shape."""
    flags = [f'-DMC_PIN_DIR="{pin_dir}"', f'-DMC_STATE_DIR="{state_dir}"',
             "-Wno-unused-function", *kernel_btf.cflags(), *extra]
    if shape is not None:
        e, k, v = shape
        flags += [f"-DMC_CACHE_ENTRIES={e}", f"-DMC_MAX_KEY={k}", f"-DMC_MAX_VALUE={v}",
                  f'-DMC_SHAPE="{e}_{k}_{v}"']
    return flags

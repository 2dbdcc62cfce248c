"""Constants of the data plane, read from bpf/mcache_shared.h (never copied here)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from mcache_agent.paths import bpf_dir


@cache
def shared_header() -> str:
    return (bpf_dir() / "mcache_shared.h").read_text()


@cache
def defines() -> dict[str, int]:
    out: dict[str, int] = {}
    for m in re.finditer(r"^#define\s+(MC_\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", shared_header(), re.M):
        out[m.group(1)] = int(m.group(2), 0)
    return out


def _enum(name: str, prefix: str) -> tuple[str, ...]:
    """Names of a C enum by value, lower-cased without their prefix (the _COUNT excluded)."""
    body = re.search(rf"enum {name} \{{(.*?)\}};", shared_header(), re.S)
    if body is None:
        raise RuntimeError(f"enum {name} not found in mcache_shared.h")
    pairs = re.findall(rf"{prefix}(\w+)\s*=\s*(\d+)", body.group(1))
    names = {int(v): k.lower() for k, v in pairs if k != "COUNT"}
    return tuple(names[i] for i in range(len(names)))


@cache
def verdicts() -> tuple[str, ...]:
    """Verdict names by index: MC_V_HIT = 0 -> "hit", ..."""
    return _enum("mc_verdict", "MC_V_")


@cache
def paths() -> tuple[str, ...]:
    """The sub-programs that decide, by index: MC_P_XDP_MAIN = 0 -> "xdp_main", ..."""
    return _enum("mc_path", "MC_P_")


@cache
def flush_reasons() -> tuple[str, ...]:
    """Why the scanner emptied the cache, by index: MC_FR_CUT_LINE = 0 -> "cut_line", ..."""
    return _enum("mc_flush_reason", "MC_FR_")


@cache
def capture_stages() -> tuple[str, ...]:
    """Where a captured frame was seen: MC_CAP_IN = 0 -> "in", ..."""
    return _enum("mc_cap_stage", "MC_CAP_")


def const(name: str) -> int:
    return defines()[name]


def source(name: str) -> Path:
    return bpf_dir() / name

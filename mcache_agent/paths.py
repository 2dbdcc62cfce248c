"""Default locations on a host, and where the config schema is found."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/mcache")
DEFAULT_SOCKET = Path("/run/mcache/agent.sock")
DEFAULT_BPFFS = Path("/sys/fs/bpf/mcache")

SCHEMA_NAME = "mcache-config.schema.json"


def schema_path() -> Path:
    """The config schema: an explicit override, the copy shipped in the wheel, or the repo's.

    The wheel force-includes schemas/ as mcache_agent/_data/schemas/ (pyproject.toml); a source
    checkout has it at the repository root, which is the one file everyone edits.
    """
    override = os.environ.get("MCACHE_SCHEMA")
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent
    candidates = (here / "_data" / "schemas" / SCHEMA_NAME, here.parent / "schemas" / SCHEMA_NAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{SCHEMA_NAME} not found next to {here} (set MCACHE_SCHEMA)")


def bpf_dir() -> Path:
    """The eBPF C sources: the copy shipped in the wheel, or the repo's bpf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_data" / "bpf", here.parent / "bpf"):
        if (candidate / "mcache_shared.h").is_file():
            return candidate
    raise FileNotFoundError(f"bpf sources not found next to {here}")

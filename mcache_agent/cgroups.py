"""This host's cgroup v2 hierarchies: where the local bypass's sockops program may attach."""

from __future__ import annotations

from pathlib import Path

MOUNTS = Path("/proc/self/mounts")


class CgroupError(Exception):
    pass


def cgroup2_mounts() -> list[Path]:
    """Where cgroup v2 hierarchies are mounted (a unified /sys/fs/cgroup, or a hybrid
    system's /sys/fs/cgroup/unified)."""
    out = []
    for line in MOUNTS.read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            out.append(Path(parts[1].replace("\\040", " ")))
    return out


def cgroup_dir(configured: str) -> Path:
    """The cgroup a config names (local_bypass.cgroup), or, when it names none, the root of
    the first cgroup v2 hierarchy: every process's connections."""
    if configured:
        return Path(configured)
    mounts = cgroup2_mounts()
    if not mounts:
        raise CgroupError("no cgroup v2 hierarchy is mounted")
    return mounts[0]


def cgroup_fault(configured: str) -> str | None:
    """Why a sockops program cannot attach to this cgroup, or None."""
    try:
        path = cgroup_dir(configured)
    except CgroupError as exc:
        return str(exc)
    if not path.is_dir():
        return f"{path} is not a directory"
    real = path.resolve()
    if not any(real == m or m in real.parents for m in cgroup2_mounts()):
        return f"{path} is not in a cgroup v2 hierarchy"
    return None

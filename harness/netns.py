"""Network namespaces for tests and benchmarks: entered in-process (setns), not through
`ip netns exec`, which remounts /sys and would hide the bpffs pins. Sockets created inside
`in_ns` stay in that namespace; the root namespace blackholes 198.18.0.0/15 (scripts/setup.sh),
so a socket opened outside by mistake fails instead of leaving the machine."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """A shell command of the test's own (fixed strings: namespace and link set-up)."""
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True)


def nsenter(ns: str) -> list[str]:
    """argv prefix that runs a program in netns `ns` with the machine's /sys (and pins)."""
    return ["nsenter", f"--net=/var/run/netns/{ns}"]


def enter_ns(name: str) -> None:
    """Move the calling thread into netns `name` for good."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def in_ns(name: str) -> Iterator[None]:
    """Run the block with this thread in netns `name` (children forked inside inherit it)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        enter_ns(name)
        yield
    finally:
        _libc.setns(home, CLONE_NEWNET)
        os.close(home)

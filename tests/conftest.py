"""Shared helpers for the data-plane tests: network namespaces entered in-process (setns, no
/sys remount, so bpffs pins stay visible), memcached in a namespace, and a Dataplane applied
inside a namespace."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True)


@contextlib.contextmanager
def in_ns(name: str):
    """Run the block with this thread in netns `name`; sockets created inside stay there."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        _libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(target)


def make_config(text: str):
    from mcache_agent.config import load_config

    return load_config(textwrap.dedent(text))


def start_memcached(ns: str, addr: str, pidfile: Path) -> int:
    pidfile.unlink(missing_ok=True)
    sh(f"nsenter --net=/var/run/netns/{ns} memcached -u nobody -l {addr} -p 11211 -U 11211 "
       f"-d -P {pidfile}")
    for _ in range(50):
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        time.sleep(0.05)
    raise RuntimeError("memcached did not start")


def stop_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 15)



"""Pinned programs run on hand-built frames with BPF_PROG_TEST_RUN, through the agent's own
kernel binding. Used by the data plane's unit tests, the fuzzer and the benchmarks'
per-packet cost."""

from __future__ import annotations

import os
import struct

from mcache_agent.dataplane import libbpf


def xdp_ctx(data_len: int, ifindex: int) -> bytes:
    """struct xdp_md for a frame of data_len bytes received on ifindex."""
    return struct.pack(libbpf.XDP_MD, 0, data_len, 0, ifindex, 0, 0)


class Prog:
    """A program, opened by its pin path or given as an fd (then the caller owns the fd)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 fd: int | None = None) -> None:
        if path is None and fd is None:
            raise ValueError("Prog needs a pinned path or an fd")
        self.owned = path is not None
        self.fd = libbpf.obj_get(path) if path is not None else fd

    def close(self) -> None:
        if self.owned:
            os.close(self.fd)

    def run(self, data: bytes, ctx: bytes | None = None) -> tuple[int, bytes]:
        """(return value, frame out) of one run on a fresh copy of data."""
        r = libbpf.prog_test_run(self.fd, data, ctx)
        return r.retval, r.data

    def run_timed(self, data: bytes, ctx: bytes | None = None) -> tuple[int, int, bytes]:
        """(return value, the kernel's run time in ns, frame out) of one run."""
        r = libbpf.prog_test_run(self.fd, data, ctx)
        return r.retval, r.duration_ns, r.data

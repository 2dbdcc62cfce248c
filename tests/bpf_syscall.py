"""Programs pinned by the agent, run on hand-built frames with BPF_PROG_TEST_RUN (the raw
bpf(2) syscall: no library between the test and the kernel). Used by the data plane's unit
tests, the fuzzer and the benchmarks' per-packet cost."""

from __future__ import annotations

import ctypes as ct
import os
import struct

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long
SYS_BPF = 321
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
OUT_BYTES = 8192  # a reply may grow the frame; the kernel refuses a smaller data_out


def obj_get(path: str) -> int:
    p = ct.create_string_buffer(path.encode())
    attr = (ct.c_uint8 * 128)()
    struct.pack_into("=QII", attr, 0, ct.addressof(p), 0, 0)
    fd = _libc.syscall(SYS_BPF, BPF_OBJ_GET, attr, 128)
    if fd < 0:
        raise OSError(ct.get_errno(), f"BPF_OBJ_GET {path}")
    return fd


def xdp_ctx(data_len: int, ifindex: int) -> bytes:
    # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    return struct.pack("=IIIIII", 0, data_len, 0, ifindex, 0, 0)


class Prog:
    """A pinned program, opened by path."""

    def __init__(self, path: str | None = None, *, fd: int | None = None) -> None:
        self.fd = obj_get(path) if path is not None else fd
        if self.fd is None:
            raise ValueError("Prog needs a pinned path or an fd")
        self.dout = ct.create_string_buffer(OUT_BYTES)

    def close(self) -> None:
        os.close(self.fd)

    def run(self, data: bytes, ctx: bytes | None = None) -> tuple[int, bytes]:
        """(return value, frame out) of one run."""
        retval, _, out = self.run_timed(data, ctx)
        return retval, out

    def run_timed(self, data: bytes, ctx: bytes | None = None) -> tuple[int, int, bytes]:
        """(return value, the kernel's run time in ns, frame out) of one run."""
        din = ct.create_string_buffer(data, len(data))
        cin = ct.create_string_buffer(ctx, len(ctx)) if ctx else None
        attr = (ct.c_uint8 * 128)()
        # prog_fd retval data_size_in data_size_out data_in data_out repeat duration
        # ctx_size_in ctx_size_out ctx_in ctx_out flags cpu batch_size
        struct.pack_into("=IIIIQQIIIIQQIII", attr, 0, self.fd, 0, len(data), len(self.dout),
                         ct.addressof(din), ct.addressof(self.dout), 1, 0,
                         len(ctx) if ctx else 0, 0, ct.addressof(cin) if cin else 0, 0, 0, 0, 0)
        if _libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, attr, 128) != 0:
            raise OSError(ct.get_errno(), "BPF_PROG_TEST_RUN")
        _, retval, _, size_out, _, _, _, duration = struct.unpack_from("=IIIIQQII", attr, 0)
        return retval, duration, self.dout.raw[:size_out]

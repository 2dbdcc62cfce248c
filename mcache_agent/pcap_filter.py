"""tcpdump filter expressions, compiled by libpcap (the code tcpdump itself uses).

`pcap_compile` turns the expression into a classic BPF program for Ethernet frames, and
`pcap_offline_filter` runs it on each captured frame in the capture process. The data
plane's own filters (interface, verdicts, key prefix) run in the kernel before a frame is
copied; this one runs after, on what they let through.
"""

from __future__ import annotations

import ctypes as ct
from functools import cache
from typing import Any

DLT_EN10MB = 1
SNAPLEN = 65535
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


class FilterError(ValueError):
    """The expression does not compile; the message is libpcap's."""


class _BpfProgram(ct.Structure):
    _fields_ = [("bf_len", ct.c_uint), ("bf_insns", ct.c_void_p)]


class _Timeval(ct.Structure):
    _fields_ = [("tv_sec", ct.c_long), ("tv_usec", ct.c_long)]


class _PktHdr(ct.Structure):
    _fields_ = [("ts", _Timeval), ("caplen", ct.c_uint32), ("len", ct.c_uint32)]


@cache
def _lib() -> Any:
    lib = ct.CDLL("libpcap.so.0.8")
    lib.pcap_open_dead.argtypes = [ct.c_int, ct.c_int]
    lib.pcap_open_dead.restype = ct.c_void_p
    lib.pcap_compile.argtypes = [ct.c_void_p, ct.POINTER(_BpfProgram), ct.c_char_p, ct.c_int,
                                 ct.c_uint32]
    lib.pcap_compile.restype = ct.c_int
    lib.pcap_geterr.argtypes = [ct.c_void_p]
    lib.pcap_geterr.restype = ct.c_char_p
    lib.pcap_offline_filter.argtypes = [ct.POINTER(_BpfProgram), ct.POINTER(_PktHdr),
                                        ct.c_char_p]
    lib.pcap_offline_filter.restype = ct.c_int
    lib.pcap_freecode.argtypes = [ct.POINTER(_BpfProgram)]
    lib.pcap_freecode.restype = None
    lib.pcap_close.argtypes = [ct.c_void_p]
    lib.pcap_close.restype = None
    return lib


class Filter:
    """A compiled expression; match(frame, frame_len) says whether it selects the frame."""

    def __init__(self, expression: str) -> None:
        lib = _lib()
        handle = lib.pcap_open_dead(DLT_EN10MB, SNAPLEN)
        if not handle:
            raise FilterError("libpcap: cannot open a dead handle")
        self._prog = _BpfProgram()
        try:
            if lib.pcap_compile(handle, ct.byref(self._prog), expression.encode(), 1,
                                PCAP_NETMASK_UNKNOWN) != 0:
                raise FilterError(lib.pcap_geterr(handle).decode(errors="replace"))
        finally:
            lib.pcap_close(handle)
        self.expression = expression

    def match(self, frame: bytes, frame_len: int) -> bool:
        hdr = _PktHdr(caplen=len(frame), len=frame_len)
        return _lib().pcap_offline_filter(ct.byref(self._prog), ct.byref(hdr), frame) != 0

    def close(self) -> None:
        if self._prog.bf_insns:
            _lib().pcap_freecode(ct.byref(self._prog))
            self._prog.bf_insns = None

"""Round C's program: bench/reflector.c, compiled with bcc, attached in generic mode."""

from __future__ import annotations

import ctypes as ct
import subprocess
from pathlib import Path

from topo import SERVER_IF, SERVER_NS, in_ns, nsenter

SRC = Path(__file__).with_name("reflector.c")
XDP_FLAGS_SKB_MODE = 1 << 1


def suffix(value_len: int) -> bytes:
    return b" 0 %d\r\n" % value_len + b"r" * value_len + b"\r\nEND\r\n"


class Reflector:
    def __init__(self, value_len: int, port: int = 11211) -> None:
        import bcc

        self.value_len = value_len
        sfx = suffix(value_len)
        self.bpf = bcc.BPF(src_file=str(SRC).encode(),
                           cflags=[f"-DREFL_SUFFIX_LEN={len(sfx)}", f"-DREFL_PORT={port}"])
        self.fn = self.bpf.load_func(b"xdp_reflect", bcc.BPF.XDP)
        table = self.bpf[b"refl_suffix"]
        leaf = table.Leaf()
        ct.memmove(ct.addressof(leaf), sfx, len(sfx))
        table[ct.c_int(0)] = leaf
        self.attached = False

    def attach(self) -> None:
        import bcc

        with in_ns(SERVER_NS):
            bcc.BPF.attach_xdp(SERVER_IF.encode(), self.fn, XDP_FLAGS_SKB_MODE)
        self.attached = True

    def detach(self) -> None:
        import bcc

        if self.attached:
            with in_ns(SERVER_NS):
                bcc.BPF.remove_xdp(SERVER_IF.encode(), XDP_FLAGS_SKB_MODE)
            self.attached = False

    def close(self) -> None:
        self.detach()
        self.bpf.cleanup()


def xdp_off(ifname: str = SERVER_IF, ns: str = SERVER_NS) -> None:
    subprocess.run([*nsenter(ns), "ip", "link", "set", "dev", ifname, "xdpgeneric", "off"],
                   check=False, capture_output=True)

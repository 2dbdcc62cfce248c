"""The capture's record and control, as the agent packs and unpacks them, against the structs
the compiler lays out (bcc's BTF-derived ctypes), and the pcapng it writes."""

from __future__ import annotations

import io
import re
import struct

import bcc
import pytest

from mcache_agent import capture, constants, pcapng
from mcache_agent.dataplane.layout import ctype_layout
from mcache_agent.dataplane.source import inline_source
from mcache_agent.pcap_filter import Filter, FilterError


@pytest.fixture(scope="module")
def layouts():
    text = inline_source(constants.source("mcache_shared.h"))
    b = bcc.BPF(text=text + "\nBPF_ARRAY(ctl, struct mc_capture_ctl, 1);\n"
                            "BPF_ARRAY(hdr, struct mc_capture_hdr, 1);\n")
    return ctype_layout(b["ctl"].Leaf), ctype_layout(b["hdr"].Leaf)


def expand(fmt: struct.Struct) -> list[int]:
    """Offsets of each field (a 64s is one field)."""
    out, at = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z])", fmt.format.lstrip("<")):
        n = int(count) if count else 1
        if code == "s":
            out.append(at)
            at += n
            continue
        for _ in range(n):
            out.append(at)
            at += struct.calcsize("<" + code)
    return out


@pytest.mark.parametrize("which", ["ctl", "hdr"])
def test_formats_match_the_compiled_structs(layouts, which):
    layout = layouts[0] if which == "ctl" else layouts[1]
    fmt = capture.CTL if which == "ctl" else capture.HDR
    assert fmt.size == layout["size"]
    assert expand(fmt) == [f["offset"] for f in layout["fields"].values()]
    assert capture.HDR.size == constants.const("MC_CAP_HDR")


def test_pcapng_blocks_are_well_formed():
    out = io.BytesIO()
    w = pcapng.Writer(out, "test")
    iid = w.interface(7, "veth0", 2048)
    assert w.interface(7, "veth0", 2048) == iid == 0
    w.packet(iid, 1_700_000_000_123_456_789, b"\x01" * 61, 61, comment="mcache verdict=hit",
             outbound=True, verdict=(pcapng.VERDICT_XDP, 3))
    data = out.getvalue()
    blocks, at = [], 0
    while at < len(data):
        kind, length = struct.unpack_from("<II", data, at)
        assert length % 4 == 0 and struct.unpack_from("<I", data, at + length - 4)[0] == length
        blocks.append(kind)
        at += length
    assert blocks == [pcapng.SHB, pcapng.IDB, pcapng.EPB] and at == len(data)


def test_filter_expressions_compile_with_libpcap():
    f = Filter("udp port 11211")
    udp = bytes(12) + b"\x08\x00" + bytes.fromhex("4500001c000040004011000001020304050607080000" +
                                                   "2bcb00080000")
    assert f.match(udp, len(udp))
    assert not Filter("tcp").match(udp, len(udp))
    with pytest.raises(FilterError, match="syntax"):
        Filter("udp port")


def test_verdict_mask():
    names = constants.verdicts()
    assert capture.verdict_mask(["hit"]) == 1
    assert capture.verdict_mask(["none"]) == 1 << len(names)
    assert capture.verdict_mask(None) & (1 << names.index("pass")) == 0
    assert capture.verdict_mask(["all"]) == (1 << (len(names) + 1)) - 1
    with pytest.raises(capture.CaptureError, match="unknown verdict"):
        capture.verdict_mask(["hitt"])

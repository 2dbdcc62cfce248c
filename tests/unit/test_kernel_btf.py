"""The TCP receive state's offsets the write scanner reads come from this kernel's BTF: the
pure-Python reader agrees with bpftool's, and refuses what is not BTF."""

from __future__ import annotations

import re
import subprocess

import pytest

from mcache_agent.dataplane import kernel_btf


def bpftool_offsets() -> dict[str, int]:
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(kernel_btf.VMLINUX)],
                         check=True, capture_output=True, text=True).stdout
    found: dict[str, int] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"\[\d+\] (\w+) '([^']*)'", line)
        if m:
            current = m.group(2) if m.group(1) in ("STRUCT", "UNION") else None
            continue
        members = kernel_btf.WANTED.get(current or "")
        m = re.match(r"\s+'(\w+)' type_id=\d+ bits_offset=(\d+)", line)
        if members and m and m.group(1) in members:
            found[members[m.group(1)]] = int(m.group(2)) // 8
    return found


def test_offsets_agree_with_bpftool():
    ours = kernel_btf.tcp_offsets()
    assert ours == bpftool_offsets()
    assert set(ours) == {d for m in kernel_btf.WANTED.values() for d in m.values()}
    assert kernel_btf.cflags() == [f"-D{k}={v}" for k, v in sorted(ours.items())]


def test_not_btf_is_refused():
    with pytest.raises(kernel_btf.BtfError, match="bad magic"):
        kernel_btf.member_offsets(b"\0" * 64, kernel_btf.WANTED)


def test_a_missing_member_is_named():
    data = kernel_btf.VMLINUX.read_bytes()
    with pytest.raises(kernel_btf.BtfError, match="MC_NOPE"):
        kernel_btf.member_offsets(data, {"tcp_sock": {"no_such_field": "MC_NOPE"}})

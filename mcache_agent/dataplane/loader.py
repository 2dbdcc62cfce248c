"""Compile and load one piece of the data plane in a short-lived worker process.

bcc's compiler (LLVM) costs ~130 MB of resident memory for as long as a process lives, and
is not thread-safe. So the long-lived daemon never imports it: for every program set it
starts workers (the XDP and TC halves compile in parallel), each compiles, loads, fills its
own fresh prog array, pins what it made under <bpffs>/sets/<id>/, prints a JSON line with
what the daemon needs (struct layouts), and exits. The pins keep everything alive.

    python -I -c BOOT PKG_DIR {xdp|tc|sock|root|maps|layout} --bpffs DIR [--set ID] [--cflag F]...

(spawn() builds that line: the worker runs as root, so it imports only the mcache_agent the
daemon itself runs, never one found in the working directory or through PYTHONPATH.)
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mcache_agent import constants
from mcache_agent.dataplane import identity, libbpf
from mcache_agent.dataplane.layout import ctype_layout
from mcache_agent.dataplane.source import inline_source

KINDS = ("xdp", "tc", "sock", "root", "maps", "layout")
XDP_PROGS = ("xdp_main", "xdp_get_key", "xdp_reply", "xdp_scan", "xdp_get_parse",
             "xdp_capture")
TC_PROGS = ("tc_main", "tc_fill_item", "tc_capture")
TAILS = {
    "xdp_get_key": "MC_TAIL_GET_KEY",
    "xdp_reply": "MC_TAIL_REPLY",
    "xdp_scan": "MC_TAIL_SCAN",
    "xdp_get_parse": "MC_TAIL_GET_PARSE",
    "tc_fill_item": "MC_TAIL_FILL_ITEM",
    "xdp_capture": "MC_TAIL_CAPTURE",
    "tc_capture": "MC_TAIL_TC_CAPTURE",
}


MAPS_USER = """
static __always_inline void mc_count(__u32 verdict)
{
}

int mc_maps(void *ctx)
{
    u32 zero = 0;
    struct mc_slot *slot = mc_cache.lookup(&zero);
    return slot ? slot->valid : 0;
}
"""


# The package directory the daemon imported mcache_agent from (site-packages, or a source tree
# given by PYTHONPATH as the benchmarks do): the worker runs the same code.
PKG_DIR = Path(__file__).resolve().parents[2]
# -I (isolated): neither the working directory nor the script's directory goes on sys.path,
# PYTHON* variables and the user's site-packages are ignored. `python -m` from a directory
# another user can write would import their mcache_agent/ as root; this puts only PKG_DIR
# (passed as the first argument) in front of the interpreter's own site-packages.
_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
         "from mcache_agent.dataplane.loader import main; sys.exit(main())")


def worker_argv(kind: str, bpffs: Path, set_id: str, cflags: list[str]) -> list[str]:
    argv = [sys.executable, "-I", "-c", _BOOT, str(PKG_DIR), kind, "--bpffs", str(bpffs)]
    if set_id:
        argv += ["--set", set_id]
    return argv + [f"--cflag={f}" for f in cflags]


def worker_env() -> dict[str, str]:
    """The daemon's environment without PYTHON* (-I ignores them; nothing the worker starts
    should see them either)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def spawn(kind: str, bpffs: Path, set_id: str, cflags: list[str]) -> subprocess.Popen[str]:
    """Start one worker; its JSON result comes on stdout, its failure on stderr."""
    # cwd "/": nothing relative resolves in a directory the daemon happened to start in (so
    # a relative --bpffs is made absolute here, where it means what the daemon meant).
    return subprocess.Popen(worker_argv(kind, Path(bpffs).absolute(), set_id, cflags),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd="/", env=worker_env())


def _pin(fd: int, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    libbpf.obj_pin(fd, path)


def load(kind: str, bpffs: Path, set_id: str, cflags: list[str]) -> dict[str, Any]:
    import bcc
    from bcc import lib

    root_types = {"xdp_root": bcc.BPF.XDP, "tc_root": bcc.BPF.SCHED_CLS,
                  "tc_in_root": bcc.BPF.SCHED_CLS, "sock_root": bcc.BPF.SOCK_OPS,
                  "msg_root": bcc.BPF.SK_MSG}
    if kind == "layout":  # the maps' types, for their identities (identity.py); pins nothing
        b = bcc.BPF(text=inline_source(constants.source("mcache_maps.h")) + MAPS_USER,
                    cflags=[*cflags, "-DMC_LAYOUT_PASS"])
        names = {d.name for d in identity.declarations() if d.kind != "ringbuf"}
        names |= {d.inner for d in identity.declarations() if d.inner}
        return {"config": ctype_layout(b["mc_cfg_tmpl"].Leaf),
                "maps": {n: {"key": ctype_layout(b[n].Key), "leaf": ctype_layout(b[n].Leaf)}
                         for n in sorted(names)}}
    if kind == "maps":  # the state maps of a set, created and pinned before its compiles
        # A function that uses the cache (never loaded) puts struct mc_slot in the BTF that
        # bcc creates the maps with: a map with a spin lock needs it.
        bcc.BPF(text=inline_source(constants.source("mcache_maps.h")) + MAPS_USER, cflags=cflags)
        return {}
    if kind == "root":
        # Only the roots not pinned yet: a pinned root may be attached, and its replacement
        # would not be (an agent upgrade adds the roots it did not have).
        b = bcc.BPF(text=inline_source(constants.source("root.c")), cflags=cflags)
        for name, ptype in root_types.items():
            if not (bpffs / name).exists():
                fn = b.load_func(name, ptype)
                if name == "msg_root":  # the sockhash runs it on every socket it holds
                    bcc.BPF.attach_func(fn, lib.bpf_table_fd(b.module, b"mc_sockhash"),
                                        bcc.BPFAttachType.SK_MSG_VERDICT)
                _pin(fn.fd, bpffs / name)
        return {}
    set_dir = bpffs / "sets" / set_id
    if kind == "sock":
        b = bcc.BPF(text=inline_source(constants.source("sock_bypass.c")), cflags=cflags)
        _pin(b.load_func("sock_main", bcc.BPF.SOCK_OPS).fd, set_dir / "sock_main")
        _pin(b.load_func("msg_main", bcc.BPF.SK_MSG).fd, set_dir / "msg_main")
        return {"entry": "sock_main"}
    src, progs, ptype, jmp = {
        "xdp": ("xdp_ingress.c", XDP_PROGS, bcc.BPF.XDP, "mc_xdp_jmp"),
        "tc": ("tc_egress.c", TC_PROGS, bcc.BPF.SCHED_CLS, "mc_tc_jmp"),
    }[kind]
    b = bcc.BPF(text=inline_source(constants.source(src)), cflags=cflags)
    fns = {n: b.load_func(n, ptype) for n in progs}
    for name, fn in fns.items():
        if name in TAILS:
            b[jmp][ct.c_int(constants.const(TAILS[name]))] = ct.c_int(fn.fd)
    # A prog array empties when its last user reference goes: pin it, and the entry.
    _pin(b[jmp].get_fd(), set_dir / f"{kind}_jmp")
    _pin(fns[progs[0]].fd, set_dir / progs[0])
    out: dict[str, Any] = {"entry": progs[0]}
    if kind == "xdp":  # the config's layout comes with it: no "layout" worker after the load
        out["config"] = ctype_layout(b["mc_cfg_tmpl"].Leaf)
        # TC ingress is compiled with the XDP programs (it shares their lookup and replies)
        _pin(b.load_func("tc_ingress", bcc.BPF.SCHED_CLS).fd, set_dir / "tc_ingress")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mcache_agent.dataplane.loader")
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("--bpffs", type=Path, required=True)
    ap.add_argument("--set", default="")
    ap.add_argument("--cflag", action="append", default=[])
    args = ap.parse_args(argv)
    try:
        result = load(args.kind, args.bpffs, args.set, args.cflag)
    except Exception as exc:  # the daemon shows this in full
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip bcc's teardown: the pins keep everything; closing fds is all that is left


if __name__ == "__main__":
    sys.exit(main())

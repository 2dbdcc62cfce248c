"""Where a program set's compile+load time goes: python start + bcc import, bcc/LLVM compile,
then BPF_PROG_LOAD (verifier + JIT) of each program, with the verifier's instruction counts
(the kernel's prog info). Same sources and flags as the agent's loader worker, run one half
after the other in this process; maps are pinned under a scratch bpffs dir, removed afterwards.

    python bench/compile_split.py --pin /sys/fs/bpf/mcache-bench-compile --cflag=-D...
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pin", required=True)
    ap.add_argument("--cflag", action="append", default=[])
    ap.add_argument("--start", type=float, default=0.0, help="time.time() when launched")
    args = ap.parse_args()
    t_imp = time.perf_counter()
    import bcc

    from mcache_agent import constants
    from mcache_agent.dataplane import libbpf
    from mcache_agent.dataplane.loader import TC_PROGS, XDP_PROGS
    from mcache_agent.dataplane.source import inline_source

    res: dict = {"import_bcc_s": time.perf_counter() - t_imp,
                 "python_start_s": (time.time() - args.start) - (time.perf_counter() - T0)
                 if args.start else None}
    Path(args.pin).mkdir(parents=True, exist_ok=True)
    try:
        for kind, src, progs, ptype in (("xdp", "xdp_ingress.c", XDP_PROGS, bcc.BPF.XDP),
                                        ("tc", "tc_egress.c", TC_PROGS, bcc.BPF.SCHED_CLS)):
            t = time.perf_counter()
            b = bcc.BPF(text=inline_source(constants.source(src)), cflags=args.cflag)
            res[f"{kind}_compile_s"] = time.perf_counter() - t
            loads = {}
            for name in progs:
                t = time.perf_counter()
                fn = b.load_func(name, ptype)
                dt = time.perf_counter() - t
                loads[name] = {"load_s": dt,
                               "verified_insns": libbpf.prog_info(fn.fd).verified_insns}
            res[f"{kind}_load"] = loads
            res[f"{kind}_load_total_s"] = sum(x["load_s"] for x in loads.values())
    finally:
        shutil.rmtree(args.pin, ignore_errors=True)
    res["total_s"] = time.perf_counter() - T0
    print(json.dumps(res))
    os._exit(0)


if __name__ == "__main__":
    main()

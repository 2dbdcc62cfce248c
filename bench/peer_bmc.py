"""Round D's system: BMC (NSDI'21, the peer mcache is measured against), run from its own build.

BMC is a benchmark input only: nothing of it is copied here. Its loader is built by the peer's
own script (`build.sh OUT_DIR` -> OUT_DIR/bmc, OUT_DIR/bmc_kern.o) and run as a child process
in the server netns: `bmc -s STATS_FILE IFACE` attaches BMC's XDP program (generic mode) and its
tc egress program, prints `TX filter attached` once both are on, writes its counters to
STATS_FILE on SIGUSR1 (and keeps running) or on SIGTERM (then detaches everything and exits).
Each start begins with an empty cache (the maps are new).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from topo import SERVER_IF, SERVER_NS, nsenter

# The peer's port lives beside the checkout (../shared/peers/bmc); MCACHE_BENCH_BMC_SRC elsewhere.
BUILD_SH = Path(os.environ.get("MCACHE_BENCH_BMC_SRC",
                               Path(__file__).resolve().parents[2] / "shared" / "peers" / "bmc")
                ) / "build.sh"
READY = "TX filter attached"
# BMC's stats file: "STAT <name> <u32>" lines, counters summed over CPUs (bmc_user.c);
# get_key_count holds hit_misprediction.
LAST_STAT = "invalidation_count"

_running: set[Bmc] = set()


def ensure_built(out_dir: Path, build_sh: Path = BUILD_SH) -> Path:
    """OUT_DIR holding a built BMC; built there with the peer's build.sh when OUT_DIR/bmc or
    OUT_DIR/bmc_kern.o is missing (an existing build is reused as it is)."""
    out_dir = out_dir.resolve()
    if (out_dir / "bmc").is_file() and (out_dir / "bmc_kern.o").is_file():
        return out_dir
    if not build_sh.is_file():
        raise RuntimeError(f"no BMC in {out_dir} and no {build_sh} to build it")
    print(f"building BMC into {out_dir} ({build_sh})", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([str(build_sh), str(out_dir)], capture_output=True, text=True,
                       timeout=1800)
    if p.returncode != 0 or not (out_dir / "bmc").is_file():
        raise RuntimeError(f"BMC build failed ({p.returncode}):\n{p.stdout[-2000:]}"
                           f"{p.stderr[-2000:]}")
    return out_dir


def parse_stats(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "STAT" and parts[2].isdigit():
            out[parts[1]] = int(parts[2])
    return out


def counter_diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    # u32 counters: a wrap shows as a negative difference
    return {k: (v - a.get(k, 0)) % (1 << 32) for k, v in b.items()}


def hit_ratio(c: dict[str, int]) -> float | None:
    """Per key looked up: hit_count / (hit_count + miss_count); None when BMC looked up none."""
    looked = c.get("hit_count", 0) + c.get("miss_count", 0)
    return c.get("hit_count", 0) / looked if looked else None


def xdp_prog(ifname: str = SERVER_IF, ns: str = SERVER_NS) -> dict | None:
    """The XDP program attached to ifname (ip's JSON for it), None when there is none."""
    p = subprocess.run([*nsenter(ns), "ip", "-j", "-d", "link", "show", "dev", ifname],
                       capture_output=True, text=True, check=True)
    links = json.loads(p.stdout)
    return links[0].get("xdp") if links else None


class Bmc:
    """One BMC loader process on the server veth, started and stopped by pid."""

    def __init__(self, build_dir: Path, ifname: str = SERVER_IF, ns: str = SERVER_NS) -> None:
        self.dir = Path(build_dir).resolve()
        self.binary = self.dir / "bmc"
        if not (self.binary.is_file() and (self.dir / "bmc_kern.o").is_file()):
            raise RuntimeError(f"{self.dir} holds no built BMC (bmc, bmc_kern.o)")
        self.ifname, self.ns = ifname, ns
        self.tmp = Path(tempfile.mkdtemp(prefix="mcache-bench-bmc-"))
        self.stats_file = self.tmp / "stats.txt"
        self.log_file = self.tmp / "bmc.log"
        self.proc: subprocess.Popen | None = None
        self.start_s: float | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text(errors="replace")[-n:]
        return ""

    def start(self, timeout: float = 60.0) -> None:
        """Attach BMC (a new, empty cache): refused when an XDP program is on the interface."""
        if self.proc is not None:
            raise RuntimeError("BMC already running")
        other = xdp_prog(self.ifname, self.ns)
        if other:
            raise RuntimeError(f"an XDP program is already on {self.ifname}: {other}")
        self.stats_file.unlink(missing_ok=True)
        t0 = time.perf_counter()
        with open(self.log_file, "w") as log:
            # nsenter execs bmc: the child's pid is the loader's
            self.proc = subprocess.Popen(
                [*nsenter(self.ns), str(self.binary), "-s", str(self.stats_file), self.ifname],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _running.add(self)
        try:
            deadline = time.monotonic() + timeout
            while READY not in self.log_tail(1 << 16):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"BMC exited ({self.proc.returncode}) before attaching:\n"
                                       f"{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"BMC not attached after {timeout:.0f} s:\n"
                                       f"{self.log_tail()}")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.perf_counter() - t0

    def _read_stats(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                text = self.stats_file.read_text()
                if LAST_STAT in text:
                    return parse_stats(text)
            if time.monotonic() > deadline:
                raise RuntimeError(f"BMC wrote no counters to {self.stats_file}:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.01)

    def snapshot(self, timeout: float = 10.0) -> dict[str, int]:
        """BMC's counters now (SIGUSR1: it writes them and keeps running)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"BMC is not running:\n{self.log_tail()}")
        self.stats_file.unlink(missing_ok=True)
        os.kill(self.proc.pid, signal.SIGUSR1)
        return self._read_stats(timeout)

    def stop(self, timeout: float = 15.0) -> dict[str, int] | None:
        """SIGTERM by pid and wait: BMC writes its counters (returned) and detaches itself.
        If it does not exit, SIGKILL and take its XDP program and tc filter off by hand."""
        p = self.proc
        if p is None:
            return None
        self.proc = None
        _running.discard(self)
        if p.poll() is None:
            self.stats_file.unlink(missing_ok=True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
                self._force_detach()
                raise RuntimeError(f"BMC did not stop on SIGTERM: killed, detached by hand:\n"
                                   f"{self.log_tail()}") from None
        if p.returncode != 0:
            # a failed or signalled loader may have left its programs on
            self._force_detach()
            raise RuntimeError(f"BMC exited with {p.returncode}:\n{self.log_tail()}")
        with contextlib.suppress(RuntimeError):
            return self._read_stats(1.0)
        return None

    def _force_detach(self) -> None:
        subprocess.run([*nsenter(self.ns), "ip", "link", "set", "dev", self.ifname,
                        "xdpgeneric", "off"], check=False, capture_output=True)
        # BMC's egress filter: "TX filter attached ... (handle H, priority P)"
        for line in self.log_tail(1 << 16).splitlines():
            if READY in line and "priority" in line:
                prio = line.rsplit("priority", 1)[1].strip(" )")
                subprocess.run([*nsenter(self.ns), "tc", "filter", "del", "dev", self.ifname,
                                "egress", "pref", prio], check=False, capture_output=True)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


@atexit.register
def _stop_all() -> None:
    for b in list(_running):
        with contextlib.suppress(Exception):
            b.stop()

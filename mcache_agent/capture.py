"""`mcache-agent capture`: frames the data plane saw, with what it decided, into pcapng.

The kernel side (bpf/mcache_verdict.h) copies a frame to the capture ring when a capture
runs and its filters select the frame: the interface, the verdicts counted for it, and a
prefix of the key it is about. This process turns the capture on (mc_capture_ctl), renews
its lease while it runs (the kernel copies nothing once a lease runs out, so a capture
killed with SIGKILL stops by itself), reads the ring, applies a tcpdump expression
(pcap_filter), and writes pcapng: one Enhanced Packet Block per record, with the verdicts,
path, stage, action, key and config version in its comment, the direction in epb_flags and
the XDP/TC action in epb_verdict.

It reads the pins directly, so it works while the agent is down; it never changes what the
data plane answers (the programs only copy frames out).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

from mcache_agent import constants
from mcache_agent.dataplane import libbpf
from mcache_agent.dataplane.pins import PinDir
from mcache_agent.pcap_filter import Filter
from mcache_agent.pcapng import VERDICT_TC, VERDICT_XDP, Writer

# struct mc_capture_ctl and struct mc_capture_hdr (mcache_shared.h); tests/unit/test_limits.py
# checks both against the compiled structs.
CTL = struct.Struct("<IIIIQII64s")
HDR = struct.Struct("<QIIIIHHBBBB64s")
LEASE_S = 3.0  # the kernel stops copying this long after the last renewal
RENEW_S = 1.0
XDP_ACTIONS = ("XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT")
TC_ACTIONS = {0: "TC_ACT_OK", 2: "TC_ACT_SHOT", 7: "TC_ACT_REDIRECT"}
DEFAULT_SKIP = ("pass",)  # not memcached traffic: tcpdump's job, unless asked for


class CaptureError(Exception):
    pass


class Control(NamedTuple):
    """struct mc_capture_ctl."""

    on: int
    ifindex: int
    verdicts: int
    snaplen: int
    until_ns: int
    owner: int
    key_len: int
    key: bytes

    @classmethod
    def unpack(cls, raw: bytes | None) -> Control:
        return cls(*CTL.unpack(raw or bytes(CTL.size)))

    def live(self) -> bool:
        """A capture runs: on, its lease not run out, its process alive."""
        return bool(self.on) and self.until_ns > time.monotonic_ns() and _alive(self.owner)


def verdict_names() -> tuple[str, ...]:
    """What --verdict accepts: every verdict, and "none" (frames that got no verdict)."""
    return (*constants.verdicts(), "none")


def verdict_mask(names: list[str] | None) -> int:
    """The kernel's verdict filter: a bit per verdict (MC_V_*), MC_CAP_NONE for "none".
    Default: every verdict but those in DEFAULT_SKIP."""
    all_verdicts = constants.verdicts()
    if not names:
        names = [v for v in all_verdicts if v not in DEFAULT_SKIP]
    elif "all" in names:
        names = list(verdict_names())
    mask = 0
    for name in names:
        if name == "none":
            mask |= 1 << len(all_verdicts)  # MC_CAP_NONE = MC_V_COUNT
        elif name in all_verdicts:
            mask |= 1 << all_verdicts.index(name)
        else:
            raise CaptureError(f"unknown verdict {name!r} (one of: all, "
                               f"{', '.join(verdict_names())})")
    return mask


@dataclass(frozen=True)
class Spec:
    """What to capture, and when to stop."""

    interface: str | None = None
    verdicts: list[str] | None = None
    key_prefix: bytes = b""
    expression: str | None = None
    snaplen: int = 0  # 0: whole frames (up to MC_CAP_SNAP)
    count: int = 0  # 0: no limit
    duration_s: float = 0.0  # 0: no limit


@dataclass(frozen=True)
class Frame:
    """One capture record, decoded."""

    ts_ns: int  # bpf_ktime_get_ns
    ifindex: int
    version: int
    verdicts: tuple[str, ...]
    frame_len: int
    path: str
    stage: str
    action: int
    key: bytes
    key_len: int  # the key's real length (key may be cut at MC_CAP_KEY bytes)
    data: bytes

    @property
    def outbound(self) -> bool:
        return self.stage != "in"

    @property
    def tc(self) -> bool:
        """Decided by a TC program (its action is a TC one), else by XDP."""
        return self.path.startswith("tc_")

    def action_name(self) -> str:
        if self.tc:
            return TC_ACTIONS.get(self.action, str(self.action))
        return XDP_ACTIONS[self.action] if self.action < len(XDP_ACTIONS) else str(self.action)

    def comment(self) -> str:
        parts = [f"mcache verdict={','.join(self.verdicts) or 'none'}", f"path={self.path}",
                 f"stage={self.stage}", f"action={self.action_name()}",
                 f"version={self.version}"]
        if self.key_len:
            text = self.key.decode("ascii", "backslashreplace")
            text = "".join(c if c.isprintable() and c != " " else f"\\x{ord(c):02x}"
                           for c in text)
            cut = "..." if self.key_len > len(self.key) else ""
            parts.append(f"key={text}{cut}")
        return " ".join(parts)


def decode(raw: bytes) -> Frame:
    (ts, ifindex, version, bits, frame_len, cap_len, key_full, path, stage, action, key_len,
     key) = HDR.unpack_from(raw)
    verdicts = constants.verdicts()
    paths, stages = constants.paths(), constants.capture_stages()
    return Frame(
        ts_ns=ts, ifindex=ifindex, version=version,
        verdicts=tuple(v for i, v in enumerate(verdicts) if bits >> i & 1),
        frame_len=frame_len,
        path=paths[path] if path < len(paths) else str(path),
        stage=stages[stage] if stage < len(stages) else str(stage),
        action=action, key=key[:key_len], key_len=key_full,
        data=raw[HDR.size : HDR.size + cap_len],
    )


@dataclass
class Summary:
    written: int = 0
    filtered_out: int = 0
    lost: int = 0  # records the kernel's ring had no room for
    reason: str = ""
    by_verdict: dict[str, int] = field(default_factory=dict)


def _ifname(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"if{ifindex}"


class Session:
    """The kernel side of one capture: on while the session is open, off when it closes."""

    def __init__(self, bpffs: Path, spec: Spec) -> None:
        pins = PinDir(bpffs)
        record = pins.record() if pins.root.exists() else None
        if record is None:
            raise CaptureError(f"no data plane is pinned under {bpffs}")
        self.state = pins.state_dir(record)
        if not (self.state / "capture_ring").exists():
            raise CaptureError("the running data plane predates capture: apply a config to "
                               "upgrade it")
        ifindex = 0
        if spec.interface:
            try:
                ifindex = socket.if_nametoindex(spec.interface)
            except OSError:
                raise CaptureError(f"no interface {spec.interface!r}") from None
        key_room = constants.const("MC_CAP_KEY")
        if len(spec.key_prefix) > key_room:
            raise CaptureError(f"--key: at most {key_room} bytes")
        snap = constants.const("MC_CAP_SNAP")
        if not 0 <= spec.snaplen <= snap:
            raise CaptureError(f"--snaplen: 0 to {snap}")
        self.snaplen = spec.snaplen or snap
        # what this capture asks of the kernel; renew() adds the lease
        self._want = Control(on=1, ifindex=ifindex, verdicts=verdict_mask(spec.verdicts),
                             snaplen=self.snaplen, until_ns=0, owner=os.getpid(),
                             key_len=len(spec.key_prefix), key=spec.key_prefix)
        self._fds: list[int] = []
        self._ctl = self._open("capture_ctl")
        self._on = False
        self.lost_before = 0

    def _open(self, name: str) -> int:
        fd = libbpf.obj_get(self.state / name)
        self._fds.append(fd)
        return fd

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def _read_ctl(self) -> Control:
        return Control.unpack(libbpf.map_lookup(self._ctl, bytes(4), CTL.size))

    def start(self) -> None:
        ctl = self._read_ctl()
        if ctl.live() and ctl.owner != os.getpid():
            raise CaptureError(f"a capture is running already (pid {ctl.owner})")
        self.lost_before = self.lost()
        self.renew()

    def renew(self) -> None:
        """(Re)writes the control with a fresh lease: bpf_ktime_get_ns is CLOCK_MONOTONIC."""
        until = time.monotonic_ns() + int(LEASE_S * 1e9)
        value = CTL.pack(*self._want._replace(until_ns=until))
        libbpf.map_update(self._ctl, bytes(4), value)
        self._on = True

    def lost(self) -> int:
        with libbpf.opened(self.state / "capture_lost") as fd:
            per_cpu = libbpf.percpu_lookup(fd, bytes(4), 8) or []
        return sum(int.from_bytes(v, "little") for v in per_cpu)

    def ring(self, on_record: Callable[[bytes], None]) -> libbpf.RingBuffer:
        return libbpf.RingBuffer(self._open("capture_ring"), on_record)

    def stop(self) -> None:
        """Capture off (unless another process has taken it over since)."""
        if self._on:
            if self._read_ctl().owner == os.getpid():
                libbpf.map_update(self._ctl, bytes(4), bytes(CTL.size))
            self._on = False


def active(bpffs: Path) -> int | None:
    """The pid of the capture running on the data plane pinned at bpffs, if one runs."""
    pins = PinDir(bpffs)
    record = pins.record() if pins.root.exists() else None
    ctl = pins.state_dir(record) / "capture_ctl" if record else None
    if ctl is None or not ctl.exists():
        return None
    with libbpf.opened(ctl) as fd:
        control = Control.unpack(libbpf.map_lookup(fd, bytes(4), CTL.size))
    return control.owner if control.live() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create_output(path: Path) -> BinaryIO:
    """A new capture file, readable by its owner only: it holds keys and values. O_EXCL never
    truncates or writes through what is there (a file, or a symlink another user planted in
    /tmp pointing at one of root's files); O_NOFOLLOW says so for symlinks in so many words."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise CaptureError(_exists(path)) from None
    return os.fdopen(fd, "wb")


def _exists(path: Path) -> str:
    return f"{path} exists: not overwriting it (remove it, or write to a new file)"


def run(bpffs: Path, spec: Spec, out: BinaryIO | Path, *,
        should_stop: Callable[[], bool] = lambda: False) -> Summary:
    """Captures until spec's count or duration is reached, or should_stop() says so.

    `out` is a stream, or the path of a file to create (create_output) once the capture has
    started: a capture that cannot start (no pins, another capture running, a bad filter)
    leaves no file behind."""
    if isinstance(out, Path) and os.path.lexists(out):
        raise CaptureError(_exists(out))  # before the kernel is asked for anything
    summary = Summary()
    with contextlib.ExitStack() as stack:
        expr = Filter(spec.expression) if spec.expression else None
        if expr is not None:
            stack.callback(expr.close)
        session = stack.enter_context(Session(bpffs, spec))
        session.start()
        stream = stack.enter_context(create_output(out)) if isinstance(out, Path) else out
        writer = Writer(stream, "mcache-agent capture")
        clock = time.time_ns() - time.monotonic_ns()  # ktime -> wall time
        full = False

        def on_record(raw: bytes) -> None:
            nonlocal full
            if full:
                return
            frame = decode(raw)
            if expr is not None and not expr.match(frame.data, frame.frame_len):
                summary.filtered_out += 1
                return
            iface = writer.interface(frame.ifindex, _ifname(frame.ifindex), session.snaplen)
            kind = VERDICT_TC if frame.tc else VERDICT_XDP
            writer.packet(iface, frame.ts_ns + clock, frame.data, frame.frame_len,
                          comment=frame.comment(), outbound=frame.outbound,
                          verdict=(kind, frame.action))
            summary.written += 1
            for v in frame.verdicts or ("none",):
                summary.by_verdict[v] = summary.by_verdict.get(v, 0) + 1
            full = bool(spec.count) and summary.written >= spec.count

        started = renewed = time.monotonic()
        try:
            with session.ring(on_record) as ring:
                poll_ms = constants.const("MC_CAP_POLL_MS")
                while not summary.reason:
                    # most records wake nobody (MC_CAP_WAKE_EVERY): read on a timer too
                    ring.poll(poll_ms)
                    ring.drain()
                    now = time.monotonic()
                    if full:
                        summary.reason = f"{spec.count} frames"
                    elif spec.duration_s and now - started >= spec.duration_s:
                        summary.reason = f"{spec.duration_s:g} s"
                    elif should_stop():
                        summary.reason = "interrupted"
                    elif now - renewed >= RENEW_S:
                        session.renew()
                        renewed = now
                session.stop()  # the kernel copies no more; what it copied is written
                ring.drain()
        finally:
            session.stop()
            summary.lost = session.lost() - session.lost_before
    return summary

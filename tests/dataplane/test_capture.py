"""`mcache-agent capture` against real traffic: the CLI in the server's namespace, a real
memcached and real clients, the pcapng read back by Debian's tshark."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nsutil import NsClient, Pair

from mcache_agent import capture

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pair():
    p = Pair("cap", 18).up()
    yield p
    p.down()


@pytest.fixture(scope="module")
def cli(pair):
    return NsClient(pair, pair.c)


class Capture:
    """The CLI running in the server namespace (nsenter: /sys, and so the pins, stay)."""

    def __init__(self, pair: Pair, out: Path | None, *args: str) -> None:
        self.out = out
        cmd = ["nsenter", f"--net=/var/run/netns/{pair.s}", sys.executable, "-m",
               "mcache_agent.cli", "capture", "--bpffs", str(pair.pin),
               "--write", str(out) if out else "-", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while capture.active(pair.pin) != self.proc.pid:
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "the capture did not start"
            time.sleep(0.05)

    def stop(self) -> tuple[bytes, str]:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err
        return out, err.decode()


def tshark(path: Path | str, *fields: str, stdin: bytes | None = None) -> list[list[str]]:
    args = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for f in fields:
        args += ["-e", f]
    r = subprocess.run(args, input=stdin, capture_output=True, check=True)
    return [line.split("|") for line in r.stdout.decode().splitlines()]


def test_capture_of_real_traffic_reads_back_in_tshark(pair, cli, tmp_path):
    out = tmp_path / "c.pcapng"
    cap = Capture(pair, out)
    cli.mc.set(b"tk", b"tv")  # TCP: invalidate
    assert cli.udp_get(b"tk") == {b"tk": b"tv"}  # miss, then memcached's reply fills
    gets = cli.cmd_get()
    assert cli.udp_get(b"tk") == {b"tk": b"tv"}  # hit: request, and the XDP_TX reply
    assert cli.cmd_get() == gets
    _, err = cap.stop()
    assert "frames written" in err
    rows = tshark(out, "frame.comment", "frame.interface_name", "udp.srcport",
                  "frame.verdict.ebpf_xdp", "frame.verdict.ebpf_tc")
    comments = [r[0] for r in rows]
    v = pair.version
    want = [f"mcache verdict=invalidate path=xdp_scan stage=in action=XDP_PASS version={v} key=tk",
            f"mcache verdict=miss path=xdp_main stage=in action=XDP_PASS version={v} key=tk",
            f"mcache verdict=fill path=tc_main stage=egress action=TC_ACT_OK version={v} key=tk",
            f"mcache verdict=hit path=xdp_main stage=in action=XDP_TX version={v} key=tk",
            f"mcache verdict=hit path=xdp_main stage=tx action=XDP_TX version={v} key=tk"]
    assert comments == want, rows
    assert {r[1] for r in rows} == {pair.sif}
    assert rows[4][2] == "11211"  # the reply the kernel sent comes from memcached's port
    assert rows[3][3] == rows[4][3] == "3" and rows[2][4] == "0"  # XDP_TX, TC_ACT_OK


def test_filters_select_and_stdout_feeds_tshark(pair, cli):
    cli.mc.set(b"sel1", b"a")
    cli.mc.set(b"oth1", b"b")
    cli.udp_get(b"sel1")
    cli.udp_get(b"oth1")
    cap = Capture(pair, None, "--verdict", "hit", "--key", "sel", "--filter",
                  "udp src port 11211")
    for _ in range(2):
        assert cli.udp_get(b"sel1") == {b"sel1": b"a"}
        assert cli.udp_get(b"oth1") == {b"oth1": b"b"}
    cli.mc.set(b"sel1", b"c")
    pcap, err = cap.stop()
    rows = tshark("-", "frame.comment", stdin=pcap)
    # hits of sel1 only, and of those only the replies (memcached's port as the source)
    assert [r[0].split()[1:] for r in rows] == [
        ["verdict=hit", "path=xdp_main", "stage=tx", "action=XDP_TX",
         f"version={pair.version}", "key=sel1"]] * 2, rows
    assert "2 not matching --filter" in err


def test_bad_filters_are_refused_and_change_nothing(pair, tmp_path):
    for args, msg in [(["--filter", "udp port"], "syntax error"),
                      (["--verdict", "hitt"], "unknown verdict"),
                      (["--interface", "nope0"], "no interface")]:
        r = subprocess.run(["nsenter", f"--net=/var/run/netns/{pair.s}", sys.executable, "-m",
                            "mcache_agent.cli", "capture", "--bpffs", str(pair.pin), "--write",
                            str(tmp_path / "x.pcapng"), *args], cwd=ROOT, capture_output=True)
        assert r.returncode == 2 and msg in r.stderr.decode(), r.stderr
        assert capture.active(pair.pin) is None


def test_a_killed_capture_stops_copying_by_its_lease(pair, cli, tmp_path):
    cap = Capture(pair, tmp_path / "k.pcapng")
    cap.proc.kill()
    cap.proc.wait()
    deadline = time.monotonic() + capture.LEASE_S + 2
    while capture.active(pair.pin) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # a new capture may start at once: the dead one's claim is not honoured
    again = Capture(pair, tmp_path / "k2.pcapng", "--count", "1")
    cli.mc.set(b"after_kill", b"x")
    again.proc.wait(timeout=20)
    assert again.proc.returncode == 0
    assert len(tshark(tmp_path / "k2.pcapng", "frame.comment")) == 1

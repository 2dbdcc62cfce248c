"""Issue 22, the local edges: what another local user (or a file left lying around) could do to
root's agent, its tools and the controller. See docs/SECURITY.md, "Local edges".

- loader workers import only the agent's own code (not a planted mcache_agent/ in the working
  directory, nor one on PYTHONPATH);
- `capture --write` makes a new 0600 file, never through a symlink or over an existing file,
  and only once the capture has started;
- Ansible checks host keys everywhere but in the lab, and keeps its ssh control sockets in a
  private directory.

(The control socket's edges are in test_control.py.)
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcache_agent import capture, cli
from mcache_agent.dataplane import loader, sets
from mcache_agent.dataplane.pins import PinDir

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"

# --------------------------------------------------------------------------- loader workers

PLANT = """\
import os, pathlib
pathlib.Path({marker!r}).write_text("imported " + __name__ + " from " + os.getcwd())
"""


def plant(where: Path, marker: Path) -> None:
    """What another user could leave in a directory they can write (and root then starts the
    agent from, or lists on PYTHONPATH): mcache_agent/ with the loader's module path, bcc/,
    and a sitecustomize (imported at start-up from anywhere on sys.path)."""
    code = PLANT.format(marker=str(marker))
    for rel in ("mcache_agent/__init__.py", "mcache_agent/dataplane/__init__.py",
                "mcache_agent/dataplane/loader.py", "bcc/__init__.py", "sitecustomize.py"):
        (where / rel).parent.mkdir(parents=True, exist_ok=True)
        (where / rel).write_text(code)


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The working directory and PYTHONPATH both hold a planted package; yields the marker
    the planted code writes when it is imported."""
    cwd, path_dir = tmp_path / "cwd", tmp_path / "pythonpath"
    marker = tmp_path / "PWNED"
    for d in (cwd, path_dir):
        d.mkdir()
        plant(d, marker)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PYTHONPATH", str(path_dir))
    yield marker


def test_the_plant_works_on_the_old_command_line(planted: Path) -> None:
    """The test's own check: `python -m mcache_agent.dataplane.loader` (the old command) in
    the planted directory runs the planted code."""
    subprocess.run([sys.executable, "-m", "mcache_agent.dataplane.loader", "--help"],
                   capture_output=True, timeout=60, check=False)
    assert planted.exists()


def test_the_worker_command_imports_only_the_agents_code(planted: Path) -> None:
    argv = loader.worker_argv("layout", Path("/sys/fs/bpf/x"), "", [])
    assert argv[:2] == [sys.executable, "-I"] and Path(argv[4]).is_absolute()
    r = subprocess.run([*argv[:5], "--help"], capture_output=True, text=True, timeout=60,
                       env=loader.worker_env(), check=False)
    assert r.returncode == 0 and "mcache_agent.dataplane.loader" in r.stdout, r.stderr
    assert not planted.exists(), planted.read_text()
    assert "PYTHONPATH" in os.environ and "PYTHONPATH" not in loader.worker_env()


def test_a_real_load_from_a_planted_directory_runs_no_planted_code(
        planted: Path, tmp_path: Path) -> None:
    """The real spawn path (sets.run_workers, as a program swap runs it) with a real compile:
    the "layout" worker compiles the shared header with bcc and pins nothing."""
    pins = PinDir(tmp_path / "pins")  # not read by a layout worker
    [result] = sets.run_workers(pins, ["layout"], [])
    assert "config" in result
    assert not planted.exists(), planted.read_text()


# --------------------------------------------------------------------------- capture --write


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)  # a usual umask: the file must be 0600 all the same
    yield
    os.umask(old)


def test_create_output_is_new_and_private(tmp_path: Path, umask022: None) -> None:
    path = tmp_path / "c.pcapng"
    with capture.create_output(path) as f:
        f.write(b"x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b"x"


def test_create_output_never_writes_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "shadow"
    target.write_text("root's file\n")
    link = tmp_path / "c.pcapng"
    link.symlink_to(target)
    with pytest.raises(capture.CaptureError, match="exists"):
        capture.create_output(link)
    assert target.read_text() == "root's file\n"
    # a dangling one is not followed either (it would create the file it points at)
    dangling = tmp_path / "d.pcapng"
    dangling.symlink_to(tmp_path / "made-through-link")
    with pytest.raises(capture.CaptureError, match="exists"):
        capture.create_output(dangling)
    assert not (tmp_path / "made-through-link").exists()


def run_capture(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                *args: str) -> tuple[int, str]:
    # cmd_capture installs SIGINT/SIGTERM handlers: not in pytest's process
    monkeypatch.setattr("signal.signal", lambda *a: None)
    code = cli.main(["capture", *args])
    return code, capsys.readouterr().err


class FakeRing:
    def __enter__(self) -> FakeRing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def poll(self, ms: int) -> None:
        time.sleep(ms / 1000)

    def drain(self) -> None:
        pass


class FakeSession:
    """Session's kernel side, without a kernel: `refuse` makes start() fail as it does when
    another capture runs."""

    refuse: str | None = None

    def __init__(self, bpffs: Path, spec: capture.Spec) -> None:
        self.snaplen, self.lost_before = 64, 0

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self) -> None:
        if self.refuse:
            raise capture.CaptureError(self.refuse)

    def renew(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def lost(self) -> int:
        return 0

    def ring(self, on_record: Callable[[bytes], None]) -> FakeRing:
        return FakeRing()


def test_a_capture_that_cannot_start_creates_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "c.pcapng"
    # no pins: the real Session refuses
    code, err = run_capture(capsys, monkeypatch, "--bpffs", str(tmp_path / "nopins"),
                            "-w", str(out))
    assert code == cli.EXIT_INVALID and "no data plane is pinned" in err
    assert not out.exists()
    # another capture runs: refused by start(), still before the file
    monkeypatch.setattr(capture, "Session", type("Busy", (FakeSession,), {
        "refuse": "a capture is running already (pid 1)"}))
    code, err = run_capture(capsys, monkeypatch, "-w", str(out))
    assert code == cli.EXIT_INVALID and "running already" in err
    assert not out.exists()


def test_an_existing_file_is_refused_and_left_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture, "Session", FakeSession)
    out = tmp_path / "c.pcapng"
    out.write_bytes(b"an earlier capture")
    os.chmod(out, 0o640)
    before = out.stat()
    code, err = run_capture(capsys, monkeypatch, "-w", str(out), "--duration", "0.1")
    assert code == cli.EXIT_INVALID and "exists: not overwriting it" in err
    after = out.stat()
    assert out.read_bytes() == b"an earlier capture"
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    # the same through a symlink to a file the link's maker wants overwritten
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    link = tmp_path / "l.pcapng"
    link.symlink_to(victim)
    code, err = run_capture(capsys, monkeypatch, "-w", str(link), "--duration", "0.1")
    assert code == cli.EXIT_INVALID and "exists" in err and victim.read_text() == "keep\n"


def test_a_capture_writes_a_new_private_file_and_stdout_still_works(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        umask022: None) -> None:
    monkeypatch.setattr(capture, "Session", FakeSession)
    out = tmp_path / "c.pcapng"
    code, err = run_capture(capsys, monkeypatch, "-w", str(out), "--duration", "0.1")
    assert code == cli.EXIT_OK, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"  # a pcapng section header block
    # -w - writes to stdout as before (no file involved)
    r = subprocess.run([sys.executable, "-c", (
        "import sys; from mcache_agent import capture, cli; "
        "from tests.unit.test_local_edges import FakeSession; "
        "capture.Session = FakeSession; sys.exit(cli.main(sys.argv[1:]))"),
        "capture", "-w", "-", "--duration", "0.1"], cwd=REPO, capture_output=True,
        timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout[:4] == b"\x0a\x0d\x0d\x0a"


# --------------------------------------------------------------------------- ansible


def ansible_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return {**env, "HOME": str(home), "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1", "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"}


def test_effective_config_checks_host_keys_and_keeps_sockets_private(tmp_path: Path) -> None:
    r = subprocess.run([str(VENV_BIN / "ansible-config"), "dump", "--only-changed", "-t", "all",
                        "--format", "json"], cwd=REPO, env=ansible_env(tmp_path),
                       capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(r.stdout)
    base = {e["name"]: e["value"] for e in doc if isinstance(e, dict) and "name" in e}
    assert base.get("HOST_KEY_CHECKING", True) is True
    ssh: dict[str, Any] = {}
    for e in doc:
        for plugin in (e.get("connection") or []) if isinstance(e, dict) else []:
            ssh.update({o["name"]: o["value"] for o in plugin.get("ssh", [])})
    assert ssh.get("host_key_checking", True) is True
    cp_dir = ssh.get("control_path_dir", "~/.ansible/cp")
    assert not os.path.expanduser(cp_dir).startswith("/tmp")
    assert cp_dir.startswith("~/")
    assert "%%C" in ssh.get("control_path", "%(directory)s/%%C")


def lab_vars() -> dict[str, Any]:
    return yaml.safe_load((REPO / "inventory" / "lab" / "group_vars" / "all.yml").read_text())


def test_only_the_lab_inventory_turns_host_key_checking_off() -> None:
    lab = lab_vars()
    assert lab["ansible_host_key_checking"] is False
    # what lab/lab.sh writes to the generated hosts.yml says the same to ssh itself
    lab_sh = (REPO / "lab" / "lab.sh").read_text()
    assert "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no" in lab_sh
    # and the control path dir it empties on `down` is the lab inventory's
    [cp_dir] = re.findall(r"^CP_DIR=(\S+)$", lab_sh, re.M)
    assert cp_dir == lab["ansible_control_path_dir"] and cp_dir.startswith("~/")
    for group_vars in (REPO / "inventory").glob("*/group_vars/*.yml"):
        if group_vars.parts[-3] == "lab":
            continue
        text = group_vars.read_text()
        assert "host_key_checking" not in text and "StrictHostKeyChecking" not in text


def ssh_exec_line(home: Path, inventory: Path, host: str) -> str:
    """The ssh command Ansible runs for `host` of `inventory` (at 127.0.0.1 port 1: refused at
    once), from -vvvv."""
    r = subprocess.run([str(VENV_BIN / "ansible"), "-i", str(inventory), host, "-m", "ping",
                        "-e", "ansible_host=127.0.0.1", "-e", "ansible_port=1", "-vvvv"],
                       cwd=REPO, env=ansible_env(home), capture_output=True, text=True,
                       timeout=120, check=False)
    lines = [x for x in r.stdout.splitlines() if "SSH: EXEC ssh" in x]
    assert lines, r.stdout + r.stderr
    return lines[0]


def test_ssh_as_ansible_runs_it(tmp_path: Path) -> None:
    """The real ssh command lines: a production-like inventory (inventory/example) checks host
    keys and keeps its masters in ~/.ansible/cp; the lab (its committed group_vars and a
    host as lab.sh writes them) does not check and uses its own directory. Both directories
    are made 0700."""
    home = tmp_path / "home"
    home.mkdir()
    prod = ssh_exec_line(home, REPO / "inventory" / "example", "cache-a1.example.net")
    assert "StrictHostKeyChecking=no" not in prod and "/dev/null" not in prod
    assert f"ControlPath=\"{home}/.ansible/cp/%C\"" in prod
    assert stat.S_IMODE((home / ".ansible" / "cp").stat().st_mode) == 0o700

    inv = tmp_path / "lab"
    inv.mkdir()
    (inv / "group_vars").symlink_to(REPO / "inventory" / "lab" / "group_vars")
    (inv / "hosts.yml").write_text("all:\n  children:\n    mcache:\n      hosts:\n"
                                   "        mc-lab-1: {ansible_host: 198.18.0.11}\n")
    lab = ssh_exec_line(home, inv, "mc-lab-1")
    assert "StrictHostKeyChecking=no" in lab
    cp = home / ".ansible" / "mcache-lab-cp"
    assert f"ControlPath=\"{cp}/%C\"" in lab
    assert stat.S_IMODE(cp.stat().st_mode) == 0o700
    # %C is 40 hex digits; sun_path holds 108 bytes (with its NUL) for root's real home
    assert len(os.path.expanduser("~root/.ansible/mcache-lab-cp/")) + 40 < 108


def test_lab_sh_makes_its_control_dir_private(tmp_path: Path) -> None:
    """lab.sh's own ensure_cp_dir (run by `up` and `ssh`), out of the script."""
    text = (REPO / "lab" / "lab.sh").read_text()
    [fn] = re.findall(r"^ensure_cp_dir\(\) \{\n.*?^\}\n", text, re.M | re.S)
    [assign] = re.findall(r"^CP_DIR=.*$", text, re.M)
    subprocess.run(["bash", "-euc", f"{assign}\n{fn}\nensure_cp_dir"],
                   env={**os.environ, "HOME": str(tmp_path)}, check=True, timeout=30)
    cp = tmp_path / ".ansible" / "mcache-lab-cp"
    assert stat.S_IMODE(cp.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / ".ansible").stat().st_mode) == 0o700

"""The lab fleet as the fleet tests drive it (lab/lab.sh, see lab/README.md): its hosts, and
ansible-playbook and ansible run from the repository root against inventory/lab."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAB_SH = REPO / "lab" / "lab.sh"
INVENTORY = REPO / "inventory" / "lab"
VENV_BIN = REPO / ".venv" / "bin"
LAB_HOSTS = int(os.environ.get("MCACHE_LAB_HOSTS", "3"))


def lab_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    return env


def lab_sh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAB_SH), *args],
        cwd=REPO,
        env=lab_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class LabHost:
    """One lab host: `mc-lab-<index>` at `address`, held by init process `pid`."""

    index: int
    name: str
    address: str
    pid: int
    interface: str = "eth0"

    def exec(
        self,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 60,
        input: str | None = None,
        text: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run argv inside the host (its network, mount, UTS and PID namespaces)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-n", "-m", "-u", "-p", "--", *argv],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=text,
            timeout=timeout,
            check=check,
            env=env if env is not None else lab_env(),
        )

    def ssh(
        self, command: str, *, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host over ssh (as Ansible reaches it)."""
        return subprocess.run(
            [str(LAB_SH), "ssh", str(self.index), command],
            cwd=REPO,
            env=lab_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )


@dataclass
class Lab:
    hosts: list[LabHost]
    repo: Path = REPO
    inventory: Path = INVENTORY
    env: dict[str, str] = field(default_factory=lab_env)

    def host(self, name_or_index: str | int) -> LabHost:
        for h in self.hosts:
            if name_or_index in (h.name, h.index):
                return h
        raise KeyError(name_or_index)

    def ansible_playbook(
        self, playbook: str | Path, *args: str, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """`ansible-playbook -i inventory/lab PLAYBOOK ARGS...` from the repository root."""
        return subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "-i", str(self.inventory), str(playbook), *args],
            cwd=self.repo,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ansible(
        self, pattern: str, module: str, module_args: str = "", *args: str, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """`ansible -i inventory/lab PATTERN -m MODULE [-a ARGS] ARGS...`."""
        argv = [str(VENV_BIN / "ansible"), "-i", str(self.inventory), pattern, "-m", module]
        if module_args:
            argv += ["-a", module_args]
        return subprocess.run(
            [*argv, *args],
            cwd=self.repo,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def lab_hosts() -> list[LabHost]:
    res = lab_sh("status")
    if res.returncode != 0:
        raise RuntimeError(f"lab.sh status failed: {res.stderr}")
    hosts = []
    for line in res.stdout.splitlines():
        index, name, address, pid, state = line.split()
        if state == "up":
            hosts.append(LabHost(index=int(index), name=name, address=address, pid=int(pid)))
    return hosts

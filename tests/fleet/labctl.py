"""The lab fleet as the fleet tests drive it (lab/lab.sh, see lab/README.md): its hosts, and
ansible-playbook and ansible run from the repository root against inventory/lab."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
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


def lab_sh(*args: str, timeout: float = 120,
           init: str = "plain") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAB_SH), *args],
        cwd=REPO,
        env={**lab_env(), "INIT": init},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class LabHost:
    """One lab host: `mc-lab-<index>` at `address`, held by init process `pid` (`init`: our
    own tiny init, plain, or systemd)."""

    index: int
    name: str
    address: str
    pid: int
    init: str = "plain"
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
    init: str = "plain"
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
        return self.run_tool(
            [str(VENV_BIN / "ansible-playbook"), "-i", str(self.inventory), str(playbook), *args],
            timeout)

    def ansible(
        self, pattern: str, module: str, module_args: str = "", *args: str, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """`ansible -i inventory/lab PATTERN -m MODULE [-a ARGS] ARGS...`."""
        argv = [str(VENV_BIN / "ansible"), "-i", str(self.inventory), pattern, "-m", module]
        if module_args:
            argv += ["-a", module_args]
        return self.run_tool([*argv, *args], timeout)

    def run_tool(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """An Ansible command line from the repository root, with the lab's environment."""
        return subprocess.run(argv, cwd=self.repo, env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)


def lab_hosts() -> list[LabHost]:
    res = lab_sh("status")
    if res.returncode != 0:
        raise RuntimeError(f"lab.sh status failed: {res.stderr}")
    hosts = []
    for line in res.stdout.splitlines():
        index, name, address, pid, state, init = line.split()
        if state == "up":
            hosts.append(LabHost(index=int(index), name=name, address=address, pid=int(pid),
                                 init=init))
    return hosts


# --------------------------------------------------------------------------- playbook runs

CONFIGS = Path(__file__).resolve().parent / "configs"
AGENT = "/opt/mcache/venv/bin/mcache-agent"
TIMES: dict[str, float] = {}
# a task of the host preparation in ansible-playbook's output (the role by its full name)
PREPARED = re.compile(r"^TASK \[(mcache\.fleet\.)?mcache_host : ", re.M)


def cfg(name: str) -> list[str]:
    return ["-e", f"mcache_config_file={CONFIGS / name}"]


def recap(out: str) -> dict[str, dict[str, int]]:
    rows = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", out, re.M):
        rows[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return rows


# The canary's bake (issue 24) judges traffic; most fleet tests send none, and would only wait
# for it: their canaries run without it unless they ask (a later -e wins). The bake's own
# tests (test_wave_*.py) turn it on, with lab/loadgen.py traffic.
NO_BAKE = ("-e", "mcache_config_bake_s=0")


def run(lab, playbook: str, *args: str) -> subprocess.CompletedProcess[str]:
    t0 = time.monotonic()
    if playbook == "canary.yml":
        args = (*NO_BAKE, *args)
    res = lab.ansible_playbook(f"playbooks/{playbook}", *args)
    TIMES[f"{playbook} {' '.join(a for a in args if not a.startswith('-'))}"] = (
        time.monotonic() - t0
    )
    return res


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-6000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def ran_on(out: str, task: str) -> set[str]:
    """The hosts a task ran on (not skipped), from ansible-playbook's output."""
    hosts: set[str] = set()
    for block in re.split(r"^TASK \[", out, flags=re.M)[1:]:
        if block.split("]", 1)[0].endswith(task):
            hosts |= set(re.findall(r"^(?:ok|changed|failed|fatal): \[([^\]]+)\]", block, re.M))
    return hosts


def versions(host) -> dict:
    res = host.exec([AGENT, "versions", "--json"])
    if res.returncode != 0:
        return {"current": None, "previous": None, "versions": []}
    return json.loads(res.stdout)["result"]


def current(host) -> int | None:
    return versions(host)["current"]


def stored(host) -> list[int]:
    return [v["version"] for v in versions(host)["versions"]]

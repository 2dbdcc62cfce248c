"""Fleet timing (bench/run.py --fleet): wall time of bringing the lab up, a canary deploy and a
no-op re-deploy, for 3 and 10 hosts. It takes the lab over (lab-down, lab-up): never run it
while someone else uses the lab fleet."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _timed(argv: list[str], timeout: int = 1800) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return {"argv": " ".join(argv), "seconds": time.perf_counter() - t0, "rc": p.returncode,
            "tail": (p.stdout + p.stderr)[-2000:]}


def run(hosts: tuple[int, ...] = (3, 10)) -> dict:
    out: dict = {}
    if not (ROOT / "playbooks" / "canary.yml").exists():
        return {"skipped": "playbooks/canary.yml does not exist"}
    play = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "inventory/lab",
            "playbooks/canary.yml"]
    for n in hosts:
        r = {"lab_down": _timed(["make", "lab-down"]),
             "lab_up": _timed(["make", "lab-up", f"HOSTS={n}"])}
        r["canary_deploy"] = _timed(play)
        r["noop_redeploy"] = _timed(play)
        out[str(n)] = r
    out["lab_down"] = _timed(["make", "lab-down"])
    return out

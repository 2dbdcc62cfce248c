#!/usr/bin/env python3
"""Fleet timing: how long each fleet operation takes on lab fleets of N hosts.

For each N (default 3, 10, 20): a fresh lab (`lab.sh down`, `lab.sh up N`), then
  first_deploy      canary onto fresh hosts (preparation: wheel, memcached, agent, first load)
  config_canary     a config-only change (ttl_ms) rolled out with the canary (a map swap)
  noop_canary       the same canary again (nothing to change)
  rollback          rollback.yml of the whole fleet (back to the first version), with probes
  status            status.yml of the whole fleet
  check_diff        deploy.yml --check --diff of a further change
and, on the largest fleet, what each of Ansible's speed choices buys on the config canary
(pipelining off, one fork, the free strategy) and what fact gathering would cost.

    bench/fleet.py [--hosts 3,10,20] [--no-choices] [--out DIR]

It takes the lab over (lab-down first, lab-down at the end): never run it while someone else
uses the lab fleet. Each playbook's time per task is kept (bench/callback/task_times.py).
Writes bench/results/fleet-<UTC>.json and fleet-<UTC>.png (seconds against hosts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PLAYBOOK = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "inventory/lab"]
OPERATIONS = ("first_deploy", "config_canary", "noop_canary", "rollback", "status",
              "check_diff")


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update(PATH=f"{ROOT / '.venv' / 'bin'}:{e.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
             ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
             ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "bench" / "callback"),
             ANSIBLE_CALLBACKS_ENABLED="task_times")
    e.update(extra)
    return e


def timed(argv: list[str], *, extra_env: dict[str, str] | None = None,
          timeout: int = 3600) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        times = Path(f.name)
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env=env(MCACHE_TASK_TIMES=str(times), **(extra_env or {})),
                       stdin=subprocess.DEVNULL)
    out = {"argv": " ".join(argv[1:]), "seconds": round(time.perf_counter() - t0, 2),
           "rc": p.returncode}
    recap = re.findall(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)", p.stdout, re.M)
    out["task_runs"] = sum(int(ok) for _, ok, _ in recap)
    out["changed"] = sum(int(ch) for _, _, ch in recap)
    try:
        out["tasks"] = json.loads(times.read_text())["tasks"]
    except (OSError, ValueError):
        out["tasks"] = []
    times.unlink(missing_ok=True)
    if p.returncode != 0:
        out["tail"] = (p.stdout + p.stderr)[-3000:]
    return out


def configs(workdir: Path) -> tuple[Path, Path, Path]:
    """The lab's desired config (version 1) and two config-only changes of it (2, 3)."""
    base = (ROOT / "inventory" / "lab" / "mcache.yml").read_text()
    out = []
    for version, ttl in ((1, 60000), (2, 30000), (3, 20000)):
        path = workdir / f"v{version}.yml"
        path.write_text(base.replace("version: 1", f"version: {version}")
                        .replace("ttl_ms: 60000", f"ttl_ms: {ttl}"))
        out.append(path)
    assert out[1].read_text() != base
    return out[0], out[1], out[2]


def fleet(n: int, v1: Path, v2: Path, v3: Path, choices: bool) -> dict:
    r: dict = {"lab_down": timed(["lab/lab.sh", "down"]),
               "lab_up": timed(["lab/lab.sh", "up", str(n)])}
    play = [*PLAYBOOK]
    r["first_deploy"] = timed([*play, "playbooks/canary.yml", "-e", f"mcache_config_file={v1}"])
    r["config_canary"] = timed([*play, "playbooks/canary.yml", "-e", f"mcache_config_file={v2}"])
    r["noop_canary"] = timed([*play, "playbooks/canary.yml", "-e", f"mcache_config_file={v2}"])
    r["check_diff"] = timed([*play, "playbooks/deploy.yml", "-e", f"mcache_config_file={v3}",
                             "--check", "--diff"])
    r["rollback"] = timed([*play, "playbooks/rollback.yml"])
    r["status"] = timed([*play, "playbooks/status.yml", "-e", f"mcache_config_file={v1}"])
    if choices:
        r["choices"] = ansible_choices(v1, v2)
    for k in OPERATIONS:
        print(f"  {n} hosts {k}: {r[k]['seconds']:.1f} s (rc {r[k]['rc']}, "
              f"{r[k]['task_runs']} task runs, {r[k]['changed']} changed)", flush=True)
    return r


def ansible_choices(v1: Path, v2: Path) -> dict:
    """The config canary (back and forth between v1 and v2, each a real change) without each
    of Ansible's speed choices in turn, and what gathering facts costs."""
    out = {}
    variants = {
        "as_shipped": {},
        "pipelining_off": {"ANSIBLE_PIPELINING": "False"},
        "forks_1": {"ANSIBLE_FORKS": "1"},
        "strategy_free": {"ANSIBLE_STRATEGY": "free"},
    }
    # versions must go up: each variant applies a fresh number
    version = 10
    for name, extra in variants.items():
        version += 1
        cfg = v2.with_name(f"v{version}.yml")
        cfg.write_text(v2.read_text().replace("version: 2", f"version: {version}")
                       .replace("ttl_ms: 30000", f"ttl_ms: {30000 + version}"))
        out[name] = timed([*PLAYBOOK, "playbooks/canary.yml", "-e", f"mcache_config_file={cfg}"],
                          extra_env=extra)
        print(f"    choice {name}: {out[name]['seconds']:.1f} s (rc {out[name]['rc']})",
              flush=True)
    out["gather_facts_min"] = timed([str(ROOT / ".venv" / "bin" / "ansible"), "-i",
                                     "inventory/lab", "mcache", "-m", "ansible.builtin.setup",
                                     "-a", "gather_subset=min"])
    print(f"    facts (min subset), all hosts: {out['gather_facts_min']['seconds']:.1f} s",
          flush=True)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(int(n) for n in results["fleets"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for op in OPERATIONS:
        ax.plot(ns, [results["fleets"][str(n)][op]["seconds"] for n in ns], marker="o",
                label=op.replace("_", " "))
    ax.set_xlabel("lab hosts")
    ax.set_ylabel("seconds (wall, ansible-playbook)")
    ax.set_yscale("log")
    ax.set_xticks(ns)
    ax.set_title("mcache fleet operations against fleet size (canary batches 1, 25%, 100%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(hosts: tuple[int, ...] = (3, 10, 20), choices: bool = True) -> dict:
    out: dict = {"fleets": {}, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="mcache-bench-fleet-") as d:
        v1, v2, v3 = configs(Path(d))
        try:
            for n in hosts:
                print(f"fleet of {n} hosts", flush=True)
                out["fleets"][str(n)] = fleet(n, v1, v2, v3, choices and n == max(hosts))
        finally:
            out["lab_down"] = timed(["lab/lab.sh", "down"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="3,10,20")
    ap.add_argument("--no-choices", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    res = run(tuple(int(x) for x in args.hosts.split(",")), not args.no_choices)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = args.out / f"fleet-{stamp}.json"
    path.write_text(json.dumps(res, indent=1))
    plot(res, args.out / f"fleet-{stamp}.png")
    print(f"results: {path}")
    failed = [f"{n}/{op}" for n, r in res["fleets"].items() for op in OPERATIONS
              if r[op]["rc"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

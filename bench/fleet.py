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
    bench/fleet.py --bake [--hosts 3,10,20] [--rounds 2] [--bake-s 5] [--before REV]

--bake (issue 24) measures the canary analysis instead, side by side in one run: for each N a
fresh lab, one first deploy, then rounds of the same config-only canary (a ttl change, a new
version each time) with the code before (`git archive REV`, default HEAD, unpacked into a
temporary directory: no git state is touched), with this tree's canary with the bake off
(mcache_config_bake_s=0) and with it on (--bake-s, under lab/loadgen.py traffic), in turn.
Both trees roll out to hosts at one recorded release (-e mcache_config_release=...), so
neither prepares a host: the difference is the playbooks'.

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


def before_tree(rev: str, workdir: Path) -> Path:
    """The repository at `rev` (git archive: read only), linked in as the collection."""
    tree = workdir / f"before-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    link = tree / "build" / "collections" / "ansible_collections" / "mcache" / "fleet"
    link.parent.mkdir(parents=True)
    link.symlink_to(tree)
    return tree


def bake_fleet(n: int, tree: Path, workdir: Path, rounds: int, bake_s: float) -> dict:
    """One lab of n hosts: the config canary with the code before, with the bake off and on."""
    release = ["-e", "mcache_config_release=bench-fleet-bake"]
    base = (ROOT / "inventory" / "lab" / "mcache.yml").read_text()

    def version(v: int) -> Path:
        path = workdir / f"bake-{n}-v{v}.yml"
        path.write_text(base.replace("version: 1", f"version: {v}")
                        .replace("ttl_ms: 60000", f"ttl_ms: {60000 - v}"))
        return path

    r: dict = {"lab_down": timed(["lab/lab.sh", "down"]),
               "lab_up": timed(["lab/lab.sh", "up", str(n)])}
    r["first_deploy"] = timed([*PLAYBOOK, "playbooks/canary.yml", "-e",
                               f"mcache_config_file={version(1)}", *release,
                               "-e", "mcache_config_bake_s=0"])
    hosts = ",".join(f"198.18.0.{10 + i}" for i in range(1, n + 1))
    load = subprocess.Popen([sys.executable, str(ROOT / "lab" / "loadgen.py"), "--hosts", hosts,
                             "--rate", str(max(60, 900 // n))], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    variants: dict[str, list] = {"before": [], "bake_0": [], f"bake_{bake_s:g}": []}
    v = 1
    try:
        time.sleep(3)
        for _ in range(rounds):
            for name in variants:
                v += 1
                cfg = ["-e", f"mcache_config_file={version(v)}", *release]
                if name == "before":
                    argv = [*PLAYBOOK, str(tree / "playbooks" / "canary.yml"), *cfg]
                    res = timed(argv, extra_env={"ANSIBLE_CONFIG": str(tree / "ansible.cfg")})
                else:
                    bake = "0" if name == "bake_0" else f"{bake_s:g}"
                    res = timed([*PLAYBOOK, "playbooks/canary.yml", *cfg, "-e",
                                 f"mcache_config_bake_s={bake}", "-e",
                                 f"mcache_config_report_dir={workdir / 'reports'}"])
                variants[name].append(res)
                print(f"  {n} hosts {name}: {res['seconds']:.1f} s (rc {res['rc']})", flush=True)
    finally:
        load.terminate()
        r["load"] = [json.loads(line) for line in load.communicate(timeout=30)[0].splitlines()
                     if line.startswith("{")]
    r["variants"] = variants
    med = {k: sorted(x["seconds"] for x in runs)[len(runs) // 2] for k, runs in variants.items()}
    waves = 3  # canary batches 1, 25 %, 100 %: three waves on 3 hosts and more
    r["median_s"] = med
    r["bake0_vs_before"] = round(med["bake_0"] / med["before"], 3)
    r["bake_added_per_wave_s"] = round((med[f"bake_{bake_s:g}"] - med["bake_0"]) / waves, 2)
    print(f"  {n} hosts: before {med['before']:.1f} s, bake 0 {med['bake_0']:.1f} s "
          f"({r['bake0_vs_before']:.2f}x), bake {bake_s:g} s adds "
          f"{r['bake_added_per_wave_s']:.1f} s a wave", flush=True)
    return r


def run_bake(hosts: tuple[int, ...], rounds: int, bake_s: float, rev: str) -> dict:
    out: dict = {"fleets": {}, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "before": rev, "rounds": rounds, "bake_s": bake_s}
    with tempfile.TemporaryDirectory(prefix="mcache-bench-bake-") as d:
        tree = before_tree(rev, Path(d))
        out["before_commit"] = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, text=True,
                                              capture_output=True).stdout.strip()
        try:
            for n in hosts:
                print(f"fleet of {n} hosts (bake)", flush=True)
                out["fleets"][str(n)] = bake_fleet(n, tree, Path(d), rounds, bake_s)
        finally:
            out["lab_down"] = timed(["lab/lab.sh", "down"])
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
    ap.add_argument("--bake", action="store_true", help="the canary analysis comparison only")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bake-s", type=float, default=5.0)
    ap.add_argument("--before", default="HEAD", help="the code before (a git revision)")
    args = ap.parse_args()
    if args.bake:
        res = run_bake(tuple(int(x) for x in args.hosts.split(",")), args.rounds, args.bake_s,
                       args.before)
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = args.out / f"fleet-bake-{stamp}.json"
        path.write_text(json.dumps(res, indent=1))
        print(f"results: {path}")
        bad = [f"{n}/{k}" for n, r in res["fleets"].items() for k, runs in r["variants"].items()
               for x in runs if x["rc"] != 0]
        if bad:
            print(f"failed: {', '.join(bad)}", file=sys.stderr)
            return 1
        return 0
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

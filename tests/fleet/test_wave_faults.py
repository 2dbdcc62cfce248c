"""Faults under a canary rollout (issue 24), plain hosts only, with background GET traffic:
the designed outcome of each (docs/FLEET.md, "Faults under a rollout") and a rerun of the
same playbook that converges every reachable host to one version.

  memcached down on the canary host  the probe fails, the module rolls it back, the rollout
                                     stops; the version is rejected there, so the rerun stops
                                     before any host: every host stays on the old version
  a host unreachable (no sshd)       the first play (validate and guard, any_errors_fatal)
                                     cannot ask it: the rollout stops before any host is
                                     changed; once it is back, the rerun takes every host
  a host rebooted during its bake    its bake fails (the reading dies with the host): the
                                     rollout stops; it comes back on the new version (its
                                     start-up file); the rerun takes the hosts left
  an agent killed at its wave        the host preparation starts it again (no agent answers:
                                     the release check says prepare) and the wave goes on,
                                     judged against its peers (no baseline reading)
  a host lost at its own wave        (second test) its sshd dies after the wave before it
                                     read it as a peer: its wave is UNREACHABLE, the rollout
                                     stops with the earlier waves on the new version; the rerun
                                     changes and bakes only it
  an agent killed inside an apply    (second test, a program swap) no answer is as no agent:
                                     the host is prepared (agent started again), the config
                                     applied again, the wave goes on; the rerun has nothing to do

  a peer lost in another's bake     (third test) mc-lab-3's sshd dies while mc-lab-1 bakes: it
                                     is left out of mc-lab-1's and mc-lab-2's comparisons (they
                                     are judged on the peers that answer, and say so), their
                                     waves go on, and its own wave stops the rollout

Named to run after test_wave_canary.py on the same lab (versions 44 and up), or alone on a
fresh lab (the first deploy prepares it). The second test uses versions 50 to 52, the third
53 and 54.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.labctl import (
    AGENT,
    CONFIGS,
    REPO,
    TIMES,
    current,
    lab_hosts,
    lab_sh,
    ok,
    ran_on,
    run,
    stored,
)

BAKE = ["-e", "mcache_config_bake_s=2"]


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("faults")
    base = (CONFIGS / "v1.yml").read_text()
    for n in range(44, 55):
        (d / f"v{n}.yml").write_text(base.replace("version: 1\n", f"version: {n}\n")
                                     .replace("ttl_ms: 60000", f"ttl_ms: {60000 - n}"))
    return d


def canary(lab, configs: Path, n: int, *extra: str) -> subprocess.CompletedProcess[str]:
    t0 = time.monotonic()
    res = run(lab, "canary.yml", "-e", f"mcache_config_file={configs / f'v{n}.yml'}", *BAKE,
              *extra)
    TIMES[f"canary.yml v{n} (faults)"] = time.monotonic() - t0
    return res


def flat(res: subprocess.CompletedProcess[str]) -> str:
    return " ".join((res.stdout + res.stderr).split())


def pids(host, name: str) -> list[int]:
    r = host.exec(["pgrep", "-x", name])
    return [int(p) for p in r.stdout.split()]


def kill(host, pid: int) -> None:
    host.exec(["kill", "-KILL", str(pid)], check=True)


def reboot(lab, index: int) -> None:
    r = lab_sh("reboot", str(index), init=lab.init)
    assert r.returncode == 0, r.stderr
    lab.hosts[:] = lab_hosts()


def last_rollout(lab) -> dict:
    return json.loads((lab.inventory / ".mcache-rollouts" / "last-rollout.json").read_text())


def versions_of(lab) -> dict[str, int | None]:
    return {h.name: current(h) for h in lab.hosts}


def until(fn, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (v := fn()):
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def load(lab) -> Iterator[None]:
    p = subprocess.Popen([sys.executable, str(REPO / "lab" / "loadgen.py"), "--hosts",
                          ",".join(h.address for h in lab.hosts), "--rate", "300", "--keys", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    try:
        yield
    finally:
        p.send_signal(signal.SIGTERM)
        print(p.communicate(timeout=30)[0])


@pytest.mark.parametrize("lab", ["plain"], indirect=True)
def test_faults_under_a_rollout_and_the_rerun_converges(lab, configs, load):
    ok(run(lab, "deploy.yml", "-e", f"mcache_config_file={configs / 'v44.yml'}"))
    h1, h2, h3 = lab.hosts

    # memcached down on the canary host: probe fails, rolled back, stopped; the rerun stops
    # before any host (45 was rejected on mc-lab-1) and every host stays on 44
    for pid in pids(h1, "memcached"):
        kill(h1, pid)
    res = canary(lab, configs, 45)
    assert res.returncode != 0 and "probe failed" in flat(res), flat(res)[-3000:]
    assert versions_of(lab) == {h.name: 44 for h in lab.hosts}
    # no wave was recorded (the canary failed before its bake): the record says why it ended
    rec = last_rollout(lab)
    assert rec["version"] == 45 and rec["waves"] == [], rec
    assert rec["result"].startswith("stopped: mc-lab-1 failed at "), rec["result"]
    assert "probe failed" in rec["result"], rec["result"]
    assert 45 not in stored(h2) and 45 not in stored(h3)
    reboot(lab, 1)  # memcached back (the host's init starts it)
    res = canary(lab, configs, 45)
    assert res.returncode != 0 and "rejected version 45" in flat(res), flat(res)[-3000:]
    assert versions_of(lab) == {h.name: 44 for h in lab.hosts}

    # mc-lab-3 unreachable: the rollout stops at its wave, the rerun converges
    h1, h2, h3 = lab.hosts
    for pid in pids(h3, "sshd"):
        kill(h3, pid)
    res = canary(lab, configs, 46)
    # the first play (validate, guard: any_errors_fatal) cannot ask it: no host is changed
    assert res.returncode != 0 and "UNREACHABLE" in res.stdout, flat(res)[-3000:]
    assert "PLAY [Canary rollout]" not in res.stdout, flat(res)[-4000:]
    assert [current(h1), current(h2), current(h3)] == [44, 44, 44]
    reboot(lab, 3)  # sshd back
    res = canary(lab, configs, 46)
    ok(res)
    out = flat(res)
    assert versions_of(lab) == {h.name: 46 for h in lab.hosts}
    assert "Bake - judge each changed host" in out

    # mc-lab-2 rebooted during its bake: its wave fails, it comes back on 47, the rerun
    # takes mc-lab-3
    h1, h2, h3 = lab.hosts
    rebooted: list[str] = []

    def reboot_in_bake() -> None:
        until(lambda: current(lab.host(2)) == 47, 120, "mc-lab-2 on version 47")
        time.sleep(0.5)  # inside its bake (2 s)
        rebooted.append(lab_sh("reboot", "2", init=lab.init).stderr)

    t = threading.Thread(target=reboot_in_bake)
    t.start()
    res = canary(lab, configs, 47, "-e", "mcache_config_bake_s=4")
    t.join(180)
    assert rebooted and res.returncode != 0, flat(res)[-3000:]
    lab.hosts[:] = lab_hosts()
    h1, h2, h3 = lab.hosts
    assert current(h3) == 46
    until(lambda: current(lab.host(2)) == 47, 60, "mc-lab-2 back on version 47")
    ok(canary(lab, configs, 47))
    assert versions_of(lab) == {h.name: 47 for h in lab.hosts}

    # mc-lab-2's agent killed when the canary reaches it: preparation starts it again
    def kill_agent_at_wave() -> None:
        until(lambda: current(lab.host(1)) == 48, 120, "mc-lab-1 on version 48")
        r = lab.host(2).exec(["cat", "/run/mcache/agent.pid"])
        kill(lab.host(2), int(r.stdout))

    t = threading.Thread(target=kill_agent_at_wave)
    t.start()
    res = canary(lab, configs, 48)
    ok(res)
    out = flat(res)
    t.join(60)
    assert versions_of(lab) == {h.name: 48 for h in lab.hosts}
    assert "mcache_host : " in out  # the host preparation ran (for mc-lab-2)
    rec = json.loads(max((lab.inventory / ".mcache-rollouts").glob("rollout-*.json"),
                         key=lambda p: p.stat().st_mtime).read_text())
    assert rec["result"] == "done" and rec["version"] == 48


def canary_watched(lab, configs: Path, n: int, on_line, *extra: str
                   ) -> subprocess.CompletedProcess[str]:
    """canary.yml as `canary`, its output read line by line as it comes: `on_line(line)` is
    the fault's trigger (a task of the play started), deterministic where a timer is not."""
    argv = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(lab.inventory),
            "playbooks/canary.yml", "-e", f"mcache_config_file={configs / f'v{n}.yml'}", *BAKE,
            *extra]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=lab.repo, env={**lab.env, "PYTHONUNBUFFERED": "1"},
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    assert p.stdout is not None
    for line in p.stdout:
        out.append(line)
        on_line(line)
    rc = p.wait(timeout=60)
    TIMES[f"canary.yml v{n} (faults)"] = time.monotonic() - t0
    return subprocess.CompletedProcess(argv, rc, "".join(out), "")


@pytest.mark.parametrize("lab", ["plain"], indirect=True)
def test_a_host_lost_at_its_wave_and_an_agent_killed_in_its_apply(lab, configs, load):
    ok(run(lab, "deploy.yml", "-e", f"mcache_config_file={configs / 'v50.yml'}"))

    # mc-lab-3 answers at the start and for its peers' bakes, then its sshd dies (after the
    # second wave read it as a peer): its own wave finds it unreachable, the rollout stops
    judged: list[str] = []

    def lose_host_3(line: str) -> None:
        if "Bake - judge each changed host" in line:
            judged.append(line)
            if len(judged) == 2:
                for pid in pids(lab.host(3), "sshd"):
                    kill(lab.host(3), pid)

    res = canary_watched(lab, configs, 51, lose_host_3)
    assert res.returncode != 0 and len(judged) == 2, flat(res)[-3000:]
    assert "fatal: [mc-lab-3]: UNREACHABLE" in res.stdout, flat(res)[-3000:]
    assert versions_of(lab) == {"mc-lab-1": 51, "mc-lab-2": 51, "mc-lab-3": 50}
    reboot(lab, 3)  # sshd back, on 50 (its start-up file)
    res = canary_watched(lab, configs, 51, lambda line: None)
    ok(res)
    assert versions_of(lab) == {h.name: 51 for h in lab.hosts}
    # only mc-lab-3 changes and bakes (the others are at the version: no bake for them again)
    assert ran_on(res.stdout, "Bake - show what each changed host's signals did") == {"mc-lab-3"}

    # the canary's agent SIGKILLed while it swaps programs (cache.entries changes): the
    # module's request dies with it (no answer: as no agent), so the role prepares the host
    # (the agent started again adopts what the kernel runs) and applies again; the wave goes on
    (configs / "v52.yml").write_text((configs / "v51.yml").read_text()
                                     .replace("version: 51\n", "version: 52\n")
                                     .replace("entries: 4096", "entries: 8192"))
    killed: list[int] = []

    def kill_in_apply() -> None:
        h1 = lab.host(1)
        until(lambda: json.loads(h1.exec([AGENT, "status", "--json"]).stdout or "{}")
              .get("result", {}).get("apply_in_progress"), 120, "mc-lab-1 applying")
        pid = int(h1.exec(["cat", "/run/mcache/agent.pid"], check=True).stdout)
        kill(h1, pid)
        killed.append(pid)

    t = threading.Thread(target=kill_in_apply, daemon=True)
    t.start()
    res = canary(lab, configs, 52)
    t.join(30)
    ok(res)
    assert killed, "the agent was not seen applying"
    assert ran_on(res.stdout, "Gather the facts that preparing a host uses") == {"mc-lab-1"}
    assert int(lab.host(1).exec(["cat", "/run/mcache/agent.pid"]).stdout) != killed[0]
    assert versions_of(lab) == {h.name: 52 for h in lab.hosts}
    res = canary(lab, configs, 52)  # nothing left to do: no host changes or bakes
    ok(res)
    assert ran_on(res.stdout, "Bake - show what each changed host's signals did") == set()
    assert versions_of(lab) == {h.name: 52 for h in lab.hosts}


@pytest.mark.parametrize("lab", ["plain"], indirect=True)
def test_a_peer_lost_during_another_hosts_bake_is_left_out(lab, configs, load):
    ok(run(lab, "deploy.yml", "-e", f"mcache_config_file={configs / 'v53.yml'}"))
    lost: list[str] = []

    def lose_host_3(line: str) -> None:
        # the first wave (mc-lab-1) starts its bake: mc-lab-3 still answered at the start
        if "Bake - read the signals of the changed hosts over the bake" in line and not lost:
            lost.append(line)
            for pid in pids(lab.host(3), "sshd"):
                kill(lab.host(3), pid)

    res = canary_watched(lab, configs, 54, lose_host_3, "-e", "mcache_config_bake_s=3")
    out = flat(res)
    assert lost and res.returncode != 0, out[-3000:]
    # the bakes of mc-lab-1 and mc-lab-2 were judged, on the peer that answered, and passed
    assert ran_on(res.stdout, "Bake - show what each changed host's signals did") == {
        "mc-lab-1", "mc-lab-2"}, out[-4000:]
    assert out.count("peer mc-lab-3 did not answer: left out of the comparison") >= 2, \
        out[-4000:]
    # its own wave finds it unreachable: the rollout stops there
    assert "fatal: [mc-lab-3]: UNREACHABLE" in res.stdout, out[-3000:]
    assert versions_of(lab) == {"mc-lab-1": 54, "mc-lab-2": 54, "mc-lab-3": 53}
    # the record says what stopped the run (the rollout_record callback: no wave could)
    rec = last_rollout(lab)
    assert rec["version"] == 54 and [w["verdict"] for w in rec["waves"]] == ["pass", "pass"]
    assert rec["result"].startswith("stopped: mc-lab-3 unreachable at "), rec["result"]
    reboot(lab, 3)  # sshd back, on 53
    res = canary(lab, configs, 54)
    ok(res)
    assert ran_on(res.stdout, "Bake - show what each changed host's signals did") == {"mc-lab-3"}
    assert versions_of(lab) == {h.name: 54 for h in lab.hosts}

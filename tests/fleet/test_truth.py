"""One truth for a host's config, end to end on the lab (plain and systemd hosts): desired,
running and start-up state agree through deploy, canary, rollback, a failed canary's automatic
rollback, an agent restart and a host reboot (`lab/lab.sh reboot N`); the controller refuses a
version the fleet rejected before it touches a host; status, and the alert that reads the
start-up file's fate in a real Prometheus, clear when the condition does.

Runs after test_fleet.py and test_systemd.py on the same lab (file order), with version
numbers above theirs (11 and up), or alone on a fresh lab (the first deploy prepares it).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from pymemcache.client.base import Client

from mcache_agent import udp_client as uc
from tests.collection.test_collection import build_collection, install_collection
from tests.fleet.labctl import (
    AGENT,
    CONFIGS,
    PREPARED,
    TIMES,
    current,
    lab_hosts,
    lab_sh,
    ok,
    run,
)
from tests.fleet.test_fleet import FAST_PROBE, start_agent, stop_agent, until

REASON = "v12 breaks the app"


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fleet's desired configs, versions 11..15, from v6-metrics.yml (metrics on each
    host's address, a periodic probe): a new number, and what changes with it."""
    d = tmp_path_factory.mktemp("desired")
    base = (CONFIGS / "v6-metrics.yml").read_text()
    assert "version: 6\n" in base and "ttl_ms: 45000" in base and "enabled: true" in base
    for n, (old, new) in {11: ("", ""), 12: ("ttl_ms: 45000", "ttl_ms: 12000"),
                          13: ("ttl_ms: 45000", "ttl_ms: 12000"),
                          14: ("enabled: true", "enabled: false"),
                          15: ("ttl_ms: 45000", "ttl_ms: 15000")}.items():
        text = base.replace("version: 6\n", f"version: {n}\n")
        (d / f"v{n}.yml").write_text(text.replace(old, new) if old else text)
    return d


def desired(configs: Path, n: int) -> list[str]:
    return ["-e", f"mcache_config_file={configs / f'v{n}.yml'}"]


def status(host) -> dict:
    r = host.exec([AGENT, "status", "--json"])
    doc = json.loads(r.stdout or "{}")
    return doc.get("result") or {}


def startup_version(host) -> int | None:
    r = host.exec(["cat", "/etc/mcache/mcache.yml"])
    return yaml.safe_load(r.stdout)["version"] if r.returncode == 0 else None


def rejected(st: dict) -> dict[int, dict]:
    return {r["version"]: r for r in st.get("rejected") or []}


def serving(host, version: int, timeout: float = 90) -> dict:
    """The host's agent answers, has finished starting, and runs `version`."""
    return until(lambda: (st if (st := status(host)).get("version") == version
                          and not st.get("starting") else None), timeout,
                 f"{host.name} serving version {version}")


def reboot(lab, index: int) -> tuple:
    """`lab/lab.sh reboot N`; the lab's view of its hosts follows (a new init pid)."""
    old = lab.host(index)
    t0 = time.monotonic()
    r = lab_sh("reboot", str(index), init=lab.init)
    assert r.returncode == 0, r.stderr
    TIMES[f"lab.sh reboot ({lab.init})"] = time.monotonic() - t0
    lab.hosts[:] = lab_hosts()
    new = lab.host(index)
    assert new.pid != old.pid  # another init: the host booted again
    return old, new


def flat(res: subprocess.CompletedProcess[str]) -> str:
    """ansible-playbook's output with its line wrapping undone."""
    return " ".join((res.stdout + res.stderr).split())


def status_table(lab, *args: str) -> tuple[list[str], str]:
    """status.yml's table, line by line (its debug task's result read as JSON), and the
    whole output."""
    t0 = time.monotonic()
    res = subprocess.run([str(lab.repo / ".venv" / "bin" / "ansible-playbook"), "-i",
                          str(lab.inventory), "playbooks/status.yml", *args], cwd=lab.repo,
                         env={**lab.env, "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"},
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
                         check=False)
    TIMES[f"status.yml ({lab.init})"] = time.monotonic() - t0
    out = ok(res)
    for block in re.findall(r"^ok: \[[^\]]+\] => (\{\n.*?\n\})$", out, re.M | re.S):
        msg = json.loads(block).get("msg")
        if isinstance(msg, list) and msg and msg[0].startswith("HOST"):
            return msg, out
    raise AssertionError(f"no table in:\n{out[-3000:]}")


def table_row(table: list[str], host: str) -> str:
    mine = [r for r in table if r.split()[0] == host]
    assert len(mine) == 1, table
    return mine[0]


def test_deploy_canary_rollback_then_a_reboot_comes_back_on_the_version_rolled_back_to(
        lab, configs, tmp_path):
    ok(run(lab, "deploy.yml", *desired(configs, 11)))
    ok(run(lab, "canary.yml", *desired(configs, 12)))
    assert all(current(h) == 12 and startup_version(h) == 12 for h in lab.hosts)
    # the bake off (labctl.run), the run is recorded all the same: status shows this run
    rec = json.loads((lab.inventory / ".mcache-rollouts" / "last-rollout.json").read_text())
    assert rec["version"] == 12 and rec["result"] == "done", rec
    assert {w["verdict"] for w in rec["waves"]} == {"not baked"}, rec
    assert {h: v["to_version"] for w in rec["waves"] for h, v in w["hosts"].items()} == {
        h.name: 12 for h in lab.hosts}, rec
    ok(run(lab, "rollback.yml", "-e", json.dumps({"mcache_rollback_reason": REASON})))
    for h in lab.hosts:
        st = status(h)
        assert st["version"] == 11 and startup_version(h) == 11
        assert rejected(st)[12]["reason"] == REASON
        assert rejected(st)[12]["rolled_back_to"] == 11

    host = lab.host(1)
    before = status(host)
    agent_pid = host.exec(["pgrep", "-o", "-f", "mcache-agent run"]).stdout.strip()
    _old, host = reboot(lab, 1)
    st = serving(host, 11)
    # a real boot: no pins survived, so the agent applied its start-up config afresh
    assert st["config_file"]["result"] == "applied" and st["config_file"]["version"] == 11
    assert st["last_apply"]["applied_at"] > before["last_apply"]["applied_at"]
    assert st["started_at_unix"] > before["started_at_unix"]
    assert host.exec(["pgrep", "-o", "-f", "mcache-agent run"]).stdout.strip() != agent_pid
    assert rejected(st)[12]["reason"] == REASON
    assert any(a["interface"] == "eth0" for a in st["attached"])
    assert host.exec([AGENT, "probe"]).returncode == 0
    print(f"\n[{lab.init}] after reboot: {host.name} version {st['version']}, config file "
          f"{st['config_file']['result']}: {st['config_file']['message']}; rejected "
          f"{sorted(rejected(st))}: {rejected(st)[12]}")

    out_file = tmp_path / "status.json"
    table, _out = status_table(lab, *desired(configs, 11), "-e", f"mcache_status_out={out_file}")
    assert table_row(table, "HOST").split() == ["HOST", "VERSION", "DESIRED", "MODE", "HIT",
                                                "RATIO", "PROBE", "DRIFT", "REJECTED",
                                                "RELEASE", "WHY"]
    row = table_row(table, host.name)
    print(f"[{lab.init}] status.yml: {row}")
    assert re.search(r"\s11\s+11\s+generic\s+.*\s(\d+,)*12(,\d+)*\s+\S+/\S+\s+-$", row), row
    rows = {r["host"]: r for r in json.loads(out_file.read_text())}
    assert {r["version"]: r["reason"] for r in rows[host.name]["rejected"]}[12] == REASON


def test_a_deploy_of_the_rejected_version_stops_before_any_host(lab, configs):
    def snapshot():
        return {h.name: (current(h), h.exec(["stat", "-c", "%Y.%s", "/etc/mcache/mcache.yml"]
                                            ).stdout) for h in lab.hosts}

    before = snapshot()
    for playbook in ("deploy.yml", "canary.yml"):
        res = run(lab, playbook, *desired(configs, 12))
        assert res.returncode != 0
        out = flat(res)
        for h in lab.hosts:
            assert (f"{h.name} rejected version 12 of {configs / 'v12.yml'}: it was rolled back "
                    f"to version 11 at ") in out, res.stdout[-4000:]
        assert f"({REASON}). No host was changed." in out
        assert "PLAY [Deploy mcache]" not in res.stdout
        assert "PLAY [Canary rollout]" not in res.stdout
        assert snapshot() == before
    print(f"\n[{lab.init}] deploy.yml of version 12: "
          + re.search(r"\S+ rejected version 12 of .*? here\)\.", out)[0])
    # the same change under a new number goes out
    ok(run(lab, "deploy.yml", *desired(configs, 13)))
    for h in lab.hosts:
        st = status(h)
        assert st["version"] == 13 and startup_version(h) == 13 and 12 in rejected(st)


def test_a_failed_canary_rolls_back_and_a_reboot_keeps_the_old_version(lab, configs):
    res = run(lab, "canary.yml", *desired(configs, 14), *FAST_PROBE)
    assert res.returncode != 0
    assert "probe failed on version 14" in flat(res)
    assert "rolled back to version 13" in flat(res)
    first, *rest = lab.hosts
    st = status(first)
    assert st["version"] == 13 and startup_version(first) == 13
    assert rejected(st)[14]["reason"].startswith("probe failed on version 14")
    assert all(current(h) == 13 and 14 not in rejected(status(h)) for h in rest)

    # an agent restart (the pins stay): still 13, adopted
    stop_agent(first)
    start_agent(first)
    st = serving(first, 13)
    assert st["config_file"]["result"] == "running"
    # a reboot (the pins go): still 13, from the start-up file
    _old, first = reboot(lab, first.index)
    st = serving(first, 13)
    assert st["config_file"]["result"] == "applied" and 14 in rejected(st)
    print(f"\n[{lab.init}] failed canary, then reboot of {first.name}: version {st['version']}, "
          f"rejected 14: {rejected(st)[14]['reason'][:120]}")
    res = run(lab, "deploy.yml", *desired(configs, 14), "--limit", first.name)
    assert res.returncode != 0 and f"{first.name} rejected version 14" in flat(res)


def test_status_and_the_refused_alert_clear_when_a_good_config_comes(lab, configs,
                                                                   lab_prometheus):
    """A host (re)started on a refused start-up file: it serves the version it ran last, says
    why in status.yml, and a real Prometheus with the shipped rules sees
    mcache_config_file_refused and the McacheConfigRefused alert pending (its `for: 5m` is
    longer than a test); a deploy of a good config sets the file right, and all three clear."""
    host = lab.host(2)
    bad = (configs / "v15.yml").read_text().replace("entries: 4096", "entries: 1000")
    bad = bad.replace("{{ mcache_memcached_address }}", host.address).replace(
        "{{ mcache_interface | default('eth0') }}", "eth0")
    assert host.exec(["tee", "/etc/mcache/mcache.yml"], input=bad).returncode == 0
    _old, host = reboot(lab, host.index)
    st = serving(host, 13)
    assert st["config_file"]["result"] == "refused"
    assert [f["path"] for f in st["config_file"]["faults"]] == ["$.cache.entries"]
    assert "serving version 13, the last one this host ran" in st["config_file"]["message"]

    prom = lab_prometheus({
        "rule_files": [str(lab.repo / "prometheus" / "mcache.rules.yml")],
        "scrape_configs": [{"job_name": "mcache", "static_configs": [
            {"targets": [f"{h.address}:9477" for h in lab.hosts]}]}],
    })
    instance = f"{host.address}:9477"

    def refused() -> dict[str, float]:
        return {r["metric"]["instance"]: float(r["value"][1]) for r in
                prom.query("mcache_config_file_refused")}

    def alert_states() -> dict[str, str]:
        return {a["labels"]["instance"]: a["state"]
                for a in prom.alerts(name="McacheConfigRefused")}

    until(lambda: len(refused()) == len(lab.hosts), 60, "every host's refused metric")
    assert refused()[instance] == 1.0
    assert all(v == 0.0 for i, v in refused().items() if i != instance)
    assert until(alert_states, 30, "McacheConfigRefused pending") == {instance: "pending"}
    table, _out = status_table(lab, *desired(configs, 13))
    row = table_row(table, host.name)
    print(f"\n[{lab.init}] status.yml, refused start-up file: {row}")
    assert "start-up config refused" in row and "$.cache.entries" in row

    t0 = time.monotonic()
    ok(run(lab, "deploy.yml", *desired(configs, 15)))
    st = status(host)
    assert st["version"] == 15 and st["config_file"]["result"] == "running"
    assert startup_version(host) == 15
    until(lambda: refused().get(instance) == 0.0, 30, "the refused metric back to 0")
    until(lambda: not alert_states(), 30, "McacheConfigRefused gone")
    TIMES[f"prometheus ({lab.init}): refused alert cleared after the deploy began"] = (
        time.monotonic() - t0)
    table, _out = status_table(lab, *desired(configs, 15))
    row = table_row(table, host.name)
    print(f"[{lab.init}] status.yml after the deploy of 15: {row}")
    assert re.search(r"\s15\s+15\s.*\s-$", row), row


def kernel_hits(host) -> int:
    return status(host)["counters"]["hit"]


def hit_ratio(host, keys: list[bytes]) -> float:
    """One UDP GET of each key: the share the kernel answered (every key is in memcached)."""
    before = kernel_hits(host)
    for k in keys:
        assert uc.udp_get_ascii(host.address, 11211, [k], 2.0) == {k: b"v-" + k}
    return (kernel_hits(host) - before) / len(keys)


@pytest.mark.parametrize("lab", ["plain"], indirect=True)
def test_an_agent_upgrade_by_canary_keeps_the_cache(lab, configs, tmp_path):
    """A release whose programs changed and no map did (its bpf/ sources edited, the map
    headers among them), rolled out by the canary playbook with the next config: every host
    gets the new agent, the config is a program swap onto the very same maps, and the keys
    cached before are kernel hits after."""
    for n in (16, 17, 18):  # entries live 10 minutes: the upgrade takes longer than v15's 15 s
        text = (configs / "v15.yml").read_text().replace("version: 15\n", f"version: {n}\n")
        assert "ttl_ms: 15000" in text
        (configs / f"v{n}.yml").write_text(text.replace("ttl_ms: 15000", "ttl_ms: 600000"))
    ok(run(lab, "deploy.yml", *desired(configs, 16)))
    host = lab.host(1)
    keys = [b"upgrade-%03d" % i for i in range(100)]
    mc = Client((host.address, 11211), default_noreply=False, timeout=5)
    for k in keys:
        mc.set(k, b"v-" + k)
    mc.close()
    time.sleep(0.2)  # past the fill hold (50 ms) of the last write
    hit_ratio(host, keys)  # misses that fill
    before = hit_ratio(host, keys)
    programs = status(host)["build"]["programs"]

    colls = install_collection(build_collection(tmp_path / "build"), tmp_path / "collections")
    bpf = colls / "ansible_collections" / "mcache" / "fleet" / "bpf"
    # a program and the headers that declare the maps change, none of the maps' layouts: the
    # agent before per-map identities made every map anew for a comment in these headers
    for name in ("xdp_ingress.c", "mcache_maps.h", "mcache_shared.h"):
        (bpf / name).write_text((bpf / name).read_text() + "/* a new build */\n")
    env = {**lab.env, "ANSIBLE_COLLECTIONS_PATH": str(colls),
           "ANSIBLE_CONFIG": str(tmp_path / "none.cfg")}
    t0 = time.monotonic()
    r = subprocess.run([str(lab.repo / ".venv" / "bin" / "ansible-playbook"), "-i",
                        str(lab.inventory), "mcache.fleet.canary", *desired(configs, 17)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                       stdin=subprocess.DEVNULL, check=False)
    out = ok(r)
    TIMES[f"canary.yml, a new release ({lab.init})"] = time.monotonic() - t0
    assert PREPARED.search(out)
    st = status(host)
    assert st["version"] == 17 and st["build"]["programs"] != programs, st["build"]
    assert st["last_apply"]["strategy"] == "program_swap", st["last_apply"]
    assert st["last_apply"]["cache_kept"] is True, st["last_apply"]
    after = hit_ratio(host, keys)
    print(f"\n[{lab.init}] agent upgrade by canary.yml: kernel hit ratio over {len(keys)} "
          f"keys cached before: {before:.2f} before, {after:.2f} right after")
    end = status(host)
    why = (f"flushes {end['flush_reasons']}, cache {end['cache']['used']} used, "
           f"generation {end.get('generation')}, last apply {end['last_apply']}; agent log:\n"
           + host.exec(["tail", "-n", "40", "/var/log/mcache/agent.log"]).stdout)
    assert before == 1.0 and after == 1.0, why
    ok(run(lab, "deploy.yml", *desired(configs, 18)))  # back to the repository's release
    assert all(current(h) == 18 for h in lab.hosts)


@pytest.fixture(scope="module", autouse=True)
def _report_times():
    yield
    print("\nfleet wall times (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in TIMES.items()))

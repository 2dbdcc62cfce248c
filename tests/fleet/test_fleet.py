"""End-to-end fleet tests: the real ansible-playbook over ssh against a 3-host lab.

The tests run in file order and build on each other (one lab per session): invalid config
refused -> deploy v1 -> idempotent re-deploy -> --check --diff -> failing canary (rolled back)
-> good canary -> rollback (previous, to N, refusal) -> status table and JSON.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.fleet.labctl import (
    AGENT,
    CONFIGS,
    PREPARED,
    TIMES,
    cfg,
    current,
    ok,
    ran_on,
    recap,
    run,
    stored,
)
from tests.fleet.promlab import until  # also test_truth.py's

FAST_PROBE = ["-e", "mcache_config_probe_retries=2", "-e", "mcache_config_probe_delay=0.5"]


def test_invalid_config_refused_on_controller(lab):
    def snapshot():
        return {h.name: (h.exec(["test", "-e", "/opt/mcache"]).returncode, current(h))
                for h in lab.hosts}

    before = snapshot()
    res = run(lab, "deploy.yml", *cfg("invalid.yml"))
    assert res.returncode != 0
    assert "$.cache.entries" in res.stdout
    assert "is not a valid mcache config" in res.stdout
    assert "Deploy mcache" not in res.stdout  # the host play never started
    assert snapshot() == before


def test_deploy(lab):
    out = ok(run(lab, "deploy.yml", *cfg("v1.yml")))
    assert set(recap(out)) >= {h.name for h in lab.hosts}
    for h in lab.hosts:
        assert current(h) == 1
        st = json.loads(h.exec([AGENT, "status", "--json"], check=True).stdout)["result"]
        assert st["running"] is True and st["version"] == 1
        assert any(a["interface"] == "eth0" for a in st["attached"])
        pid = h.exec(["pgrep", "-o", "-x", "memcached"], check=True).stdout.strip()
        args = h.exec(["cat", f"/proc/{pid}/cmdline"], check=True).stdout.split("\0")
        assert "-U" in args and h.address in args
        if h.init == "systemd":  # the role's systemd branch: units installed, enabled, running
            for unit in ("mcache-agent.service", "mcache-memcached.service"):
                r = h.exec(["systemctl", "is-enabled", unit])
                assert r.stdout.strip() == "enabled", (unit, r.stdout, r.stderr)
                assert h.exec(["systemctl", "is-active", unit]).stdout.strip() == "active"
            main = h.exec(["systemctl", "show", "-P", "MainPID", "mcache-memcached.service"])
            assert main.stdout.strip() == pid


def test_redeploy_is_idempotent(lab):
    out = ok(run(lab, "deploy.yml", *cfg("v1.yml")))
    rows = recap(out)
    for h in lab.hosts:
        assert rows[h.name]["changed"] == 0, out[-4000:]
        assert rows[h.name]["failed"] == 0


def test_check_diff_shows_change_and_changes_nothing(lab):
    out = ok(run(lab, "deploy.yml", *cfg("v2-ttl.yml"), "--check", "--diff"))
    assert "-  ttl_ms: 60000" in out and "+  ttl_ms: 30000" in out
    assert "+version: 2" in out
    for h in lab.hosts:
        assert current(h) == 1
        assert 2 not in stored(h)


def test_canary_failing_probe_rolls_back_first_host_only(lab):
    res = run(lab, "canary.yml", *cfg("v3-cache-off.yml"), *FAST_PROBE)
    assert res.returncode != 0
    assert "probe failed on version 3" in res.stdout, res.stdout[-3000:]
    assert "rolled back to version 1" in res.stdout
    first, *rest = lab.hosts
    assert current(first) == 1
    assert 3 in stored(first)  # it was applied, then rolled back
    # the host rejected 3 (no start or deploy applies it again) and starts on 1
    rej = json.loads(first.exec([AGENT, "versions", "--json"], check=True).stdout)["result"]
    assert [r["version"] for r in rej["rejected"]] == [3]
    assert rej["rejected"][0]["reason"].startswith("probe failed on version 3")
    assert "version: 1\n" in first.exec(["cat", "/etc/mcache/mcache.yml"], check=True).stdout
    for h in rest:
        assert current(h) == 1
        assert 3 not in stored(h)  # never touched
    assert recap(res.stdout)[first.name]["failed"] == 1
    assert all(recap(res.stdout)[h.name]["changed"] == 0 for h in rest)  # the play stopped


def test_canary_good_config_reaches_every_host(lab):
    out = ok(run(lab, "canary.yml", *cfg("v4-ttl.yml")))
    for h in lab.hosts:
        assert current(h) == 4
    # a config change is one module call a host: no host preparation ran
    assert not PREPARED.search(out), out[-4000:]
    for h in lab.hosts:
        assert recap(out)[h.name]["changed"] == 1


def test_the_installed_collection_runs_against_the_lab(lab, tmp_path):
    """The tarball, installed into an empty collections path elsewhere, runs its playbooks by
    their full names; its release is the repository's, so no host is prepared again."""
    from tests.collection.test_collection import build_collection, install_collection

    colls = install_collection(build_collection(tmp_path / "build"), tmp_path / "collections")
    env = {**lab.env, "ANSIBLE_COLLECTIONS_PATH": str(colls),
           "ANSIBLE_CONFIG": str(tmp_path / "none.cfg")}
    for playbook in ("mcache.fleet.canary", "mcache.fleet.status"):
        r = subprocess.run([str(lab.repo / ".venv" / "bin" / "ansible-playbook"), "-i",
                            str(lab.inventory), playbook, *cfg("v4-ttl.yml")], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=600,
                           stdin=subprocess.DEVNULL, check=False)
        out = ok(r)
        assert not PREPARED.search(out), out[-4000:]
    for h in lab.hosts:
        assert current(h) == 4


def test_a_host_off_the_release_is_prepared_alone(lab):
    """The release fingerprint decides: a host whose record is gone (a new agent for it, say)
    is prepared again; the others get their one module call."""
    odd = lab.host(2)
    odd.exec(["rm", "-f", "/etc/mcache/release"], check=True)
    out = ok(run(lab, "canary.yml", *cfg("v4-ttl.yml")))
    rows = recap(out)
    assert rows[odd.name]["changed"] >= 1
    for h in lab.hosts:
        if h is not odd:
            assert rows[h.name]["changed"] == 0, out[-4000:]
        assert current(h) == 4
    assert odd.exec(["test", "-s", "/etc/mcache/release"]).returncode == 0
    assert ran_on(out, "mcache_host : Directories on the host") == {odd.name}


def test_rollback_to_previous(lab):
    ok(run(lab, "rollback.yml", *cfg("v4-ttl.yml")))
    for h in lab.hosts:
        assert current(h) == 1
        # the host starts on what it rolled back to, and rejected what it left
        assert "version: 1\n" in h.exec(["cat", "/etc/mcache/mcache.yml"], check=True).stdout
        rej = json.loads(h.exec([AGENT, "versions", "--json"], check=True).stdout)["result"]
        assert {r["version"]: r["reason"] for r in rej["rejected"]}[4] == "rollback.yml"


def test_rollback_to_n_with_limit(lab):
    ok(run(lab, "rollback.yml", "-e", "mcache_rollback_to=4", "--limit", "mc-lab-2"))
    assert current(lab.host(2)) == 4
    assert current(lab.host(1)) == 1 and current(lab.host(3)) == 1
    ok(run(lab, "rollback.yml", "-e", "mcache_rollback_to=4"))
    for h in lab.hosts:
        assert current(h) == 4


def test_rollback_refuses_unknown_version(lab):
    res = run(lab, "rollback.yml", "-e", "mcache_rollback_to=99", "--limit", "mc-lab-3")
    assert res.returncode != 0
    assert "cannot roll back to version 99: not stored" in res.stdout
    assert current(lab.host(3)) == 4


def test_status_table_and_json(lab, tmp_path):
    out_file = tmp_path / "status.json"
    out = ok(run(lab, "status.yml", *cfg("v4-ttl.yml"), "-e", f"mcache_status_out={out_file}"))
    assert re.search(r"HOST\s+VERSION\s+DESIRED\s+MODE\s+HIT RATIO\s+PROBE\s+DRIFT\s+REJECTED"
                     r"\s+RELEASE\s+WHY", out)
    release = agent_release()
    for h in lab.hosts:
        # the rollbacks above left version 1 (rolled back to 4) rejected on every host
        assert re.search(rf"{h.name}\s+4\s+4\s+generic\s+\S+\s+ok\s+no\s+(\d+,)*1(,\d+)*\s+"
                         rf"{re.escape(release)}\s+-", out), out[-3000:]
    rows = json.loads(out_file.read_text())
    assert sorted(r["host"] for r in rows) == [h.name for h in lab.hosts]
    for r in rows:
        assert r["version"] == 4 and r["drift"] is False and r["probe_ok"] is True
        assert f"{r['release']}/{r['programs'][:8]}" == release
        assert 1 in [x["version"] for x in r["rejected"]]
    # against another desired version, every host drifts, and says so
    out = ok(run(lab, "status.yml", *cfg("v6-metrics.yml"), "-e", f"mcache_status_out={out_file}"))
    rows = json.loads(out_file.read_text())
    assert all(r["drift"] is True for r in rows)
    assert all(r["reason"] == "runs version 4, not yet rolled out" for r in rows), rows
    # against a version the hosts rejected, they say that
    out = ok(run(lab, "status.yml", *cfg("v1.yml"), "-e", f"mcache_status_out={out_file}"))
    rows = json.loads(out_file.read_text())
    assert all(r["reason"].startswith("the desired version 1 was rejected here (rolled back "
                                      "to version 4 at ") for r in rows), rows


def test_status_says_why_a_host_is_not_right(lab, tmp_path):
    """An agent that does not answer, and a host whose probe failed, named in the table."""
    out_file = tmp_path / "status.json"
    down, bad = lab.host(3), lab.host(1)
    stop_agent(down)
    bad.exec(["tee", "/tmp/v5-off.yml"], check=True, input=_with(
        bad, "v4-ttl.yml", "version: 4", "version: 5").replace("enabled: true", "enabled: false"))
    assert bad.exec([AGENT, "apply", "/tmp/v5-off.yml"]).returncode == 0
    assert bad.exec([AGENT, "probe"]).returncode == 1
    try:
        out = ok(run(lab, "status.yml", *cfg("v4-ttl.yml"), "-e", f"mcache_status_out={out_file}"))
        rows = {r["host"]: r for r in json.loads(out_file.read_text())}
        assert rows[down.name]["reason"].startswith("agent not answering"), rows
        assert rows[down.name]["version"] == 4  # what the pins say: the kernel still serves
        assert "probe failed" in rows[bad.name]["reason"], rows
        assert rows[lab.host(2).name]["reason"] is None
        # (the table's lines may be wrapped by the yaml callback)
        assert re.search(rf"{down.name}\s+4\s+4\s+.*agent not answering", " ".join(out.split())), \
            out[-3000:]
    finally:
        ok(run(lab, "rollback.yml", "--limit", bad.name))
        ok(run(lab, "deploy.yml", *cfg("v4-ttl.yml"), "--limit", down.name))
    for h in lab.hosts:
        assert current(h) == 4


def agent_release() -> str:
    """The release column every host shows: this repository's agent build."""
    from mcache_agent import build

    i = build.info()
    return f"{i['release']}/{i['programs'][:8]}"


def _with(host, name: str, old: str, new: str) -> str:
    """A test config rendered for a host, with one string replaced."""
    text = (CONFIGS / name).read_text().replace(old, new)
    return text.replace("{{ mcache_memcached_address }}", host.address).replace(
        "{{ mcache_interface | default('eth0') }}", "eth0")


def test_a_real_prometheus_fires_and_clears_the_agent_down_alert(lab, lab_prometheus):
    """The shipped rules, loaded by Debian's prometheus scraping the lab's agents (metrics
    on each host's address): stopping one agent fires McacheAgentDown (for: 1m) for that host
    only, and it clears once the agent is back."""
    ok(run(lab, "canary.yml", *cfg("v6-metrics.yml")))
    prom = lab_prometheus({
        "rule_files": [str(lab.repo / "prometheus" / "mcache.rules.yml")],
        "scrape_configs": [{"job_name": "mcache", "static_configs": [
            {"targets": [f"{h.address}:9477" for h in lab.hosts]}]}],
    })
    down = lab.host(2)
    try:
        until(lambda: len(prom.targets_up()) == len(lab.hosts), 60, "all targets up")
        until(lambda: prom.query("mcache_probe_success"), 90, "a periodic probe's result")
        stop_agent(down)
        t0 = time.monotonic()
        alerts = until(lambda: prom.firing("McacheAgentDown"), 180, "McacheAgentDown firing")
        fired = time.monotonic() - t0
        assert [a["labels"]["instance"] for a in alerts] == [f"{down.address}:9477"]
        assert alerts[0]["labels"]["severity"] == "warning"
        start_agent(down)  # as the role's service does
        t1 = time.monotonic()
        until(lambda: not prom.firing("McacheAgentDown"), 120, "McacheAgentDown cleared")
        cleared = time.monotonic() - t1
        TIMES[f"prometheus ({lab.init}): agent-down alert fired after"] = fired
        TIMES[f"prometheus ({lab.init}): cleared after the agent was started"] = cleared
        assert 55 < fired < 120, fired
    finally:
        start_agent(down, check=False)


def stop_agent(host, check: bool = True) -> None:
    """Stop the host's agent as its service manager does (the data plane keeps serving)."""
    argv = (["systemctl", "stop", "mcache-agent.service"] if host.init == "systemd" else
            ["start-stop-daemon", "--stop", "--quiet", "--pidfile", "/run/mcache/agent.pid",
             "--name", "mcache-agent", "--retry", "TERM/10/KILL/5", "--remove-pidfile"])
    host.exec(argv, check=check)


def start_agent(host, check: bool = True) -> None:
    argv = (["systemctl", "start", "mcache-agent.service"] if host.init == "systemd" else
            ["start-stop-daemon", "--start", "--quiet", "--background", "--make-pidfile",
             "--pidfile", "/run/mcache/agent.pid", "--name", "mcache-agent", "--output",
             "/var/log/mcache/agent.log", "--startas", "/opt/mcache/venv/bin/mcache-agent",
             "--", "run", "--config", "/etc/mcache/mcache.yml", "--state-dir",
             "/var/lib/mcache", "--socket", "/run/mcache/agent.sock"])
    host.exec(argv, check=check)


@pytest.fixture(scope="module", autouse=True)
def _report_times():
    yield
    print("\nfleet wall times (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in TIMES.items()))

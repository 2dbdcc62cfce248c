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
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parent / "configs"
AGENT = "/opt/mcache/venv/bin/mcache-agent"
FAST_PROBE = ["-e", "mcache_config_probe_retries=2", "-e", "mcache_config_probe_delay=0.5"]
TIMES: dict[str, float] = {}


def cfg(name: str) -> list[str]:
    return ["-e", f"mcache_config_file={CONFIGS / name}"]


def recap(out: str) -> dict[str, dict[str, int]]:
    rows = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", out, re.M):
        rows[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return rows


def run(lab, playbook: str, *args: str) -> subprocess.CompletedProcess[str]:
    t0 = time.monotonic()
    res = lab.ansible_playbook(f"playbooks/{playbook}", *args)
    TIMES[f"{playbook} {' '.join(a for a in args if not a.startswith('-'))}"] = (
        time.monotonic() - t0
    )
    return res


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-6000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def versions(host) -> dict:
    res = host.exec([AGENT, "versions", "--json"])
    if res.returncode != 0:
        return {"current": None, "previous": None, "versions": []}
    return json.loads(res.stdout)["result"]


def current(host) -> int | None:
    return versions(host)["current"]


def stored(host) -> list[int]:
    return [v["version"] for v in versions(host)["versions"]]


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
        pid = h.exec(["cat", "/run/mcache-memcached/memcached.pid"], check=True).stdout.strip()
        args = h.exec(["cat", f"/proc/{pid}/cmdline"], check=True).stdout.split("\0")
        assert "-U" in args and h.address in args


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
    assert "canary failed on mc-lab-1" in res.stdout
    assert "rolled back to version 1" in res.stdout
    first, *rest = lab.hosts
    assert current(first) == 1
    assert 3 in stored(first)  # it was applied, then rolled back
    for h in rest:
        assert current(h) == 1
        assert 3 not in stored(h)  # never touched
    assert recap(res.stdout)[first.name]["rescued"] == 1


def test_canary_good_config_reaches_every_host(lab):
    ok(run(lab, "canary.yml", *cfg("v4-ttl.yml")))
    for h in lab.hosts:
        assert current(h) == 4


def test_rollback_to_previous(lab):
    ok(run(lab, "rollback.yml", *cfg("v4-ttl.yml")))
    for h in lab.hosts:
        assert current(h) == 1


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
    assert re.search(r"HOST\s+VERSION\s+DESIRED\s+MODE\s+HIT RATIO\s+PROBE\s+DRIFT", out)
    for h in lab.hosts:
        assert re.search(rf"{h.name}\s+4\s+4\s+generic\s+\S+\s+ok\s+no", out), out[-3000:]
    rows = json.loads(out_file.read_text())
    assert sorted(r["host"] for r in rows) == [h.name for h in lab.hosts]
    for r in rows:
        assert r["version"] == 4 and r["drift"] is False and r["probe_ok"] is True
    # against another desired version, every host drifts
    out = ok(run(lab, "status.yml", *cfg("v1.yml"), "-e", f"mcache_status_out={out_file}"))
    assert all(r["drift"] is True for r in json.loads(out_file.read_text()))


@pytest.fixture(scope="module", autouse=True)
def _report_times():
    yield
    print("\nfleet wall times (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in TIMES.items()))

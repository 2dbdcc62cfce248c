"""The alerting and recording rules: promtool checks them and runs their unit tests
(prometheus/mcache.rules.test.yml), and every metric they read is one the agent exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests import pyfile

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "prometheus" / "mcache.rules.yml"
TESTS = REPO / "prometheus" / "mcache.rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120,
                          cwd=RULES.parent)


def test_rules_are_valid() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 16 rules found" in r.stdout


def test_rule_unit_tests_pass() -> None:
    r = promtool("test", "rules", str(TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_a_unit_test() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for case in yaml.safe_load(TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])
              if t.get("exp_alerts")}
    assert alerts == tested, alerts ^ tested


def test_rules_read_only_metrics_the_agent_exports() -> None:
    from prometheus_client import generate_latest

    from mcache_agent.metrics import make_registry

    status = {"version": 3, "running": True, "counters": {"hit": 1, "miss": 1},
              "counters_by_path": {"xdp_main": {"hit": 1}},
              "counters_by_version": {"3": {"hit": 1}},
              "hit_ratio": 0.5, "cache": {"entries": 16, "used": 1, "memory_bytes": 1},
              "last_apply": {"version": 3, "result": "ok", "strategy": "map_swap",
                             "duration_ms": 1.0, "swap_ms": 0.1,
                             "applied_at": "2026-12-02T00:00:00Z"},
              "probe": {"ok": True, "at_unix": 1.0},
              "config_file": {"result": "refused"}}
    exported = set(re.findall(r"^(mcache_\w+?)(?:\{| )", generate_latest(
        make_registry(lambda: status)).decode(), re.M))
    exprs = " ".join(r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"]
                     for r in g["rules"])
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", exprs))
    used = {n for n in names if n.startswith("mcache_")}  # recorded names carry a colon
    assert used and used <= exported, used - exported


def _mixin():
    return pyfile.load("mcache_mixin", REPO / "prometheus" / "mixin.py")


def test_the_committed_rules_are_the_generators_output() -> None:
    # the rules are edited in prometheus/mixin.py; the file is its output for job "mcache"
    assert RULES.read_text() == _mixin().render(), (
        "prometheus/mcache.rules.yml is stale: python3 prometheus/mixin.py --out "
        "prometheus/mcache.rules.yml")


def test_the_rules_take_the_job_name(tmp_path: Path) -> None:
    text = _mixin().render("cache-fleet")
    out = tmp_path / "r.yml"
    out.write_text(text)
    r = promtool("check", "rules", str(out))
    assert r.returncode == 0 and "SUCCESS: 16 rules found" in r.stdout, r.stdout + r.stderr
    assert 'up{job="cache-fleet"} == 0' in text and 'job="mcache"' not in text
    # every selector of an mcache metric names the job
    exprs = [r["expr"] for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    selectors = [(name, sel) for e in exprs
                 for name, sel in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?", e)
                 if name.startswith("mcache_") or name == "up"]
    assert selectors and all(sel.startswith('{job="cache-fleet"') for _n, sel in selectors), \
        selectors


def test_shortened_rules_for_tests_keep_every_alert(tmp_path: Path) -> None:
    mixin = _mixin()
    short = yaml.safe_load(mixin.render(for_divisor=30, probe_stale_s=150))
    full = yaml.safe_load(mixin.render())
    fors = {r["alert"]: r["for"] for g in short["groups"] for r in g["rules"] if "alert" in r}
    assert fors == {"McacheAgentDown": "10s", "McacheProbeFailing": "10s",
                    "McacheProbeStale": "10s", "McacheConfigDrift": "1m",
                    "McacheConfigRefused": "10s", "McacheApplyFailing": "0s",
                    "McacheHitRatioCollapse": "30s", "McacheFillsRejected": "30s",
                    "McacheFallbackFlushes": "20s", "McacheCacheFull": "2m"}
    assert [r.get("alert") for g in short["groups"] for r in g["rules"]] == [
        r.get("alert") for g in full["groups"] for r in g["rules"]]
    assert any("> 150" in r["expr"] for g in short["groups"] for r in g["rules"])

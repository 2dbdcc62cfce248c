"""The Grafana dashboard as code: the committed JSON is the generator's output, every panel
has a query, every query is PromQL that Prometheus parses and reads only what the agent
exports. (tests/fleet/test_observability.py runs each query against a real Prometheus.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import ModuleType

import yaml

from tests import pyfile

REPO = Path(__file__).resolve().parents[2]
JSON = REPO / "dashboards" / "mcache.json"


def generator() -> ModuleType:
    return pyfile.load("mcache_dashboard", REPO / "dashboards" / "mcache_dashboard.py")


def test_the_committed_dashboard_is_the_generators_output() -> None:
    assert JSON.read_text() == generator().render(), (
        "dashboards/mcache.json is stale: python3 dashboards/mcache_dashboard.py")


def test_the_dashboard_has_the_fleet_host_and_version_views() -> None:
    doc = json.loads(JSON.read_text())
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert rows == ["Fleet", "Hosts", "Config versions"]
    titles = {p["title"] for p in doc["panels"]}
    assert {"Releases", "Drift: versions behind the fleet", "Rejected versions", "Last rollout",
            "Hit ratio", "Kernel hits against memcached's GETs", "Verdicts by path",
            "Cache fill ratio", "Evictions", "Fallback flushes by reason", "Probe",
            "Hit ratio by config version"} <= titles
    assert all(p.get("targets") for p in doc["panels"] if p["type"] != "row")
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource", "job", "instance"]
    assert doc["uid"] == "mcache-fleet"


def test_every_query_parses_and_reads_only_what_the_agent_exports(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from mcache_agent.metrics import make_registry

    queries = generator().panel_queries(json.loads(JSON.read_text()))
    assert len(queries) >= 20
    # promtool parses PromQL offline when it is a recording rule's expression
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": expr} for i, (_t, expr) in enumerate(queries)]}]}
    (tmp_path / "q.yml").write_text(yaml.safe_dump(rules))
    r = subprocess.run(["promtool", "check", "rules", str(tmp_path / "q.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    status = {"version": 3, "counters": {"hit": 1}, "counters_by_path": {"xdp_main": {"hit": 1}},
              "counters_by_version": {"3": {"hit": 1}}, "flush_reasons": {"blind": 0},
              "cache": {"entries": 1, "used": 0, "fill_ratio": 0.0},
              "memcached": {"cmd_get": 1}, "build": {"release": "r"},
              "last_apply": {"result": "ok", "applied_at": "2026-12-02T00:00:00Z"},
              "probe": {"ok": True, "at_unix": 1.0}, "rejected": []}
    exported = set(re.findall(r"^(mcache_\w+?)(?:\{| )", generate_latest(
        make_registry(lambda: status)).decode(), re.M))
    used = {n for _t, e in queries for n in re.findall(r"\bmcache_\w+", e)}
    assert used and used <= exported, used - exported

"""Observability as installed (issue 25), end to end on the lab (plain hosts only: nothing here
depends on the init): the fleet deployed with the default config (examples/mcache-minimal.yml:
metrics on :9465, a probe every 60 s), a real Prometheus given its targets and rules by
playbooks/prometheus.yml; every panel query of the generated dashboard returns series; after
the fleet ran healthy through every alert's `for:`, no alert fires; then an agent stopped, the
probe broken (memcached hung) and a refused start-up config each fire their alert, which clears
after the fix. The timings are printed (docs/OBSERVABILITY.md quotes them).

The rules are the shipped ones generated with shortened `for:` (prometheus/mixin.py
--for-divisor 60: 1 h -> 60 s, 30 m -> 30 s, everything under 10 m -> 10 s) and a 150 s probe
age limit (the probe runs every 60 s), so that the whole run fits in about three minutes.

Runs after test_fleet.py and test_memcached.py on the plain lab (file order), deploying
version 10 (test_truth.py deploys 11 and up), or alone on a fresh lab (the deploy prepares it).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymemcache.client.base import Client

from mcache_agent import udp_client as uc
from tests import pyfile
from tests.fleet.labctl import AGENT, REPO, TIMES, ok, recap, run
from tests.fleet.promlab import until
from tests.fleet.test_fleet import agent_release, start_agent, stop_agent

pytestmark = pytest.mark.parametrize("lab", ["plain"], indirect=True)

VERSION = 10
FOR_DIVISOR = 60
PROBE_STALE_S = 150
# The longest for: of the shortened rules (McacheCacheFull, 1 h / 60), and some evaluations.
HEALTHY_S = 60 + 10
ALERT_TIMES: dict[str, float] = {}


def dashboard_queries() -> list[tuple[str, str]]:
    mod = pyfile.load("mcache_dashboard", REPO / "dashboards" / "mcache_dashboard.py")
    return mod.panel_queries(json.loads((REPO / "dashboards" / "mcache.json").read_text()))


def default_config(tmp: Path) -> Path:
    """examples/mcache-minimal.yml for the lab: only the per-host fields templated."""
    text = (REPO / "examples" / "mcache-minimal.yml").read_text()
    assert "metrics" not in text and "probe" not in text  # the defaults, not written out
    text = (text.replace("version: 1\n", f"version: {VERSION}\n")
            .replace("address: 198.18.0.11", 'address: "{{ mcache_memcached_address }}"')
            .replace("name: eth0", "name: \"{{ mcache_interface | default('eth0') }}\""))
    path = tmp / "mcache.yml"
    path.write_text(text)
    return path


class Traffic:
    """GETs over UDP to every host (hits once a key is cached, a miss now and then), so that
    the hit-ratio and offload panels show a real mix."""

    def __init__(self, hosts: list[Any]) -> None:
        self.hosts, self.stop = hosts, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Traffic:
        for h in self.hosts:
            c = Client((h.address, 11211), connect_timeout=2, timeout=2)
            for i in range(20):
                c.set(f"obs:{i}", b"v" * 64)
            c.close()
        time.sleep(0.2)  # past fill_hold_ms: the first GETs fill
        self.thread.start()
        return self

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            for h in self.hosts:
                try:  # a hung memcached (the probe test) times out a miss: fine
                    uc.udp_get_ascii(h.address, 11211, [f"obs:{n % 25}".encode()], 0.3)
                except (TimeoutError, OSError):
                    pass
            n += 1
            self.stop.wait(0.05)

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture
def observed(lab, lab_prometheus, tmp_path) -> Iterator[tuple[Any, Any, Path]]:
    desired = default_config(tmp_path)
    ok(run(lab, "deploy.yml", "-e", f"mcache_config_file={desired}"))
    for h in lab.hosts:
        st = json.loads(h.exec([AGENT, "status", "--json"], check=True).stdout)["result"]
        assert st["version"] == VERSION and st["metrics"]["listen"] == ":9465"
        assert st["metrics"]["serving"] is True
    sd, rules = tmp_path / "prom" / "file_sd" / "mcache.yml", tmp_path / "prom" / "mcache.rules.yml"
    t0 = time.monotonic()
    pb_args = ["-e", "mcache_prometheus_host=localhost",
               "-e", f"mcache_prometheus_file_sd_path={sd}",
               "-e", f"mcache_prometheus_rules_path={rules}",
               "-e", f"mcache_prometheus_rules_for_divisor={FOR_DIVISOR}",
               "-e", f"mcache_prometheus_rules_probe_stale_s={PROBE_STALE_S}"]
    out = ok(run(lab, "prometheus.yml", *pb_args))
    TIMES["prometheus.yml"] = time.monotonic() - t0
    assert f"--for-divisor {FOR_DIVISOR}" in rules.read_text()
    assert recap(out)["localhost"]["changed"] == 3  # the directories, the targets, the rules
    # again, in check mode: nothing to change, and it says so
    again = ok(run(lab, "prometheus.yml", "--check", "--diff", *pb_args))
    assert recap(again)["localhost"]["changed"] == 0, again[-3000:]
    prom = lab_prometheus({
        "scrape_configs": [{"job_name": "mcache", "scrape_interval": "2s",
                            "file_sd_configs": [{"files": [str(sd)], "refresh_interval": "5s"}]}],
        "rule_files": [str(rules)],
    })
    with Traffic(lab.hosts):
        yield lab, prom, desired


def test_a_default_fleet_is_scraped_graphed_and_quiet_and_each_fault_fires_and_clears(observed):
    lab, prom, desired = observed
    want = sorted(f"{h.address}:9465" for h in lab.hosts)
    until(lambda: sorted(prom.targets_up()) == want, 60, "every lab host a target, up")
    # the targets carry the inventory's names
    names = {r["metric"]["mcache_host"] for r in prom.query("up")}
    assert names == {h.name for h in lab.hosts}
    assert {r["metric"]["instance"] for r in prom.query("mcache_config_running == 1")} == set(want)
    release = prom.query("mcache_build_info")
    assert len(release) == len(lab.hosts) and all(r["metric"]["release"] for r in release)

    # every panel query of the dashboard returns series (rates need two scrapes in the window)
    queries = dashboard_queries()

    def empty() -> list[str]:
        return [f"{title}: {expr}" for title, expr in queries if not prom.query(expr)]

    t0 = time.monotonic()
    try:
        until(lambda: not empty(), 60, "series for every panel query", every=2)
    except AssertionError:
        raise AssertionError("panel queries without series:\n" + "\n".join(empty())) from None
    print(f"\n{len(queries)} panel queries, each with series, {time.monotonic() - t0:.0f} s "
          "after the first scrape")

    # healthy through every for:, nothing fires (nor waits to)
    time.sleep(max(0.0, HEALTHY_S - (time.monotonic() - t0)))
    assert prom.alerts() == [], prom.alerts()
    assert all(float(r["value"][1]) == 1 for r in prom.query("mcache_probe_success"))

    # 1. an agent stopped: McacheAgentDown for that host only
    down = lab.host(2)
    stop_agent(down)
    try:
        fire_and_clear(prom, "McacheAgentDown", f"{down.address}:9465", "agent stopped",
                       lambda: start_agent(down))
    finally:
        start_agent(down, check=False)

    # 2. the probe broken: memcached hung (SIGSTOP), the agent's probe fails
    bad = lab.host(1)
    pid = bad.exec(["pgrep", "-o", "-x", "memcached"], check=True).stdout.strip()
    bad.exec(["kill", "-STOP", pid], check=True)
    try:
        assert bad.exec([AGENT, "probe"], timeout=30).returncode != 0
        def fix_probe() -> None:
            bad.exec(["kill", "-CONT", pid], check=True)
            until(lambda: bad.exec([AGENT, "probe"], timeout=30).returncode == 0, 30,
                  "the probe passing again")
        fire_and_clear(prom, "McacheProbeFailing", f"{bad.address}:9465",
                       "memcached hung (probe failing)", fix_probe)
    finally:
        bad.exec(["kill", "-CONT", pid])

    # 3. a refused config pushed as the host's start-up file, and the agent restarted on it
    host = lab.host(3)
    good = host.exec(["cat", "/etc/mcache/mcache.yml"], check=True).stdout
    assert f"version: {VERSION}" in good
    # 1000 slots: not a power of two, refused (the agent serves what is pinned)
    refused = good.replace(f"version: {VERSION}\n",
                           f"version: {VERSION}\ncache: {{entries: 1000}}\n")
    host.exec(["tee", "/etc/mcache/mcache.yml"], input=refused, check=True)
    restart(host)
    try:
        def fix_file() -> None:
            host.exec(["tee", "/etc/mcache/mcache.yml"], input=good, check=True)
            restart(host)
        fire_and_clear(prom, "McacheConfigRefused", f"{host.address}:9465",
                       "refused start-up config", fix_file)
    finally:
        host.exec(["tee", "/etc/mcache/mcache.yml"], input=good)
    st = json.loads(host.exec([AGENT, "status", "--json"], check=True).stdout)["result"]
    assert st["version"] == VERSION and st["config_file"]["result"] != "refused"

    # all fixed: quiet again
    until(lambda: not prom.alerts("firing"), 30, "no alert firing after the fixes")

    # the status table says which release each host runs (the agents' mcache_build_info)
    table = " ".join(ok(run(lab, "status.yml", "-e", f"mcache_config_file={desired}")).split())
    release = agent_release()
    assert re.search(r"HOST VERSION DESIRED MODE HIT RATIO PROBE DRIFT REJECTED RELEASE WHY",
                     table), table[-3000:]
    for h in lab.hosts:
        assert re.search(rf"{h.name} {VERSION} {VERSION} \S+ \S+ \S+ no \S+ "
                         rf"{re.escape(release)} ", table), table[-3000:]
    assert {r["metric"]["release"] + "/" + r["metric"]["programs"][:8]
            for r in prom.query("mcache_build_info")} == {release}
    print("alert timings (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in ALERT_TIMES.items()))
    if png := os.environ.get("MCACHE_DASHBOARD_PNG"):  # the README's picture (docs/dashboard.png)
        mod = pyfile.load("render", REPO / "dashboards" / "render.py")
        print("dashboard drawn:", mod.render(prom.api.removesuffix("/api/v1"), Path(png),
                                             minutes=(time.monotonic() - t0) / 60 + 0.5))


def restart(host) -> None:
    stop_agent(host)
    start_agent(host)
    until(lambda: not json.loads(host.exec([AGENT, "status", "--json"]).stdout or "{}")
          .get("result", {}).get("starting", True), 60, f"{host.name}'s agent up")


def fire_and_clear(prom, alert: str, instance: str, what: str, fix) -> None:
    """Wait for `alert` to fire for `instance` (and no other alert to fire), run the fix, wait
    for it to clear; record both times."""
    t0 = time.monotonic()
    fired = until(lambda: prom.firing(alert), 120, f"{alert} firing ({what})")
    ALERT_TIMES[f"{alert} fired after {what}"] = time.monotonic() - t0
    assert [a["labels"]["instance"] for a in fired] == [instance], fired
    others = [a["labels"]["alertname"] for a in prom.firing() if a["labels"]["alertname"] != alert]
    assert not others, others
    t1 = time.monotonic()
    fix()
    until(lambda: not prom.alerts(name=alert), 120, f"{alert} cleared")
    ALERT_TIMES[f"{alert} cleared after the fix began"] = time.monotonic() - t1

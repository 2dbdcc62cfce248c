"""Canary analysis on the lab (issue 24), plain hosts only: with background GET traffic
(lab/loadgen.py), a config that passes the probe but cuts the hit ratio (ttl_ms: 1) is stopped
at the canary host by the bake and rolled back, the other hosts untouched, the output naming
host, signal, before and after; a good config then goes through every wave with the bake, and
each wave is in the run's record, which status.yml shows.

Named to run after test_truth.py on the same lab (versions 41 and up, above every other
fleet test's), or alone on a fresh lab (the first deploy prepares it).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.labctl import CONFIGS, REPO, TIMES, current, ok, run, stored

BAKE = ["-e", "mcache_config_bake_s=3"]


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """41: the base; 42: ttl_ms 1 (passes the probe, wrecks the cache); 43: a good change."""
    d = tmp_path_factory.mktemp("canary")
    base = (CONFIGS / "v1.yml").read_text()
    assert "version: 1\n" in base and "ttl_ms: 60000" in base
    for n, ttl in {41: 60000, 42: 1, 43: 30000}.items():
        (d / f"v{n}.yml").write_text(base.replace("version: 1\n", f"version: {n}\n")
                                     .replace("ttl_ms: 60000", f"ttl_ms: {ttl}"))
    return d


def desired(configs: Path, n: int) -> list[str]:
    return ["-e", f"mcache_config_file={configs / f'v{n}.yml'}"]


@pytest.fixture
def load(lab) -> Iterator[subprocess.Popen[str]]:
    """GETs at 300/s per host from the machine, for as long as the test runs."""
    p = subprocess.Popen([sys.executable, str(REPO / "lab" / "loadgen.py"), "--hosts",
                          ",".join(h.address for h in lab.hosts), "--rate", "300", "--keys", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # keys set in memcached, kernel caches filled
    try:
        yield p
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        print(out, err)
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(rows) == len(lab.hosts) and all(r["values"] > 100 for r in rows), (out, err)


@pytest.mark.parametrize("lab", ["plain"], indirect=True)
def test_bake_stops_a_config_that_cuts_the_hit_ratio_and_passes_a_good_one(
        lab, configs, load, tmp_path):
    report = ["-e", f"mcache_config_report_dir={tmp_path}"]
    ok(run(lab, "deploy.yml", *desired(configs, 41)))
    assert all(current(h) == 41 for h in lab.hosts)
    time.sleep(2)  # the base serves the load (a first deploy just filled the caches)

    t0 = time.monotonic()
    res = run(lab, "canary.yml", *desired(configs, 42), *BAKE, *report)
    TIMES["canary.yml bad config (bake 3 s)"] = time.monotonic() - t0
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, out[-3000:]
    canary, *others = lab.hosts
    assert f"canary analysis: {canary.name}: hit_ratio " in out, out[-4000:]
    assert "hit ratio fell by" in out
    # the canary was rolled back; the others never saw version 42
    assert current(canary) == 41
    for h in others:
        assert current(h) == 41 and 42 not in stored(h)
    rec = json.loads((tmp_path / "last-rollout.json").read_text())
    (wave,) = rec["waves"]
    assert wave["verdict"] == "regressed" and rec["result"].startswith("stopped: ")
    host = wave["hosts"][canary.name]
    assert host["rolled_back_to"] == 41 and host["from_version"] == 41
    reg = {r["signal"]: r for r in host["regressions"]}
    assert reg["hit_ratio"]["before"] > 0.9 and reg["hit_ratio"]["after"] < 0.2, reg
    print("bad config, canary signals:", json.dumps(host["regressions"]),
          "before:", json.dumps(host["before"]), "after:", json.dumps(host["after"]))

    t0 = time.monotonic()
    out = ok(run(lab, "canary.yml", *desired(configs, 43), *BAKE, *report))
    TIMES["canary.yml good config, 3 waves (bake 3 s)"] = time.monotonic() - t0
    assert all(current(h) == 43 for h in lab.hosts)
    rec = json.loads((tmp_path / "last-rollout.json").read_text())
    assert rec["result"] == "done" and len(rec["waves"]) == 3, rec
    for wave in rec["waves"]:
        assert wave["verdict"] == "pass"
        for name, h in wave["hosts"].items():
            assert h["verdict"] == "pass" and h["after"]["hit_ratio"] > 0.9, (name, h)
    # the waves after the canary were compared with the hosts not yet changed
    assert rec["waves"][0]["hosts"][canary.name]["peer_hit_ratio"] > 0.9

    st = ok(run(lab, "status.yml", *desired(configs, 43), *report))
    assert f"last rollout {rec['run']}: version 43" in " ".join(st.split())
    assert "3 wave(s), done" in " ".join(st.split())

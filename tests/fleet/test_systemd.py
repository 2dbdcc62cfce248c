"""The role's systemd branch on lab hosts whose init is systemd: a crashed agent is restarted
by its unit while the kernel keeps serving, its log is in the journal, and a changed memcached
or a new agent restarts through systemd. (The fleet's main paths run on these hosts in
test_fleet.py too.)"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from pymemcache.client.base import Client

from mcache_agent import udp_client as uc
from tests.collection.test_collection import build_collection, install_collection
from tests.fleet.labctl import AGENT, PREPARED, cfg, current, ok, run

pytestmark = pytest.mark.parametrize("lab", ["systemd"], indirect=True)


@pytest.fixture(autouse=True)
def deployed(lab):
    """Every host runs version 6 (a no-op after test_fleet.py; a first deploy when alone)."""
    ok(run(lab, "deploy.yml", *cfg("v6-metrics.yml")))


def show(host, prop: str, unit: str) -> str:
    return host.exec(["systemctl", "show", "-P", prop, unit], check=True).stdout.strip()


def kernel_hits(host) -> int:
    """The data plane's hit counter, whether the agent answers or not (then from the pins)."""
    r = host.exec([AGENT, "status", "--json"])
    doc = json.loads(r.stdout)
    return (doc.get("result") or doc.get("offline"))["counters"]["hit"]


def cached(host, key: bytes, value: bytes) -> None:
    mc = Client((host.address, 11211), default_noreply=False, timeout=5)
    mc.set(key, value)
    mc.close()
    for _ in range(2):
        assert uc.udp_get_ascii(host.address, 11211, [key], 2.0) == {key: value}


def until(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s")


def test_a_crashed_agent_is_restarted_by_its_unit_while_the_kernel_serves(lab):
    h = lab.host(1)
    cached(h, b"sd-crash", b"still-served")
    pid, restarts = show(h, "MainPID", "mcache-agent"), int(show(h, "NRestarts", "mcache-agent"))
    record = json.loads(h.exec([AGENT, "status", "--json"], check=True).stdout)["result"]
    hits = kernel_hits(h)
    h.exec(["kill", "-KILL", pid], check=True)
    # at once, while no agent runs (the unit restarts it after RestartSec=2): the kernel answers
    for _ in range(3):
        assert uc.udp_get_ascii(h.address, 11211, [b"sd-crash"], 2.0) == {
            b"sd-crash": b"still-served"}
    assert kernel_hits(h) >= hits + 1
    until(lambda: show(h, "MainPID", "mcache-agent") not in ("0", pid), 30, "a new agent")
    assert int(show(h, "NRestarts", "mcache-agent")) == restarts + 1
    st = until(lambda: (json.loads(r.stdout)["result"] if (r := h.exec(
        [AGENT, "status", "--json"])).returncode == 0 and not json.loads(
        r.stdout)["result"]["starting"] else None), 30, "the restarted agent's status")
    assert st["version"] == record["version"]
    assert st["last_apply"] == record["last_apply"]  # adopted, not applied again


def test_the_agents_log_is_in_the_journal(lab):
    out = lab.host(2).exec(["journalctl", "-u", "mcache-agent", "--no-pager"], check=True).stdout
    assert "mcache-agent[" in out and "applied version" in out and "serving /run/mcache" in out


def test_a_changed_memcached_restarts_through_systemd(lab):
    h = lab.host(3)
    before = show(h, "MainPID", "mcache-memcached")
    out = ok(run(lab, "deploy.yml", *cfg("v6-metrics.yml"), "-e",
                 "mcache_host_memcached_memory_mb=65"))
    assert PREPARED.search(out)  # another setting: another release, so the hosts are prepared
    after = show(h, "MainPID", "mcache-memcached")
    assert after not in (before, "0")
    assert "-m\x0065\x00" in h.exec(["cat", f"/proc/{after}/cmdline"], check=True).stdout
    log = h.exec(["journalctl", "-u", "mcache-agent", "--no-pager"], check=True).stdout
    assert "memcached" in log and "flushing the cache" in log
    ok(run(lab, "deploy.yml", *cfg("v6-metrics.yml")))  # back to the default
    for host in lab.hosts:
        assert current(host) == 6


def test_a_new_agent_restarts_through_systemd(lab, tmp_path):
    """An upgrade: the collection with changed agent sources (a new release) prepares every
    host, installs the new agent, and systemd restarts it; the kernel serves throughout."""
    colls = install_collection(build_collection(tmp_path / "build"), tmp_path / "collections")
    init = colls / "ansible_collections" / "mcache" / "fleet" / "mcache_agent" / "__init__.py"
    init.write_text(init.read_text() + "# a new build of the agent\n")
    h = lab.host(1)
    cached(h, b"sd-upgrade", b"kept")
    before = show(h, "MainPID", "mcache-agent")
    env = {**lab.env, "ANSIBLE_COLLECTIONS_PATH": str(colls),
           "ANSIBLE_CONFIG": str(tmp_path / "none.cfg")}
    r = subprocess.run([str(lab.repo / ".venv" / "bin" / "ansible-playbook"), "-i",
                        str(lab.inventory), "mcache.fleet.deploy", *cfg("v6-metrics.yml")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                       stdin=subprocess.DEVNULL, check=False)
    out = ok(r)
    assert PREPARED.search(out)
    assert "RUNNING HANDLER [mcache.fleet.mcache_host : Restart the agent (systemd)]" in out
    after = show(h, "MainPID", "mcache-agent")
    assert after not in (before, "0")
    assert "a new build of the agent" in h.exec(
        ["cat", "/opt/mcache/venv/lib/python3.11/site-packages/mcache_agent/__init__.py"],
        check=True).stdout
    assert uc.udp_get_ascii(h.address, 11211, [b"sd-upgrade"], 2.0) == {b"sd-upgrade": b"kept"}
    ok(run(lab, "deploy.yml", *cfg("v6-metrics.yml")))  # back to the repository's release
    for host in lab.hosts:
        assert current(host) == 6

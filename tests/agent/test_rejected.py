"""A rollback holds, with the real daemon and data plane: the version left is rejected in the
versions store (with its reason), the version gone back to is the start-up config, and no
start of the agent applies the rejected number again, whether the pins are there (a restart)
or gone (a reboot: `Dataplane.teardown()` drops them as a reboot does). Status and the
`mcache_config_file_refused` metric follow the start-up file as it changes, not as it was at
start."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest

from mcache_agent.metrics import make_registry
from tests.agentproc import AgentProc
from tests.dataplane.nsutil import Pair, agent_owned, in_ns, versioned_config
from tests.dataplane.nsutil import kernel_serves as nsutil_kernel_serves


@pytest.fixture(scope="module")
def pair():
    with agent_owned(Pair("rj", 19, fill_hold_ms=0), {b"rj": b"served"}) as p:
        yield p


def kernel_serves(pair: Pair) -> bool:
    return nsutil_kernel_serves(pair, b"rj", b"served")


def reboot(pair: Pair, agent: AgentProc, text: str | None = None) -> dict[str, Any]:
    """What a reboot does to the data plane and the agent: every pin and attachment gone, the
    state dir and the start-up file kept; the agent starts again."""
    agent.kill9()
    with in_ns(pair.s):
        pair.dp.teardown()
    assert pair.dp.record() is None
    agent.start(text)
    return agent.status()


def refused_metric(st: dict[str, Any]) -> float:
    text = generate_latest(make_registry(lambda: st)).decode()
    (line,) = [x for x in text.splitlines() if x.startswith("mcache_config_file_refused ")]
    return float(line.split()[1])


def test_a_rollback_survives_restarts_and_reboots(pair: Pair, agent: AgentProc) -> None:
    v1 = versioned_config(pair, 1)
    agent.start(v1)
    assert agent.status()["version"] == 1
    v2 = versioned_config(pair, 2, ttl_ms=30000)
    assert agent.apply(v2)["ok"]
    assert agent.cfg.read_text() == v2  # the agent keeps its start-up file at what runs

    rb = agent.cli("rollback", "--reason", "probe failed in the test")["result"]
    assert rb["rolled_back_to"] == 1 and rb["version"] == 1
    assert rb["rejected"]["version"] == 2 and rb["rejected"]["rolled_back_to"] == 1
    assert rb["rejected"]["reason"] == "probe failed in the test"
    assert agent.cfg.read_text() == v1  # the version gone back to is the start-up config
    st = agent.status()
    assert st["version"] == 1
    assert [(r["version"], r["rolled_back_to"], r["reason"]) for r in st["rejected"]] == [
        (2, 1, "probe failed in the test")]
    assert st["rejected"][0]["at"].endswith("Z")
    assert st["config_file"]["result"] == "running" and st["config_file"]["version"] == 1
    versions = agent.cli("versions")["result"]
    assert {v["version"]: v["rejected"] for v in versions["versions"]} == {1: False, 2: True}
    human = agent.ctl("status").stdout
    assert "rejected" in human and "v2" in human and "probe failed in the test" in human

    # Only that number is refused, whatever its content; a plain rollback would undo the first.
    for text in (v2, versioned_config(pair, 2, ttl_ms=5000)):
        r = agent.apply(text)
        assert r["ok"] is False and r["error"]["faults"][0]["path"] == "$.version", r
        assert "version 2 was rejected on this host" in r["error"]["faults"][0]["message"]
    again = agent.ctl("rollback", check=False)
    assert again.returncode == 2 and "previous version 2 was rejected" in again.stderr

    # A restart (pins kept) on a file that names the rejected version: refused, 1 serves.
    agent.kill9()
    agent.start(v2)
    st = agent.status()
    assert st["version"] == 1 and st["config_file"]["result"] == "refused"
    assert st["config_file"]["faults"][0]["path"] == "$.version"
    assert "version 2 was rejected on this host" in st["config_file"]["message"]
    assert refused_metric(st) == 1.0
    assert kernel_serves(pair)

    # A reboot (no pins) on that file: still refused; the host serves what it ran last, 1.
    st = reboot(pair, agent)
    assert st["version"] == 1 and st["config_file"]["result"] == "refused"
    assert "serving version 1, the last one this host ran" in st["config_file"]["message"]
    assert st["last_apply"]["version"] == 1 and st["last_apply"]["result"] == "ok"
    assert pair.dp.record().version == 1
    assert kernel_serves(pair)

    # A reboot on the file a rollback leaves: version 1, from the file.
    st = reboot(pair, agent, v1)
    assert st["version"] == 1 and st["config_file"]["result"] == "applied"
    assert [r["version"] for r in st["rejected"]] == [2]
    assert kernel_serves(pair)

    # A new number goes through and clears nothing else; naming 2 in a rollback takes it back.
    v3 = versioned_config(pair, 3, ttl_ms=20000)
    assert agent.apply(v3)["ok"] and agent.cfg.read_text() == v3
    assert [r["version"] for r in agent.status()["rejected"]] == [2]
    rb = agent.cli("rollback", "--to", "2")["result"]
    assert rb["version"] == 2 and rb["rejected"]["version"] == 3
    assert rb["rejected"]["reason"] == "rolled back (no reason given)"
    st = agent.status()
    assert [r["version"] for r in st["rejected"]] == [3] and agent.cfg.read_text() == v2


def test_status_and_the_metric_follow_the_start_up_file(pair: Pair, agent: AgentProc) -> None:
    """Refused at start, then a good config applied: status and the metric clear at once;
    a refused file on a running host is set right by an apply of what already runs."""
    with in_ns(pair.s):
        pair.dp.teardown()
    agent.start(versioned_config(pair, 1, entries=1000))  # not a power of two
    st = agent.status()
    assert st["version"] is None and st["config_file"]["result"] == "refused"
    assert refused_metric(st) == 1.0
    good = versioned_config(pair, 1)
    assert agent.apply(good)["ok"]
    st = agent.status()
    assert st["version"] == 1
    assert st["config_file"] == {**st["config_file"], "result": "running", "version": 1,
                                 "path": str(agent.cfg), "faults": []}
    assert "start-up config" in st["config_file"]["message"]
    assert refused_metric(st) == 0.0
    assert agent.cfg.read_text() == good
    assert "config file" not in agent.ctl("status").stdout

    # A restart on a refused file (pins kept): an apply of the running version, no change in
    # the kernel, writes the file, and status says so.
    agent.kill9()
    agent.start(versioned_config(pair, 1, entries=1000))
    st = agent.status()
    assert st["version"] == 1 and st["config_file"]["result"] == "refused"
    same = agent.apply(good)
    assert same["ok"] and same["result"]["changed"] is False
    st = agent.status()
    assert st["config_file"]["result"] == "running" and refused_metric(st) == 0.0
    assert agent.cfg.read_text() == good
    assert kernel_serves(pair)

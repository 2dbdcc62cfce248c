"""The real daemon never exits over its start-up config: it comes up, serves what is pinned
(or nothing new), answers on its socket, and says in `status` why it refused the file."""

from __future__ import annotations

import pytest

from tests.dataplane.nsutil import Pair, agent_owned, versioned_config
from tests.dataplane.nsutil import kernel_serves as nsutil_kernel_serves


@pytest.fixture(scope="module")
def pair():
    with agent_owned(Pair("st", 17, fill_hold_ms=0), {b"up": b"served"}) as p:
        yield p


def kernel_serves(pair: Pair) -> bool:
    return nsutil_kernel_serves(pair, b"up", b"served")


def test_a_refused_file_on_a_new_host_leaves_the_agent_up_and_saying_why(pair, agent):
    bad = versioned_config(pair, 1, entries=1000)  # not a power of two: a schema fault
    agent.start(bad)
    assert agent.proc.poll() is None  # still running
    st = agent.cli("status")["result"]
    assert st["running"] is True and st["version"] is None and st["starting"] is False
    cf = st["config_file"]
    assert cf["result"] == "refused" and cf["path"] == str(agent.cfg)
    assert [f["path"] for f in cf["faults"]] == ["$.cache.entries"]
    assert "serving nothing" in cf["message"]
    human = agent.ctl("status", check=False)
    assert human.returncode == 0 and "$.cache.entries" in human.stdout
    # the fleet then applies a good config through the socket
    good = agent.dir / "good.yml"
    good.write_text(versioned_config(pair, 1))
    assert agent.cli("apply", str(good))["result"]["version"] == 1
    assert kernel_serves(pair)


def test_a_reused_version_keeps_the_pinned_one_serving(pair, agent):
    """Left-over state on a host (the lab's old trap): the file's version was applied before
    with other content. The agent adopts what is pinned and keeps serving it."""
    agent.start(versioned_config(pair, 5))
    assert kernel_serves(pair)
    agent.kill9()
    agent.start(versioned_config(pair, 5, ttl_ms=1234))
    assert agent.proc.poll() is None
    st = agent.cli("status")["result"]
    assert st["version"] == 5
    assert st["config_file"]["result"] == "refused"
    assert [f["path"] for f in st["config_file"]["faults"]] == ["$.version"]
    assert "serving version 5" in st["config_file"]["message"]
    assert kernel_serves(pair)
    assert agent.cli("probe")["result"]["ok"] is True


def test_exit_codes_of_the_real_agent(pair, agent, tmp_path):
    agent.start(versioned_config(pair, 7))
    assert agent.ctl("status").returncode == 0
    bad = tmp_path / "bad.yml"
    bad.write_text(versioned_config(pair, 8, entries=1000))
    assert agent.ctl("apply", str(bad), check=False).returncode == 2
    assert agent.ctl("rollback", "--to", "99", check=False).returncode == 2
    assert agent.ctl("versions").returncode == 0
    assert agent.ctl("probe").returncode == 0
    assert agent.ctl("stop").returncode == 0
    agent.proc.wait(30)
    r = agent.ctl("status", check=False)
    assert r.returncode == 3 and "not reachable" in r.stderr
    for argv in (("versions",), ("probe",), ("rollback",), ("apply", str(bad)), ("stop",)):
        assert agent.ctl(*argv, check=False).returncode == 3, argv

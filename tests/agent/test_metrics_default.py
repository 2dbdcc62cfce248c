"""Metrics on by default (issue 25), with the real daemon: /metrics answers on :9465 from the
agent's start, before any config (saying "no config" as data), follows a config that gives
none (the default), and a config turns it off."""

from __future__ import annotations

import time
import urllib.request

import pytest

from tests.agentproc import AgentProc
from tests.dataplane.nsutil import Pair, agent_owned, in_ns, versioned_config


@pytest.fixture(scope="module")
def pair():
    with agent_owned(Pair("obs", 23), {b"up": b"served"}) as p:
        yield p


def scrape(pair: Pair) -> str:
    """/metrics on the server's address, from the client namespace (as a Prometheus would)."""
    with in_ns(pair.c), urllib.request.urlopen(f"http://{pair.saddr}:9465/metrics",
                                               timeout=5) as r:
        return r.read().decode()


def sample(text: str, name: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return line.split()[-1]
    return None


def test_metrics_from_the_start_without_a_config_then_as_configured(pair, agent: AgentProc):
    agent.start(None)  # a host being prepared: no config file yet
    st = agent.cli("status")["result"]
    assert st["version"] is None
    assert st["metrics"] == {"listen": ":9465", "serving": True, "error": None}
    text = scrape(pair)
    assert sample(text, "mcache_config_running") == "0.0"
    assert sample(text, "mcache_config_version") is None  # absent, not 0
    assert sample(text, "mcache_build_info") == "1.0"

    # a config that says nothing about metrics: the default stays
    cfg = agent.dir / "v1.yml"
    cfg.write_text(versioned_config(pair, 1))
    assert agent.cli("apply", str(cfg))["result"]["version"] == 1
    text = scrape(pair)
    assert sample(text, "mcache_config_running") == "1.0"
    assert sample(text, "mcache_config_version") == "1.0"
    # memcached's GET count, as the agent's watch reads it (every second)
    deadline = time.monotonic() + 10
    while sample(scrape(pair), "mcache_memcached_gets_total") is None:
        assert time.monotonic() < deadline, "no mcache_memcached_gets_total"
        time.sleep(0.2)

    # a config turns it off
    cfg.write_text(versioned_config(pair, 2) + "metrics: {listen: ''}\n")
    assert agent.cli("apply", str(cfg))["result"]["version"] == 2
    assert agent.cli("status")["result"]["metrics"] is None
    with pytest.raises(OSError):
        scrape(pair)

"""Observability on by default (issue 25): the metrics endpoint and the periodic probe have one
default, said alike by the code, the schema, the example configs, the Prometheus role and the
docs; a config still turns each off."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mcache_agent.config import (
    DEFAULT_METRICS_LISTEN,
    DEFAULT_PROBE_INTERVAL_S,
    listen_address,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "schemas" / "mcache-config.schema.json").read_text())
MINIMAL = (REPO / "examples" / "mcache-minimal.yml").read_text()


def test_the_defaults_are_on() -> None:
    assert DEFAULT_METRICS_LISTEN == ":9465" and listen_address(":9465") == ("0.0.0.0", 9465)
    assert DEFAULT_PROBE_INTERVAL_S == 60
    cfg = load_config(REPO / "examples" / "mcache-minimal.yml")
    assert (cfg.metrics_listen, cfg.probe_interval_s) == (":9465", 60)


def test_the_schema_says_the_codes_defaults_and_takes_them() -> None:
    props = SCHEMA["properties"]
    assert props["metrics"]["properties"]["listen"]["default"] == DEFAULT_METRICS_LISTEN
    assert props["probe"]["properties"]["interval_s"]["default"] == DEFAULT_PROBE_INTERVAL_S
    # the default written out is a valid config (schema and semantics both)
    cfg = parse_config(MINIMAL + "metrics: {listen: ':9465'}\nprobe: {interval_s: 60}\n")
    assert (cfg.metrics_listen, cfg.probe_interval_s) == (":9465", 60)


def test_a_config_still_turns_each_off() -> None:
    cfg = parse_config(MINIMAL + "metrics: {listen: ''}\nprobe: {interval_s: 0}\n")
    assert (cfg.metrics_listen, cfg.probe_interval_s) == ("", 0)


def test_the_examples_and_inventories_agree_with_the_defaults() -> None:
    for path in [*(REPO / "examples").glob("*.yml"), *(REPO / "inventory").glob("*/mcache.yml")]:
        doc = yaml.safe_load(path.read_text().replace("{{", "'{{").replace("}}", "}}'"))
        listen = (doc.get("metrics") or {}).get("listen", DEFAULT_METRICS_LISTEN)
        interval = (doc.get("probe") or {}).get("interval_s", DEFAULT_PROBE_INTERVAL_S)
        # on, on the documented port (a loopback-only example is for a single machine)
        assert listen and listen_address(listen)[1] == 9465, path
        assert interval == DEFAULT_PROBE_INTERVAL_S, path


def test_the_prometheus_role_scrapes_the_default_port() -> None:
    role = REPO / "roles" / "mcache_prometheus"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    port = listen_address(DEFAULT_METRICS_LISTEN)[1]
    assert defaults["mcache_prometheus_metrics_port"] == port
    assert options["mcache_prometheus_metrics_port"]["default"] == port
    # every default the role has is in its argument spec, with the same value
    for name, value in defaults.items():
        assert name in options, name
        if "default" in options[name]:
            assert options[name]["default"] == value, name


def test_the_docs_name_the_defaults() -> None:
    doc = (REPO / "docs" / "OBSERVABILITY.md").read_text()
    assert "`:9465`" in doc and "`probe.interval_s`" in doc and "default 60" in doc

"""Every limit has one source, bpf/mcache_shared.h: the C compiles with it, the agent's checks
read it (mcache_agent/constants.py), and the schema states each limit again for operators.
These tests fail when the schema and the header drift apart, whichever side changed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mcache_agent import constants
from mcache_agent.config import ConfigError, check_semantics, host_faults, load_config

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "schemas" / "mcache-config.schema.json"
HEADER = REPO / "bpf" / "mcache_shared.h"


def header_defines(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2), 0)
            for m in re.finditer(r"^#define\s+(MC_\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", text, re.M)}


def drift(schema: dict[str, Any], defines: dict[str, int]) -> list[str]:
    """Each place where the schema and the header disagree, as a sentence."""
    props = schema["properties"]
    cache = props["cache"]["properties"]
    entries = cache["entries"]["enum"]
    pairs = [
        ("interfaces.maxItems", props["interfaces"]["maxItems"], "MC_MAX_IFS"),
        ("cache.allowed_clients.maxItems", cache["allowed_clients"]["maxItems"],
         "MC_MAX_CLIENT_NETS"),
        ("cache.max_key_bytes.maximum", cache["max_key_bytes"]["maximum"], "MC_KEY_LIMIT"),
        ("cache.max_value_bytes.maximum", cache["max_value_bytes"]["maximum"],
         "MC_MAX_VALUE_LIMIT"),
        ("cache.entries (largest)", max(entries), "MC_MAX_ENTRIES_LIMIT"),
        ("cache.entries (smallest)", min(entries), "MC_MIN_ENTRIES"),
        ("cache.key_prefix.maxLength", cache["key_prefix"]["maxLength"], "MC_MAX_PREFIX"),
    ]
    out = [f"schema {where} is {value}, the header's {name} is {defines.get(name)}"
           for where, value, name in pairs if defines.get(name) != value]
    # The data plane's own room: what the agent adds to a config must fit too.
    if defines["MC_MAX_SERVE_IFS"] != defines["MC_MAX_IFS"] + 1:
        out.append("MC_MAX_SERVE_IFS must hold MC_MAX_IFS interfaces and lo")
    if defines["MC_MAX_ALLOWED"] != defines["MC_MAX_CLIENT_NETS"] + 2:
        out.append("MC_MAX_ALLOWED must hold MC_MAX_CLIENT_NETS networks, the host's own "
                   "address and loopback")
    powers = [1 << i for i in range(defines["MC_MIN_ENTRIES"].bit_length() - 1,
                                    defines["MC_MAX_ENTRIES_LIMIT"].bit_length())]
    if entries != powers:
        out.append(f"schema cache.entries must be every power of two from MC_MIN_ENTRIES to "
                   f"MC_MAX_ENTRIES_LIMIT, not {entries}")
    if defines["MC_MIN_ENTRIES"] % defines["MC_WAYS"]:
        out.append("MC_MIN_ENTRIES must be a whole number of MC_WAYS buckets")
    return out


def test_schema_and_header_agree() -> None:
    assert drift(json.loads(SCHEMA.read_text()), header_defines(HEADER.read_text())) == []


def test_the_agent_reads_the_header_it_ships() -> None:
    assert constants.defines() == header_defines(HEADER.read_text())


@pytest.mark.parametrize("name", ["MC_MAX_IFS", "MC_MAX_CLIENT_NETS", "MC_KEY_LIMIT",
                                  "MC_MAX_VALUE_LIMIT", "MC_MAX_PREFIX", "MC_MAX_ENTRIES_LIMIT"])
def test_a_header_change_alone_is_drift(name: str) -> None:
    text = HEADER.read_text()
    changed = re.sub(rf"^(#define\s+{name}\s+)(\d+)",
                     lambda m: f"{m.group(1)}{int(m.group(2)) * 2}", text, count=1, flags=re.M)
    assert changed != text
    assert any(name in d for d in drift(json.loads(SCHEMA.read_text()),
                                         header_defines(changed)))


SCHEMA_LIMITS = {
    "interfaces.maxItems": (lambda s: s["properties"]["interfaces"], "maxItems"),
    "cache.allowed_clients.maxItems": (
        lambda s: s["properties"]["cache"]["properties"]["allowed_clients"], "maxItems"),
    "cache.max_key_bytes.maximum": (
        lambda s: s["properties"]["cache"]["properties"]["max_key_bytes"], "maximum"),
    "cache.key_prefix.maxLength": (
        lambda s: s["properties"]["cache"]["properties"]["key_prefix"], "maxLength"),
}


@pytest.mark.parametrize("where", sorted(SCHEMA_LIMITS))
def test_a_schema_change_alone_is_drift(where: str) -> None:
    schema = json.loads(SCHEMA.read_text())
    node, key = SCHEMA_LIMITS[where]
    node(schema)[key] -= 1
    assert any(where in d for d in drift(schema, header_defines(HEADER.read_text())))


# --------------------------------------------------------------------------- the drift cases


def cfg_text(*, interfaces: list[str], allowed: list[str] | None = None) -> str:
    ifs = ", ".join(f"{{name: {n}}}" for n in interfaces)
    text = ("apiVersion: mcache/v1\nversion: 1\nmemcached: {address: 198.19.1.1, port: 11211}\n"
            f"interfaces: [{ifs}]\n")
    if allowed is not None:
        text += f"cache: {{allowed_clients: [{', '.join(allowed)}]}}\n"
    return text


def test_as_many_interfaces_as_the_schema_allows_fit_the_data_plane() -> None:
    n = constants.const("MC_MAX_IFS")
    cfg = load_config(cfg_text(interfaces=[f"eth{i}" for i in range(n)],
                               allowed=["198.19.0.0/16"]))
    from mcache_agent.dataplane.plan import wanted_interfaces

    assert len(wanted_interfaces(cfg)) == n + 1 <= constants.const("MC_MAX_SERVE_IFS")
    with pytest.raises(ConfigError) as e:
        load_config(cfg_text(interfaces=[f"eth{i}" for i in range(n + 1)]))
    assert [f.path for f in e.value.faults] == ["$.interfaces"]


def test_a_full_allow_list_keeps_the_host_and_loopback() -> None:
    from mcache_agent.dataplane.configmap import allow_list

    nets = [f"10.{i}.0.0/16" for i in range(constants.const("MC_MAX_CLIENT_NETS"))]
    cfg = load_config(cfg_text(interfaces=["eth0"], allowed=nets))
    got = allow_list(cfg, 4)
    assert got[:2] == ["198.19.1.1/32", "127.0.0.0/8"]
    assert got[2:] == nets and len(got) == constants.const("MC_MAX_ALLOWED")


def test_a_full_ipv6_allow_list_keeps_the_host_and_loopback() -> None:
    from mcache_agent.dataplane.configmap import allow_list

    nets = [f"fd00:{i + 1}::/32" for i in range(constants.const("MC_MAX_CLIENT_NETS"))]
    text = cfg_text(interfaces=["eth0"], allowed=[f"'{n}'" for n in nets])
    cfg = load_config(text.replace("198.19.1.1", "'fd00:19::1'"))
    got = allow_list(cfg, 6)
    assert got[:2] == ["fd00:19::1/128", "::1/128"]
    assert got[2:] == nets and len(got) == constants.const("MC_MAX_ALLOWED")
    assert allow_list(cfg, 4) == ["127.0.0.0/8"]


def test_too_many_interface_networks_are_refused_with_the_path() -> None:
    """No allowed_clients: the networks come from the interfaces; more than the data plane
    holds is a fault, never a silent cut."""
    room = constants.const("MC_MAX_CLIENT_NETS")
    host = {"eth0": {"up": True, "ipv4": [("198.19.1.1", 24)] +
                     [(f"10.{i}.0.1", 16) for i in range(room)]},
            "lo": {"up": True, "ipv4": [("127.0.0.1", 8)]}}
    cfg = load_config(cfg_text(interfaces=["eth0"]))
    faults = [f for f in host_faults(cfg, host) if f.path == "$.cache.allowed_clients"]
    assert faults and f"{room + 1} IPv4 networks" in faults[0].message
    host["eth0"]["ipv4"] = host["eth0"]["ipv4"][:room]
    assert not [f for f in host_faults(cfg, host) if f.path == "$.cache.allowed_clients"]


def test_memory_check_uses_the_real_slot_size() -> None:
    # 1M slots of 192 + 256 + 1024 bytes: 1.54 GB, over the 1 GiB cap.
    text = cfg_text(interfaces=["lo"], allowed=["127.0.0.0/8"]).replace(
        "cache: {", "cache: {entries: 1048576, max_value_bytes: 1024, ")
    cfg = load_config(text)
    assert cfg.slot_bytes() == constants.const("MC_SLOT_HEADER") + 256 + 1024
    faults = check_semantics(cfg, None, host_checks=False)
    assert [f.path for f in faults] == ["$.cache.entries"]


def test_each_family_has_its_own_room_for_interface_networks() -> None:
    room = constants.const("MC_MAX_CLIENT_NETS")
    host = {"eth0": {"up": True, "ipv4": [(f"10.{i}.0.1", 16) for i in range(room)],
                     "ipv6": [("fd00:19::1", 64)] + [(f"fd00:{i}::1", 64) for i in range(room)]},
            "lo": {"up": True, "ipv4": [("127.0.0.1", 8)], "ipv6": [("::1", 128)]}}
    cfg = load_config(cfg_text(interfaces=["eth0"]).replace("198.19.1.1", "'::'"))
    [fault] = [f for f in host_faults(cfg, host) if f.path == "$.cache.allowed_clients"]
    assert f"{room + 1} IPv6 networks" in fault.message and "IPv4" not in fault.message
    host["eth0"]["ipv6"] = host["eth0"]["ipv6"][:room]
    assert not [f for f in host_faults(cfg, host) if f.path == "$.cache.allowed_clients"]


def test_multiget_limits_hold_together() -> None:
    """The multi-get's limits (mcache_shared.h): the 32 keys the issue promises, a mask's
    power of two, lookups and fills within the kernel's tail-call cap (the C asserts the same
    at compile time), a miss's reply filling every other key, and room for the items of any
    reply memcached sends as one datagram (the schema's max_value_bytes bound)."""
    d = header_defines(HEADER.read_text())
    n, per = d["MC_MAX_MULTIGET"], d["MC_MGET_PER_CALL"]
    assert n >= 32 and n & (n - 1) == 0
    # root -> xdp_main, xdp_get_parse, xdp_get_key per `per` keys, xdp_reply, xdp_capture
    assert 2 + -(-n // per) + 2 <= d["MC_TAIL_CALLS"] == 33
    # root -> tc_main, tc_fill_item per item, tc_capture
    assert d["MC_MAX_FILL_ITEMS"] >= n - 1 and 1 + d["MC_MAX_FILL_ITEMS"] + 1 <= 33
    end = len(b"END\r\n")
    assert d["MC_MGET_ROOM"] >= d["MC_DATAGRAM_LIMIT"] - d["MC_UDP_FRAME_HDR"] - end
    schema = json.loads(SCHEMA.read_text())
    largest = schema["properties"]["cache"]["properties"]["max_value_bytes"]["maximum"]
    assert largest == d["MC_DATAGRAM_LIMIT"]  # the schema's one datagram is the room's
    assert d["MC_MGET_LINE"] >= len(b"get ") + n * (1 + 40)  # 32 keys of 40 bytes

"""Config v1: schema, loader faults with JSON paths, semantic checks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mcache_agent.config import (
    MAX_CONFIG_BYTES,
    Config,
    ConfigError,
    check_semantics,
    host_faults,
    host_interfaces,
    load_config,
    load_schema,
    resolve_allowed_clients,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yml"))


def cfg_text(version: int = 1, **cache: object) -> str:
    lines = [
        "apiVersion: mcache/v1",
        f"version: {version}",
        "memcached: {address: 127.0.0.1, port: 11211}",
        "interfaces: [{name: lo, xdp_mode: generic}]",
        "cache:",
        "  allowed_clients: [127.0.0.0/8]",
    ]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in cache.items()]
    return "\n".join(lines) + "\n"


def faults_of(text: str | Path) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as ei:
        load_config(text)
    return [(f.path, f.message) for f in ei.value.faults]


def paths_of(text: str | Path) -> list[str]:
    return [p for p, _ in faults_of(text)]


# --------------------------------------------------------------------------- schema


def test_schema_documents_every_field_and_closes_every_object() -> None:
    schema = load_schema()
    assert schema["$schema"].endswith("2020-12/schema") and schema["$id"]

    def walk(node: dict, where: str) -> None:
        assert "description" in node, f"{where} has no description"
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, where
            for k, sub in node.get("properties", {}).items():
                walk(sub, f"{where}.{k}")
        if "items" in node:
            walk(node["items"], f"{where}[]")

    walk(schema, "$")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.api_version == "mcache/v1"
    assert cfg.text == path.read_text()
    assert check_semantics(cfg, None, host_checks=False) == []


def test_defaults_are_applied() -> None:
    cfg = load_config(REPO / "examples" / "mcache-minimal.yml")
    assert cfg.interfaces[0].xdp_mode == "auto"
    assert cfg.cache.enabled is True
    assert cfg.shape() == (4096, 250, 1024)
    assert (cfg.cache.ttl_ms, cfg.cache.fill_hold_ms) == (60000, 50)
    assert cfg.cache.protocols == ("ascii", "binary")
    assert cfg.cache.key_prefix == "" and cfg.cache.allowed_clients == ()
    assert (cfg.strategy, cfg.metrics_listen, cfg.probe_interval_s) == ("auto", ":9465", 60)
    assert (cfg.probe_key, cfg.probe_timeout_ms) == ("mcache:probe", 2000)
    assert cfg.cache.amplification_guard is False and cfg.cache.allow_wide_networks is False


def test_the_production_example_guards_against_amplification() -> None:
    cfg = load_config(REPO / "examples" / "mcache.yml")
    assert cfg.cache.amplification_guard is True and cfg.cache.allow_wide_networks is False


def test_memory_estimate() -> None:
    cfg = load_config(cfg_text(entries=1024, max_key_bytes=60, max_value_bytes=500))
    # slot = MC_SLOT_HEADER + round8(60) + round8(500) = 192 + 64 + 504 (asserted in the C)
    assert cfg.slot_bytes() == 760
    assert cfg.memory_bytes() > 1024 * 760
    bigger = load_config(cfg_text(entries=2048, max_key_bytes=60, max_value_bytes=500))
    assert bigger.memory_bytes() - cfg.memory_bytes() == 1024 * 760


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("mutation", "path"),
    [
        (("apiVersion: mcache/v1", "apiVersion: mcache/v2"), "$.apiVersion"),
        (("version: 1", "version: 0"), "$.version"),
        (("version: 1", "version: '1'"), "$.version"),
        (("address: 127.0.0.1", "address: 127.0.0"), "$.memcached.address"),
        (("port: 11211", "port: 70000"), "$.memcached.port"),
        (("xdp_mode: generic", "xdp_mode: turbo"), "$.interfaces[0].xdp_mode"),
        (("[{name: lo, xdp_mode: generic}]", "[]"), "$.interfaces"),
        (("name: lo,", "name: lo, colour: red,"), "$.interfaces[0].colour"),
        (("port: 11211}", "}"), "$.memcached.port"),
        (("cache:\n", "cache:\n  entries: 1000\n"), "$.cache.entries"),
        (("cache:\n", "cache:\n  max_value_bytes: 1401\n"), "$.cache.max_value_bytes"),
        (("cache:\n", "cache:\n  protocols: [ascii, ascii]\n"), "$.cache.protocols"),
        (("cache:\n", "cache:\n  protocols: [udp]\n"), "$.cache.protocols[0]"),
        (("cache:\n", "cache:\n  key_prefix: 'has space'\n"), "$.cache.key_prefix"),
        (("[127.0.0.0/8]", "[127.0.0.0/8, nonsense]"), "$.cache.allowed_clients[1]"),
        (("cache:\n", "cache:\n  enabled: 'maybe'\n"), "$.cache.enabled"),
        (("cache:\n", "rollout: {strategy: yolo}\ncache:\n"), "$.rollout.strategy"),
        (("cache:\n", "metrics: {listen: nowhere}\ncache:\n"), "$.metrics.listen"),
        (("cache:\n", "probe: {timeout_ms: 5}\ncache:\n"), "$.probe.timeout_ms"),
        (("cache:\n", "extra: 1\ncache:\n"), "$.extra"),
    ],
)
def test_each_fault_has_its_json_path(mutation: tuple[str, str], path: str) -> None:
    old, new = mutation
    text = cfg_text()
    assert old in text
    assert path in paths_of(text.replace(old, new, 1))


def test_power_of_two_message_is_plain() -> None:
    assert ("$.cache.entries", "1000 must be a power of two from 16 to 1048576") in faults_of(
        cfg_text(entries=1000)
    )


def test_every_fault_is_reported_sorted() -> None:
    text = (
        "apiVersion: mcache/v1\nversion: -1\nfoo: 1\n"
        "memcached: {address: 1.2.3, port: 0}\n"
        "interfaces: [{name: eth0, xdp_mode: fast}, {name: eth0}]\n"
        "cache: {entries: 100, protocols: []}\n"
    )
    paths = paths_of(text)
    assert paths == [
        "$.cache.entries",
        "$.cache.protocols",
        "$.foo",
        "$.interfaces[0].xdp_mode",
        "$.interfaces[1].name",
        "$.memcached.address",
        "$.memcached.port",
        "$.version",
    ]


def test_missing_required_keys_point_at_the_key() -> None:
    assert paths_of("apiVersion: mcache/v1\n") == ["$.interfaces", "$.memcached", "$.version"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("   \n# only a comment\n", "empty"),
        ("version: [1\n", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("just a string", "must be a mapping"),
        ("!!python/object:os.system {}\n", "YAML tag"),
    ],
)
def test_unparseable_documents_give_one_root_fault(text: str, needle: str) -> None:
    faults = faults_of(text)
    assert len(faults) == 1
    assert faults[0][0] == "$" and needle in faults[0][1]


@pytest.mark.parametrize(
    ("text", "path", "needle"),
    [
        # Found while reading the YAML, before the schema: each at the key or value it is about.
        ("version: 1\nversion: 2\n", "$.version", "key given twice (lines 1 and 2)"),
        ("a: &x [1, 2]\nb: *x\n", "$.b", "YAML aliases are not allowed"),
        ("version: !!binary AAAA\n", "$.version", "YAML tag tag:yaml.org,2002:binary"),
        ("version: 0x10\n", "$.version", "hexadecimal"),
    ],
)
def test_yaml_faults_have_their_json_path(text: str, path: str, needle: str) -> None:
    [(where, message)] = faults_of(text)
    assert where == path and needle in message


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    f = tmp_path / "huge.yml"
    # Not YAML at all: a parse would say so; the size check must answer first.
    f.write_bytes(b"[" * (MAX_CONFIG_BYTES + 1))
    [(path, message)] = faults_of(f)
    assert path == "$" and "limit" in message


def test_missing_file_and_binary_file(tmp_path: Path) -> None:
    assert faults_of(tmp_path / "nope.yml")[0][0] == "$"
    f = tmp_path / "bin.yml"
    f.write_bytes(b"\xff\xfe\x00garbage")
    [(path, message)] = faults_of(f)
    assert path == "$" and "UTF-8" in message


# --------------------------------------------------------------------------- semantics


def sem_paths(cfg: Config, running: Config | None = None, **kw: bool) -> list[str]:
    return [f.path for f in check_semantics(cfg, running, **kw)]


def test_semantics_pass_for_a_good_config() -> None:
    assert check_semantics(load_config(cfg_text()), None) == []


def test_missing_interface() -> None:
    cfg = load_config(cfg_text().replace("name: lo", "name: mcnope0"))
    faults = check_semantics(cfg, None)
    assert [f.path for f in faults] == ["$.interfaces[0].name"]
    assert "does not exist" in faults[0].message
    assert check_semantics(cfg, None, host_checks=False) == []


def test_reply_must_fit_a_datagram() -> None:
    cfg = load_config(cfg_text(max_key_bytes=250, max_value_bytes=1100))
    assert sem_paths(cfg) == ["$.cache.max_value_bytes"]


def test_too_much_memory_gives_the_figure() -> None:
    cfg = load_config(cfg_text(entries=1048576, max_key_bytes=200, max_value_bytes=1000))
    [fault] = check_semantics(cfg, None)
    assert fault.path == "$.cache.entries"
    assert str(cfg.memory_bytes()) in fault.message


def test_key_prefix_longer_than_keys() -> None:
    cfg = load_config(cfg_text(max_key_bytes=4, key_prefix="user:"))
    assert sem_paths(cfg) == ["$.cache.key_prefix"]


def test_prefix_limit_is_in_bytes() -> None:
    cfg = load_config(cfg_text(key_prefix="é" * 20))  # 20 characters, 40 bytes
    assert sem_paths(cfg) == ["$.cache.key_prefix"]


def test_cidr_with_host_bits_suggests_the_network() -> None:
    cfg = load_config(cfg_text().replace("127.0.0.0/8", "127.0.0.1/8"))
    [fault] = check_semantics(cfg, None)
    assert fault.path == "$.cache.allowed_clients[0]" and "127.0.0.0/8" in fault.message


def test_version_going_backwards() -> None:
    running = load_config(cfg_text(version=5))
    older = load_config(cfg_text(version=4))
    assert sem_paths(older, running) == ["$.version"]
    assert sem_paths(older, running, allow_rollback=True) == []
    assert sem_paths(load_config(cfg_text(version=6)), running) == []


def test_same_version_different_content() -> None:
    running = load_config(cfg_text(version=5))
    changed = load_config(cfg_text(version=5, ttl_ms=10))
    faults = check_semantics(changed, running)
    assert [f.path for f in faults] == ["$.version"]
    assert "different content" in faults[0].message
    # Comments are not content.
    same = load_config("# a comment\n" + cfg_text(version=5))
    assert check_semantics(same, running) == [] and same == running


def test_not_a_local_address() -> None:
    cfg = load_config(cfg_text().replace("127.0.0.1", "192.0.2.254"))
    assert "$.memcached.address" in sem_paths(cfg)


def test_wildcard_address_needs_every_up_interface() -> None:
    cfg = load_config(cfg_text().replace("127.0.0.1", "0.0.0.0"))
    host = {
        "lo": {"up": True, "ipv4": [("127.0.0.1", 8)]},
        "eth9": {"up": True, "ipv4": [("10.9.0.2", 24)]},
        "eth8": {"up": False, "ipv4": [("10.8.0.2", 24)]},
    }
    [fault] = host_faults(cfg, host)
    assert fault.path == "$.memcached.address" and "eth9" in fault.message
    assert "eth8" not in fault.message
    del host["eth9"]
    assert host_faults(cfg, host) == []


def test_dual_stack_wildcard_counts_link_local_interfaces() -> None:
    """memcached on :: takes writes through an interface's link-local address too: an up,
    unlisted interface with only fe80:: is a fault for '::', not for 0.0.0.0."""
    host = {
        "lo": {"up": True, "ipv4": [("127.0.0.1", 8)], "ipv6": [("::1", 128)]},
        "eth7": {"up": True, "ipv4": [], "ipv6": [], "link_local": True},
    }
    dual = load_config(cfg_text().replace("address: 127.0.0.1", "address: '::'"))
    [fault] = host_faults(dual, host)
    assert fault.path == "$.memcached.address" and "eth7" in fault.message
    ipv4 = load_config(cfg_text().replace("127.0.0.1", "0.0.0.0"))
    assert host_faults(ipv4, host) == []


def test_resolve_allowed_clients() -> None:
    cfg = load_config(cfg_text())
    assert resolve_allowed_clients(cfg) == ("127.0.0.0/8",)
    bare = load_config(cfg_text().replace("cache:\n  allowed_clients: [127.0.0.0/8]\n", ""))
    host = {"lo": {"up": True, "ipv4": [("127.0.0.1", 8), ("127.0.0.53", 8)]}}
    assert resolve_allowed_clients(bare, host) == ("127.0.0.0/8",)
    # Real host: lo always has 127.0.0.1/8.
    assert "127.0.0.0/8" in resolve_allowed_clients(bare)
    assert host_faults(bare, {"lo": {"up": True, "ipv4": []}})[0].path == "$.cache.allowed_clients"


# --------------------------------------------------------------------------- IPv6


def v6_text(address: str, allowed: list[str] | None = None) -> str:
    """cfg_text with memcached on address (quoted: YAML reads "::1" otherwise as a mapping)
    and allowed_clients, or none (the interfaces' networks) when allowed is None."""
    text = cfg_text().replace("address: 127.0.0.1", f"address: '{address}'")
    if allowed is None:
        return text.replace("cache:\n  allowed_clients: [127.0.0.0/8]\n", "")
    items = ", ".join(f"'{a}'" for a in allowed)
    return text.replace("allowed_clients: [127.0.0.0/8]", f"allowed_clients: [{items}]")


@pytest.mark.parametrize(
    ("address", "written", "versions"),
    [
        ("127.0.0.1", "127.0.0.1", (4,)),
        ("0.0.0.0", "0.0.0.0", (4,)),
        ("::1", "::1", (6,)),
        ("fd00::1", "fd00::1", (6,)),
        ("FD00:0::1", "fd00::1", (6,)),  # one address, one spelling
        ("::", "::", (4, 6)),  # dual stack
        ("0:0::0", "::", (4, 6)),
    ],
)
def test_ipv4_and_ipv6_addresses_are_accepted(address: str, written: str,
                                              versions: tuple[int, ...]) -> None:
    cfg = load_config(v6_text(address, ["127.0.0.0/8", "fd00::/8"]))
    assert cfg.memcached.address == written
    assert cfg.memcached.versions() == versions
    assert check_semantics(cfg, None, host_checks=False) == []


def test_two_spellings_of_an_address_are_one_config() -> None:
    a = load_config(v6_text("fd00::1", ["fd00::/8"]))
    b = load_config(v6_text("FD00:0:0::1", ["fd00::/8"]))
    assert a == b and check_semantics(b, a, host_checks=False) == []  # not a new version


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("fd00::zz", "'fd00::zz' is not an IPv4 or IPv6 address"),
        ("fe80::1%eth0", "'fe80::1%eth0' is not an IPv4 or IPv6 address"),
        ("127.0.0", "'127.0.0' is not an IPv4 or IPv6 address"),
        ("fd00:::1", "'fd00:::1' is not an IPv4 or IPv6 address"),
        ("localhost", "'localhost' is not an IPv4 or IPv6 address"),
    ],
)
def test_a_bad_address_is_refused_by_the_schema(address: str, message: str) -> None:
    assert faults_of(v6_text(address, ["127.0.0.0/8"])) == [("$.memcached.address", message)]


@pytest.mark.parametrize(
    ("address", "needles"),
    [
        ("::ffff:198.51.100.1", ["IPv4-mapped", "(::ffff:198.51.100.1)", "write 198.51.100.1"]),
        ("fe80::1", ["link-local", "fd00::/8"]),
        ("ff02::1", ["multicast", "no reply may come from it"]),
        ("239.1.2.3", ["multicast"]),
    ],
)
def test_addresses_the_cache_cannot_answer_for_are_refused(address: str,
                                                           needles: list[str]) -> None:
    cfg = load_config(v6_text(address, ["127.0.0.0/8"]))
    # one fault, host checks or not: "not an address of this host" would add nothing
    for host_checks in (False, True):
        [fault] = check_semantics(cfg, None, host_checks=host_checks)
        assert fault.path == "$.memcached.address"
        assert all(n in fault.message for n in needles), fault.message


def test_ipv4_and_ipv6_cidrs_are_accepted() -> None:
    nets = ["10.0.0.0/8", "fd00::/8", "2001:db8::/32", "::1", "fd00:1::7", "fc00::/7"]
    cfg = load_config(v6_text("::1", nets))
    assert cfg.cache.allowed_clients == tuple(nets)
    assert check_semantics(cfg, None, host_checks=False) == []


@pytest.mark.parametrize(
    ("cidr", "needle"),
    [
        ("0.0.0.0/0", "every IPv4 address"),
        ("::/0", "every IPv6 address"),
        ("224.0.0.0/4", "multicast"),
        ("ff02::/16", "multicast"),
        ("169.254.0.0/16", "link-local"),
        ("fe80::/64", "link-local"),
        ("10.0.0.0/7", "a /7: wider than any client network"),
        ("2000::/3", "a /3: wider than any client network"),
    ],
)
def test_wide_networks_need_allow_wide_networks(cidr: str, needle: str) -> None:
    cfg = load_config(v6_text("::1", ["fd00::/8", cidr]))
    assert cfg.cache.allow_wide_networks is False
    [fault] = check_semantics(cfg, None, host_checks=False)
    assert fault.path == "$.cache.allowed_clients[1]"
    assert needle in fault.message and "cache.allow_wide_networks: true" in fault.message
    allowed = load_config(v6_text("::1", ["fd00::/8", cidr]).replace(
        "cache:\n", "cache:\n  allow_wide_networks: true\n"))
    assert allowed.cache.allow_wide_networks is True
    assert check_semantics(allowed, None, host_checks=False) == []


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("fd00::1/64",
         "'fd00::1/64' is not an IPv6 CIDR (fd00::1/64 has host bits set); "
         "did you mean fd00::/64?"),
        ("fd00::/129", "'fd00::/129' is not an IPv6 CIDR ('129' is not a valid netmask)"),
        ("10.1.2.3/8",
         "'10.1.2.3/8' is not an IPv4 CIDR (10.1.2.3/8 has host bits set); "
         "did you mean 10.0.0.0/8?"),
        ("::ffff:10.0.0.0/104",
         "'::ffff:10.0.0.0/104' is an IPv4-mapped IPv6 network, which no packet comes from: "
         "IPv4 clients are matched by IPv4 networks; did you mean 10.0.0.0/8?"),
    ],
)
def test_a_bad_cidr_is_refused_with_its_path_and_a_hint(cidr: str, message: str) -> None:
    cfg = load_config(v6_text("::1", ["fd00::/8", cidr]))
    faults = check_semantics(cfg, None, host_checks=False)
    assert [(f.path, f.message) for f in faults] == [("$.cache.allowed_clients[1]", message)]


@pytest.mark.parametrize("cidr", ["fd00::g/64", "fd00::/8/8", "10.0.0.0/100", "fd00::/1234"])
def test_a_cidr_of_neither_form_is_refused_by_the_schema(cidr: str) -> None:
    [(path, message)] = faults_of(v6_text("::1", ["fd00::/8", cidr]))
    assert path == "$.cache.allowed_clients[1]"
    assert message.startswith(f"{cidr!r} is not in the expected form (An IPv4 or IPv6 network")


def test_sixteen_networks_in_all() -> None:
    nets = [f"10.{i}.0.0/16" for i in range(8)] + [f"fd00:{i}::/32" for i in range(8)]
    assert check_semantics(load_config(v6_text("::", nets)), None, host_checks=False) == []
    assert paths_of(v6_text("::", [*nets, "fd00:99::/32"])) == ["$.cache.allowed_clients"]


def host(**interfaces: tuple[list[tuple[str, int]], list[tuple[str, int]]]) -> dict:
    """A host_interfaces() answer: name=(IPv4 addresses, IPv6 addresses), all up; lo has
    127.0.0.1/8 and ::1/128 unless given."""
    out = {"lo": {"up": True, "ipv4": [("127.0.0.1", 8)], "ipv6": [("::1", 128)]}}
    for name, (v4, v6) in interfaces.items():
        out[name] = {"up": True, "ipv4": v4, "ipv6": v6}
    return out


def test_a_specific_ipv6_address_must_be_the_hosts() -> None:
    here = host(eth9=([("10.9.0.2", 24)], [("fd00:9::2", 64)]))
    for written in ("fd00:9::2", "FD00:9:0::2", "::1"):
        assert host_faults(load_config(v6_text(written, ["fd00::/8"])), here) == []
    cfg = load_config(v6_text("fd00:9::3", ["fd00::/8"]))
    assert [(f.path, f.message) for f in host_faults(cfg, here)] == [
        ("$.memcached.address", "fd00:9::3 is not an address of this host")]
    # a host without IPv6 has none of its addresses; one without iproute2 tells nothing
    no_v6 = {n: {**info, "ipv6": []} for n, info in here.items()}
    assert [f.path for f in host_faults(cfg, no_v6)] == ["$.memcached.address"]
    unknown = {"lo": {"up": True, "ipv4": [], "ipv6": []}}
    assert host_faults(cfg, unknown) == []


def test_dual_stack_needs_every_up_interface_with_either_family() -> None:
    here = host(eth9=([], [("fd00:9::2", 64)]))
    here["eth8"] = {"up": False, "ipv4": [("10.8.0.2", 24)], "ipv6": [("fd00:8::2", 64)]}
    dual = load_config(v6_text("::", ["127.0.0.0/8"]))
    [fault] = host_faults(dual, here)
    assert fault.path == "$.memcached.address"
    assert "every IPv4 or IPv6 address (::)" in fault.message and "eth9" in fault.message
    assert "eth8" not in fault.message  # down
    # memcached on 0.0.0.0 takes no writes over IPv6: eth9's IPv6 address does not matter
    assert host_faults(load_config(v6_text("0.0.0.0", ["127.0.0.0/8"])), here) == []
    del here["eth9"]
    assert host_faults(dual, here) == []


def test_interface_networks_of_both_families() -> None:
    bare = load_config(v6_text("::", None))
    here = {"lo": {"up": True, "ipv4": [("127.0.0.1", 8)],
                   "ipv6": [("::1", 128), ("fd00:1::5", 64), ("fd00:1::6", 64)]}}
    assert resolve_allowed_clients(bare, here) == ("127.0.0.0/8", "::1/128", "fd00:1::/64")
    # an entry without "ipv6" (as a host without IPv6 would give) has no IPv6 networks
    assert resolve_allowed_clients(bare, {"lo": {"up": True, "ipv4": [("127.0.0.1", 8)]}}) == (
        "127.0.0.0/8",)
    assert host_faults(bare, here) == []


@pytest.mark.parametrize(
    ("address", "v4", "v6", "message"),
    [
        ("::1", [("127.0.0.1", 8)], [],
         "empty, and the listed interfaces have no IPv6 address to take the networks from"),
        ("127.0.0.1", [], [("::1", 128)],
         "empty, and the listed interfaces have no IPv4 address to take the networks from"),
        ("::", [], [],
         "empty, and the listed interfaces have no IPv4 or IPv6 address to take the networks"),
    ],
)
def test_no_network_of_an_answered_family_is_a_fault(address: str, v4: list, v6: list,
                                                      message: str) -> None:
    cfg = load_config(v6_text(address, None))
    faults = [f for f in host_faults(cfg, {"lo": {"up": True, "ipv4": v4, "ipv6": v6}})
              if f.path == "$.cache.allowed_clients"]
    assert len(faults) == 1 and faults[0].message.startswith(message)


def test_dual_stack_takes_networks_of_either_family() -> None:
    cfg = load_config(v6_text("::", None))
    assert host_faults(cfg, {"lo": {"up": True, "ipv4": [], "ipv6": [("::1", 128)]}}) == []
    assert host_faults(cfg, {"lo": {"up": True, "ipv4": [("127.0.0.1", 8)], "ipv6": []}}) == []


def test_host_interfaces_reads_both_families_and_notes_link_local(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    links = [
        {"ifname": "lo", "flags": ["LOOPBACK", "UP"], "addr_info": [
            {"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"},
            {"family": "inet6", "local": "::1", "prefixlen": 128, "scope": "host"}]},
        {"ifname": "eth0", "flags": ["BROADCAST", "UP"], "addr_info": [
            {"family": "inet", "local": "169.254.7.7", "prefixlen": 16, "scope": "link"},
            {"family": "inet6", "local": "2001:db8::2", "prefixlen": 64, "scope": "global"},
            {"family": "inet6", "local": "fd00::2", "prefixlen": 64, "scope": "global"},
            {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}]},
        {"ifname": "eth1", "flags": ["BROADCAST"], "addr_info": []},
    ]

    def ip(*_args: object, **_kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 0, stdout=json.dumps(links), stderr="")

    monkeypatch.setattr(subprocess, "run", ip)
    assert host_interfaces() == {
        "lo": {"up": True, "ipv4": [("127.0.0.1", 8)], "ipv6": [("::1", 128)],
               "link_local": False},
        # IPv4 link-local is an address like any other; IPv6 link-local is on every link,
        # only noted (memcached on :: takes writes through it)
        "eth0": {"up": True, "ipv4": [("169.254.7.7", 16)],
                 "ipv6": [("2001:db8::2", 64), ("fd00::2", 64)], "link_local": True},
        "eth1": {"up": False, "ipv4": [], "ipv6": [], "link_local": False},
    }


# --------------------------------------------------------------------------- local bypass


def test_local_bypass_is_off_by_default_and_checked_on_this_host(tmp_path: Path) -> None:
    assert load_config(cfg_text()).local_bypass.enabled is False
    on = load_config(cfg_text() + "local_bypass: {enabled: true}\n")
    assert on.local_bypass.enabled and check_semantics(on, None) == []  # the cgroup v2 root
    assert paths_of(cfg_text() + "local_bypass: {enabled: yes, cgroups: /x}\n") == [
        "$.local_bypass.cgroups"]  # an unknown key, named
    assert paths_of(cfg_text() + "local_bypass: {cgroup: relative/dir}\n") == [
        "$.local_bypass.cgroup"]
    for where, why in ((str(tmp_path), "is not in a cgroup v2 hierarchy"),
                       ("/sys/fs/cgroup-none", "is not a directory")):
        cfg = load_config(cfg_text() + f"local_bypass: {{enabled: true, cgroup: {where}}}\n")
        faults = check_semantics(cfg, None)
        assert [f.path for f in faults] == ["$.local_bypass.cgroup"], faults
        assert why in faults[0].message
        assert check_semantics(cfg, None, host_checks=False) == []


def test_turning_the_bypass_on_brings_its_programs_once() -> None:
    """A program set carries the bypass's programs only when a config turned it on: that
    apply is a program swap; turning it off and on again after is a map swap."""
    from mcache_agent.dataplane.pins import Attachment, Record, cache_pin
    from mcache_agent.dataplane.plan import PlanRefused, plan

    lo = (Attachment("lo", "generic", "generic", "serve", False),)
    off = load_config(cfg_text())
    on = load_config(cfg_text(2) + "local_bypass: {enabled: true}\n")
    maps = {cache_pin(off.shape()): "1"}
    rec = Record(version=1, shape=off.shape(), code="c", abi="", set="s", interfaces=lo,
                 maps=tuple(maps.items()))
    p = plan(on, off, rec, "c", maps)
    assert p.strategy == "program_swap" and p.cache_kept, p
    assert any("local_bypass" in r for r in p.reasons)
    with_programs = Record(version=1, shape=off.shape(), code="c", abi="", set="s",
                           interfaces=lo, bypass_programs=True, maps=tuple(maps.items()))
    assert plan(on, off, with_programs, "c", maps).strategy == "map_swap"
    assert plan(off, on, with_programs, "c", maps).strategy == "map_swap"
    pinned = load_config(cfg_text(2) + "local_bypass: {enabled: true}\n"
                         "rollout: {strategy: map_swap}\n")
    with pytest.raises(PlanRefused):
        plan(pinned, off, rec, "c", maps)

"""Config v1: load (YAML + JSON Schema), typed view, and the semantic checks.

Every fault is reported with a JSON path (`$.cache.entries`, `$.interfaces[0].xdp_mode`) so an
operator can fix all of them in one pass rather than one per run.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mcache_agent import cgroups, constants
from mcache_agent.paths import schema_path

API_VERSION = "mcache/v1"
MAX_CONFIG_BYTES = 1 << 20
# The agent's own cap on the kernel memory one config may take (the data plane has none).
MAX_MEMORY_BYTES = 1 << 30
# The kernel's hash map accounting (kernel/bpf/hashtab.c, htab_map_mem_usage): a preallocated
# element is struct htab_elem (48 bytes on 64-bit) with the key and value each rounded up to
# 8 bytes, and every bucket (a power of two of them) is 16 bytes.
HTAB_ELEM_BYTES = 48
HTAB_BUCKET_BYTES = 16
# Every other map (state, config, fill level, prog arrays, the record) is small; the scratch
# maps (both programs') and the counters are per CPU.
SMALL_MAPS_BYTES = 256 << 10
SCRATCH_BYTES_PER_CPU = 32 << 10

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def limit(name: str) -> int:
    """A data-plane limit from bpf/mcache_shared.h (the one place it is defined)."""
    return constants.const(name)


@dataclass(frozen=True)
class Fault:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class ConfigError(Exception):
    def __init__(self, faults: list[Fault]) -> None:
        self.faults = sorted(faults, key=_fault_sort_key)
        super().__init__("; ".join(str(f) for f in self.faults))


@dataclass(frozen=True)
class InterfaceSpec:
    name: str
    xdp_mode: str = "auto"


@dataclass(frozen=True)
class MemcachedSpec:
    address: str  # as ipaddress writes it: "FD00:0::1" in a config is "fd00::1" here
    port: int

    def ip(self) -> IPAddress:
        return ipaddress.ip_address(self.address)

    def versions(self) -> tuple[int, ...]:
        """The IP versions whose GETs are answered: 0.0.0.0 is every IPv4 address, :: every
        address of both families (a dual-stack memcached), a specific address its own."""
        ip = self.ip()
        return (4, 6) if ip.is_unspecified and ip.version == 6 else (ip.version,)


@dataclass(frozen=True)
class CacheSpec:
    enabled: bool = True
    entries: int = 4096
    max_key_bytes: int = 250
    max_value_bytes: int = 1024
    ttl_ms: int = 60000
    fill_hold_ms: int = 50
    protocols: tuple[str, ...] = ("ascii", "binary")
    key_prefix: str = ""
    allowed_clients: tuple[str, ...] = ()


@dataclass(frozen=True)
class BypassSpec:
    enabled: bool = False
    cgroup: str = ""  # empty: the root of the cgroup v2 hierarchy


@dataclass(frozen=True)
class Config:
    api_version: str
    version: int
    memcached: MemcachedSpec
    interfaces: tuple[InterfaceSpec, ...]
    cache: CacheSpec
    strategy: str = "auto"
    metrics_listen: str = ""
    probe_key: str = "mcache:probe"
    probe_timeout_ms: int = 2000
    probe_interval_s: int = 0
    local_bypass: BypassSpec = BypassSpec()
    # Comments and layout do not make two configs different; equality is about content.
    text: str = field(default="", compare=False, repr=False)

    def shape(self) -> tuple[int, int, int]:
        return (self.cache.entries, self.cache.max_key_bytes, self.cache.max_value_bytes)

    def slot_bytes(self) -> int:
        """sizeof(struct mc_slot) for this shape (asserted by the C compiler)."""
        return limit("MC_SLOT_HEADER") + _round8(self.cache.max_key_bytes) + _round8(
            self.cache.max_value_bytes
        )

    def memory_bytes(self) -> int:
        """The kernel memory this config's data plane takes, estimated before anything is
        loaded (status reports the kernel's own account once it is)."""
        cache = self.cache.entries * self.slot_bytes()
        pending = _htab_bytes(limit("MC_PENDING_ENTRIES"), limit("MC_PENDING_KEY_BYTES"),
                              limit("MC_PENDING_VALUE_BYTES"))
        conn = _htab_bytes(limit("MC_CONN_ENTRIES"), limit("MC_CONN_KEY_BYTES"),
                           limit("MC_CONN_VALUE_BYTES"))
        stats = limit("MC_STAT_SLOTS") * len(constants.paths()) * len(constants.verdicts()) * 8
        per_cpu = (SCRATCH_BYTES_PER_CPU + stats) * _possible_cpus()
        ring = limit("MC_CAP_RING_BYTES")  # capture: allocated whether or not one runs
        return cache + pending + conn + per_cpu + ring + SMALL_MAPS_BYTES

    def interface_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.interfaces)


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _htab_bytes(entries: int, key: int, value: int) -> int:
    buckets = 1 << max(entries - 1, 0).bit_length()
    return entries * (HTAB_ELEM_BYTES + _round8(key) + _round8(value)) + \
        buckets * HTAB_BUCKET_BYTES


def _possible_cpus() -> int:
    """What the kernel sizes per-CPU maps by (/sys/devices/system/cpu/possible, e.g. "0-7")."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        return sum(int(b) - int(a) + 1 if b else 1
                   for a, _dash, b in (part.partition("-") for part in text.split(",")))
    except (OSError, ValueError):
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- loading


def load_config(path_or_text: str | Path) -> Config:
    """Load and schema-check a config; raises ConfigError with every fault found.

    A Path is read as a file. A str is YAML text, unless it is a single line naming an existing
    file (so CLI arguments can be passed straight through).
    """
    if isinstance(path_or_text, Path) or (
        "\n" not in path_or_text and path_or_text.strip() and Path(path_or_text).is_file()
    ):
        return parse_config(read_config_text(Path(path_or_text)))
    return parse_config(path_or_text)


def read_config_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                [Fault("$", f"file is {size} bytes; the limit is {MAX_CONFIG_BYTES}")]
            )
        with path.open("rb") as f:
            # The file may grow between stat and read: never read more than the cap.
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError([Fault("$", f"cannot read {path}: {e.strerror or e}")]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([Fault("$", f"file is over the {MAX_CONFIG_BYTES}-byte limit")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([Fault("$", f"not UTF-8 text: {e}")]) from None


def parse_config(text: str) -> Config:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigError([Fault("$", f"config is over the {MAX_CONFIG_BYTES}-byte limit")])
    doc = _parse_yaml(text)
    faults = schema_faults(doc)
    faults += _structural_faults(doc)
    if faults:
        raise ConfigError(faults)
    return _build(doc, text)


class _StrictLoader(yaml.SafeLoader):
    """safe_load, but a key given twice is a fault instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, bool, float)):
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping  # type: ignore[arg-type]
)


def _parse_yaml(text: str) -> dict[str, Any]:
    if not text.strip():
        raise ConfigError([Fault("$", "config is empty")])
    try:
        # Aliases let a 1 KiB file expand into a huge document for the validator to walk; a
        # config never needs them.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                where = f" (line {mark.line + 1})" if mark else ""
                raise ConfigError([Fault("$", f"YAML aliases are not allowed{where}")])
        doc = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError([Fault("$", f"not valid YAML: {_yaml_message(e)}")]) from None
    if doc is None:
        raise ConfigError([Fault("$", "config is empty")])
    if not isinstance(doc, dict):
        raise ConfigError([Fault("$", f"config must be a mapping, not {_type_name(doc)}")])
    return doc


def _yaml_message(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


def _type_name(v: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean"}.get(type(v), type(v).__name__)


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    with schema_path().open() as f:
        schema: dict[str, Any] = json.load(f)
    return schema


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(load_schema())
    cls.check_schema(load_schema())
    return cls(load_schema(), format_checker=cls.FORMAT_CHECKER)


def json_path(parts: Any) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _fault_sort_key(f: Fault) -> tuple[list[tuple[int, str | int]], str]:
    # Sort [10] after [9]: compare path components, numbers as numbers.
    parts: list[tuple[int, str | int]] = []
    for tok in re.findall(r"\[(\d+)\]|\.([^.\[]+)", f.path):
        parts.append((0, int(tok[0])) if tok[0] else (1, tok[1]))
    return parts, f.message


def schema_faults(doc: Any) -> list[Fault]:
    faults: list[Fault] = []
    for err in _validator().iter_errors(doc):
        faults.extend(_faults_from_error(err))
    return sorted(set(faults), key=_fault_sort_key)


def _faults_from_error(err: jsonschema.ValidationError) -> list[Fault]:
    path = list(err.absolute_path)
    if err.validator == "required":
        m = re.match(r"^'(.+)' is a required property$", err.message)
        name = m.group(1) if m else "?"
        return [Fault(json_path([*path, name]), "required key is missing")]
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(err.schema.get("properties", {}))
        extras = [k for k in err.instance if k not in err.schema.get("properties", {})]
        return [
            Fault(json_path([*path, str(k)]), f"unknown key (allowed: {', '.join(allowed)})")
            for k in extras
        ]
    schema = err.schema if isinstance(err.schema, dict) else {}
    if err.validator in ("enum", "anyOf") and "x-fault" in schema:
        return [Fault(json_path(path), f"{err.instance!r} {schema['x-fault']}")]
    if err.validator == "pattern":
        expected = schema.get("description", err.message)
        return [Fault(json_path(path),
                      f"{err.instance!r} is not in the expected form ({expected})")]
    return [Fault(json_path(path), err.message)]


def _structural_faults(doc: dict[str, Any]) -> list[Fault]:
    """Rules JSON Schema cannot say but that do not depend on the host."""
    faults: list[Fault] = []
    seen: dict[str, int] = {}
    interfaces = doc.get("interfaces")
    for i, itf in enumerate(interfaces if isinstance(interfaces, list) else []):
        name = itf.get("name") if isinstance(itf, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            first = f"$.interfaces[{seen[name]}]"
            faults.append(Fault(f"$.interfaces[{i}].name",
                                f"interface {name!r} is already listed at {first}"))
        seen.setdefault(name, i)
    return faults


def _build(doc: dict[str, Any], text: str) -> Config:
    mc = doc["memcached"]
    c = doc.get("cache", {})
    d = CacheSpec()
    cache = CacheSpec(
        enabled=c.get("enabled", d.enabled),
        entries=c.get("entries", d.entries),
        max_key_bytes=c.get("max_key_bytes", d.max_key_bytes),
        max_value_bytes=c.get("max_value_bytes", d.max_value_bytes),
        ttl_ms=c.get("ttl_ms", d.ttl_ms),
        fill_hold_ms=c.get("fill_hold_ms", d.fill_hold_ms),
        protocols=tuple(c.get("protocols", d.protocols)),
        key_prefix=c.get("key_prefix", d.key_prefix),
        allowed_clients=tuple(c.get("allowed_clients", d.allowed_clients)),
    )
    probe = doc.get("probe", {})
    bypass = doc.get("local_bypass", {})
    return Config(
        api_version=doc["apiVersion"],
        version=doc["version"],
        # The schema checked the address: one spelling of it, so that equal configs compare
        # equal and the host checks compare addresses, not text.
        memcached=MemcachedSpec(address=str(ipaddress.ip_address(mc["address"])),
                                port=mc["port"]),
        interfaces=tuple(
            InterfaceSpec(name=i["name"], xdp_mode=i.get("xdp_mode", "auto"))
            for i in doc["interfaces"]
        ),
        cache=cache,
        strategy=doc.get("rollout", {}).get("strategy", "auto"),
        metrics_listen=doc.get("metrics", {}).get("listen", ""),
        probe_key=probe.get("key", "mcache:probe"),
        probe_timeout_ms=probe.get("timeout_ms", 2000),
        probe_interval_s=probe.get("interval_s", 0),
        local_bypass=BypassSpec(enabled=bypass.get("enabled", False),
                                cgroup=bypass.get("cgroup", "")),
        text=text,
    )


# --------------------------------------------------------------------------- semantics


def check_semantics(
    cfg: Config,
    running: Config | None,
    *,
    allow_rollback: bool = False,
    host_checks: bool = True,
) -> list[Fault]:
    """Checks beyond the schema. host_checks=False skips those that need this host's interfaces
    (validation on the Ansible controller)."""
    faults: list[Fault] = []
    c = cfg.cache
    overhead, datagram = limit("MC_REPLY_OVERHEAD"), limit("MC_DATAGRAM_LIMIT")
    reply = c.max_key_bytes + c.max_value_bytes + overhead
    if reply > datagram:
        faults.append(Fault("$.cache.max_value_bytes",
                            f"max_key_bytes + max_value_bytes + {overhead} = {reply} is over "
                            f"{datagram}: a cached reply must fit one UDP datagram"))
    mem = cfg.memory_bytes()
    if mem > MAX_MEMORY_BYTES:
        faults.append(Fault("$.cache.entries",
                            f"the data plane would take about {mem} bytes of kernel memory "
                            f"({mem / (1 << 20):.0f} MiB, of which {c.entries} cache slots of "
                            f"{cfg.slot_bytes()} bytes); the limit is {MAX_MEMORY_BYTES} bytes "
                            f"({MAX_MEMORY_BYTES >> 20} MiB)"))
    prefix_len = len(c.key_prefix.encode("utf-8"))
    if prefix_len > limit("MC_MAX_PREFIX"):
        faults.append(Fault("$.cache.key_prefix",
                            f"prefix is {prefix_len} bytes; the limit is "
                            f"{limit('MC_MAX_PREFIX')}"))
    if prefix_len > c.max_key_bytes:
        faults.append(Fault("$.cache.key_prefix",
                            f"prefix is {prefix_len} bytes, longer than max_key_bytes "
                            f"({c.max_key_bytes}): no key could be cached"))
    faults += _address_faults(cfg)
    if running is not None:
        faults += _version_faults(cfg, running, allow_rollback=allow_rollback)
    if host_checks:
        faults += host_faults(cfg)
    return sorted(faults, key=_fault_sort_key)


def _address_faults(cfg: Config) -> list[Fault]:
    faults: list[Fault] = []
    address = cfg.memcached.address
    try:
        why = _unservable(ipaddress.ip_address(address))
    except ValueError:
        why = "is not an IPv4 or IPv6 address"
    if why:
        faults.append(Fault("$.memcached.address", f"{address!r} {why}"))
    for i, cidr in enumerate(cfg.cache.allowed_clients):
        why = _cidr_fault(cidr)
        if why:
            faults.append(Fault(f"$.cache.allowed_clients[{i}]", f"{cidr!r} {why}"))
    return faults


def _unservable(ip: IPAddress) -> str:
    """Why the cache cannot stand in front of a memcached on ip ("" when it can)."""
    if ip.is_multicast:
        return ("is a multicast address: no TCP connection can reach it, and no reply may "
                "come from it")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        v4 = ip.ipv4_mapped
        return (f"is IPv4-mapped (::ffff:{v4}): clients reach {v4} in IPv4 packets, which "
                f"never carry this address, so no GET would be answered; write {v4}")
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local:
        return ("is a link-local address: it means something only with an interface "
                "(fe80::1%eth0), which an address here cannot carry, so neither the agent nor "
                "the cache's replies could tell which link it is on; use a global or unique "
                "local (fd00::/8) address")
    return ""


def _cidr_fault(cidr: str) -> str:
    """What is wrong with an allowed_clients item ("" when nothing is)."""
    family, net_type = _network_family(cidr)
    try:
        net = net_type(cidr, strict=True)
    except ValueError as e:
        hint = ""
        try:
            hint = f"; did you mean {net_type(cidr, strict=False)}?"
        except ValueError:
            pass
        return f"is not an {family} CIDR ({e}){hint}"
    mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) else None
    if mapped is not None and net.prefixlen >= 96:
        # IPv4 clients arrive in IPv4 packets and are matched by the IPv4 networks.
        ipv4 = ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
        return (f"is an IPv4-mapped IPv6 network, which no packet comes from: IPv4 clients "
                f"are matched by IPv4 networks; did you mean {ipv4}?")
    return ""


def _network_family(
    cidr: str,
) -> tuple[str, type[ipaddress.IPv4Network] | type[ipaddress.IPv6Network]]:
    # Only an IPv6 network has a colon; the family a text is meant to be picks the message.
    if ":" in cidr:
        return "IPv6", ipaddress.IPv6Network
    return "IPv4", ipaddress.IPv4Network


def _version_faults(cfg: Config, running: Config, *, allow_rollback: bool) -> list[Fault]:
    if cfg.version < running.version and not allow_rollback:
        return [Fault("$.version",
                      f"version {cfg.version} is lower than the running version {running.version}; "
                      "versions must increase (use rollback to go back)")]
    if cfg.version == running.version and cfg != running:
        return [Fault("$.version",
                      f"version {cfg.version} is already running with different content; "
                      "give the change a new version number")]
    return []


# --------------------------------------------------------------------------- host


def host_interfaces() -> dict[str, dict[str, Any]]:
    """name -> {"up": bool, "ipv4": [(addr, prefixlen), ...], "ipv6": [...], "link_local": bool}
    for every interface on the host. IPv6 link-local addresses (fe80::/10) are left out of
    "ipv6" (an address there cannot say which link it is on) and only noted in "link_local":
    memcached listening on :: takes writes through them too."""
    try:
        out = subprocess.run(
            ["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
        links = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        # Without iproute2 we still know the names, not the addresses.
        return {n: {"up": True, "ipv4": [], "ipv6": [], "link_local": False}
                for _index, n in socket.if_nameindex()}
    result: dict[str, dict[str, Any]] = {}
    for link in links:
        addrs: dict[str, list[tuple[str, int]]] = {"inet": [], "inet6": []}
        link_local = False
        for a in link.get("addr_info", []):
            if a.get("family") not in addrs or "local" not in a:
                continue
            if a["family"] == "inet6" and ipaddress.IPv6Address(a["local"]).is_link_local:
                link_local = True
                continue
            addrs[a["family"]].append((a["local"], int(a["prefixlen"])))
        result[link["ifname"]] = {"up": "UP" in link.get("flags", []), "ipv4": addrs["inet"],
                                  "ipv6": addrs["inet6"], "link_local": link_local}
    return result


def _addresses(info: dict[str, Any], version: int) -> list[tuple[str, int]]:
    """An interface's (address, prefixlen) of one IP version (an entry may lack "ipv6")."""
    addrs: list[tuple[str, int]] = info.get(f"ipv{version}", [])
    return addrs


def _family_names(versions: tuple[int, ...]) -> str:
    return " or ".join(f"IPv{v}" for v in versions)


def interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return Path("/sys/class/net", name).exists()
    return True


def host_faults(cfg: Config, interfaces: dict[str, dict[str, Any]] | None = None) -> list[Fault]:
    faults: list[Fault] = []
    for i, itf in enumerate(cfg.interfaces):
        if not interface_exists(itf.name):
            faults.append(Fault(f"$.interfaces[{i}].name",
                                f"interface {itf.name!r} does not exist on this host"))
    if faults:
        return faults
    host = interfaces if interfaces is not None else host_interfaces()
    ip = cfg.memcached.ip()
    if ip.is_unspecified:
        faults += _wildcard_faults(cfg, host)
    elif not _unservable(ip):  # else the address is refused already, wherever it is
        faults += _local_faults(ip, host)
    if not cfg.cache.allowed_clients:
        faults += _interface_network_faults(cfg, host)
    if cfg.local_bypass.enabled:
        why = cgroups.cgroup_fault(cfg.local_bypass.cgroup)
        if why:
            where = "cgroup" if cfg.local_bypass.cgroup else "enabled"
            faults.append(Fault(f"$.local_bypass.{where}",
                                f"the local bypass attaches to a cgroup v2 directory: {why}"))
    return faults


def _wildcard_faults(cfg: Config, host: dict[str, dict[str, Any]]) -> list[Fault]:
    # XDP only sees what arrives on the interfaces it is attached to; a write through an
    # unlisted interface would never invalidate the cache.
    versions = cfg.memcached.versions()
    listed = set(cfg.interface_names())
    # memcached on :: takes writes to an interface's link-local address as well
    unwatched = sorted(
        n for n, info in host.items()
        if n != "lo" and info["up"] and n not in listed
        and (any(_addresses(info, v) for v in versions)
             or (6 in versions and info.get("link_local", False)))
    )
    if not unwatched:
        return []
    return [Fault("$.memcached.address",
                  f"memcached listens on every {_family_names(versions)} address "
                  f"({cfg.memcached.address}) but interface(s) {', '.join(unwatched)} are up "
                  f"with {_family_names(versions)} addresses and not listed: writes through "
                  "them would leave the cache stale; list them or bind memcached to one "
                  "address")]


def _local_faults(ip: IPAddress, host: dict[str, dict[str, Any]]) -> list[Fault]:
    local = {ipaddress.ip_address(a)
             for info in host.values() for v in (4, 6) for a, _plen in _addresses(info, v)}
    # No address known at all (no iproute2): nothing to compare with. A host that has no
    # address of ip's family is compared, and refused.
    if local and ip not in local:
        return [Fault("$.memcached.address", f"{ip} is not an address of this host")]
    return []


def _interface_network_faults(cfg: Config, host: dict[str, dict[str, Any]]) -> list[Fault]:
    """allowed_clients is empty: the networks come from the interfaces. Some must be of a
    family whose GETs are answered, and each family's must fit the data plane."""
    nets = [ipaddress.ip_network(n) for n in _interface_networks(cfg, host)]
    versions = cfg.memcached.versions()
    faults: list[Fault] = []
    if not any(n.version in versions for n in nets):
        faults.append(Fault("$.cache.allowed_clients",
                            f"empty, and the listed interfaces have no {_family_names(versions)} "
                            "address to take the networks from: no client could read from the "
                            "cache"))
    room = limit("MC_MAX_CLIENT_NETS")
    for version in (4, 6):
        count = sum(1 for n in nets if n.version == version)
        if count > room:
            faults.append(Fault("$.cache.allowed_clients",
                                f"empty, and the listed interfaces are on {count} IPv{version} "
                                f"networks; the data plane holds {room} of each family: list "
                                "the client networks"))
    return faults


def _interface_networks(cfg: Config, host: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    nets: list[str] = []
    for name in cfg.interface_names():
        info = host.get(name, {})
        for version in (4, 6):
            for addr, plen in _addresses(info, version):
                net = str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))
                if net not in nets:
                    nets.append(net)
    return tuple(nets)


def resolve_allowed_clients(
    cfg: Config, interfaces: dict[str, dict[str, Any]] | None = None
) -> tuple[str, ...]:
    """The configured CIDRs, or when none are given the IPv4 and IPv6 networks of the listed
    interfaces (link-local ones left out)."""
    if cfg.cache.allowed_clients:
        return cfg.cache.allowed_clients
    return _interface_networks(cfg, interfaces if interfaces is not None else host_interfaces())

"""Config v1: load (YAML + JSON Schema), typed view, and the semantic checks.

Every fault is reported with a JSON path (`$.cache.entries`, `$.interfaces[0].xdp_mode`) so an
operator can fix all of them in one pass rather than one per run.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import socket
import stat
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
# A config is a few KiB. PyYAML (pure Python, the same on every host and on the controller)
# reads about a character per microsecond at worst (newlines, folded scalars): 256 KiB keeps any
# file under the cap well within a second.
MAX_CONFIG_BYTES = 256 << 10
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
    # The data plane drops UDP datagrams to memcached's port from sources outside the allow-list
    # (memcached's UDP replies are the classic amplifier), instead of passing them on.
    amplification_guard: bool = False
    # Lets allowed_clients list /0, multicast, link-local and networks wider than /8 (IPv4) or
    # /16 (IPv6, outside fc00::/7): refused otherwise, as a typo or a paste more likely than meant.
    allow_wide_networks: bool = False


@dataclass(frozen=True)
class BypassSpec:
    enabled: bool = False
    cgroup: str = ""  # empty: the root of the cgroup v2 hierarchy


# Observability on by default (issue 25): a Prometheus that scrapes the fleet needs every host
# to serve /metrics on a known port from its first start, and a probe that runs by itself, or a
# default config pages someone (McacheProbeStale). A config turns either off ("" / 0).
# 9465: the port mcache has documented since its first example; every IPv4 address, so a
# central Prometheus can scrape it.
DEFAULT_METRICS_LISTEN = ":9465"
DEFAULT_PROBE_INTERVAL_S = 60


@dataclass(frozen=True)
class Config:
    api_version: str
    version: int
    memcached: MemcachedSpec
    interfaces: tuple[InterfaceSpec, ...]
    cache: CacheSpec
    strategy: str = "auto"
    metrics_listen: str = DEFAULT_METRICS_LISTEN
    probe_key: str = "mcache:probe"
    probe_timeout_ms: int = 2000
    probe_interval_s: int = DEFAULT_PROBE_INTERVAL_S
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

# What a config may be, checked while its YAML is read, before anything builds on it. A real
# config is about a hundred values, three levels deep; these bounds are far above that and far
# below where reading gets slow: PyYAML's scanner costs O(flow depth) per token, and
# jsonschema's uniqueItems is quadratic on a list of mixed types.
MAX_DEPTH = 8  # lists and mappings inside each other, the top mapping being 1 (a config has 3)
MAX_ITEMS = 64  # items of one list or keys of one mapping (a config has at most 16)
MAX_NODES = 2048  # keys and values in the whole document
MAX_STRING_CHARS = 4096  # one value (local_bypass.cgroup, the longest field, takes 4096)
MAX_KEY_CHARS = 64  # one key (the longest, allow_wide_networks, has 19)
# One integer: a 64-bit number has 20 digits and no field takes more than 10; PyYAML's own
# int() of a 5000-digit number raises ValueError (Python's int_max_str_digits).
MAX_INT_DIGITS = 20


def load_config(path_or_text: str | Path) -> Config:
    """Load and schema-check a config; raises ConfigError with every fault found.

    A Path is read as a file. A str is YAML text, unless it is a single line naming an existing
    file (so CLI arguments can be passed straight through).
    """
    if isinstance(path_or_text, Path) or _names_a_file(path_or_text):
        return parse_config(read_config_text(Path(path_or_text)))
    return parse_config(path_or_text)


def _names_a_file(text: Any) -> bool:
    if not isinstance(text, str) or "\n" in text or not text.strip():
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # too long for a file name, a NUL: text, then
        return False


def read_config_text(path: Path) -> str:
    try:
        # O_NONBLOCK: opening a FIFO that nobody writes to would wait for good; it is refused
        # below, as is anything else that is not a regular file (/dev/zero never ends).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as e:
        raise ConfigError([Fault("$", f"cannot read {path}: {_os_message(e)}")]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError([Fault("$", f"cannot read {path}: not a regular file "
                                          f"({_file_kind(st.st_mode)})")])
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                [Fault("$", f"file is {st.st_size} bytes; the limit is {MAX_CONFIG_BYTES}")]
            )
        # The file may grow between fstat and read: never read more than the cap.
        data = _read_at_most(fd, MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError([Fault("$", f"cannot read {path}: {_os_message(e)}")]) from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([Fault("$", f"file is over the {MAX_CONFIG_BYTES}-byte limit")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([Fault("$", f"not UTF-8 text: {e}")]) from None


def _read_at_most(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _os_message(e: OSError | ValueError) -> str:
    return (e.strerror if isinstance(e, OSError) else None) or str(e)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"


def parse_config(text: str) -> Config:
    """A config text to a Config, or ConfigError with every fault found: nothing else, whatever
    the text (a non-str included: the control socket and the Ansible filter pass what they got)."""
    if not isinstance(text, str):
        raise ConfigError([Fault("$", f"config must be text, not {_describe(text)}")])
    # len() first: a text of more characters than the cap is over it in bytes too, and is not
    # encoded (a 100 MB string would be, twice over).
    if len(text) > MAX_CONFIG_BYTES or \
            len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigError([Fault("$", f"config is over the {MAX_CONFIG_BYTES}-byte limit")])
    doc = _parse_yaml(text)
    faults = doc_faults(doc)
    if faults:
        raise ConfigError(faults)
    return _build(doc, text)


def doc_faults(doc: dict[str, Any]) -> list[Fault]:
    """The schema's faults and the checks it cannot say, of a document as _parse_yaml gives."""
    structural = _structural_faults(doc)
    # The code's own check of a field says exactly what is wrong, where the schema's pattern
    # for it can only say "not in the expected form": one fault per problem.
    specific = {f.path for f in structural}
    faults = [f for f in schema_faults(doc) if f.path not in specific] + structural
    return sorted(faults, key=_fault_sort_key)


_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ, _TIMESTAMP = f"{_TAG}map", f"{_TAG}seq", f"{_TAG}timestamp"
_MERGE, _VALUE = f"{_TAG}merge", f"{_TAG}value"
_TAG_NAMES = {_INT: "a number", _FLOAT: "a number", _BOOL: "a boolean", _NULL: "null",
              _TIMESTAMP: "a date", _MERGE: "a merge key"}
_BOOLS = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}
# PyYAML's YAML 1.1 resolver, as safe_load uses it: plain `yes` is true, `12` a number.
_RESOLVER = yaml.resolver.Resolver()
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ABSENT = object()  # no document (yet)
_NO_KEY = object()  # a mapping waits for its next key
_SKIP = object()  # a refused key: its value is read (to go on), then dropped


class _Stop(Exception):
    """A bound was passed: reading stops here (reading on is what would cost)."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(str(fault))
        self.fault = fault


class _TooDeep(Exception):
    def __init__(self, mark: Any) -> None:
        super().__init__("too deep")
        self.mark = mark


class _BoundedScanner(yaml.scanner.Scanner):  # type: ignore[misc]
    """PyYAML's scanner, refusing a flow collection ('[', '{') nested deeper than MAX_DEPTH as
    it meets it. The scanner keeps every open flow level as a possible simple key and walks
    them all for each token, up to 1024 characters ahead of the parser: 100,000 '[' take
    minutes before the parser has a single event to give (a limit on events comes too late)."""

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # PyYAML names it so
        if self.flow_level >= MAX_DEPTH:
            raise _TooDeep(self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


class _EventReader(yaml.reader.Reader, _BoundedScanner, yaml.parser.Parser):  # type: ignore[misc]
    """Text to YAML events; no composer (it recurses once per level) and no constructor."""

    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        _BoundedScanner.__init__(self)
        yaml.parser.Parser.__init__(self)


@dataclass
class _Frame:
    """A list or mapping being read."""

    path: str
    value: dict[str, Any] | list[Any]
    key: Any = _NO_KEY  # mapping: the key whose value comes next (or _NO_KEY, _SKIP)
    key_path: str = ""  # mapping: that value's JSON path
    keys: int = 0  # mapping: keys met, refused ones included
    marks: dict[str, Any] = field(default_factory=dict)  # mapping: key -> where it is


def _at(mark: Any) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


class _DocReader:
    """Builds the document from PyYAML's events within the bounds above, noting a fault, with
    its JSON path, for whatever a config cannot hold: aliases, tags, keys that are not names or
    come twice, integers in anything but decimal digits, dates, lone surrogates. A passed bound
    stops reading at once (_Stop); anything else is noted and reading goes on, so that one run
    says every such fault."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.stack: list[_Frame] = []
        self.root: Any = _ABSENT
        self.nodes = 0
        self.documents = 0

    def read(self, text: str) -> dict[str, Any]:
        events: _EventReader | None = None
        try:
            while True:
                try:
                    if events is None:  # the reader checks every character here: NUL, ...
                        events = _EventReader(text)
                    event = events.get_event()
                except _TooDeep as e:
                    raise _Stop(Fault(self._here(),
                                      f"nests deeper than {MAX_DEPTH} levels{_at(e.mark)}; "
                                      "a config has 3")) from None
                except yaml.YAMLError as e:
                    raise _Stop(Fault("$", f"not valid YAML: {_yaml_message(e, text)}")
                                ) from None
                except Exception as e:
                    # PyYAML raises more than YAMLError on some input ("\UFFFFFFFF" is an
                    # OverflowError): whatever its reader, scanner or parser cannot read is not
                    # valid YAML, and must not be a traceback.
                    raise _Stop(Fault("$", f"not valid YAML: {type(e).__name__}: {e}")) from None
                if event is None:
                    break
                self._event(event)
        except _Stop as e:
            self.faults.append(e.fault)
        finally:
            if events is not None:
                events.dispose()
        if self.faults:
            raise ConfigError(self.faults)
        if not isinstance(self.root, dict):  # no document at all
            raise ConfigError([Fault("$", "config is empty")])
        return self.root

    def _here(self) -> str:
        return self.stack[-1].path if self.stack else "$"

    def _fault(self, path: str, message: str) -> None:
        self.faults.append(Fault(path, message))

    def _event(self, event: Any) -> None:
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise _Stop(Fault("$", f"more than one YAML document{_at(event.start_mark)}"))
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            self._place(self.stack.pop().value)
        elif isinstance(event, yaml.NodeEvent):
            self._node(event)
        # StreamStart, StreamEnd, DocumentEnd: nothing to do

    def _node(self, event: Any) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Stop(Fault("$", f"more than {MAX_NODES} keys and values"
                                   f"{_at(event.start_mark)}; a config has about 100"))
        at = _at(event.start_mark)
        if not self.stack:
            self._root(event)
            return
        parent = self.stack[-1]
        if isinstance(parent.value, dict):
            if parent.key is _NO_KEY:
                self._key(parent, event)
                return
            path = parent.key_path
        else:
            if len(parent.value) >= MAX_ITEMS:
                raise _Stop(Fault(parent.path, f"more than {MAX_ITEMS} items{at}; the longest "
                                               "list of a config has 16"))
            path = f"{parent.path}[{len(parent.value)}]"
        if isinstance(event, yaml.AliasEvent):
            # An alias lets a 1 KiB file stand for a huge document; a config never needs one.
            self._fault(path, f"YAML aliases are not allowed{at}")
            self._place(None)
        elif isinstance(event, yaml.ScalarEvent):
            self._place(self._scalar(event, path))
        else:
            self._open(event, path)

    def _root(self, event: Any) -> None:
        if isinstance(event, yaml.MappingStartEvent):
            self._open(event, "$")
            return
        if isinstance(event, yaml.ScalarEvent):
            tag = self._tag(event)
            if tag == _NULL:
                raise _Stop(Fault("$", "config is empty"))
            kind = _TAG_NAMES.get(tag, "a string")
        else:
            kind = "an alias" if isinstance(event, yaml.AliasEvent) else "a list"
        raise _Stop(Fault("$", f"config must be a mapping, not {kind}"))

    def _open(self, event: Any, path: str) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise _Stop(Fault(self._here(), f"nests deeper than {MAX_DEPTH} levels"
                                            f"{_at(event.start_mark)}; a config has 3"))
        mapping = isinstance(event, yaml.MappingStartEvent)
        if event.tag not in (None, "!", _MAP if mapping else _SEQ):
            self._fault(path, f"YAML tag {event.tag} is not allowed{_at(event.start_mark)}")
        self.stack.append(_Frame(path, {} if mapping else []))

    def _place(self, value: Any) -> None:
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        if isinstance(top.value, dict):
            if top.key is not _SKIP:
                top.value[top.key] = value
            top.key = _NO_KEY
        else:
            top.value.append(value)

    def _key(self, m: _Frame, event: Any) -> None:
        at = _at(event.start_mark)
        m.keys += 1
        if m.keys > MAX_ITEMS:
            raise _Stop(Fault(m.path, f"more than {MAX_ITEMS} keys{at}; a mapping of a config "
                                      "has at most 11"))
        if not isinstance(event, yaml.ScalarEvent):
            what = {yaml.AliasEvent: "an alias", yaml.SequenceStartEvent: "a list"}.get(
                type(event), "a mapping")
            # Skipping a key's whole subtree (and its value) is not worth it for what no
            # config has: stop.
            raise _Stop(Fault(m.path, f"a key must be a name, not {what}{at}"))
        name = event.value
        m.key, m.key_path = _SKIP, _child(m.path, name[:MAX_KEY_CHARS])
        if len(name) > MAX_KEY_CHARS:
            self._fault(m.path, f"a key of {len(name)} characters{at}; no key is longer "
                                f"than {MAX_KEY_CHARS}")
            return
        if _SURROGATE.search(name):
            self._fault(m.path, f"key {_show(name)}{at} holds a lone surrogate, which is not "
                                "text (it has no UTF-8 form)")
            return
        tag = self._tag(event)
        if tag == _MERGE:
            self._fault(m.path, f"YAML merge keys (<<) are not allowed{at}")
            return
        if tag not in (_STR, _VALUE):
            self._fault(m.path, f"key {_show(name)}{at} is read by YAML as "
                                f"{_TAG_NAMES.get(tag, 'a tagged value')}, not a name")
            return
        if name in m.marks:
            where = _two_places(m.marks[name], event.start_mark)
            self._fault(m.key_path, f"key given twice ({where})")
            return
        m.marks[name] = event.start_mark
        m.key = name

    @staticmethod
    def _tag(event: Any) -> str:
        # As PyYAML's composer does: a plain scalar, or one tagged "!", gets its type from
        # its text.
        if event.tag is None or event.tag == "!":
            return str(_RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit))
        return str(event.tag)

    def _scalar(self, event: Any, path: str) -> Any:
        text: str = event.value
        at = _at(event.start_mark)
        if len(text) > MAX_STRING_CHARS:
            self._fault(path, f"a value of {len(text)} characters{at}; no field takes more "
                              f"than {MAX_STRING_CHARS}")
            return None
        if _SURROGATE.search(text):
            self._fault(path, f"{_show(text)}{at} holds a lone surrogate, which is not text "
                              "(it has no UTF-8 form)")
            return None
        tag = self._tag(event)
        if tag in (_STR, _VALUE, _MERGE):
            return text
        if tag == _NULL:
            return None
        if tag == _BOOL:
            if text.lower() not in _BOOLS:
                self._fault(path, f"{_show(text)}{at} is not a boolean")
            return _BOOLS.get(text.lower())
        if tag == _INT:
            return self._int(text, path, at)
        if tag == _FLOAT:
            return self._float(text, path, at)
        if tag == _TIMESTAMP:
            self._fault(path, f"{_show(text)}{at} is read by YAML as a date; quote it if it is "
                              "meant as text")
            return None
        self._fault(path, f"YAML tag {event.tag} is not allowed{at}")
        return None

    def _int(self, text: str, path: str, at: str) -> int | None:
        digits = text.replace("_", "")  # YAML 1.1: 1_000 is 1000
        if not _DECIMAL.fullmatch(digits):
            self._fault(path, f"{_show(text)}{at} is {_int_form(digits)}; write integers in "
                              "decimal digits, without leading zeros")
            return None
        count = len(digits.lstrip("+-"))
        if count > MAX_INT_DIGITS:
            self._fault(path, f"a number of {count} digits{at}; no field takes one of more "
                              "than 10")
            return None
        return int(digits)

    def _float(self, text: str, path: str, at: str) -> float | None:
        # Kept as a float (the schema then says which field wanted an integer or a string).
        t = text.replace("_", "").lower()
        sign = -1.0 if t.startswith("-") else 1.0
        t = t.lstrip("+-")
        try:
            if t in (".inf", ".nan"):
                return sign * math.inf if t == ".inf" else math.nan
            value = 0.0
            for part in t.split(":"):  # YAML 1.1 base 60: 1:30.5 is 90.5
                value = value * 60 + float(part)
            return sign * value
        except ValueError:
            self._fault(path, f"{_show(text)}{at} is not a number")
            return None


def _two_places(first: Any, second: Any) -> str:
    if first.line != second.line:
        return f"lines {first.line + 1} and {second.line + 1}"
    return f"line {first.line + 1}, columns {first.column + 1} and {second.column + 1}"


def _int_form(digits: str) -> str:
    body = digits.lstrip("+-")
    if body.startswith("0b"):
        return "a binary number in YAML 1.1"
    if body.startswith("0x"):
        return "a hexadecimal number in YAML 1.1"
    if ":" in body:
        return "a base-60 number in YAML 1.1 (1:30 is 90)"
    if body.startswith("0"):
        return "an octal number in YAML 1.1 (010 is 8)"
    return "not an integer"


def _parse_yaml(text: str) -> dict[str, Any]:
    if not text.strip():
        raise ConfigError([Fault("$", "config is empty")])
    return _DocReader().read(text)


def _yaml_message(e: yaml.YAMLError, text: str = "") -> str:
    if isinstance(e, yaml.reader.ReaderError) and isinstance(e.character, int):
        # It has a position in the text, not a mark (and a message over several lines).
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        return (f"character #x{e.character:04x} is not allowed in YAML (line {line}, "
                f"column {column})")
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


def _type_name(v: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", dict: "a mapping", type(None): "null"}.get(
        type(v), type(v).__name__)


def _show(v: Any, width: int = 60) -> str:
    """A value as a fault message quotes it: short, and escaped (repr) so that a control
    character in a config cannot reach the operator's terminal raw."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    text = repr(v)
    return text if len(text) <= width else f"{text[:width - 3]}..."


def _describe(v: Any) -> str:
    if v is None or isinstance(v, (dict, list)):
        return _show(v)
    if isinstance(v, bool):
        return f"the boolean {_show(v)}"
    if isinstance(v, int):
        return f"the integer {_show(v)}"
    if isinstance(v, float):
        return f"the float {_show(v)}"
    if isinstance(v, str):
        return f"the string {_show(v)}"
    return type(v).__name__


_EXPECTED = {"integer": "an integer", "string": "a string", "boolean": "true or false",
             "object": "a mapping", "array": "a list", "number": "a number", "null": "null"}


def _type_message(v: Any, expected: Any) -> str:
    wanted = [expected] if isinstance(expected, str) else list(expected)
    message = f"expected {' or '.join(_EXPECTED.get(t, t) for t in wanted)}, not {_describe(v)}"
    if "integer" in wanted and isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        message += f" (write {int(v)}: an integer has no decimal point)"
    return message


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    with schema_path().open() as f:
        schema: dict[str, Any] = json.load(f)
    return schema


def _strict_integer(_checker: Any, v: Any) -> bool:
    # JSON Schema counts 64.0 as an integer; a config does not: `version: 2.0` would be
    # stored as 2.0.yml, `port: 11211.0` reach the data plane as a float. (bool is not one
    # either, as in jsonschema's own check.)
    return isinstance(v, int) and not isinstance(v, bool)


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    base = jsonschema.validators.validator_for(load_schema())
    base.check_schema(load_schema())
    strict = jsonschema.validators.extend(
        base, type_checker=base.TYPE_CHECKER.redefine("integer", _strict_integer))
    return strict(load_schema(), format_checker=base.FORMAT_CHECKER)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _child(path: str, key: str) -> str:
    """The JSON path of a mapping's key: `.name`, or `["a key"]` when it is not a plain name
    (JSON-quoted, ASCII: a key can hold anything, the path printed must not)."""
    return f"{path}.{key}" if _NAME.fullmatch(key) else f"{path}[{json.dumps(key)}]"


def json_path(parts: Any) -> str:
    out = "$"
    for p in parts:
        out = f"{out}[{p}]" if isinstance(p, int) else _child(out, str(p))
    return out


def _fault_sort_key(f: Fault) -> tuple[list[tuple[int, str | int]], str]:
    # Sort [10] after [9]: compare path components, numbers as numbers.
    parts: list[tuple[int, str | int]] = []
    for tok in re.findall(r'\[(\d+)\]|\.([^.\[]+)|\[("(?:[^"\\]|\\.)*")\]', f.path):
        parts.append((0, int(tok[0])) if tok[0] else (1, tok[1] or tok[2]))
    return parts, f.message


def schema_faults(doc: Any) -> list[Fault]:
    faults: list[Fault] = []
    for err in _validator().iter_errors(doc):
        faults.extend(_faults_from_error(err))
    # A value of the wrong type fails its other keywords too (true is not one of the entries),
    # as an empty one does its pattern: the first says it.
    for first in ("expected ", "must not be empty"):
        said = {f.path for f in faults if f.message.startswith(first)}
        faults = [f for f in faults if f.path not in said or f.message.startswith(first)]
    return sorted(set(faults), key=_fault_sort_key)


def _faults_from_error(err: jsonschema.ValidationError) -> list[Fault]:
    path = list(err.absolute_path)
    where = json_path(path)
    inst, kind, value = err.instance, err.validator, err.validator_value
    if kind == "required":
        m = re.match(r"^'(.+)' is a required property$", err.message)
        name = m.group(1) if m else "?"
        return [Fault(json_path([*path, name]), "required key is missing")]
    if kind == "additionalProperties" and isinstance(inst, dict):
        allowed = sorted(err.schema.get("properties", {}))
        extras = [k for k in inst if k not in err.schema.get("properties", {})]
        return [
            Fault(json_path([*path, str(k)]), f"unknown key (allowed: {', '.join(allowed)})")
            for k in extras
        ]
    schema = err.schema if isinstance(err.schema, dict) else {}
    # Messages of our own: jsonschema's quote the whole instance (a list of 64 items, a string
    # of 4096 characters), ours quote at most 60 characters of it.
    if kind == "type":
        return [Fault(where, _type_message(inst, value))]
    if kind in ("enum", "anyOf") and "x-fault" in schema:
        return [Fault(where, f"{_show(inst)} {schema['x-fault']}")]
    if kind == "pattern":
        expected = schema.get("description", "see the schema")
        return [Fault(where, f"{_show(inst)} is not in the expected form ({expected})")]
    if kind == "const":
        return [Fault(where, f"must be {value!r}, not {_show(inst)}")]
    if kind == "enum":
        return [Fault(where, f"{_show(inst)} is not one of {', '.join(map(repr, value))}")]
    if kind in ("maxItems", "minItems") and isinstance(inst, list):
        bound = "at most" if kind == "maxItems" else "at least"
        return [Fault(where, f"{len(inst)} items; {bound} {value}")]
    if kind == "uniqueItems" and isinstance(inst, list):
        dup = next((a for i, a in enumerate(inst) for b in inst[:i] if _same(a, b)), None)
        return [Fault(where, f"{_show(dup)} is listed more than once")]
    if kind in ("maxLength", "minLength") and isinstance(inst, str):
        if kind == "minLength" and value == 1:
            return [Fault(where, "must not be empty")]
        bound = "at most" if kind == "maxLength" else "at least"
        return [Fault(where, f"{_show(inst)} is {len(inst)} characters; {bound} {value}")]
    return [Fault(where, err.message)]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------------- structure


def interface_name_fault(name: str) -> str:
    """Why the kernel would refuse `name` for a network interface ("" when it would not), after
    net/core/dev.c dev_valid_name(): 1 to 15 bytes (IFNAMSIZ - 1), not "." or "..", no '/', ':'
    or space (the kernel's isspace(), which takes byte 0xa0 for one). Control characters the
    kernel allows, but no interface is named with one: refused too, as is any Unicode space
    (the schema's \\s)."""
    if name in (".", ".."):
        return "is not an interface name: the kernel refuses '.' and '..'"
    raw = name.encode("utf-8", "surrogatepass")
    if not raw:
        return "is empty: an interface name is 1 to 15 bytes"
    if len(raw) > 15:
        return f"is {len(raw)} bytes; the kernel's limit for an interface name is 15"
    for c in name:
        if c in "/:" or c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F:
            return f"holds {c!r}, which the kernel refuses in an interface name"
        if b"\xa0" in c.encode("utf-8", "surrogatepass"):
            return (f"holds {c!r}, whose UTF-8 form has byte 0xa0, which the kernel takes for "
                    "a space")
    return ""


# metrics.listen: IPv4:port, [IPv6]:port or :port (every IPv4 address), port 1-65535 written
# without leading zeros (the schema's pattern is the same).
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_LISTEN = re.compile(r"(?:(?P<v4>[0-9.]+)|\[(?P<v6>[0-9A-Fa-f:.]+)\])?:(?P<port>[0-9]+)")


def listen_address(listen: str) -> tuple[str, int]:
    """metrics.listen to (host, port) for the metrics server; ValueError saying why not."""
    m = _LISTEN.fullmatch(listen)
    if m is None:
        raise ValueError("is not IPv4:port, [IPv6]:port or :port (a host name or a path is not "
                         "taken)")
    if not re.fullmatch(_PORT, m["port"]):
        raise ValueError(f"has port {m['port']}: a port is 1 to 65535, without leading zeros")
    if m["v6"] is not None:
        try:
            return str(ipaddress.IPv6Address(m["v6"])), int(m["port"])
        except ValueError:
            raise ValueError(f"has {m['v6']!r} in brackets, which is not an IPv6 address"
                             ) from None
    if m["v4"]:
        try:
            return str(ipaddress.IPv4Address(m["v4"])), int(m["port"])
        except ValueError:
            raise ValueError(f"has {m['v4']!r}, which is not an IPv4 address") from None
    return "0.0.0.0", int(m["port"])


PATH_MAX, NAME_MAX = 4096, 255


def _cgroup_path_fault(path: str) -> str:
    """Why a cgroup path cannot name a directory, by length alone ("" when it can)."""
    size = len(path.encode("utf-8", "surrogatepass"))
    if size >= PATH_MAX:
        return f"is {size} bytes; a path is at most {PATH_MAX - 1} (PATH_MAX)"
    longest = max((len(p.encode("utf-8", "surrogatepass")) for p in path.split("/")), default=0)
    if longest > NAME_MAX:
        return f"has a component of {longest} bytes; the limit is {NAME_MAX} (NAME_MAX)"
    return ""


def _structural_faults(doc: dict[str, Any]) -> list[Fault]:
    """Rules JSON Schema cannot say but that do not depend on the host. Total on any document
    _parse_yaml gives (the schema may have refused it): every value is type-checked first."""
    faults: list[Fault] = []
    seen: dict[str, int] = {}
    interfaces = doc.get("interfaces")
    for i, itf in enumerate(interfaces if isinstance(interfaces, list) else []):
        name = itf.get("name") if isinstance(itf, dict) else None
        if not isinstance(name, str):
            continue
        why = interface_name_fault(name)
        if why:
            faults.append(Fault(f"$.interfaces[{i}].name", f"{_show(name)} {why}"))
            continue
        if name in seen:
            first = f"$.interfaces[{seen[name]}]"
            faults.append(Fault(f"$.interfaces[{i}].name",
                                f"interface {name!r} is already listed at {first}"))
        seen.setdefault(name, i)
    listen = _get(doc, "metrics", "listen")
    if isinstance(listen, str) and listen:
        try:
            listen_address(listen)
        except ValueError as e:
            faults.append(Fault("$.metrics.listen", f"{_show(listen)} {e}"))
    cgroup = _get(doc, "local_bypass", "cgroup")
    if isinstance(cgroup, str) and cgroup.startswith("/"):
        why = _cgroup_path_fault(cgroup)
        if why:
            faults.append(Fault("$.local_bypass.cgroup", f"{_show(cgroup)} {why}"))
    key = _get(doc, "probe", "key")
    if isinstance(key, str) and len(key.encode("utf-8", "surrogatepass")) > 250:
        # memcached's key limit is 250 bytes; the schema's maxLength counts characters.
        faults.append(Fault("$.probe.key", f"{_show(key)} is "
                                           f"{len(key.encode('utf-8', 'surrogatepass'))} bytes; "
                                           "memcached takes keys of at most 250"))
    return faults


def _get(doc: dict[str, Any], section: str, key: str) -> Any:
    part = doc.get(section)
    return part.get(key) if isinstance(part, dict) else None


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
        amplification_guard=c.get("amplification_guard", d.amplification_guard),
        allow_wide_networks=c.get("allow_wide_networks", d.allow_wide_networks),
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
        metrics_listen=doc.get("metrics", {}).get("listen", DEFAULT_METRICS_LISTEN),
        probe_key=probe.get("key", "mcache:probe"),
        probe_timeout_ms=probe.get("timeout_ms", 2000),
        probe_interval_s=probe.get("interval_s", DEFAULT_PROBE_INTERVAL_S),
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
        if not why and not cfg.cache.allow_wide_networks:
            why = _wide_network_fault(cidr)
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


# What a client network is not: the networks no client sends from, and what is wider than any
# client network (IPv6 fc00::/7, unique local addresses, is one site's: wide prefixes there are).
_MULTICAST = (ipaddress.ip_network("224.0.0.0/4"), ipaddress.ip_network("ff00::/8"))
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
WIDEST_PREFIX = {4: 8, 6: 16}


def _wide_network_fault(cidr: str) -> str:
    """Why an allowed_clients item is refused unless cache.allow_wide_networks is true ("" when
    it is not): every client reading the cache is one the cache answers over UDP, in replies
    much larger than the requests (an amplifier for forged sources)."""
    net = ipaddress.ip_network(cidr)
    unless = "; set cache.allow_wide_networks: true if it is meant"
    if net.prefixlen == 0:
        return f"is every IPv{net.version} address: anyone could read the cache{unless}"
    if any(net.version == m.version and net.overlaps(m) for m in _MULTICAST):
        return ("is a multicast network: no client sends from a multicast address, only a "
                f"forged packet does{unless}")
    if any(net.version == m.version and net.overlaps(m) for m in _LINK_LOCAL):
        return ("is a link-local network: its addresses mean something only on one link, and "
                f"the cache cannot tell which{unless}")
    widest = WIDEST_PREFIX[net.version]
    if net.prefixlen < widest and not (net.version == 6 and net.subnet_of(_UNIQUE_LOCAL)):
        return (f"is a /{net.prefixlen}: wider than any client network (/{widest} is the widest "
                f"taken){unless}")
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
    if interface_name_fault(name):
        # "." and ".." are in /sys/class/net too (the directory itself and its parent)
        return False
    try:
        socket.if_nametoindex(name)
    except (OSError, ValueError):
        try:
            return Path("/sys/class/net", name).exists()
        except (OSError, ValueError):
            return False
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
        try:
            why = cgroups.cgroup_fault(cfg.local_bypass.cgroup)
        except (OSError, ValueError, RuntimeError) as e:  # ENAMETOOLONG, a symlink loop
            why = f"cannot look at it: {e}"
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

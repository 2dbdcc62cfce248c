"""Hostile configs: every one is refused with its JSON path, never a traceback, within bounds.

Each entry of CASES is a config text (generated here: the large ones would be megabytes in the
repository) and the refusal it must get: the exact set of JSON paths of its faults, and a
fragment of one message. Every entry goes through the three places that read configs:

1. `mcache-agent validate FILE`, a process of its own: exit 2, each path printed, no
   "Traceback", in a few seconds of wall time (interpreter start-up included) and within 100 MB
   of the peak RSS of validating a good config (os.wait4 gives each child's rusage);
2. the agent's apply path in this process (Agent.apply_text over a fake data plane, with a
   config running): refused as invalid, the data plane never asked;
3. the controller's filter plugin (plugins/filter/config.py).

Reading and checking alone (parse_config + check_semantics) must take under a second each.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcache_agent.config import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_NODES,
    Config,
    ConfigError,
    check_semantics,
    load_config,
    parse_config,
)
from mcache_agent.daemon import Agent
from mcache_agent.dataplane import ApplyResult, Plan
from mcache_agent.versions import VersionStore
from tests import pyfile

REPO = Path(__file__).resolve().parents[2]
# The bounds of the issue: reading and checking one file, and validating it as a process
# (whose wall time includes starting Python, which another test run may slow down). In
# process they are CPU seconds of this process (every thread, the agent's included): a
# machine busy with other work slows the wall clock, not the work a hostile text causes.
CHECK_SECONDS = 1.0
PROCESS_SECONDS = 10.0
PROCESS_EXTRA_RSS = 100 << 20

BASE = (
    "apiVersion: mcache/v1\n"
    "version: 5\n"
    "memcached: {address: 127.0.0.1, port: 11211}\n"
    "interfaces: [{name: lo, xdp_mode: generic}]\n"
    "cache: {allowed_clients: [127.0.0.0/8]}\n"
)
# What runs when the apply path is asked (version 4: every case's version 5 is news to it).
RUNNING = BASE.replace("version: 5", "version: 4")


@dataclass(frozen=True)
class Case:
    name: str
    text: str | bytes  # bytes: written to the file as they are (not UTF-8, ...)
    paths: tuple[str, ...]  # every fault's path, exactly
    fragment: str  # in the message of a fault at paths[0]
    # "all": the three readers; "file": validate only (a file's bytes or kind); "str": apply
    # path and filter only (text no file can hold: a lone surrogate)
    via: str = "all"
    special: str = ""  # "dir", "fifo", "devzero": validate this kind of file instead


def sub(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def cache(item: str) -> str:
    """BASE with `item` in the cache mapping (a flow mapping: `key: value`)."""
    return sub("cache: {", f"cache: {{{item}, ")


def cache_block(lines: str) -> str:
    """BASE with its cache mapping in block style, `lines` (indented two) added."""
    return sub("cache: {allowed_clients: [127.0.0.0/8]}\n",
               "cache:\n  allowed_clients: [127.0.0.0/8]\n" + lines)


def clients(*items: str) -> str:
    return sub("allowed_clients: [127.0.0.0/8]",
               f"allowed_clients: [{', '.join(repr(i) for i in items)}]")


def up_to_cap(head: str, unit: str, tail: str = "") -> str:
    """head, unit repeated, tail: as many bytes as MAX_CONFIG_BYTES allows."""
    room = MAX_CONFIG_BYTES - len(head.encode()) - len(tail.encode())
    return head + unit * (room // len(unit.encode())) + tail


def case(name: str, text: str | bytes, path: str | tuple[str, ...], fragment: str,
         **kw: Any) -> Case:
    return Case(name, text, (path,) if isinstance(path, str) else path, fragment, **kw)


# --------------------------------------------------------------------------- the corpus

# (field path, a good value, minimum, maximum) of every integer field: the schema's ranges
INTEGER_FIELDS = [
    ("version", "version", 2, 1, 4294967295),
    ("memcached.port", "port", 11211, 1, 65535),
    ("cache.entries", "entries", 1024, 16, 1048576),
    ("cache.max_key_bytes", "max_key_bytes", 64, 1, 250),
    ("cache.max_value_bytes", "max_value_bytes", 512, 1, 1400),
    ("cache.ttl_ms", "ttl_ms", 60000, 1, 86400000),
    ("cache.fill_hold_ms", "fill_hold_ms", 50, 0, 10000),
    ("probe.timeout_ms", "timeout_ms", 2000, 100, 60000),
    ("probe.interval_s", "interval_s", 60, 0, 86400),
]


def with_int(where: str, key: str, value: str) -> str:
    """BASE with the integer field at `where` (a dotted path) written as `value`."""
    if where == "version":
        return sub("version: 5", f"version: {value}")
    if where == "memcached.port":
        return sub("port: 11211", f"port: {value}")
    if where.startswith("cache."):
        return cache(f"{key}: {value}")
    return BASE + f"probe: {{{key}: {value}}}\n"


def integer_cases() -> list[Case]:
    out = []
    for where, key, good, low, high in INTEGER_FIELDS:
        path = f"$.{where}"
        out += [
            case(f"{where}: whole float", with_int(where, key, f"{good}.0"), path,
                 f"not the float {good}.0 (write {good}: an integer has no decimal point)"),
            case(f"{where}: fraction", with_int(where, key, f"{good}.5"), path,
                 "expected an integer, not the float"),
            case(f"{where}: exponent", with_int(where, key, "6.5e+1"), path,
                 "not the float 65.0"),
            case(f"{where}: bool", with_int(where, key, "true"), path,
                 "expected an integer, not the boolean true"),
            case(f"{where}: yes", with_int(where, key, "yes"), path,
                 "not the boolean true"),
            case(f"{where}: quoted", with_int(where, key, f"'{good}'"), path,
                 f"not the string '{good}'"),
            case(f"{where}: null", with_int(where, key, "~"), path,
                 "expected an integer, not null"),
            case(f"{where}: list", with_int(where, key, f"[{good}]"), path,
                 "expected an integer, not a list"),
            case(f"{where}: hex", with_int(where, key, hex(good)), path,
                 "hexadecimal number in YAML 1.1"),
            case(f"{where}: below", with_int(where, key, str(low - 1)), path,
                 "must be a power of two" if key == "entries" else "less than the minimum"),
            case(f"{where}: above", with_int(where, key, str(high + 1)), path,
                 "must be a power of two" if key == "entries" else "greater than the maximum"),
        ]
    return out


def structure_cases() -> list[Case]:
    deep_flow = "[" * 100_000 + "]" * 100_000  # 200 KB
    return [
        case("empty file", "", "$", "config is empty"),
        case("blank lines", "\n\n   \n", "$", "config is empty"),
        case("only a comment", "# nothing\n", "$", "config is empty"),
        case("empty document", "---\n...\n", "$", "config is empty"),
        case("null document", "~\n", "$", "config is empty"),
        case("a list at the top", "- apiVersion: mcache/v1\n- version: 1\n", "$",
             "must be a mapping, not a list"),
        case("a flow list at the top", "[1, 2, 3]\n", "$", "must be a mapping, not a list"),
        case("a string at the top", "mcache\n", "$", "must be a mapping, not a string"),
        case("a number at the top", "42\n", "$", "must be a mapping, not a number"),
        case("a boolean at the top", "yes\n", "$", "must be a mapping, not a boolean"),
        case("a date at the top", "2026-01-01\n", "$", "must be a mapping, not a date"),
        case("two documents", BASE + "---\n" + BASE, "$", "more than one YAML document"),
        case("NUL byte", BASE + "\x00\n", "$", "character #x0000 is not allowed"),
        case("escape character", BASE + "# \x1b[31m\n", "$", "character #x001b"),
        case("DEL", BASE + "probe: {key: a\x7fb}\n", "$", "character #x007f"),
        case("C1 control", BASE + "# \x85x\x9b\n", "$", "character #x009b"),
        case("tab indentation", BASE + "probe:\n\tkey: x\n", "$", "found character '\\t'"),
        case("tab before a key", BASE + "\tprobe: {}\n", "$", "found character '\\t'"),
        case("unclosed flow", BASE + "probe: {key: x\n", "$", "not valid YAML"),
        case("unclosed quote", BASE + "probe: {key: 'x}\n", "$", "not valid YAML"),
        case("bad escape", BASE + 'probe: {key: "\\q"}\n', "$", "unknown escape character"),
        case("escape past Unicode", BASE + 'probe: {key: "\\UFFFFFFFF"}\n', "$",
             "not valid YAML"),
        case("escape past Unicode 2", BASE + 'probe: {key: "\\U00110000"}\n', "$",
             "not valid YAML"),
        case("YAML 2.0", "%YAML 2.0\n---\n" + BASE, "$", "incompatible YAML document"),
        case("python object tag", "!!python/object:os.system {}\n", "$", "YAML tag"),
        case("python name tag", BASE + "probe: {key: !!python/name:os.system ''}\n",
             "$.probe.key", "YAML tag tag:yaml.org,2002:python/name:os.system"),
        case("local tag", BASE + "probe: {key: !x y}\n", "$.probe.key", "YAML tag !x"),
        case("set tag", BASE + "probe: !!set {key: null}\n", "$.probe",
             "YAML tag tag:yaml.org,2002:set"),
        case("omap tag", sub("interfaces: [", "interfaces: !!omap ["), "$.interfaces",
             "YAML tag tag:yaml.org,2002:omap"),
        case("binary tag", cache("key_prefix: !!binary aGVsbG8="), "$.cache.key_prefix",
             "YAML tag tag:yaml.org,2002:binary"),
        case("a date as a string", cache("key_prefix: 2026-01-01"), "$.cache.key_prefix",
             "read by YAML as a date"),
        case("a time stamp as a version", sub("version: 5", "version: 2026-01-01 10:00:00"),
             "$.version", "read by YAML as a date"),
        case("octal port", sub("port: 11211", "port: 011211"), "$.memcached.port",
             "octal number in YAML 1.1"),
        case("base-60 port", sub("port: 11211", "port: 3:07:31"), "$.memcached.port",
             "base-60 number in YAML 1.1"),
        case("binary version", sub("version: 5", "version: 0b101"), "$.version",
             "binary number in YAML 1.1"),
        case("a 5000-digit integer", sub("version: 5", "version: " + "9" * 5000), "$.version",
             "a value of 5000 characters"),
        case("a 4000-digit integer", sub("version: 5", "version: " + "9" * 4000), "$.version",
             "a number of 4000 digits"),
        case("a 4000-digit negative integer", sub("port: 11211", "port: -" + "1" * 4000),
             "$.memcached.port", "a number of 4000 digits"),
        case("a 21-digit integer", sub("version: 5", "version: " + "1" * 21), "$.version",
             "a number of 21 digits"),
        case("a 20-digit integer", sub("version: 5", "version: " + "9" * 20), "$.version",
             "greater than the maximum"),
        case("a 4000-digit !!int", sub("version: 5", "version: !!int '" + "7" * 4000 + "'"),
             "$.version", "a number of 4000 digits"),
        case("!!int that is not", sub("version: 5", "version: !!int five"), "$.version",
             "not an integer"),
        case("!!bool that is not", cache("enabled: !!bool maybe"), "$.cache.enabled",
             "is not a boolean"),
        case("!!float that is not", cache("ttl_ms: !!float many"), "$.cache.ttl_ms",
             "is not a number"),
        case("infinity", sub("version: 5", "version: .inf"), "$.version", "not the float inf"),
        case("not a number", sub("version: 5", "version: .nan"), "$.version",
             "not the float nan"),
        case("1e400", sub("version: 5", "version: 1.0e+400"), "$.version", "not the float inf"),
        case("deep flow nesting (200 KB)", BASE + "extra: " + deep_flow, "$.extra",
             f"nests deeper than {MAX_DEPTH} levels"),
        case("deep flow nesting in a field", sub("allowed_clients: [127.0.0.0/8]",
                                                 "allowed_clients: " + deep_flow),
             "$.cache.allowed_clients", f"nests deeper than {MAX_DEPTH} levels"),
        case("deep flow mappings", BASE + "extra: " + "{a: " * 50_000 + "}" * 50_000,
             "$.extra.a.a.a.a.a.a", "nests deeper than"),
        case("deep mixed flow", BASE + "extra: " + "[{a: " * 30_000, "$.extra",
             "nests deeper than"),
        case("deep flow on many lines", BASE + "extra: " + "[\n" * 50_000 + "]\n" * 50_000,
             "$.extra[0][0][0][0][0][0]", "nests deeper than"),
        case("deep block mappings", BASE + "".join(" " * i + "a:\n" for i in range(500)),
             "$.a.a.a.a.a.a.a", "nests deeper than"),
        case("deep block sequences", BASE + "extra:\n" + "- " * 50_000 + "x\n",
             "$.extra[0][0][0][0][0][0]", "nests deeper than"),
        case("nesting one past the bound", BASE + "extra: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH,
             "$.extra[0][0][0][0][0][0]", "nests deeper than"),
        case("nesting at the bound", BASE + "extra: " + "[" * (MAX_DEPTH - 1) +
             "]" * (MAX_DEPTH - 1), "$.extra", "unknown key"),
        case("200 KB nested flow in protocols", cache("protocols: " + deep_flow),
             "$.cache.protocols", "nests deeper than"),
        case("20k mixed protocols", cache("protocols: [" + ", ".join(
            ["ascii", "1", "true", "[1]", "{a: 1}", "~"] * 3400) + "]"),
             "$.cache.protocols", f"more than {MAX_ITEMS} items"),
        case("5k allowed_clients", clients(*[f"10.{i >> 8 & 255}.{i & 255}.0/24"
                                             for i in range(5_000)]),
             "$.cache.allowed_clients", f"more than {MAX_ITEMS} items"),
        case("20k block interfaces", sub("interfaces: [{name: lo, xdp_mode: generic}]\n",
                                         "interfaces:\n" + "- name: lo\n" * 20_000),
             "$.interfaces", f"more than {MAX_ITEMS} items"),
        case("65 protocols", cache("protocols: [" + ", ".join(["ascii"] * 65) + "]"),
             "$.cache.protocols", f"more than {MAX_ITEMS} items"),
        case("64 protocols", cache("protocols: [" + ", ".join(["ascii"] * 64) + "]"),
             "$.cache.protocols", "64 items; at most 2"),
        case("10k keys at the top", BASE + "".join(f"k{i}: {i}\n" for i in range(10_000)),
             "$", f"more than {MAX_ITEMS} keys"),
        case("100 keys in cache", cache(", ".join(f"k{i}: 1" for i in range(100))),
             "$.cache", f"more than {MAX_ITEMS} keys"),
        case("node budget", BASE + "extra:\n" + "".join(
            f"  k{i}: [{', '.join(['1'] * 60)}]\n" for i in range(40)), "$",
             f"more than {MAX_NODES} keys and values"),
        case("an alias", BASE + "x: &a [1, 2]\ny: *a\n", "$.y", "YAML aliases are not allowed"),
        case("an alias for a field", sub("port: 11211}", "port: &p 11211}") +
             "probe: {timeout_ms: *p}\n", "$.probe.timeout_ms", "aliases are not allowed"),
        case("billion laughs", "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
            f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)),
             tuple(f"$.{n}[{i}]" for n in "bcdefghi" for i in range(9)),
             "YAML aliases are not allowed"),
        case("an alias as a key", BASE + "x: &k a\n*k : 1\n", "$",
             "a key must be a name, not an alias"),
        case("a merge key", BASE + "probe:\n  <<: {key: x}\n", "$.probe",
             "merge keys (<<) are not allowed"),
        case("duplicate top-level key", BASE + "version: 6\n", "$.version",
             "key given twice (lines 2 and 6)"),
        case("duplicate cache key", cache("entries: 16, entries: 32"), "$.cache.entries",
             "key given twice (line 5, columns 9 and 22)"),
        case("duplicate interface key", sub("{name: lo,", "{name: lo, name: eth0,"),
             "$.interfaces[0].name", "key given twice"),
        case("a number as a key", BASE + "1: one\n", "$", "key '1' (line 6, column 1) is read "
                                                          "by YAML as a number"),
        case("on as a key", BASE + "on: true\n", "$", "read by YAML as a boolean"),
        case("null as a key", BASE + "~: x\n", "$", "read by YAML as null"),
        case("a list as a key", BASE + "? [a, b]\n: x\n", "$", "a key must be a name, not a list"),
        case("a mapping as a key", BASE + "? {a: b}\n: x\n", "$",
             "a key must be a name, not a mapping"),
        case("a key of 100 characters", BASE + "k" * 100 + ": 1\n", "$",
             "a key of 100 characters"),
        case("a key with a space", BASE + "'max key': 1\n", '$["max key"]', "unknown key"),
        case("a key with an escape sequence", BASE + '"\\e[31mred": 1\n',
             '$["\\u001b[31mred"]', "unknown key"),
        case("a key with a dot", BASE + "'a.b': 1\n", '$["a.b"]', "unknown key"),
        case("a typo of a new field", cache("amplification-guard: true"),
             "$.cache.amplification-guard", "unknown key"),
        case("a lone surrogate escaped", cache('key_prefix: "\\ud800"'), "$.cache.key_prefix",
             "lone surrogate"),
        case("a lone surrogate in a key", BASE + '"\\udfff": 1\n', "$", "lone surrogate"),
        case("a raw lone surrogate", cache("key_prefix: '\ud800'"), "$",
             "character #xd800 is not allowed", via="str"),
        case("a 200 KB string", cache("key_prefix: '" + "x" * 200_000 + "'"),
             "$.cache.key_prefix", "a value of 200000 characters"),
        case("a 200 KB plain scalar", BASE + "extra: " + "x" * 200_000 + "\n", "$.extra",
             "a value of 200000 characters"),
        case("a 100 KB block scalar", BASE + "extra: |\n" + "  xxxxxxx\n" * 10_000,
             "$.extra", "a value of 80000 characters"),
        # The slowest text PyYAML reads per character, just under the size cap: the cap is what
        # bounds the time these take.
        case("newlines up to the cap", up_to_cap(BASE + "extra: 1", "\n"), "$.extra",
             "unknown key"),
        case("a folded scalar up to the cap", up_to_cap(BASE + "extra: >\n", "  x\n\n"),
             "$.extra", "no field takes more than 4096"),
        case("comment lines up to the cap", up_to_cap(BASE + "extra: 1\n", "#\n"), "$.extra",
             "unknown key"),
        case("escaped line breaks up to the cap", up_to_cap(BASE + 'extra: "', "\\\n", '"'),
             "$.extra", "unknown key"),
        case("over the size cap", "# " + "x" * MAX_CONFIG_BYTES + "\n" + BASE, "$",
             "limit"),
        case("over the size cap in bytes", "# " + "é" * (MAX_CONFIG_BYTES // 2) + "\n" + BASE,
             "$", "limit"),
        case("not UTF-8", BASE.encode() + b"# \xff\xfe\n", "$", "not UTF-8 text", via="file"),
        case("UTF-16", BASE.encode("utf-16"), "$", "not UTF-8 text", via="file"),
        case("Latin-1 name", sub("name: lo", "name: l\xf6").encode("latin-1"), "$",
             "not UTF-8 text", via="file"),
        case("a directory", "", "$", "not a regular file (a directory)", via="file",
             special="dir"),
        case("a FIFO nobody writes to", "", "$", "not a regular file (a FIFO)", via="file",
             special="fifo"),
        case("/dev/zero", "", "$", "not a regular file (a character device)", via="file",
             special="devzero"),
    ]


def field_cases() -> list[Case]:
    return [
        # apiVersion, version, unknown keys
        case("apiVersion v2", sub("mcache/v1", "mcache/v2"), "$.apiVersion",
             "must be 'mcache/v1', not 'mcache/v2'"),
        case("apiVersion missing", sub("apiVersion: mcache/v1\n", ""), "$.apiVersion",
             "required key is missing"),
        case("apiVersion a number", sub("mcache/v1", "1"), "$.apiVersion", "not 1"),
        case("version missing", sub("version: 5\n", ""), "$.version", "required key is missing"),
        case("version 0", sub("version: 5", "version: 0"), "$.version", "less than the minimum"),
        case("version negative", sub("version: 5", "version: -3"), "$.version",
             "less than the minimum"),
        case("version a word", sub("version: 5", "version: five"), "$.version",
             "not the string 'five'"),
        case("an unknown top-level key", BASE + "colour: red\n", "$.colour", "unknown key"),
        case("an unknown cache key", cache("size: 1"), "$.cache.size", "unknown key"),
        case("an unknown interface key", sub("{name: lo,", "{name: lo, speed: 10,"),
             "$.interfaces[0].speed", "unknown key"),
        case("an unknown probe key", BASE + "probe: {keys: [a]}\n", "$.probe.keys", "unknown key"),
        case("cache a list", sub("cache: {allowed_clients: [127.0.0.0/8]}", "cache: []"),
             "$.cache", "expected a mapping, not a list"),
        case("cache null", sub("cache: {allowed_clients: [127.0.0.0/8]}", "cache:"),
             "$.cache", "expected a mapping, not null"),
        # memcached
        case("memcached missing", sub("memcached: {address: 127.0.0.1, port: 11211}\n", ""),
             "$.memcached", "required key is missing"),
        case("memcached a string", sub("{address: 127.0.0.1, port: 11211}", "127.0.0.1:11211"),
             "$.memcached", "expected a mapping, not the string"),
        case("address a host name", sub("address: 127.0.0.1", "address: localhost"),
             "$.memcached.address", "'localhost' is not an IPv4 or IPv6 address"),
        case("address with a port", sub("address: 127.0.0.1", "address: '127.0.0.1:11211'"),
             "$.memcached.address", "is not an IPv4 or IPv6 address"),
        case("address with a zone", sub("address: 127.0.0.1", "address: 'fe80::1%eth0'"),
             "$.memcached.address", "is not an IPv4 or IPv6 address"),
        case("address empty", sub("address: 127.0.0.1", "address: ''"), "$.memcached.address",
             "is not an IPv4 or IPv6 address"),
        case("address a number", sub("address: 127.0.0.1", "address: 2130706433"),
             "$.memcached.address", "expected a string, not the integer 2130706433"),
        case("address multicast", sub("address: 127.0.0.1", "address: 239.1.2.3"),
             "$.memcached.address", "multicast"),
        case("address IPv4-mapped", sub("address: 127.0.0.1", "address: '::ffff:127.0.0.1'"),
             "$.memcached.address", "IPv4-mapped"),
        case("address link-local", sub("address: 127.0.0.1", "address: 'fe80::1'"),
             "$.memcached.address", "link-local"),
        case("port negative", sub("port: 11211", "port: -11211"), "$.memcached.port",
             "less than the minimum"),
        case("port 99999", sub("port: 11211", "port: 99999"), "$.memcached.port",
             "greater than the maximum"),
        case("port a service name", sub("port: 11211", "port: memcache"), "$.memcached.port",
             "not the string 'memcache'"),
        # interfaces
        case("interfaces missing", sub("interfaces: [{name: lo, xdp_mode: generic}]\n", ""),
             "$.interfaces", "required key is missing"),
        case("interfaces empty", sub("[{name: lo, xdp_mode: generic}]", "[]"), "$.interfaces",
             "0 items; at least 1"),
        case("nine interfaces", sub("[{name: lo, xdp_mode: generic}]",
                                    "[" + ", ".join(f"{{name: eth{i}}}" for i in range(9)) + "]"),
             "$.interfaces", "9 items; at most 8"),
        case("an interface as a string", sub("[{name: lo, xdp_mode: generic}]", "[lo]"),
             "$.interfaces[0]", "expected a mapping, not the string 'lo'"),
        case("interface without a name", sub("{name: lo, xdp_mode: generic}",
                                              "{xdp_mode: generic}"),
             "$.interfaces[0].name", "required key is missing"),
        case("interface name empty", sub("name: lo", "name: ''"), "$.interfaces[0].name",
             "is empty"),
        case("interface name .", sub("name: lo", "name: ."), "$.interfaces[0].name",
             "the kernel refuses '.' and '..'"),
        case("interface name ..", sub("name: lo", "name: '..'"), "$.interfaces[0].name",
             "the kernel refuses '.' and '..'"),
        case("interface name with /", sub("name: lo", "name: eth0/1"), "$.interfaces[0].name",
             "holds '/'"),
        case("interface name with a colon", sub("name: lo", "name: 'eth0:1'"),
             "$.interfaces[0].name", "holds ':'"),
        case("interface name with a space", sub("name: lo", "name: 'eth 0'"),
             "$.interfaces[0].name", "holds ' '"),
        case("interface name with a tab", sub("name: lo", 'name: "eth\\t0"'),
             "$.interfaces[0].name", "holds '\\t'"),
        case("interface name with a newline", sub("name: lo", 'name: "eth\\n0"'),
             "$.interfaces[0].name", "holds '\\n'"),
        case("interface name with NUL", sub("name: lo", 'name: "lo\\0"'),
             "$.interfaces[0].name", "holds '\\x00'"),
        case("interface name with ESC", sub("name: lo", 'name: "\\e[2J"'),
             "$.interfaces[0].name", "holds '\\x1b'"),
        case("interface name with an em space", sub("name: lo", 'name: "eth\\u20030"'),
             "$.interfaces[0].name", "holds '\\u2003'"),
        case("interface name with a no-break space", sub("name: lo", 'name: "eth\\u00a00"'),
             "$.interfaces[0].name", "holds '\\xa0'"),
        case("interface name with byte 0xa0", sub("name: lo", "name: eth\u00e0"),
             "$.interfaces[0].name", "byte 0xa0, which the kernel takes for a space"),
        case("interface name of 16 characters", sub("name: lo", "name: " + "e" * 16),
             "$.interfaces[0].name", "is 16 bytes; the kernel's limit"),
        case("interface name of 16 bytes", sub("name: lo", "name: " + "\u00e9" * 8),
             "$.interfaces[0].name", "is 16 bytes; the kernel's limit"),
        case("interface name a number", sub("name: lo", "name: 0"), "$.interfaces[0].name",
             "expected a string, not the integer 0"),
        case("interface listed twice", sub("[{name: lo, xdp_mode: generic}]",
                                           "[{name: lo}, {name: lo}]"),
             "$.interfaces[1].name", "already listed at $.interfaces[0]"),
        case("xdp_mode unknown", sub("xdp_mode: generic", "xdp_mode: turbo"),
             "$.interfaces[0].xdp_mode", "'turbo' is not one of 'auto', 'native', 'generic'"),
        case("xdp_mode a boolean", sub("xdp_mode: generic", "xdp_mode: off"),
             "$.interfaces[0].xdp_mode", "false is not one of"),
        # cache
        case("enabled a word", cache("enabled: maybe"), "$.cache.enabled",
             "expected true or false, not the string 'maybe'"),
        case("enabled 1", cache("enabled: 1"), "$.cache.enabled",
             "expected true or false, not the integer 1"),
        case("amplification_guard quoted", cache("amplification_guard: 'true'"),
             "$.cache.amplification_guard", "expected true or false, not the string 'true'"),
        case("amplification_guard 1", cache("amplification_guard: 1"),
             "$.cache.amplification_guard", "expected true or false"),
        case("allow_wide_networks a string", cache("allow_wide_networks: all"),
             "$.cache.allow_wide_networks", "expected true or false"),
        case("entries not a power of two", cache("entries: 1000"), "$.cache.entries",
             "1000 must be a power of two"),
        case("protocols empty", cache("protocols: []"), "$.cache.protocols", "at least 1"),
        case("protocols unknown", cache("protocols: [udp]"), "$.cache.protocols[0]",
             "'udp' is not one of 'ascii', 'binary'"),
        case("protocols twice", cache("protocols: [ascii, ascii]"), "$.cache.protocols",
             "'ascii' is listed more than once"),
        case("protocols three", cache("protocols: [ascii, binary, ascii]"),
             "$.cache.protocols", "3 items; at most 2"),
        case("protocols a string", cache("protocols: ascii"), "$.cache.protocols",
             "expected a list, not the string 'ascii'"),
        case("key_prefix with a space", cache("key_prefix: 'a b'"), "$.cache.key_prefix",
             "not in the expected form"),
        case("key_prefix with a control character", cache('key_prefix: "a\\x01"'),
             "$.cache.key_prefix", "not in the expected form"),
        case("key_prefix 33 characters", cache("key_prefix: " + "k" * 33),
             "$.cache.key_prefix", "is 33 characters; at most 32"),
        case("key_prefix 40 bytes", cache("key_prefix: " + "\u00e9" * 20), "$.cache.key_prefix",
             "prefix is 40 bytes; the limit is 32"),
        case("key_prefix longer than keys", cache("key_prefix: users, max_key_bytes: 4"),
             "$.cache.key_prefix", "longer than max_key_bytes"),
        case("reply over a datagram", cache("max_key_bytes: 250, max_value_bytes: 1100"),
             "$.cache.max_value_bytes", "a cached reply must fit one UDP datagram"),
        case("over a GiB of kernel memory", cache("entries: 1048576, max_key_bytes: 200, "
                                                  "max_value_bytes: 1000"),
             "$.cache.entries", "the limit is 1073741824 bytes"),
        # allowed_clients
        case("allowed_clients a string", sub("[127.0.0.0/8]", "127.0.0.0/8"),
             "$.cache.allowed_clients", "expected a list, not the string"),
        case("a client not a CIDR", clients("127.0.0.0/8", "nonsense"),
             "$.cache.allowed_clients[1]", "not in the expected form"),
        case("a client a host name", clients("localhost"), "$.cache.allowed_clients[0]",
             "not in the expected form"),
        case("a client a number", sub("[127.0.0.0/8]", "[10]"), "$.cache.allowed_clients[0]",
             "expected a string, not the integer 10"),
        case("seventeen clients", clients(*[f"10.{i}.0.0/16" for i in range(17)]),
             "$.cache.allowed_clients", "17 items; at most 16"),
        case("a client twice", clients("10.0.0.0/8", "10.0.0.0/8"), "$.cache.allowed_clients",
             "'10.0.0.0/8' is listed more than once"),
        case("a client with host bits", clients("10.1.2.3/8"), "$.cache.allowed_clients[0]",
             "did you mean 10.0.0.0/8?"),
        case("a client /129", clients("fd00::/129"), "$.cache.allowed_clients[0]",
             "is not an IPv6 CIDR"),
        case("a client /33", clients("10.0.0.0/33"), "$.cache.allowed_clients[0]",
             "is not an IPv4 CIDR"),
        case("a client IPv4-mapped", clients("::ffff:10.0.0.0/104"),
             "$.cache.allowed_clients[0]", "IPv4-mapped IPv6 network"),
        case("clients 0.0.0.0/0", clients("127.0.0.0/8", "0.0.0.0/0"),
             "$.cache.allowed_clients[1]", "is every IPv4 address"),
        case("clients ::/0", clients("::/0"), "$.cache.allowed_clients[0]",
             "is every IPv6 address"),
        case("clients 0.0.0.0/0 and ::/0", clients("0.0.0.0/0", "::/0"),
             ("$.cache.allowed_clients[0]", "$.cache.allowed_clients[1]"),
             "cache.allow_wide_networks: true"),
        case("clients multicast", clients("224.0.0.0/4"), "$.cache.allowed_clients[0]",
             "is a multicast network"),
        case("clients one multicast group", clients("239.1.2.3"), "$.cache.allowed_clients[0]",
             "is a multicast network"),
        case("clients IPv6 multicast", clients("ff02::/16"), "$.cache.allowed_clients[0]",
             "is a multicast network"),
        case("clients all IPv6 multicast", clients("ff00::/8"), "$.cache.allowed_clients[0]",
             "is a multicast network"),
        case("clients link-local", clients("169.254.0.0/16"), "$.cache.allowed_clients[0]",
             "is a link-local network"),
        case("clients part of link-local", clients("169.254.7.0/24"),
             "$.cache.allowed_clients[0]", "is a link-local network"),
        case("clients IPv6 link-local", clients("fe80::/10"), "$.cache.allowed_clients[0]",
             "is a link-local network"),
        case("clients one IPv6 link", clients("fe80::/64"), "$.cache.allowed_clients[0]",
             "is a link-local network"),
        case("clients a /1", clients("0.0.0.0/1"), "$.cache.allowed_clients[0]",
             "is a /1: wider than any client network (/8 is the widest taken)"),
        case("clients a /7", clients("10.0.0.0/7"), "$.cache.allowed_clients[0]", "is a /7"),
        case("clients IPv6 /3", clients("2000::/3"), "$.cache.allowed_clients[0]",
             "is a /3: wider than any client network (/16 is the widest taken)"),
        case("clients IPv6 ::/8", clients("::/8"), "$.cache.allowed_clients[0]", "is a /8"),
        case("clients wide allowed, host bits", clients("127.0.0.1/8").replace(
            "cache: {", "cache: {allow_wide_networks: true, "), "$.cache.allowed_clients[0]",
             "did you mean 127.0.0.0/8?"),
        # rollout, metrics, probe, local_bypass
        case("strategy unknown", BASE + "rollout: {strategy: yolo}\n", "$.rollout.strategy",
             "'yolo' is not one of"),
        case("rollout a list", BASE + "rollout: [auto]\n", "$.rollout",
             "expected a mapping, not a list"),
        case("metrics port 99999", BASE + "metrics: {listen: '0.0.0.0:99999'}\n",
             "$.metrics.listen", "has port 99999: a port is 1 to 65535"),
        case("metrics port 65536", BASE + "metrics: {listen: ':65536'}\n", "$.metrics.listen",
             "has port 65536"),
        case("metrics port 0", BASE + "metrics: {listen: '127.0.0.1:0'}\n", "$.metrics.listen",
             "has port 0"),
        case("metrics port with a leading zero", BASE + "metrics: {listen: ':09465'}\n",
             "$.metrics.listen", "without leading zeros"),
        case("metrics a 20-digit port", BASE + "metrics: {listen: ':" + "9" * 20 + "'}\n",
             "$.metrics.listen", "has port 99999999999999999999"),
        case("metrics a host name", BASE + "metrics: {listen: 'localhost:9465'}\n",
             "$.metrics.listen", "a host name or a path is not taken"),
        case("metrics a FQDN", BASE + "metrics: {listen: 'metrics.example.com:9465'}\n",
             "$.metrics.listen", "is not IPv4:port, [IPv6]:port or :port"),
        case("metrics a path", BASE + "metrics: {listen: /run/mcache/metrics.sock}\n",
             "$.metrics.listen", "a host name or a path is not taken"),
        case("metrics a unix URL", BASE + "metrics: {listen: 'unix:/run/m.sock:9465'}\n",
             "$.metrics.listen", "is not IPv4:port"),
        case("metrics no port", BASE + "metrics: {listen: '127.0.0.1'}\n", "$.metrics.listen",
             "is not IPv4:port"),
        case("metrics a bare port", BASE + "metrics: {listen: '9465'}\n", "$.metrics.listen",
             "is not IPv4:port"),
        case("metrics a port number", BASE + "metrics: {listen: 9465}\n", "$.metrics.listen",
             "expected a string, not the integer 9465"),
        case("metrics IPv6 without brackets", BASE + "metrics: {listen: '::1:9465'}\n",
             "$.metrics.listen", "is not IPv4:port"),
        case("metrics IPv6 with a zone", BASE + "metrics: {listen: '[fe80::1%eth0]:9465'}\n",
             "$.metrics.listen", "is not IPv4:port"),
        case("metrics a bad IPv6", BASE + "metrics: {listen: '[fd00:::1]:9465'}\n",
             "$.metrics.listen", "which is not an IPv6 address"),
        case("metrics a bad IPv4", BASE + "metrics: {listen: '300.1.2.3:9465'}\n",
             "$.metrics.listen", "which is not an IPv4 address"),
        case("metrics a trailing space", BASE + "metrics: {listen: ':9465 '}\n",
             "$.metrics.listen", "is not IPv4:port"),
        case("metrics 100 characters", BASE + "metrics: {listen: '" + "1." * 48 + "1:80'}\n",
             "$.metrics.listen", "which is not an IPv4 address"),
        case("probe key empty", BASE + "probe: {key: ''}\n", "$.probe.key", "must not be empty"),
        case("probe key with a space", BASE + "probe: {key: 'a b'}\n", "$.probe.key",
             "not in the expected form"),
        case("probe key 251 characters", BASE + "probe: {key: " + "k" * 251 + "}\n",
             "$.probe.key", "is 251 bytes; memcached takes keys of at most 250"),
        case("probe key 400 bytes", BASE + "probe: {key: " + "\u00e9" * 200 + "}\n",
             "$.probe.key", "is 400 bytes; memcached takes keys of at most 250"),
        case("bypass enabled a word", BASE + "local_bypass: {enabled: 'on'}\n",
             "$.local_bypass.enabled", "expected true or false, not the string 'on'"),
        case("bypass cgroup relative", BASE + "local_bypass: {cgroup: sys/fs/cgroup}\n",
             "$.local_bypass.cgroup", "not in the expected form"),
        case("bypass cgroup with NUL", BASE + 'local_bypass: {cgroup: "/sys/fs/cgroup\\0x"}\n',
             "$.local_bypass.cgroup", "not in the expected form"),
        case("bypass cgroup component 300 bytes", BASE + "local_bypass: {cgroup: /" +
             "c" * 300 + "}\n", "$.local_bypass.cgroup", "has a component of 300 bytes"),
        case("bypass cgroup 4096 bytes", BASE + "local_bypass: {cgroup: " +
             "/" + "/".join(["c" * 200] * 20) + "/" + "d" * 75 + "}\n",
             "$.local_bypass.cgroup", "is 4096 bytes; a path is at most 4095"),
        case("bypass cgroup 4097 characters", BASE + "local_bypass: {cgroup: /" +
             "c" * 4096 + "}\n", "$.local_bypass.cgroup", "a value of 4097 characters"),
    ]


CASES = structure_cases() + field_cases() + integer_cases()
BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "case names are unique"

_PATH = re.compile(r'^\$(?:\.[A-Za-z0-9_-]+|\[\d+\]|\["(?:[^"\\]|\\.)*"\])*')


def paths_in(lines: list[str]) -> set[str]:
    """The fault paths of `path: message` lines."""
    out = set()
    for line in lines:
        m = _PATH.match(line)
        assert m and line[m.end():].startswith(": "), line
        out.add(m.group(0))
    return out


def check(text: str) -> list[tuple[str, str]]:
    """What `mcache-agent validate` does with a text, in this process: every fault."""
    try:
        cfg = parse_config(text)
    except ConfigError as e:
        return [(f.path, f.message) for f in e.faults]
    return [(f.path, f.message) for f in check_semantics(cfg, None, host_checks=False)]


def assert_refused(c: Case, faults: list[tuple[str, str]]) -> None:
    assert {p for p, _ in faults} == set(c.paths), faults
    assert any(p == c.paths[0] and c.fragment in m for p, m in faults), faults


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 150


# --------------------------------------------------------------------------- in process


@pytest.mark.parametrize("c", [c for c in CASES if c.via != "file"], ids=lambda c: c.name)
def test_reading_and_checking_refuses_within_a_second(c: Case) -> None:
    assert isinstance(c.text, str)
    t0 = time.process_time()
    faults = check(c.text)
    elapsed = time.process_time() - t0
    assert_refused(c, faults)
    assert elapsed < CHECK_SECONDS, f"{elapsed:.2f} s"


def test_no_case_takes_much_memory() -> None:
    """Peak Python allocation of reading and checking each text (tracemalloc: the strings,
    the events, the document), far under 100 MB each."""
    worst = (0, "")
    tracemalloc.start()
    try:
        for c in CASES:
            if isinstance(c.text, str) and c.via != "file":
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                check(c.text)
                worst = max(worst, (tracemalloc.get_traced_memory()[1] - base, c.name))
    finally:
        tracemalloc.stop()
    assert worst[0] < 20 << 20, worst


def test_files_of_any_kind_are_refused_without_waiting(tmp_path: Path) -> None:
    for c in CASES:
        if c.via != "file":
            continue
        path = write_case(tmp_path, c)
        t0 = time.process_time()
        with pytest.raises(ConfigError) as e:
            load_config(path)
        assert time.process_time() - t0 < CHECK_SECONDS
        assert_refused(c, [(f.path, f.message) for f in e.value.faults])


# --------------------------------------------------------------------------- validate


def write_case(root: Path, c: Case) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", c.name).strip("-")
    if c.special == "dir":
        path = root / f"{slug}.yml"
        path.mkdir(exist_ok=True)
        return path
    if c.special == "fifo":
        path = root / f"{slug}.yml"
        if not path.exists():
            os.mkfifo(path)
        return path
    if c.special == "devzero":
        return Path("/dev/zero")
    path = root / f"{slug}.yml"
    path.write_bytes(c.text if isinstance(c.text, bytes) else c.text.encode("utf-8"))
    return path


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str
    wall: float
    maxrss: int  # bytes


def run_measured(argv: list[str], timeout: float = 60.0) -> Run:
    """Run a process; its exit code, output, wall time and peak RSS (its own rusage, from
    wait4: RUSAGE_CHILDREN would give the largest of every child so far)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                cwd=REPO)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait
        out.seek(0)
        err.seek(0)
        return Run(proc.returncode, out.read().decode("utf-8", "replace"),
                   err.read().decode("utf-8", "replace"), wall, usage.ru_maxrss * 1024)


def agent_command() -> list[str]:
    script = Path(sys.executable).parent / "mcache-agent"  # the installed console script
    return [str(script)] if script.exists() else [sys.executable, "-m", "mcache_agent.cli"]


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`mcache-agent validate` of every case (two at a time), and of a good config."""
    root = tmp_path_factory.mktemp("hostile")
    good = root / "good.yml"
    good.write_text(BASE)
    baseline = run_measured([*agent_command(), "validate", str(good)])
    assert baseline.code == 0, baseline.err
    runs: dict[str, Run] = {}
    todo = {c.name: write_case(root, c) for c in CASES if c.via != "str"}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_measured, [*agent_command(), "validate", str(path)])
                   for name, path in todo.items()}
        for name, future in futures.items():
            runs[name] = future.result()
    worst_wall = max(runs.items(), key=lambda kv: kv[1].wall)
    worst_rss = max(runs.items(), key=lambda kv: kv[1].maxrss)
    print(f"\nvalidate: {len(runs)} files; baseline {baseline.wall:.2f} s, "
          f"{baseline.maxrss >> 20} MB; slowest {worst_wall[0]!r} {worst_wall[1].wall:.2f} s; "
          f"largest {worst_rss[0]!r} {worst_rss[1].maxrss >> 20} MB")
    return {"baseline": baseline, "runs": runs, "root": root}


@pytest.mark.parametrize("c", [c for c in CASES if c.via != "str"], ids=lambda c: c.name)
def test_validate_exits_2_with_the_path(validated: dict[str, Any], c: Case) -> None:
    r: Run = validated["runs"][c.name]
    assert "Traceback" not in r.out + r.err, r.err
    assert r.code == 2, (r.code, r.out, r.err)
    header, *lines = r.err.splitlines()
    assert header.endswith("fault(s)"), header
    assert paths_in(lines) == set(c.paths), r.err
    assert any(line.startswith(f"{c.paths[0]}: ") and c.fragment in line for line in lines)
    assert r.wall < PROCESS_SECONDS, f"{r.wall:.2f} s"
    assert r.maxrss - validated["baseline"].maxrss < PROCESS_EXTRA_RSS, r.maxrss


def test_validate_json_of_the_whole_corpus_at_once(validated: dict[str, Any]) -> None:
    """One process over every file (--json): each file's faults, and it ends."""
    files = sorted(validated["root"].iterdir())
    r = run_measured([*agent_command(), "validate", "--json", *map(str, files)], timeout=120)
    assert r.code == 2 and "Traceback" not in r.err, r.err
    doc = json.loads(r.out)
    by_file = {f["file"]: f for f in doc["files"]}
    assert by_file.pop(str(validated["root"] / "good.yml"))["ok"] is True
    names = {str(write_case(validated["root"], c)): c for c in CASES if c.via != "str"}
    for file, res in by_file.items():
        c = names[file]
        assert res["ok"] is False and {f["path"] for f in res["faults"]} == set(c.paths), c.name


def test_apply_of_an_unreadable_file_is_exit_2_before_the_socket(tmp_path: Path) -> None:
    for c in CASES:
        if c.via == "file":
            r = run_measured([*agent_command(), "apply", str(write_case(tmp_path, c)),
                              "--socket", str(tmp_path / "none.sock")])
            assert r.code == 2 and "Traceback" not in r.err, (c.name, r.err)
            assert f"{c.paths[0]}: " in r.err and c.fragment in r.err, (c.name, r.err)


# --------------------------------------------------------------------------- apply path


class RefusingDataplane:
    """A data plane that fails the test if a hostile config ever reaches it."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def plan(self, cfg: Config, previous: Config | None) -> Plan:
        self.asked.append(f"plan {cfg.version}")
        raise AssertionError("a hostile config reached the data plane's plan")

    def apply(self, cfg: Config, previous: Config | None) -> ApplyResult:
        self.asked.append(f"apply {cfg.version}")
        raise AssertionError("a hostile config reached the data plane's apply")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Agent:
    a = Agent(RefusingDataplane(), VersionStore(tmp_path_factory.mktemp("state")),
              host_checks=False)
    a.running = parse_config(RUNNING)
    return a


@pytest.mark.parametrize("c", [c for c in CASES if c.via != "file"], ids=lambda c: c.name)
def test_the_agent_refuses_it_as_invalid(agent: Agent, c: Case) -> None:
    t0 = time.process_time()
    resp = agent.apply_text(c.text)  # type: ignore[arg-type]
    assert time.process_time() - t0 < CHECK_SECONDS
    assert resp["ok"] is False and resp["error"]["kind"] == "invalid", resp
    assert_refused(c, [(f["path"], f["message"]) for f in resp["error"]["faults"]])
    assert agent.dataplane.asked == [] and agent.running.version == 4
    check_resp = agent.apply_text(c.text, check=True)  # type: ignore[arg-type]
    assert check_resp["error"]["faults"] == resp["error"]["faults"]


# --------------------------------------------------------------------------- filter


@pytest.fixture(scope="module")
def config_faults() -> Any:
    module = pyfile.load("mcache_filter_config", REPO / "plugins" / "filter" / "config.py")
    assert module.FilterModule().filters()["config_faults"] is module.config_faults
    return module.config_faults


@pytest.mark.parametrize("c", [c for c in CASES if c.via != "file"], ids=lambda c: c.name)
def test_the_controller_filter_lists_it(config_faults: Any, c: Case) -> None:
    t0 = time.process_time()
    lines = config_faults(c.text)
    assert time.process_time() - t0 < CHECK_SECONDS
    assert paths_in(lines) == set(c.paths), lines
    assert any(line.startswith(f"{c.paths[0]}: ") and c.fragment in line for line in lines)


@pytest.mark.parametrize(("value", "fragment"), [
    (None, "config must be text, not null"),
    (42, "not the integer 42"),
    ({"apiVersion": "mcache/v1"}, "not a mapping"),
    (["a"], "not a list"),
    (b"\xff\xfe", "not UTF-8 text"),
])
def test_the_filter_takes_anything(config_faults: Any, value: Any, fragment: str) -> None:
    [line] = config_faults(value)
    assert line.startswith("$: ") and fragment in line


def test_the_filter_passes_the_examples(config_faults: Any) -> None:
    for path in sorted((REPO / "examples").glob("*.yml")):
        assert config_faults(path.read_text()) == [], path
        assert config_faults(path.read_bytes()) == [], path


# --------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=2000))
def test_any_text_is_a_config_or_faults(text: str) -> None:
    t0 = time.process_time()
    try:
        cfg = parse_config(text)
    except ConfigError as e:
        assert e.faults and all(f.path.startswith("$") for f in e.faults)
    else:
        check_semantics(cfg, None, host_checks=False)
    assert time.process_time() - t0 < CHECK_SECONDS


YAML_ATOMS = st.sampled_from(
    ["[", "]", "{", "}", ",", ": ", "- ", "\n", "  ", "&a ", "*a", "!!int ", "!x ", "? ",
     "'", '"', "#", "---\n", "<<: ", "0x1", "64.0", "1e3", "~", "yes", "2026-01-01", "\\",
     "\t", "|\n", ">\n", "%YAML 1.1\n", "version", "cache", "entries", "port", "9" * 30]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(YAML_ATOMS, max_size=200).map("".join), st.integers(0, 4))
def test_yaml_shaped_garbage_is_a_config_or_faults(tail: str, where: int) -> None:
    # Glued somewhere into a good config: the faults must come with paths, never a traceback.
    lines = BASE.splitlines(keepends=True)
    text = "".join(lines[:where]) + tail + "".join(lines[where:])
    t0 = time.process_time()
    try:
        parse_config(text)
    except ConfigError as e:
        assert e.faults and all(_PATH.match(f.path) for f in e.faults)
    assert time.process_time() - t0 < CHECK_SECONDS


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=5),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["version", "memcached", "interfaces", "cache", "metrics", "probe",
                        "local_bypass", "rollout", "extra"]), JSONISH)
def test_any_value_in_any_section_is_a_config_or_faults(section: str, value: Any) -> None:
    import yaml

    doc = yaml.safe_load(BASE)
    doc[section] = value
    text = yaml.safe_dump(doc, allow_unicode=True)
    try:
        cfg = parse_config(text)
    except ConfigError as e:
        assert e.faults
    else:
        check_semantics(cfg, None, host_checks=False)
        assert isinstance(cfg.version, int) and not isinstance(cfg.version, bool)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(INTEGER_FIELDS), st.floats(allow_nan=True, allow_infinity=True))
def test_a_float_is_never_an_integer(field: tuple[str, str, int, int, int], value: float) -> None:
    where, key, _good, _low, _high = field
    faults = check(with_int(where, key, repr(value) if "." in repr(value) or "e" in repr(value)
                            else f"{value}.0"))
    assert f"$.{where}" in {p for p, _ in faults}


def test_a_nan_never_slips_through_the_range_check() -> None:
    assert [p for p, _ in check(with_int("cache.ttl_ms", "ttl_ms", ".nan"))] == ["$.cache.ttl_ms"]


def test_the_bounds_are_a_lot_more_than_a_config_needs() -> None:
    """The biggest config the schema takes is read well inside the bounds."""
    ifs = ", ".join(f"{{name: eth{i}, xdp_mode: native}}" for i in range(8))
    nets = ", ".join(f"10.{i}.0.0/16" for i in range(16))
    text = (f"apiVersion: mcache/v1\nversion: 4294967295\n"
            f"memcached: {{address: '::', port: 65535}}\ninterfaces: [{ifs}]\n"
            f"cache: {{enabled: true, entries: 1048576, max_key_bytes: 250, "
            f"max_value_bytes: 1000, ttl_ms: 86400000, fill_hold_ms: 10000, "
            f"protocols: [ascii, binary], key_prefix: '{'k' * 32}', allowed_clients: [{nets}], "
            f"amplification_guard: true, allow_wide_networks: false}}\n"
            f"rollout: {{strategy: program_swap}}\nmetrics: {{listen: '[::1]:65535'}}\n"
            f"probe: {{key: '{'p' * 250}', timeout_ms: 60000, interval_s: 86400}}\n"
            f"local_bypass: {{enabled: false, cgroup: '/{'c' * 255}'}}\n")
    cfg = parse_config(text)
    assert cfg.cache.amplification_guard is True and cfg.cache.allow_wide_networks is False
    assert cfg.metrics_listen == "[::1]:65535"


@pytest.mark.parametrize("listen", [":9465", "0.0.0.0:9465", "127.0.0.1:1", "[::]:65535",
                                    "[::1]:9465", "[fd00::1]:80", ""])
def test_listen_forms_the_schema_and_the_code_both_take(listen: str) -> None:
    from mcache_agent.metrics import parse_listen

    cfg = parse_config(BASE + f"metrics: {{listen: '{listen}'}}\n")
    assert cfg.metrics_listen == listen
    if listen:
        host, port = parse_listen(listen)
        assert 1 <= port <= 65535 and host


# --------------------------------------------------------------------------- agent survival


class AcceptingDataplane:
    """Applies whatever it is given (no kernel), and remembers what it was asked."""

    def __init__(self, pinned: int | None = None) -> None:
        self.pinned = pinned
        self.applied: list[int] = []
        self.flushes = 0

    def adopt(self) -> int | None:
        return self.pinned

    def reconcile(self, cfg: Config) -> None:
        pass

    def plan(self, cfg: Config, previous: Config | None) -> Plan:
        return Plan("program_swap", ("test",), False)

    def apply(self, cfg: Config, previous: Config | None) -> ApplyResult:
        self.applied.append(cfg.version)
        self.pinned = cfg.version
        return ApplyResult("program_swap", 1.0, 0.1, False, ("test",))

    def flush(self) -> None:
        self.flushes += 1


def with_metrics(version: int, listen: str) -> str:
    return sub("version: 5", f"version: {version}") + f"metrics: {{listen: '{listen}'}}\n"


def failing_bind(exc: BaseException) -> Any:
    def start_metrics(listen: str, source: Any) -> Any:
        raise exc

    return start_metrics


@pytest.mark.parametrize("exc", [OverflowError("bind(): port must be 0-65535."),
                                 OSError(98, "Address already in use"),
                                 ValueError("no"), RuntimeError("anything")],
                         ids=lambda e: type(e).__name__)
def test_a_metrics_endpoint_that_cannot_be_served_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    from mcache_agent import daemon, metrics

    monkeypatch.setattr(metrics, "start_metrics", failing_bind(exc))
    agent = Agent(AcceptingDataplane(), VersionStore(tmp_path), host_checks=False)
    m = daemon._Metrics(agent)
    warning = m.reconfigure(parse_config(with_metrics(6, ":9465")), None)
    assert warning and "cannot serve metrics on :9465" in warning and type(exc).__name__ in warning
    assert agent.metrics == {"listen": ":9465", "serving": False, "error": warning}
    status = agent.status()
    assert status["metrics"]["serving"] is False
    assert f"metrics: {warning}" in status["errors"]


def test_a_taken_port_is_a_warning_and_the_next_apply_tries_again(tmp_path: Path) -> None:
    import socket

    from mcache_agent import daemon

    agent = Agent(AcceptingDataplane(), VersionStore(tmp_path), host_checks=False)
    m = daemon._Metrics(agent)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = parse_config(with_metrics(6, f"127.0.0.1:{port}"))
        warning = m.reconfigure(cfg, None)
        assert warning and "OSError" in warning and agent.metrics["serving"] is False
    # the same listen again (the port is free now): bound this time
    try:
        assert m.reconfigure(cfg, None) is None
        assert agent.metrics == {"listen": f"127.0.0.1:{port}", "serving": True, "error": None}
        assert "errors" not in agent.status() or not any(
            e.startswith("metrics:") for e in agent.status()["errors"])
    finally:
        m.close()


def test_a_committed_apply_is_reported_committed_when_the_metrics_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcache_agent import daemon, metrics

    monkeypatch.setattr(metrics, "start_metrics", failing_bind(OverflowError("port")))
    dp = AcceptingDataplane()
    agent = Agent(dp, VersionStore(tmp_path), host_checks=False)
    agent.on_config = daemon._Metrics(agent).reconfigure
    resp = agent.apply_text(with_metrics(6, "127.0.0.1:9465"))
    assert resp["ok"] is True, resp
    res = resp["result"]
    assert res["result"] == "ok" and res["version"] == 6
    [warning] = res["warnings"]
    assert "cannot serve metrics on 127.0.0.1:9465: OverflowError" in warning
    assert dp.applied == [6] and agent.running and agent.running.version == 6
    assert agent.store.current() == 6 and agent.store.outcome(6)["result"] == "ok"
    assert agent.last_apply and agent.last_apply["warnings"] == [warning]


def test_an_on_config_that_raises_is_a_warning_after_the_commit(tmp_path: Path) -> None:
    agent = Agent(AcceptingDataplane(), VersionStore(tmp_path), host_checks=False)

    def boom(cfg: Config, previous: Config | None) -> None:
        raise RuntimeError("boom")

    agent.on_config = boom
    resp = agent.apply_text(BASE)
    assert resp["ok"] is True and resp["result"]["warnings"] == [
        "after the apply: RuntimeError: boom"]
    assert agent.store.current() == 5


class ExplodingMetrics:
    def reconfigure(self, cfg: Config | None, previous: Config | None) -> str | None:
        raise OverflowError("bind(): port must be 0-65535.")


@pytest.mark.parametrize("text", [BASE, with_metrics(5, "0.0.0.0:99999"), "version: [\n"],
                         ids=["good", "metrics port 99999", "not YAML"])
def test_the_start_up_thread_always_starts_the_watch(tmp_path: Path, text: str) -> None:
    from mcache_agent import daemon

    config = tmp_path / "mcache.yml"
    config.write_text(text)
    agent = Agent(AcceptingDataplane(), VersionStore(tmp_path / "state"), host_checks=False)
    before = {t for t in threading.enumerate()}
    try:
        daemon.start_up(agent, ExplodingMetrics(), config, tmp_path / "agent.sock")  # type: ignore[arg-type]
        started = {t.name for t in set(threading.enumerate()) - before}
        assert {"memcached-watch", "probe"} <= started
        assert agent.starting is False
        assert agent.config_file is not None
        if text == BASE:
            assert agent.config_file["result"] == "applied" and agent.running
        else:
            assert agent.config_file["result"] == "refused" and agent.running is None
    finally:
        agent.stop_event.set()
        for t in set(threading.enumerate()) - before:
            t.join(10)


def test_a_stored_version_the_checks_now_refuse_is_not_adopted(tmp_path: Path) -> None:
    """An older agent stored (and committed) a config this one refuses: the agent starts, does
    not adopt it, and applies the next config over it."""
    store = VersionStore(tmp_path)
    store.ensure()
    (store.dir / "3.yml").write_text(with_metrics(3, "0.0.0.0:99999"))
    (store.dir / "3.json").write_text(json.dumps({"version": 3, "result": "ok"}))
    store.set_current(3)
    dp = AcceptingDataplane(pinned=3)
    agent = Agent(dp, store, host_checks=False)
    agent.start(None)
    assert agent.running is None and agent.config_file["result"] == "absent"
    resp = agent.apply_text(with_metrics(4, "127.0.0.1:9465"))
    assert resp["ok"] is True and dp.applied == [4] and store.current() == 4

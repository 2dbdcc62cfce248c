"""Each pinned state map named by its own layout, so that an upgrade keeps what it can.

A state map's identity is what a program reading it depends on: its BPF map type, its key
and value layouts as the compiler lays them out (field names, offsets, sizes: read from
bcc's ctypes, which it builds from the program's BTF), its number of entries and its flags.
Two builds that agree on those for a map can share it; any difference, a new map. A comment
or a program change in bpf/ changes none of them, so a program swap of a new release keeps
the cache and its counters; a change of one struct renews only the maps that hold it.

Maps that are only right together share one identity (GROUPS): the cache and its fill
level; the counters with the table that says which version each line counts. And a map may
depend on another (DEPENDS): the cache's entries are judged by the state's generation and
delayed flush_all, so a new state layout renews the cache too, while a new cache (another
shape) keeps the state, and with it a flush_all the old programs saw.

The declarations are read from bpf/mcache_maps.h (the one place they are written); their
entries and flags are evaluated from mcache_shared.h's constants (a test checks each against
the kernel's own account of the map). The layouts come from a compile of mcache_maps.h
with MC_LAYOUT_PASS (loader worker "layout"), which creates one-entry maps of each type and
pins nothing.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from mcache_agent import constants

# Maps judged together: a member is kept only when every member is (see the module's text).
GROUPS = (("cache", "level"), ("stats", "stat_slots", "stats_archive"))
# Maps whose identity takes in another's layout: the cache is only right with its state.
DEPENDS = {"cache": ("state",), "level": ("state",)}


class IdentityError(Exception):
    pass


@dataclass(frozen=True)
class MapDecl:
    """One pinned state map as mcache_maps.h declares it."""

    name: str  # the C variable (mc_cache)
    pin: str  # its file under MC_STATE_DIR, without the shape suffix (cache)
    kind: str  # bcc's map type (array, lru_hash, array_of_maps$mc_cfg_tmpl, ringbuf)
    key: str  # C types (informational: the layouts are the compiler's)
    leaf: str
    entries: str  # C expressions
    flags: str
    shaped: bool  # the pin name carries the cache's shape (MC_SHAPE)

    def pin_name(self, shape: tuple[int, int, int]) -> str:
        e, k, v = shape
        return f"{self.pin}_{e}_{k}_{v}" if self.shaped else self.pin

    @property
    def inner(self) -> str:
        """An array of maps: the table whose layout its inner maps have."""
        return self.kind.split("$", 1)[1] if "$" in self.kind else ""


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def _split_args(body: str) -> list[str]:
    out, depth, cur = [], 0, []
    for ch in body:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def _pin_of(expr: str) -> tuple[str, bool]:
    m = re.fullmatch(r'MC_STATE_DIR\s+"/(\w+?)_?"(\s+MC_SHAPE)?', expr.strip())
    if m is None:
        raise IdentityError(f"pin path {expr!r} is not MC_STATE_DIR \"/name\" [MC_SHAPE]")
    return m.group(1), m.group(2) is not None


@cache
def declarations() -> tuple[MapDecl, ...]:
    """Every state map of bpf/mcache_maps.h, in the order declared."""
    text = _strip_comments(constants.source("mcache_maps.h").read_text())
    text = re.sub(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", "", text, flags=re.M)  # directives
    out: list[MapDecl] = []
    for m in re.finditer(r"\bBPF_TABLE_PINNED\s*\((.*?)\)\s*;", text, re.S):
        args = _split_args(m.group(1))
        if len(args) not in (6, 7) or not args[0].startswith('"'):
            raise IdentityError(f"cannot read BPF_TABLE_PINNED({m.group(1)})")
        pin, shaped = _pin_of(args[5])
        out.append(MapDecl(name=args[3], pin=pin, kind=args[0].strip('"'), key=args[1],
                           leaf=args[2], entries=args[4],
                           flags=args[6] if len(args) == 7 else "0", shaped=shaped))
    # The capture ring: bcc has no pinned form of BPF_RINGBUF_OUTPUT (see mcache_maps.h).
    ring = re.search(r'section\("maps/ringbuf:"\s*(MC_STATE_DIR\s+"/\w+")\)\)\)\s*'
                     r"struct\s+\w+\s+(\w+)\s*=\s*\{\s*\.max_entries\s*=\s*(\w+)\s*\}", text)
    if ring is None:
        raise IdentityError("the capture ring's declaration was not found in mcache_maps.h")
    pin, shaped = _pin_of(ring.group(1))
    out.append(MapDecl(name=ring.group(2), pin=pin, kind="ringbuf", key="", leaf="",
                       entries=ring.group(3), flags="0", shaped=shaped))
    return tuple(out)


# ------------------------------------------------------------------ constant expressions

_OPS: dict[type, Any] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                         ast.FloorDiv: operator.floordiv, ast.LShift: operator.lshift,
                         ast.RShift: operator.rshift, ast.BitOr: operator.or_,
                         ast.BitAnd: operator.and_}
# The kernel's flag constants the declarations may use (uapi/linux/bpf.h).
KERNEL_FLAGS = {"BPF_F_NO_PREALLOC": 1}


@cache
def _symbols() -> dict[str, str]:
    """Every #define and enum member of mcache_shared.h, as C text."""
    text = _strip_comments(constants.shared_header())
    out = {m.group(1): m.group(2).strip()
           for m in re.finditer(r"^#define\s+(\w+)[ \t]+([^\n]+)$", text, re.M)}
    for body in re.findall(r"\benum\s+\w+\s*\{(.*?)\}", text, re.S):
        for m in re.finditer(r"(\w+)\s*=\s*([^,]+)", body):
            out[m.group(1)] = m.group(2).strip()
    return out


def evaluate(expr: str, extra: Mapping[str, int] | None = None, depth: int = 0) -> int:
    """A C integer constant expression of mcache_shared.h's names (and `extra`)."""
    if depth > 16:
        raise IdentityError(f"{expr!r}: definitions nest too deep")
    names = {**KERNEL_FLAGS, **(extra or {})}
    py = re.sub(r"(?<![<>])/(?!/)", "//", expr)
    py = re.sub(r"\b(\d+)[uUlL]+\b", r"\1", py)

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return int(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return int(_OPS[type(node.op)](value(node.left), value(node.right)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.Name):
            if node.id in names:
                return names[node.id]
            if node.id in _symbols():
                return evaluate(_symbols()[node.id], extra, depth + 1)
            raise IdentityError(f"{expr!r}: {node.id} is not a constant of mcache_shared.h")
        raise IdentityError(f"{expr!r} is not a constant expression")

    try:
        return value(ast.parse(py, mode="eval"))
    except SyntaxError:
        raise IdentityError(f"{expr!r} is not a constant expression") from None


# ------------------------------------------------------------------ identities

Layouts = Mapping[str, Mapping[str, Any]]  # C name -> {"key": layout, "leaf": layout}


def described(decl: MapDecl, layouts: Layouts, shape: tuple[int, int, int]) -> dict[str, Any]:
    """What a program reading the map depends on."""
    extra = {"MC_CACHE_ENTRIES": shape[0]}
    doc: dict[str, Any] = {"kind": decl.kind, "pin": decl.pin_name(shape),
                           "entries": evaluate(decl.entries, extra),
                           "flags": evaluate(decl.flags, extra)}
    if decl.kind != "ringbuf":
        try:
            doc["key"] = layouts[decl.name]["key"]
            doc["leaf"] = layouts[decl.inner or decl.name]["leaf"]
        except KeyError as exc:
            raise IdentityError(f"the layout pass gave no layout for {exc}") from None
    return doc


def identities(layouts: Layouts, shape: tuple[int, int, int]) -> dict[str, str]:
    """Pin name -> identity (a digest) of every state map of a build of this shape."""
    docs = {d.pin: described(d, layouts, shape) for d in declarations()}
    out: dict[str, str] = {}
    for d in declarations():
        group = next((g for g in GROUPS if d.pin in g), (d.pin,))
        named = [*group, *(dep for p in group for dep in DEPENDS.get(p, ()))]
        members = [docs[p] for p in dict.fromkeys(named) if p in docs]
        blob = json.dumps(members, sort_keys=True).encode()
        out[d.pin_name(shape)] = hashlib.sha256(blob).hexdigest()[:16]
    return out


def store_name(pin: str, ident: str) -> str:
    """The map's file in the store of state maps (pins.py)."""
    return f"{pin}@{ident}"

"""The state maps' identities (mcache_agent/dataplane/identity.py) without a kernel: every
pinned state map of bpf/ is read, the groups name real maps, entries evaluate, and what an
identity digests changes with the layout, the entries or the flags and nothing else."""

from __future__ import annotations

import re

import pytest

from mcache_agent import constants
from mcache_agent.dataplane import identity

SHAPE = (4096, 250, 1400)


def layouts(**over: int) -> dict:
    """A stand-in layout per map (the layout pass gives real ones; here only equality counts)."""
    out = {}
    for d in identity.declarations():
        for name in (d.name, d.inner):
            if name:
                size = over.get(name, 8)
                out[name] = {"key": {"kind": "int", "size": 4},
                             "leaf": {"kind": "int", "size": size}}
    return out


def test_every_pinned_state_map_is_declared_once():
    text = constants.source("mcache_maps.h").read_text()
    pinned = set(re.findall(r'MC_STATE_DIR\s+"/(\w+?)_?"', text))
    decls = identity.declarations()
    assert {d.pin for d in decls} == pinned
    assert len({d.pin for d in decls}) == len(decls)
    for group in identity.GROUPS:
        assert set(group) <= pinned, group


def test_entries_and_flags_evaluate():
    got = {d.pin: identity.evaluate(d.entries, {"MC_CACHE_ENTRIES": 8192})
           for d in identity.declarations()}
    assert got["cache"] == 8192
    assert got["stats"] == (constants.const("MC_STAT_SLOTS") * len(constants.paths())
                            * len(constants.verdicts()))
    assert got["conn"] == constants.const("MC_CONN_ENTRIES")
    assert identity.evaluate("BPF_F_NO_PREALLOC") == 1
    for bad in ("MC_NOPE", "__import__('os')", "1 +", "f(1)"):
        with pytest.raises(identity.IdentityError):
            identity.evaluate(bad)


def test_an_identity_moves_with_its_layout_and_its_group_alone():
    base = identity.identities(layouts(), SHAPE)
    assert set(base) == {d.pin_name(SHAPE) for d in identity.declarations()}
    assert identity.identities(layouts(), SHAPE) == base
    conn = identity.identities(layouts(mc_conn=16), SHAPE)
    assert {p for p in base if base[p] != conn[p]} == {"conn"}
    cache = identity.identities(layouts(mc_cache=16), SHAPE)
    shaped = {f"cache_{SHAPE[0]}_{SHAPE[1]}_{SHAPE[2]}", f"level_{SHAPE[0]}_{SHAPE[1]}_{SHAPE[2]}"}
    assert {p for p in base if base[p] != cache[p]} == shaped
    # the cache is judged by the state: a new state layout renews the cache, not the reverse
    state = identity.identities(layouts(mc_state=16), SHAPE)
    assert {p for p in base if base[p] != state[p]} == shaped | {"state"}
    config = identity.identities(layouts(mc_cfg_tmpl=16), SHAPE)
    assert {p for p in base if base[p] != config[p]} == {"cfg"}
    # another shape: a new cache and fill level, every other map (the state among them) kept
    other = identity.identities(layouts(), (8192, 250, 1400))
    assert {p for p in other if p in base and other[p] != base[p]} == set()
    assert {p for p in other if p not in base} == {"cache_8192_250_1400", "level_8192_250_1400"}

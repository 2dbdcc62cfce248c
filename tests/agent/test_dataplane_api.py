"""The Dataplane's public API on the real kernel: what validation lets through applies, the
allow-list in place keeps the host, the fill level and the memory status reports are the
kernel's, `apply --check` and `apply` plan alike, and each state map is kept across a program swap
unless its own layout changed."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from pymemcache.client.base import Client

from mcache_agent import constants
from mcache_agent import udp_client as uc
from mcache_agent.config import check_semantics
from mcache_agent.dataplane import DataplaneError, identity, libbpf, sets
from mcache_agent.dataplane.pins import PinDir
from mcache_agent.dataplane.readings import STATE_BYTES
from tests.dataplane.nsutil import NsClient, Pair, in_ns, make_config, sh


@pytest.fixture(scope="module")
def pair():
    p = Pair("api", 15, fill_hold_ms=0).up()
    yield p
    p.down()


def text(p: Pair, version: int, **over: object) -> str:
    p.version = version
    return p.config_text(**over)


def decode_allowed(raw: bytes, layout: dict) -> list[tuple[int, int]]:
    f = layout["fields"]
    n = struct.unpack_from("<I", raw, f["n_allowed"]["offset"])[0]
    base = f["allowed"]["offset"]
    return [struct.unpack_from("<II", raw, base + 8 * i) for i in range(n)]


def test_every_interface_the_schema_allows_is_attached(pair):
    """MC_MAX_IFS interfaces besides lo: validation passes, and so does the apply."""
    n = constants.const("MC_MAX_IFS")
    for i in range(n - 1):
        sh(f"ip -n {pair.s} link add mx{i}a type veth peer name mx{i}b && "
           f"ip -n {pair.s} link set mx{i}a up && ip -n {pair.s} link set mx{i}b up")
    try:
        ifs = ", ".join([f"{{name: {pair.sif}}}", *(f"{{name: mx{i}a}}" for i in range(n - 1))])
        body = text(pair, 100).replace(f"interfaces: [{{name: {pair.sif}, xdp_mode: auto}}]",
                                       f"interfaces: [{ifs}]")
        cfg = make_config(body)
        with in_ns(pair.s):
            assert check_semantics(cfg, None) == []
            res = pair.dp.apply(cfg, None)
        assert res.strategy in ("reattach", "map_swap")
        names = {a["interface"] for a in pair.dp.attached()}
        assert names == {pair.sif, "lo", *(f"mx{i}a" for i in range(n - 1))}
    finally:
        with in_ns(pair.s):
            pair.dp.apply(make_config(text(pair, 101)), None)
        for i in range(n - 1):
            sh(f"ip -n {pair.s} link del mx{i}a", check=False)
    assert {a["interface"] for a in pair.dp.attached()} == {pair.sif, "lo"}


def test_a_full_allow_list_keeps_the_host_and_loopback_in_the_kernel(pair):
    room = constants.const("MC_MAX_CLIENT_NETS")
    nets = [f"10.{i}.0.0/16" for i in range(room - 1)] + [f"198.19.{pair.net}.0/24"]
    body = text(pair, 110).replace(f"allowed_clients: [198.19.{pair.net}.0/24]",
                                   f"allowed_clients: [{', '.join(nets)}]")
    with in_ns(pair.s):
        pair.dp.apply(make_config(body), None)
    got = decode_allowed(pair.dp.config_in_place(), pair.dp.config_layout())
    assert len(got) == constants.const("MC_MAX_ALLOWED")
    host = struct.unpack("<I", bytes(int(x) for x in pair.saddr.split(".")))[0]
    loopback, mask8 = struct.unpack("<II", bytes([127, 0, 0, 0, 255, 0, 0, 0]))
    assert got[0] == (host, 0xFFFFFFFF)
    assert got[1] == (loopback, mask8)
    # and the host itself is served: a GET from the server's own address over lo hits
    NsClient(pair, pair.s).cached(b"self", b"served")


def test_fill_level_is_the_data_planes_own_count(pair):
    with in_ns(pair.s):
        pair.dp.apply(make_config(text(pair, 120, entries=1024)), None)
    usage = pair.dp.cache_usage()
    assert (usage.entries, usage.used) == (1024, 0)
    keys = [b"lvl%d" % i for i in range(40)]
    with in_ns(pair.c):
        mc = Client((pair.saddr, 11211), default_noreply=False)
        for k in keys:
            mc.set(k, b"v")
        for k in keys:  # a miss that fills
            assert uc.udp_get_ascii(pair.saddr, 11211, [k], 1.0) == {k: b"v"}
        cached = []
        for k in keys:  # which ones the kernel holds (five in one bucket would evict one)
            hits = pair.dp.counters()["hit"]
            assert uc.udp_get_ascii(pair.saddr, 11211, [k], 1.0) == {k: b"v"}
            if pair.dp.counters()["hit"] > hits:
                cached.append(k)
    assert len(cached) >= 36
    assert pair.dp.cache_usage().used == len(cached)
    with in_ns(pair.c):
        for k in cached[:5]:
            mc.set(k, b"w")  # a write kills the entry
        mc.close()
    assert pair.dp.cache_usage().used == len(cached) - 5
    with in_ns(pair.s):
        pair.dp.flush()
    assert pair.dp.cache_usage().used == 0


def test_memory_is_the_kernels_account_and_the_estimate_is_close(pair):
    for version, entries in ((130, 4096), (131, 65536)):
        with in_ns(pair.s):
            cfg = make_config(text(pair, version, entries=entries))
            pair.dp.apply(cfg, None)
        mem = pair.dp.memory()
        assert mem.maps["mc_cache"] >= entries * cfg.slot_bytes()
        assert {"mc_pending", "mc_conn", "mc_stats", "mc_level", "mc_meta"} <= set(mem.maps)
        assert mem.total_bytes == sum(mem.maps.values())
        # the validation-time estimate (the 1 GiB check) within 10 % of what the kernel holds
        assert abs(cfg.memory_bytes() - mem.total_bytes) <= 0.10 * mem.total_bytes, (
            cfg.memory_bytes(), mem)


def test_check_and_apply_plan_alike(pair):
    """`apply --check` (Dataplane.plan) promises what `apply` then does, for each kind of
    change; a protocols change is a map swap."""
    with in_ns(pair.s):
        running = make_config(text(pair, 140))
        pair.dp.apply(running, None)
        changes = [
            ("map_swap", text(pair, 141, ttl_ms=1234)),
            ("map_swap", text(pair, 142, ttl_ms=1234).replace(
                "cache:\n", "cache:\n  protocols: [ascii]\n")),
            ("program_swap", text(pair, 143, entries=8192)),
            ("program_swap", text(pair, 144, entries=8192, strategy="program_swap")),
            ("map_swap", text(pair, 145, entries=8192, enabled="false")),
        ]
        for want, body in changes:
            cfg = make_config(body)
            promised = pair.dp.plan(cfg, running)
            done = pair.dp.apply(cfg, running)
            assert promised.strategy == done.strategy == want, (body, promised, done)
            assert promised.cache_kept == done.cache_kept
            running = cfg


def served_by_kernel(pair: Pair, key: bytes, value: bytes) -> None:
    """A GET of key answered by the kernel (no fill first: it must already be cached). A
    new connection asks memcached's stats: one the scanner knows from its first byte."""
    c = NsClient(pair, pair.c)
    before, gets = c.counters(), c.cmd_get()
    assert c.udp_get(key) == {key: value}
    assert c.counters()["hit"] == before["hit"] + 1
    assert c.cmd_get() == gets, "memcached saw a GET the cache should have answered"
    c.mc.close()


def map_ids(pins: PinDir) -> dict[str, int]:
    """Each state map of the store and the kernel's id of the map object."""
    out = {}
    for p in sorted((pins.root / "maps").iterdir()):
        with libbpf.opened(p) as fd:
            out[p.name] = libbpf.map_info(fd).id
    return out


def test_a_program_change_keeps_every_map_whose_layout_it_leaves(pair):
    """An upgrade that changes a program and no map (simulated: the record says another
    code): a program swap on the very same map objects, the cache's entries served by the
    kernel right after it, and nothing left of the old set."""
    c = NsClient(pair, pair.c)
    with in_ns(pair.s):
        pair.dp.apply(make_config(text(pair, 160)), None)
    c.cached(b"kept-across", b"upgrade")
    pins = PinDir(pair.pin)
    rec = pins.record()
    before = map_ids(pins)
    assert set(before) == {f"{p}@{i}" for p, i in rec.maps}
    pins.write_record(dataclasses.replace(rec, code="0" * 16))
    cfg = make_config(text(pair, 161))
    p = pair.dp.plan(cfg, None)
    assert p.strategy == "program_swap" and p.cache_kept, p
    assert p.reasons == ("the data plane's code changed",), p.reasons
    with in_ns(pair.s):
        res = pair.dp.apply(cfg, None)
    assert res.strategy == "program_swap" and res.cache_kept
    new = pins.record()
    assert new.set != rec.set and new.maps == rec.maps
    assert map_ids(pins) == before, "a map was made anew though its layout is the same"
    assert [d.name for d in (pair.pin / "views").iterdir()] == [new.set]
    served_by_kernel(pair, b"kept-across", b"upgrade")


class SwapFails(Exception):
    pass


def state_gen(pins: PinDir) -> int:
    rec = pins.record()
    assert rec is not None
    raw = pins.read0(pins.state_dir(rec) / "state", STATE_BYTES) or bytes(8)
    return int.from_bytes(raw[:8], "little")


@pytest.mark.parametrize(("step", "state"), [("ingress", "kept"), ("switched", "kept"),
                                           ("ingress", "renewed"), ("switched", "renewed")])
def test_a_program_swap_that_fails_after_its_ingress_ran_never_serves_the_old_cache(
        pair, monkeypatch, step, state):
    """A program swap onto a new cache fails after its ingress took traffic (at "ingress":
    inside the swap; at "switched": after it, as when an interface goes away while it is
    attached). A write in between invalidated only the new cache: the recorded cache is
    emptied before its ingress is back, and the GET after the failure reads the write. With
    the state map kept, the new set's flush empties the old cache too; with a new state map
    (a changed layout, simulated as in the test below) only the flush of the old one does."""
    c = NsClient(pair, pair.c)
    v = 180 + 2 * ["ingress", "switched"].index(step) + 4 * ["kept", "renewed"].index(state)
    running = make_config(text(pair, v))
    with in_ns(pair.s):
        pair.dp.apply(running, None)
    key = f"swap-fails-{step}-{state}".encode()
    c.cached(key, b"old")
    pins = PinDir(pair.pin)
    if state == "renewed":
        rec = pins.record()
        ids = rec.identities
        pins.store_path("state", ids["state"]).rename(pins.store_path("state", "0" * 16))
        pins.write_record(dataclasses.replace(
            rec, maps=tuple(sorted({**ids, "state": "0" * 16}.items()))))
    rec, gen = pins.record(), state_gen(pins)
    switched_back_at: list[int] = []
    real_switch = sets.switch

    def switch(pin_dir: PinDir, set_id: str) -> None:
        if set_id == rec.set:
            switched_back_at.append(state_gen(pins))
        real_switch(pin_dir, set_id)

    def fault(at: str) -> None:
        if at == step:
            c.mc.set(key, b"new")  # read by the new ingress alone
            raise SwapFails(f"the swap fails at {at}")

    monkeypatch.setattr(sets, "switch", switch)
    monkeypatch.setattr(pair.dp, "fault", fault)
    cfg = make_config(text(pair, v + 1, entries=8192))
    if state == "renewed":
        assert "state" in " ".join(pair.dp.plan(cfg, running).reasons)
    with in_ns(pair.s), pytest.raises(DataplaneError, match="the swap fails"):
        pair.dp.apply(cfg, running)
    assert pins.record() == rec
    assert switched_back_at and switched_back_at[0] > gen, (
        "the recorded cache's ingress came back before the cache was emptied")
    assert c.udp_get(key) == {key: b"new"}
    c.mc.close()


def test_a_changed_layout_renews_that_map_alone(pair):
    """A running build whose conn map had another layout (simulated: the record and the store
    name another identity): the next apply makes a new conn map, keeps every other map (the
    cache's entries still served) and unpins the old conn."""
    c = NsClient(pair, pair.c)
    with in_ns(pair.s):
        pair.dp.apply(make_config(text(pair, 170)), None)
    c.cached(b"kept-layout", b"same")
    pins = PinDir(pair.pin)
    rec = pins.record()
    ids = rec.identities
    old_conn = pins.store_path("conn", "0000000000000000")
    pins.store_path("conn", ids["conn"]).rename(old_conn)
    pins.write_record(dataclasses.replace(rec, maps=tuple(sorted({**ids, "conn": "0" * 16}
                                                                  .items()))))
    before = map_ids(pins)
    cfg = make_config(text(pair, 171))
    p = pair.dp.plan(cfg, None)
    assert p.strategy == "program_swap" and p.cache_kept, p
    assert p.reasons == ("new maps for a changed layout: conn",), p.reasons
    with in_ns(pair.s):
        res = pair.dp.apply(cfg, None)
    assert res.strategy == "program_swap" and res.cache_kept
    after = map_ids(pins)
    assert not old_conn.exists()
    conn = f"conn@{ids['conn']}"
    assert after[conn] != before[old_conn.name]
    assert {k: v for k, v in after.items() if k != conn} == \
        {k: v for k, v in before.items() if k != old_conn.name}
    served_by_kernel(pair, b"kept-layout", b"same")
    # A connection from before the new conn map: the scanner knows nothing of where its
    # commands start, so its next bytes empty the cache (and say why).
    flushed = pair.dp.flush_reasons().get("unknown_stream", 0)
    c.mc.version()
    assert pair.dp.flush_reasons().get("unknown_stream", 0) == flushed + 1
    hits = pair.dp.counters()["hit"]
    assert c.udp_get(b"kept-layout") == {b"kept-layout": b"same"}
    assert pair.dp.counters()["hit"] == hits, "served from a cache that was emptied"


def test_maps_from_before_identities_move_to_the_store(pair):
    """A record of an agent from before per-map identities (its maps in maps-<abi>): the next
    apply loads a program set on new maps in the store, and the old layout's maps go."""
    with in_ns(pair.s):
        pair.dp.apply(make_config(text(pair, 150)), None)
    pins = PinDir(pair.pin)
    rec = pins.record()
    old_dir = pair.pin / "maps-000000000000"
    old_dir.mkdir()
    for p in sorted(pins.view_dir(rec.set).iterdir()):
        with libbpf.opened(p) as fd:
            pins.pin(fd, old_dir / p.name)
    pins.write_record(dataclasses.replace(rec, abi="000000000000", maps=()))
    for p in (pair.pin / "maps").iterdir():
        p.unlink()
    cfg = make_config(text(pair, 151, ttl_ms=4321))
    p = pair.dp.plan(cfg, None)
    assert p.strategy == "program_swap" and not p.cache_kept
    assert "predate" in " ".join(p.reasons)
    with in_ns(pair.s):
        res = pair.dp.apply(cfg, None)
    assert res.strategy == "program_swap"
    assert not old_dir.exists()
    new = pins.record()
    assert new.maps and sorted(p.name for p in (pair.pin / "maps").iterdir()) == \
        sorted(f"{p}@{i}" for p, i in new.maps)
    NsClient(pair, pair.c).cached(b"abi", b"fresh")


def test_each_identity_describes_the_map_the_kernel_holds(pair):
    """What a map's identity is made of (identity.py: entries and flags evaluated from the
    headers, key and value layouts from the layout pass) is what the kernel holds at its pin."""
    with in_ns(pair.s):
        pair.dp.apply(make_config(text(pair, 180)), None)
    rec = PinDir(pair.pin).record()
    layouts = sets.run_workers(PinDir(pair.pin), ["layout"],
                               pair.dp.cflags(make_config(text(pair, 180))))[0]["maps"]
    types = {"array": 2, "hash": 1, "percpu_array": 6, "lru_hash": 9, "ringbuf": 27}
    seen = set()
    for decl in identity.declarations():
        doc = identity.described(decl, layouts, rec.shape)
        with libbpf.opened(PinDir(pair.pin).view_dir(rec.set) / doc["pin"]) as fd:
            info = libbpf.map_info(fd)
        assert info.max_entries == doc["entries"], (decl, info)
        assert info.flags == doc["flags"], (decl, info)
        kind = decl.kind.split("$")[0]
        if kind in types:
            assert info.type == types[kind], (decl, info)
        if kind != "ringbuf":
            assert info.key_size == doc["key"]["size"], (decl, info)
        if kind in ("array", "hash", "percpu_array", "lru_hash"):
            assert info.value_size == doc["leaf"]["size"], (decl, info)
        seen.add(doc["pin"])
    assert seen == set(rec.identities)

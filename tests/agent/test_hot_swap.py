"""Hot swap with the real kernel: map swaps and program swaps under a UDP GET load.

Every swap must be visible on the very next request, and no request may be lost or answered
with a wrong value while swaps happen.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import pytest
from pymemcache.client.base import Client

from mcache_agent import udp_client as uc
from tests.dataplane.nsutil import Pair, in_ns

KEYS = {f"hs{i}".encode(): f"value-{i}".encode() for i in range(16)}
WATCHED = b"hs-watched"  # never read by the load: its slot tells which cache serves
MAP_SWAPS = 50
PROGRAM_SWAPS = 20


@pytest.fixture(scope="module")
def pair():
    p = Pair("h", 13, fill_hold_ms=0).up()
    with in_ns(p.c):
        mc = Client((p.saddr, 11211), default_noreply=False)
        for k, v in [*KEYS.items(), (WATCHED, b"watched")]:
            mc.set(k, v)
        mc.close()
    yield p
    p.down()


def get(p: Pair, key: bytes) -> bytes | None:
    with in_ns(p.c):
        return uc.udp_get_ascii(p.saddr, 11211, [key], 1.0).get(key)


def warm(p: Pair, key: bytes) -> None:
    for _ in range(2):
        assert get(p, key) == KEYS.get(key, b"watched")


def delta(p: Pair, fn) -> dict[str, int]:
    """What fn's requests were counted as. "pass" left out: frames that are not memcached's
    (IPv6 neighbour discovery, say) may arrive on the veth meanwhile."""
    before = p.dp.counters()
    fn()
    after = p.dp.counters()
    return {k: after[k] - before[k] for k in after if after[k] != before[k] and k != "pass"}


@dataclass
class Load:
    """A UDP GET loop in the client namespace: counts answers, losses and wrong values."""

    p: Pair
    stop: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)
    idle: threading.Event = field(default_factory=threading.Event)
    answered: int = 0
    lost: int = 0
    wrong: int = 0

    def run(self) -> None:
        rnd = random.Random(7)
        keys = list(KEYS)
        with in_ns(self.p.c):
            while not self.stop.is_set():
                if self.paused.is_set():
                    self.idle.set()
                    time.sleep(0.001)
                    continue
                self.idle.clear()
                k = rnd.choice(keys)
                try:
                    got = uc.udp_get_ascii(self.p.saddr, 11211, [k], 1.0).get(k)
                except uc.UdpTimeout:
                    self.lost += 1
                    continue
                self.answered += 1
                if got != KEYS[k]:
                    self.wrong += 1

    def __enter__(self) -> Load:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def pause(self) -> None:
        self.paused.set()
        assert self.idle.wait(5)

    def resume(self) -> None:
        self.paused.clear()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_map_swaps_visible_on_the_next_request(pair):
    key = b"hs0"
    warm(pair, key)
    for i in range(MAP_SWAPS):
        enabled = i % 2 == 1
        res = pair.apply(enabled="true" if enabled else "false")
        assert res.strategy == "map_swap", res
        d = delta(pair, lambda: get(pair, key))
        # the very next request sees the new config: served, or passed by the kill switch
        assert d.get("hit" if enabled else "disabled") == 1, (i, d)


def test_map_swaps_under_load_lose_nothing(pair):
    for k in KEYS:
        warm(pair, k)
    with Load(pair) as load:
        for i in range(MAP_SWAPS):
            pair.apply(ttl_ms=60000 + i)  # a map swap; the cache stays warm
            time.sleep(0.01)
    assert load.answered > MAP_SWAPS
    assert (load.lost, load.wrong) == (0, 0), load
    assert pair.dp.counters()["hit"] > 0


def test_program_swaps_under_load_lose_nothing_and_take_effect(pair):
    for k in KEYS:
        warm(pair, k)
    durations = []
    with Load(pair) as load:
        for i in range(PROGRAM_SWAPS):
            load.pause()
            warm(pair, WATCHED)
            assert delta(pair, lambda: get(pair, WATCHED)) == {"hit": 1}
            load.resume()
            entries = 8192 if i % 2 == 0 else 4096
            res = pair.apply(entries=entries)  # under load
            assert res.strategy == "program_swap", res
            assert not res.cache_kept
            durations.append(res.swap_ms)
            # The new set (with its new, empty cache) answers the next request for a key
            # that was a hit a moment ago: a miss.
            load.pause()
            assert delta(pair, lambda: get(pair, WATCHED)).get("miss") == 1, i
            load.resume()
    assert load.answered > PROGRAM_SWAPS
    assert (load.lost, load.wrong) == (0, 0), load
    print(f"program switch ms: max {max(durations):.3f}, "
          f"median {sorted(durations)[len(durations) // 2]:.3f}")


def test_counters_keep_per_version_totals_across_map_and_program_swaps(pair):
    """Each version counts in its own line: a map swap and a program swap (with its new
    cache) leave the totals of the versions before them as they were, and what the new
    version decides is counted under it alone."""
    key = b"hs1"
    warm(pair, key)
    for strategy, over in [("map_swap", {"ttl_ms": 59000}), ("program_swap", {"entries": 8192}),
                           ("map_swap", {"entries": 8192, "ttl_ms": 58000})]:
        old = pair.version
        for _ in range(3):
            assert get(pair, key) == KEYS[key]
        before = pair.dp.stats().by_version
        res = pair.apply(**over)
        assert res.strategy == strategy, res
        swapped = pair.dp.stats().by_version
        for _ in range(2):  # a new cache after a program swap: a miss first
            assert get(pair, key) == KEYS[key]
        after = pair.dp.stats().by_version
        assert after[old] == swapped[old], strategy  # nothing counts under it any more
        # and nothing of it was lost (frames other than memcached's, IPv6 neighbour
        # discovery say, may have come while the apply ran)
        assert ({**after[old].by_verdict(), "pass": 0} ==
                {**before[old].by_verdict(), "pass": 0}), strategy
        new = after[pair.version].by_verdict()
        assert new["hit"] + new["miss"] == 2, (strategy, new)
        assert (new["miss"] == 1) == (strategy == "program_swap"), new

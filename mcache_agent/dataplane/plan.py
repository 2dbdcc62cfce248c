"""What an apply must do to go from what runs to a config: the one planner.

A pure function of the config, the running config, the pinned record and the fingerprints of
the code on disk. `apply --check` shows its answer and `apply` carries it out, so the two
cannot disagree; the unit tests call it directly.

Strategies, cheapest first:
  none          nothing to do
  map_swap      a new config map in the one outer slot (TTL, kill switch, allow-list, ...)
  reattach      a map swap, and interfaces attached or detached
  program_swap  a new program set compiled, loaded and switched in (code, cache shape or a
                map's layout changed, or asked for); each state map whose identity (its own
                layout, identity.py) is unchanged is kept, the cache among them
"""

from __future__ import annotations

from dataclasses import dataclass

from mcache_agent.config import Config
from mcache_agent.dataplane.pins import Record, cache_pin, level_pin

STRATEGIES = ("none", "map_swap", "reattach", "program_swap")


class PlanRefused(Exception):
    """The config asks for something the running data plane cannot do; `path` is the JSON
    path of the setting at fault."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Plan:
    strategy: str
    reasons: tuple[str, ...]
    cache_kept: bool  # the cache's entries survive the apply


@dataclass(frozen=True)
class WantedInterface:
    name: str
    xdp_mode: str
    role: str


def wanted_interfaces(cfg: Config) -> tuple[WantedInterface, ...]:
    """The interfaces to attach to. lo is always among them: a client on this host (the
    probe among them) reaches memcached through it, and its writes must invalidate."""
    out = [WantedInterface(i.name, i.xdp_mode, "serve") for i in cfg.interfaces]
    if "lo" not in {i.name for i in cfg.interfaces}:
        out.append(WantedInterface("lo", "generic", "serve"))
    return tuple(out)


def plan(cfg: Config, previous: Config | None, record: Record | None, code: str,
         maps: dict[str, str]) -> Plan:
    """The strategy that takes the data plane from `record` (running `previous`) to `cfg`;
    `maps`: the identity of each state map a program set for cfg would use."""
    if record is None:
        return Plan("program_swap", ("nothing is loaded",), False)
    shape = cfg.shape()
    reasons: list[str] = []
    if shape != record.shape:
        reasons.append(f"cache shape {_shape(record.shape)} -> {_shape(shape)} (a new cache)")
    running = record.identities
    if not running:
        reasons.append("the pinned maps predate per-map identities (new maps, a new cache)")
    else:
        renewed = sorted(p for p, i in maps.items()
                         if p in running and running[p] != i)
        added = sorted(p for p in maps if p not in running and p not in
                       (cache_pin(shape), level_pin(shape)))
        if renewed or added:
            kept_cache = cache_pin(shape) in running and \
                maps.get(cache_pin(shape)) == running[cache_pin(shape)]
            reasons.append("new maps for a changed layout: " + ", ".join(renewed + added) +
                           ("" if kept_cache else " (a new cache)"))
    if code != record.code:
        reasons.append("the data plane's code changed")
    if cfg.local_bypass.enabled and not record.bypass_programs:
        reasons.append("local_bypass is turned on: its programs join the program set")
    if reasons and cfg.strategy == "map_swap":
        raise PlanRefused("$.rollout.strategy",
                          f"map_swap cannot apply this change ({'; '.join(reasons)}): "
                          "use auto or program_swap")
    if cfg.strategy == "program_swap":
        reasons.append("rollout.strategy is program_swap")
    if reasons:
        cache = maps.get(cache_pin(shape))
        kept = cache is not None and cache == running.get(cache_pin(shape))
        return Plan("program_swap", tuple(reasons), kept)
    want = {(w.name, w.xdp_mode) for w in wanted_interfaces(cfg)}
    have = {(a.interface, a.requested) for a in record.interfaces}
    if want != have:
        added = sorted(name for name, _mode in want - have)
        removed = sorted(name for name, _mode in have - want)
        why = "interfaces change: " + ", ".join(
            [*(f"+{n}" for n in added), *(f"-{n}" for n in removed)])
        if cfg.strategy == "map_swap":
            return Plan("map_swap", (why,), True)
        return Plan("reattach", (why,), True)
    if previous is not None and previous == cfg and previous.version == record.version:
        return Plan("none", (f"version {cfg.version} is running",), True)
    return Plan("map_swap", ("settings in the config map change",), True)


def _shape(shape: tuple[int, int, int]) -> str:
    e, k, v = shape
    return f"{e} entries x {k}/{v} bytes"

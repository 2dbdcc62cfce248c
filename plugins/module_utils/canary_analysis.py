# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The canary's bake: is a host worse with the new config than it was, or than its peers?

Input are the agent's `signals` readings (mcache_agent/daemon.py Agent.signals: cumulative
counters with a monotonic and a wall clock time). Two readings of one host make a window; a
window gives rates and shares that do not depend on how long the counters have run:

  hit_ratio      hit / (hit + miss): the GETs the kernel answered among those it could
  hits_per_s     kernel hits per second
  share_<v>      verdict v among the requests the data plane judged (pass, too_big, denied -
                 the allow-list refused the client - and fallback_flush, flushes per request)
  probe_failures health probes that failed in the window
  memcached_errors  memcached stats reads the agent's watch could not make in the window

A host's window before its change (from the rollout's first reading to just before its apply)
is compared with its window after (the bake), and its bake window's hit ratio with that of the
hosts not yet changed (over the rollout so far). Each rule that fires is one regression:
signal, before, after, why. Used by the mcache.fleet.canary_verdict filter; pure Python, no
Ansible, so that it is unit tested alone (tests/unit/test_canary_analysis.py).
"""

from __future__ import annotations

# The verdicts a window's shares are taken of (names from bpf/mcache_shared.h).
JUDGED = ("hit", "miss", "pass", "too_big", "denied")
SHARES = ("pass", "too_big", "denied", "fallback_flush")

DEFAULT_THRESHOLDS = {
    # a window with fewer GETs than this (hit + miss) judges no traffic signal
    "min_requests": 200,
    # absolute drop of the hit ratio (0.10 = ten points) that counts
    "max_hit_ratio_drop": 0.10,
    # relative drop of kernel hits per second that counts (0.5 = half)
    "max_hits_per_s_drop": 0.5,
    # absolute rise of a verdict's share of the judged requests that counts
    "max_share_rise": 0.05,
    # probe failures and memcached errors allowed in the bake window
    "max_probe_failures": 0,
    "max_memcached_errors": 0,
    # how far the host's hit ratio may be below its unchanged peers'
    "max_peer_hit_ratio_gap": 0.10,
}


def _num(reading, *keys):
    value = reading
    for k in keys:
        if not isinstance(value, dict):
            return 0
        value = value.get(k)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def window(a, b, min_requests=DEFAULT_THRESHOLDS["min_requests"]):
    """The signals of the window between readings a and b (b later). `valid` is False, with
    `why`, when the two cannot be compared: a missing reading, another boot, counters that went
    down (the maps were made anew: a reboot, a cold restart)."""
    if not isinstance(a, dict) or not isinstance(b, dict) or not a or not b:
        return {"valid": False, "why": "no reading"}
    if a.get("boot_id") != b.get("boot_id"):
        return {"valid": False, "why": "the host booted between the readings"}
    seconds = _num(b, "at_monotonic") - _num(a, "at_monotonic")
    if seconds <= 0:
        return {"valid": False, "why": "the readings are not in time order"}
    ca, cb = a.get("counters") or {}, b.get("counters") or {}
    delta = {}
    for name in set(ca) | set(cb):
        d = _num(cb, name) - _num(ca, name)
        if d < 0:
            return {"valid": False, "why": "counter %s went down (%s -> %s): the data plane's "
                                           "maps were made anew" % (name, ca.get(name),
                                                                    cb.get(name))}
        delta[name] = d
    probe_failures = _num(b, "probes", "failures") - _num(a, "probes", "failures")
    mc_errors = _num(b, "memcached", "errors") - _num(a, "memcached", "errors")
    if b.get("agent_started_at_unix") != a.get("agent_started_at_unix"):
        # the agent restarted: its own counts began again (the data plane's did not)
        probe_failures = _num(b, "probes", "failures")
        mc_errors = _num(b, "memcached", "errors")
    hit, miss = delta.get("hit", 0), delta.get("miss", 0)
    judged = sum(delta.get(v, 0) for v in JUDGED)
    enough = hit + miss >= min_requests
    out = {
        "valid": True,
        "seconds": round(seconds, 3),
        "version_before": a.get("version"),
        "version_after": b.get("version"),
        "requests": hit + miss,
        "enough_traffic": enough,
        "hit_ratio": round(float(hit) / (hit + miss), 4) if enough else None,
        "hits_per_s": round(hit / seconds, 2),
        "probe_failures": probe_failures,
        "memcached_errors": mc_errors,
        "counts": {v: delta.get(v, 0) for v in JUDGED + ("fallback_flush", "expired")},
    }
    for v in SHARES:
        out["share_" + v] = round(float(delta.get(v, 0)) / judged, 4) if enough and judged \
            else None
    return out


def pooled_hit_ratio(windows, min_requests):
    """The hit ratio of several hosts' windows together (None without enough GETs)."""
    hit = miss = 0
    for w in windows:
        if w.get("valid"):
            hit += w["counts"]["hit"]
            miss += w["counts"]["miss"]
    if hit + miss < min_requests:
        return None
    return round(float(hit) / (hit + miss), 4)


def _fmt(value):
    return "n/a" if value is None else ("%g" % value)


def judge(before, after, peers=None, thresholds=None):
    """The verdict of one host's bake: `before` and `after` are windows (window()), `peers`
    windows of hosts not yet changed. Returns verdict (pass, regressed, or unjudged when
    neither window could be compared), the regressions (signal, before, after, why) and
    notes (what could not be judged, and why)."""
    t = dict(DEFAULT_THRESHOLDS)
    t.update({k: v for k, v in (thresholds or {}).items() if v is not None})
    regressions, notes = [], []

    def regress(signal, b, a, why):
        regressions.append({"signal": signal, "before": b, "after": a, "why": why})

    if not after.get("valid"):
        notes.append("bake window not judged: %s" % after.get("why"))
        return {"verdict": "unjudged", "regressions": [], "notes": notes}
    # health signals need no baseline: the bake window alone says it
    if after["probe_failures"] > t["max_probe_failures"]:
        regress("probe_failures", before.get("probe_failures") if before.get("valid") else None,
                after["probe_failures"],
                "%d probe(s) failed during the bake (allowed %d)"
                % (after["probe_failures"], t["max_probe_failures"]))
    if after["memcached_errors"] > t["max_memcached_errors"]:
        regress("memcached_errors",
                before.get("memcached_errors") if before.get("valid") else None,
                after["memcached_errors"],
                "memcached's stats could not be read %d time(s) during the bake (allowed %d)"
                % (after["memcached_errors"], t["max_memcached_errors"]))
    if not after["enough_traffic"]:
        notes.append("bake window had %d GETs (< %d): traffic signals not judged"
                     % (after["requests"], t["min_requests"]))
    elif not before.get("valid"):
        notes.append("no window before the change (%s): judged against peers only"
                     % before.get("why"))
    elif not before["enough_traffic"]:
        notes.append("window before the change had %d GETs (< %d): judged against peers only"
                     % (before["requests"], t["min_requests"]))
    else:
        drop = before["hit_ratio"] - after["hit_ratio"]
        if drop > t["max_hit_ratio_drop"]:
            regress("hit_ratio", before["hit_ratio"], after["hit_ratio"],
                    "hit ratio fell by %.1f points (allowed %.1f)"
                    % (drop * 100, t["max_hit_ratio_drop"] * 100))
        floor = before["hits_per_s"] * (1 - t["max_hits_per_s_drop"])
        if before["hits_per_s"] > 0 and after["hits_per_s"] < floor:
            regress("hits_per_s", before["hits_per_s"], after["hits_per_s"],
                    "kernel hits per second fell below %.0f%% of before (allowed drop %.0f%%)"
                    % (100.0 * after["hits_per_s"] / before["hits_per_s"],
                       t["max_hits_per_s_drop"] * 100))
        for v in SHARES:
            b, a = before["share_" + v], after["share_" + v]
            if b is not None and a is not None and a - b > t["max_share_rise"]:
                regress("share_" + v, b, a,
                        "verdict %s rose from %.1f%% to %.1f%% of the judged requests "
                        "(allowed rise %.1f points)"
                        % (v, b * 100, a * 100, t["max_share_rise"] * 100))
    peer_ratio = pooled_hit_ratio(peers or [], t["min_requests"])
    if peers and after["enough_traffic"] and peer_ratio is not None:
        gap = peer_ratio - after["hit_ratio"]
        if gap > t["max_peer_hit_ratio_gap"]:
            regress("peer_hit_ratio", peer_ratio, after["hit_ratio"],
                    "hit ratio is %.1f points below that of the %d host(s) not yet changed "
                    "(allowed %.1f)" % (gap * 100, len(peers), t["max_peer_hit_ratio_gap"] * 100))
    elif peers:
        notes.append("the hosts not yet changed had too few GETs to compare with")
    return {"verdict": "regressed" if regressions else "pass", "regressions": regressions,
            "notes": notes, "peer_hit_ratio": peer_ratio}


def describe(host, regressions):
    """One line per regression: host, signal, before, after, why (the rollout's message)."""
    return "; ".join("%s: %s %s -> %s: %s" % (host, r["signal"], _fmt(r["before"]),
                                              _fmt(r["after"]), r["why"])
                     for r in regressions)


def analyse(readings, thresholds=None):
    """One host's bake from its readings: start (the rollout's first), before (just before its
    apply), bake_start and after (the bake window, once the probe passed), and peers:
    [[start, now], ...] of hosts not yet changed, and peers_lost: the names of those that
    answered at the start but not for this bake (left out, and noted: a peer that goes away
    says nothing about this host). Returns the judge() result with the windows it judged."""
    t = dict(DEFAULT_THRESHOLDS)
    t.update({k: v for k, v in (thresholds or {}).items() if v is not None})
    before = window(readings.get("start"), readings.get("before"), t["min_requests"])
    after = window(readings.get("bake_start") or readings.get("before"), readings.get("after"),
                   t["min_requests"])
    peers = [window(p[0], p[1], 0) for p in readings.get("peers") or [] if len(p) == 2]
    peers = [p for p in peers if p.get("valid")]
    out = judge(before, after, peers, t)
    out["notes"] = out["notes"] + ["peer %s did not answer: left out of the comparison" % h
                                   for h in readings.get("peers_lost") or []]
    out.update(before=before, after=after, peers=len(peers))
    return out

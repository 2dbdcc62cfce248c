"""The agent daemon: owns the data plane, applies configs, answers the control socket."""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mcache_agent import build
from mcache_agent.config import (
    DEFAULT_METRICS_LISTEN,
    Config,
    ConfigError,
    Fault,
    check_semantics,
    load_config,
    parse_config,
)
from mcache_agent.control import ControlServer, Response, error, ok
from mcache_agent.dataplane import Plan, PlanRefused
from mcache_agent.memcached_stats import RestartDetector, StatsError, fetch_stats
from mcache_agent.versions import VersionsError, VersionStore, atomic_write, describe_rejection

log = logging.getLogger("mcache_agent")

WATCH_INTERVAL_S = 1.0
MEMCACHED_STATE = "memcached.json"


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def invalid(message: str, faults: list[Fault]) -> Response:
    return error("invalid", message, [f.to_dict() for f in faults])


def ms(value: float | None) -> float | None:
    """Milliseconds as the agent reports them: one decimal."""
    return None if value is None else round(value, 1)


def status_document(
    dataplane: Any,
    store: VersionStore,
    running_cfg: Config | None,
    *,
    running: bool,
    version: int | None,
    last_apply: dict[str, Any] | None,
    probe: dict[str, Any] | None,
    config_file: dict[str, Any] | None = None,
    in_progress: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `status` shape of ARCHITECTURE.md, built from whatever answers; failures go in errors."""
    errors: list[str] = []

    def ask(what: str, default: Any) -> Any:
        if dataplane is None:
            return default
        try:
            return getattr(dataplane, what)()
        except Exception as e:
            errors.append(f"{what}: {type(e).__name__}: {e}")
            return default

    stats = ask("stats", None)
    total = stats.total() if stats else None  # every version summed, once
    counters: dict[str, int] = total.by_verdict() if total else {}
    usage = ask("cache_usage", None)
    memory = ask("memory", None) if version is not None else None
    hit, miss = counters.get("hit", 0), counters.get("miss", 0)
    fills = counters.get("fill", 0)
    doc: dict[str, Any] = {
        "version": version,
        "running": running,
        "last_apply": last_apply,
        "apply_in_progress": in_progress,
        "config_file": config_file,
        "attached": ask("attached", []),
        "local_bypass": ask("local_bypass", None),
        "counters": counters,
        # the same counts by the config version that decided, and by the path that did
        # (non-zero counts only): a swap neither resets nor mixes them
        "counters_by_version": {
            str(v): _nonzero(c.by_verdict()) for v, c in (stats.by_version if stats else {}).items()
        },
        "counters_by_path": {
            p: n for p, c in (total.by_path if total else {}).items() if (n := _nonzero(c))
        },
        # why the write scanner emptied the cache: real traffic it could not read
        "flush_reasons": ask("flush_reasons", {}),
        "hit_ratio": round(hit / (hit + miss), 4) if hit + miss else None,
        "cache": {
            "entries": usage.entries if usage else None,
            "used": usage.used if usage else None,
            "fill_ratio": round(usage.used / usage.entries, 4) if usage else None,
            # map health: entries put in against entries served, and what left early
            "inserts": fills,
            "inserts_per_hit": round(fills / hit, 4) if hit else None,
            "expired": counters.get("expired", 0),
            "evictions": counters.get("evict", 0),
            # what the kernel allocated for every map of the data plane (fdinfo memlock)
            "memory_bytes": memory.total_bytes if memory else None,
            "memory_by_map": memory.maps if memory else {},
            # what validation estimated for the running config before loading it
            "memory_estimate_bytes": running_cfg.memory_bytes() if running_cfg else None,
            "kept_across_last_apply": (last_apply or {}).get("cache_kept"),
        },
        "probe": probe,
        "build": build.info(),
        "current": store.current(),
        "previous": store.previous(),
        # the versions a rollback left on this host: never applied again by a start or an
        # apply (docs/ARCHITECTURE.md, "Start-up config and rejected versions")
        "rejected": _rejected(store, errors),
    }
    if errors:
        doc["errors"] = errors
    return doc


def _boot_id() -> str | None:
    """This kernel's boot: monotonic clocks of two readings compare only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _rejected(store: VersionStore, errors: list[str]) -> list[dict[str, Any]]:
    try:
        return store.rejected_list()
    except VersionsError as e:
        errors.append(f"versions: {e}")
        return []


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: n for k, n in counts.items() if n}


class Agent:
    """What the control socket's requests mean. Changes (apply, rollback, probe, stop) run one
    at a time under `lock`; status never takes it, so it answers while a change runs."""

    def __init__(
        self,
        dataplane: Any,
        store: VersionStore,
        *,
        host_checks: bool = True,
        probe_fn: Any = None,
        startup_file: Path | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.store = store
        # The config the agent starts with (`run --config`). The agent keeps it at the version
        # that runs after every apply and rollback, so that its next start, a reboot's
        # included, runs what runs now. None: nothing is kept (tests that drive an Agent).
        self.startup_file = startup_file
        self.host_checks = host_checks
        self.probe_fn = probe_fn
        self.running: Config | None = None
        self.last_apply: dict[str, Any] | None = None
        self.last_probe: dict[str, Any] | None = None
        # Probes run and failed since the agent started (the canary's bake compares them).
        self.probe_runs = 0
        self.probe_failures = 0
        self.config_file: dict[str, Any] | None = None
        self.in_progress: dict[str, Any] | None = None
        self.starting = True
        self.started_at = time.time()
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.torn_down = False
        self.on_stop: Any = None
        # Called after each committed apply with (new, previous); returns a warning (str) when
        # something beside the data plane could not follow (the metrics endpoint), else None.
        self.on_config: Any = None
        # The metrics endpoint as status reports it: {"listen", "serving", "error"}.
        self.metrics: dict[str, Any] | None = None
        self._watch = _MemcachedWatch(self)

    # ------------------------------------------------------------------ start

    def start(self, file_cfg: Config | None, *, path: str = "",
              faults: list[Fault] | None = None) -> None:
        """Adopt what is pinned when it is the stored current version, then bring the config
        file in when it is news. A config file that is refused (`faults`, a rejected version,
        or by the apply) never stops the agent: it keeps serving what it adopted or, with
        nothing pinned (after a reboot), the version the host ran last; status says why."""
        with self.lock:
            try:
                self._adopt()
                self.config_file = self._bring_in(file_cfg, path, faults or [])
            except Exception as e:  # the kernel keeps serving what it has; say so
                log.exception("start failed")
                self.config_file = {"path": path, "version": None, "result": "failed",
                                    "message": f"start failed: {type(e).__name__}: {e}",
                                    "faults": [], "at": utcnow()}
            finally:
                self.starting = False
        level = logging.INFO if self.config_file["result"] in ("applied", "running", "absent") \
            else logging.ERROR
        log.log(level, "config file %s: %s", path or "-", self.config_file["message"])
        for f in self.config_file["faults"]:
            log.error("%s: %s", f["path"], f["message"])

    def _adopt(self) -> None:
        pinned = self.dataplane.adopt()
        current = self.store.current()
        if pinned is not None and pinned != current and self.store.has(pinned):
            # The agent died after the apply's commit point but before it recorded the
            # outcome: the kernel runs the attempted version, so that is the current one.
            log.warning("version %d was committed to the kernel by an apply that did not "
                        "finish: adopting it", pinned)
            attempted = self._stored(pinned)
            if attempted is not None:
                outcome = dict(self.store.outcome(pinned) or {})
                outcome.update(result="ok", error=None, note="adopted after an interrupted apply")
                self.store.store(attempted, outcome)
                self.store.set_current(pinned)
                current = pinned
        adopted = self._stored(current) if pinned is not None and pinned == current else None
        if adopted is not None:
            self.running = adopted
            self.last_apply = self.store.outcome(current)
            # Redo what an interrupted apply may have left half done; no reload.
            self.dataplane.reconcile(self.running)
            log.info("adopted version %d from the pins (no reload)", current)
        elif pinned is not None:
            log.warning("pinned version %s is not the stored current one (%s): re-applying",
                        pinned, current)

    def _stored(self, version: int | None) -> Config | None:
        """A stored version as this agent reads it, or None when its checks refuse it: an older
        agent, with looser ones, may have stored it (a metrics port of 99999). The kernel keeps
        serving it; the config file, or the next apply, replaces it (as when the pins and the
        store disagree)."""
        if version is None:
            return None
        try:
            return parse_config(self.store.get(version))
        except ConfigError as e:
            log.warning("stored version %d is refused by this agent's checks, not adopted: %s",
                        version, e)
            return None

    def _last_ran(self) -> Config | None:
        """The version this host ran last: the store's current one, when it was applied (after
        a reboot the pins are gone; the store is not)."""
        current = self.store.current()
        out = self.store.outcome(current) if current is not None else None
        if not out or out.get("result") != "ok":
            return None
        return self._stored(current)

    def _bring_in(self, cfg: Config | None, path: str, faults: list[Fault]) -> dict[str, Any]:
        """The start-up file's fate. What runs afterwards: the file when it is news and
        accepted; else what was adopted from the pins; else (a reboot: no pins) the version
        the host ran last, so that a reboot never undoes a rollback or an apply."""
        def report(result: str, message: str, fault_list: list[dict[str, str]] | None = None,
                   version: int | None = None) -> dict[str, Any]:
            return {"path": path, "version": version, "result": result, "message": message,
                    "faults": fault_list or [], "at": utcnow()}

        last = self.running or self._last_ran()

        def keeping() -> str:
            # What serves once the file is set aside; with nothing pinned, the version the
            # host ran last is applied again.
            if self.running is None and last is not None:
                resp = self.apply_text(last.text)
                if not resp["ok"]:
                    return (f"; restoring version {last.version}, the last one this host ran, "
                            f"failed: {resp['error']['message']}; serving nothing until a "
                            "config is applied")
                return f"; serving version {last.version}, the last one this host ran"
            if self.running is not None:
                return f"; serving version {self.running.version}"
            return "; serving nothing until a config is applied"

        if cfg is None and not faults:
            return report("absent", f"no config file{keeping()}")
        if cfg is None:
            return report("refused", f"config has {len(faults)} fault(s){keeping()}",
                          [f.to_dict() for f in faults])
        rejected = self.store.rejection(cfg.version)
        if rejected is not None:
            fault = self._rejected_fault(cfg.version, rejected)
            return report("refused", f"version {cfg.version} was rejected on this host; not "
                                     f"applied{keeping()}", [fault.to_dict()], cfg.version)
        if self.running is not None and cfg == self.running:
            return report("running", f"version {cfg.version} is running", version=cfg.version)
        if last is not None and cfg.version < last.version:
            # Applied through the socket since the file was written (or by an apply that got
            # past its commit point before the agent died): the newer one stays, and the file
            # follows it, so that the next start does not go back either.
            message = (f"the file's version {cfg.version} is older than the version "
                       f"{last.version} this host runs; keeping version {last.version}")
            kept = keeping()
            if self.running is not None and self.startup_file is not None \
                    and self._keep_startup(self.running) is None:
                return report("running", f"{message}; the file now holds version "
                                         f"{self.running.version}", version=self.running.version)
            return report("kept", message + kept, version=cfg.version)
        resp = self.apply_text(cfg.text)
        if resp["ok"]:
            return report("applied", f"version {cfg.version} applied", version=cfg.version)
        err = resp["error"]
        result = "refused" if err["kind"] == "invalid" else "failed"
        return report(result, f"{err['message']}{keeping()}", err.get("faults"), cfg.version)

    @staticmethod
    def _rejected_fault(version: int, rec: dict[str, Any]) -> Fault:
        return Fault("$.version",
                     f"version {version} was rejected on this host ({describe_rejection(rec)}); "
                     "give the change a new version number, or roll back to it by name "
                     f"(rollback --to {version})")

    def _keep_startup(self, cfg: Config) -> str | None:
        """Make the start-up file hold what runs, and status say so. Returns a warning when
        the file cannot be written (status then reports it `failed`: the next start would not
        run this version)."""
        path = self.startup_file
        if path is None:
            return None
        try:
            try:
                same = path.read_text(encoding="utf-8") == cfg.text
            except (FileNotFoundError, UnicodeDecodeError):
                same = False
            if not same:
                path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                atomic_write(path, cfg.text.encode("utf-8"))
        except OSError as e:
            warning = (f"cannot keep version {cfg.version} as the start-up config {path}: {e}; "
                       "the agent's next start would not run it")
            self.config_file = {"path": str(path), "version": cfg.version, "result": "failed",
                                "message": warning, "faults": [], "at": utcnow()}
            log.error("%s", warning)
            return warning
        self.config_file = {"path": str(path), "version": cfg.version, "result": "running",
                            "message": f"version {cfg.version} is running; the agent keeps it "
                                       "as its start-up config",
                            "faults": [], "at": utcnow()}
        return None

    # ------------------------------------------------------------------ requests

    def handle(self, req: dict[str, Any]) -> Response:
        op = req["op"]
        if op == "apply":
            check = bool(req.get("check", False))
            with self.lock:
                resp = self.apply_text(req["config"], check=check)
                if resp["ok"] and not check and self.running is not None:
                    # what runs is the start-up config from now on (also when nothing
                    # changed: a file that was refused at start is set right)
                    self._warn(resp, self._keep_startup(self.running))
            return resp
        if op == "status":
            return ok(self.status())
        if op == "versions":
            try:
                rejected = self.store.rejected_list()
            except VersionsError as e:
                return error("runtime", str(e))
            return ok({"current": self.store.current(), "previous": self.store.previous(),
                       "versions": self.store.list(), "rejected": rejected})
        if op == "rollback":
            return self.rollback(req.get("to"), req.get("reason"))
        if op == "probe":
            return self.probe()
        if op == "signals":
            return ok(self.signals())
        if op == "stop":
            return self.stop(teardown=True)
        return error("invalid", f"unknown op {op!r}")

    @staticmethod
    def _warn(resp: Response, warning: str | None) -> None:
        if warning:
            result = resp["result"]
            result["warnings"] = [*(result.get("warnings") or []), warning]

    def apply_text(self, text: str, *, check: bool = False, rollback: bool = False) -> Response:
        try:
            cfg = parse_config(text)
        except ConfigError as e:
            return invalid(f"config has {len(e.faults)} fault(s)", e.faults)
        with self.lock:
            running = self.running
            faults = check_semantics(cfg, running, allow_rollback=rollback,
                                     host_checks=self.host_checks)
            if not rollback and not any(f.path == "$.version" for f in faults):
                faults += self._rejected_faults(cfg) or self._history_faults(cfg)
            if faults:
                return invalid(f"config has {len(faults)} fault(s)", faults)
            if running is not None and cfg == running:
                return ok({"version": cfg.version, "strategy": "none", "result": "ok",
                           "changed": False, "check": check,
                           "message": f"version {cfg.version} is already running"})
            try:
                plan = self.dataplane.plan(cfg, running)
            except PlanRefused as e:
                return invalid("config has 1 fault(s)", [Fault(e.path, e.message)])
            except Exception as e:  # the layout pass (a compile) failed: nothing changed
                log.exception("cannot plan version %s", cfg.version)
                return error("runtime", f"cannot plan version {cfg.version}: "
                                        f"{type(e).__name__}: {e}")
            if check:
                return ok(self._check_result(cfg, running, plan))
            return self._apply(cfg, running)

    def _rejected_faults(self, cfg: Config) -> list[Fault]:
        # A version a rollback left is refused by number, whatever the content: only a new
        # number (or a rollback that names it) brings it back.
        try:
            rec = self.store.rejection(cfg.version)
        except VersionsError as e:
            return [Fault("$.version", f"cannot tell whether version {cfg.version} was "
                                       f"rejected on this host: {e}")]
        return [self._rejected_fault(cfg.version, rec)] if rec is not None else []

    def _history_faults(self, cfg: Config) -> list[Fault]:
        # A version number names one content for good, once it has served: reusing it for
        # something else would make `versions` and rollback lie.
        out = self.store.outcome(cfg.version)
        if not out or out.get("result") != "ok":
            return []
        try:
            stored = parse_config(self.store.get(cfg.version))
        except (ConfigError, VersionsError):
            return []
        if stored == cfg:
            return []
        return [Fault("$.version", f"version {cfg.version} was applied before "
                                   f"({out.get('applied_at')}) with different content; "
                                   "give the change a new version number")]

    @staticmethod
    def _check_result(cfg: Config, running: Config | None, plan: Plan) -> dict[str, Any]:
        old = running.text if running else ""
        diff = "".join(difflib.unified_diff(
            old.splitlines(keepends=True), cfg.text.splitlines(keepends=True),
            fromfile=f"version {running.version}" if running else "(nothing running)",
            tofile=f"version {cfg.version}",
        ))
        return {"check": True, "changed": True, "version": cfg.version,
                "running_version": running.version if running else None,
                "strategy": plan.strategy, "reasons": list(plan.reasons),
                "cache_kept": plan.cache_kept, "diff": diff}

    def _apply(self, cfg: Config, running: Config | None) -> Response:
        t0 = time.monotonic()
        outcome: dict[str, Any] = {"applied_at": utcnow()}
        self.in_progress = {"op": "apply", "version": cfg.version, "since": outcome["applied_at"]}
        try:
            # Recorded before the kernel is touched: an agent killed mid-apply finds the attempt.
            self.store.store(cfg, {**outcome, "result": "in_progress", "strategy": None,
                                   "duration_ms": None, "swap_ms": None, "cache_kept": None,
                                   "error": None})
            try:
                res = self.dataplane.apply(cfg, running)
            except Exception as e:
                outcome.update(strategy=None, result="failed", error=f"{type(e).__name__}: {e}",
                               duration_ms=ms((time.monotonic() - t0) * 1000), swap_ms=None,
                               cache_kept=None)
                self.store.store(cfg, outcome)
                self.last_apply = {"version": cfg.version, **outcome}
                log.error("apply of version %d failed: %s", cfg.version, outcome["error"])
                return error("runtime",
                             f"apply of version {cfg.version} failed: {outcome['error']}")
            outcome.update(strategy=res.strategy, result="ok", duration_ms=ms(res.duration_ms),
                           swap_ms=ms(res.swap_ms), cache_kept=res.cache_kept,
                           reasons=list(res.reasons), error=None)
            self.store.store(cfg, outcome)
            self.store.set_current(cfg.version)
            self.running = cfg
            self.last_apply = {"version": cfg.version, **outcome}
        finally:
            self.in_progress = None
        log.info("applied version %d (%s, %.1f ms)", cfg.version, outcome["strategy"],
                 outcome["duration_ms"] or 0)
        # Committed: whatever follows is reported beside the success, never instead of it (a
        # committed apply reported failed would be retried, or rolled back, for nothing).
        warnings = self._after_commit(cfg, running)
        if warnings:
            self.last_apply = {**self.last_apply, "warnings": warnings}
        return ok({"version": cfg.version, "changed": True, "check": False,
                   "previous_version": running.version if running else None, **outcome,
                   "warnings": warnings})

    def _after_commit(self, cfg: Config, running: Config | None) -> list[str]:
        if self.on_config is None:
            return []
        try:
            warning = self.on_config(cfg, running)
        except Exception as e:  # on_config reports its own; this is a last guard
            log.exception("after the apply of version %d", cfg.version)
            warning = f"after the apply: {type(e).__name__}: {e}"
        if warning:
            log.warning("version %d applied, but %s", cfg.version, warning)
            return [str(warning)]
        return []

    def rollback(self, to: int | None, reason: str | None = None) -> Response:
        """Back to `to` (or the previous version). The version left is recorded as rejected,
        with `reason`: no start or apply takes its number again; the version gone back to
        becomes the start-up config. Naming a rejected version (`to`) takes it off the list."""
        with self.lock:
            try:
                target = self.store.rollback_target(to)
                text = self.store.get(target)
            except VersionsError as e:
                return error("invalid", str(e))
            left = self.running.version if self.running is not None else self.store.current()
            resp = self.apply_text(text, rollback=True)
            if not resp["ok"]:
                return resp
            result = resp["result"]
            if result.get("strategy") == "none":
                self.store.set_current(target)
            result["rolled_back_to"] = target
            result["rejected"] = None
            try:
                self.store.clear_rejected(target)
                if left is not None and left != target:
                    why = (reason or "").strip() or "rolled back (no reason given)"
                    result["rejected"] = self.store.reject(left, reason=why,
                                                           rolled_back_to=target)
                    log.warning("version %d rejected: %s", left,
                                describe_rejection(result["rejected"]))
            except (OSError, VersionsError) as e:
                self._warn(resp, f"cannot record version {left} as rejected: {e}")
            if self.running is not None:
                self._warn(resp, self._keep_startup(self.running))
            return resp

    def probe(self) -> Response:
        with self.lock:
            if self.running is None:
                return error("runtime", "no config is running")
            fn = self.probe_fn
            if fn is None:
                from mcache_agent.probe import run_probe as fn
            result = fn(self.running, self.dataplane)
            now = time.time()
            self.probe_runs += 1
            self.probe_failures += 0 if result.get("ok") else 1
            self.last_probe = {
                "ok": bool(result.get("ok")),
                "at": dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "at_unix": now,
                "detail": result.get("detail", ""),
            }
            return ok(result)

    def stop(self, *, teardown: bool) -> Response:
        with self.lock:
            if teardown and not self.torn_down:
                self.dataplane.teardown()
                self.torn_down = True
                log.info("data plane torn down")
            self.stop_event.set()
            if self.on_stop is not None:
                self.on_stop()
            return ok({"stopped": True, "teardown": teardown})

    def status(self) -> dict[str, Any]:
        # Read without the lock (status answers during a long apply), so read `starting`
        # first: it only goes from True to False, after start() has set what it reports.
        # Read last, a start finishing while the document is built would show the new
        # version, "not starting", and no config file yet.
        starting = self.starting
        running = self.running
        doc = status_document(
            self.dataplane, self.store, running, running=True,
            version=running.version if running else None,
            last_apply=self.last_apply, probe=self.last_probe,
            config_file=self.config_file, in_progress=self.in_progress,
        )
        doc["starting"] = starting
        doc["started_at_unix"] = self.started_at
        # memcached's own GET counts as the watch last read them (every second): what the
        # kernel answered set against what still reached memcached (the dashboard's offload).
        seen = self._watch.detector.last or {}
        doc["memcached"] = {k: seen[k] for k in ("cmd_get", "get_hits", "get_misses")
                            if isinstance(seen.get(k), int)}
        metrics = self.metrics
        doc["metrics"] = metrics
        if metrics and metrics.get("error"):
            doc["errors"] = [*doc.get("errors", []), f"metrics: {metrics['error']}"]
        return doc

    def signals(self) -> dict[str, Any]:
        """Counters with the moment they were read, for a rollout's canary analysis: two
        readings make a window (rates, the hit ratio within it). Cumulative since the counters
        began: the data plane's since its maps were made (an agent restart keeps them, a reboot
        does not), the agent's own since it started. Takes no lock: answers during an apply."""
        running = self.running
        stats = self.dataplane.stats() if self.dataplane is not None else None
        counters = stats.total().by_verdict() if stats else {}
        watch = self._watch
        return {
            "at_monotonic": time.monotonic(),
            "at_unix": time.time(),
            "boot_id": _boot_id(),
            "agent_started_at_unix": self.started_at,
            "version": running.version if running else None,
            "release": build.info().get("release"),
            "counters": counters,
            "probes": {"runs": self.probe_runs, "failures": self.probe_failures},
            "memcached": {"errors": watch.errors, "reachable": watch.reachable,
                          "last_error": watch.last_error},
        }

    def probe_forever(self) -> None:
        """The health probe every probe.interval_s seconds of the running config (none when
        0), so that status and metrics say whether the kernel serves, between fleet runs."""
        while not self.stop_event.is_set():
            interval = self.running.probe_interval_s if self.running else 0
            if not self.stop_event.wait(interval or 5.0) and interval and self.running:
                try:
                    self.probe()
                except Exception:  # the next round tries again; status shows the last one
                    log.exception("periodic probe failed")

    # ------------------------------------------------------------------ memcached watch

    def watch_forever(self) -> None:
        while not self.stop_event.is_set():
            self._watch.wait(WATCH_INTERVAL_S)
            if not self.stop_event.is_set():
                self._watch.tick()


class _MemcachedWatch:
    """Flushes the cache when memcached restarts or is flushed, including while we were down."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.detector = RestartDetector()
        self.target: tuple[str, int] | None = None
        self.reachable = True
        # memcached's stats reads that failed since the agent started, and the last why.
        self.errors = 0
        self.last_error: str | None = None
        self.pidfd: int | None = None
        self.pid: int | None = None

    def wait(self, timeout: float) -> None:
        """Sleep until the next tick, or until memcached's process exits: then flush at once,
        before a restarted memcached can answer (polling alone leaves up to a second)."""
        if self.pidfd is None:
            self.agent.stop_event.wait(timeout)
            return
        ready = select.select([self.pidfd], [], [], timeout)[0]
        if ready:
            log.warning("memcached (pid %s) exited: flushing the cache", self.pid)
            try:
                self.agent.dataplane.flush()
            except Exception:
                log.exception("flush failed")
            self._forget_pid()

    def _forget_pid(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
        self.pidfd = self.pid = None

    def _follow(self, pid: Any) -> None:
        if not isinstance(pid, int) or pid == self.pid:
            return
        self._forget_pid()
        try:
            self.pidfd, self.pid = os.pidfd_open(pid), pid
        except OSError:
            pass  # not in our PID namespace (a remote memcached): polling only

    def tick(self) -> None:
        cfg = self.agent.running
        if cfg is None:
            return
        target = (cfg.memcached.address, cfg.memcached.port)
        if target != self.target:
            self.target, self.detector = target, RestartDetector()
        try:
            stats = fetch_stats(*target)
        except StatsError as e:
            if self.reachable:
                log.warning("memcached not answering stats: %s", e)
            self.reachable = False
            self.errors += 1
            self.last_error = str(e)
            return
        self.reachable = True
        self._follow(stats.get("pid"))
        first = self.detector.last is None
        reason = self._since_last_run(stats) if first else self.detector.observe(stats)
        if first:
            self.detector.observe(stats)
        if reason:
            log.warning("%s: flushing the cache", reason)
            try:
                self.agent.dataplane.flush()
            except Exception:
                log.exception("flush failed")
                return
        if reason or first:
            self._persist(stats)

    def _state_path(self) -> Path:
        return self.agent.store.root / MEMCACHED_STATE

    def _since_last_run(self, stats: dict[str, Any]) -> str | None:
        try:
            saved = json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            # Nothing known about the memcached the pinned cache was filled from.
            return "no record of the memcached the cache was filled from"
        started = time.time() - stats.get("uptime", 0)
        if saved.get("pid") != stats.get("pid") or abs(saved.get("started", 0) - started) > 2:
            return "memcached restarted while the agent was down"
        if isinstance(stats.get("cmd_flush"), int) and stats["cmd_flush"] > saved.get(
            "cmd_flush", 0
        ):
            return "memcached was flushed while the agent was down"
        return None

    def _persist(self, stats: dict[str, Any]) -> None:
        rec = {"pid": stats.get("pid"), "started": time.time() - stats.get("uptime", 0),
               "cmd_flush": stats.get("cmd_flush", 0)}
        try:
            self.agent.store.ensure()
            atomic_write(self._state_path(), json.dumps(rec).encode())
        except OSError as e:
            log.warning("cannot record memcached state: %s", e)


# --------------------------------------------------------------------------- entry point


def run(config: Path, state_dir: Path, socket_path: Path, bpffs: Path,
        detach_on_exit: bool, *, fault: Any = None) -> int:
    """The daemon. Exits non-zero only when it cannot serve its socket: a config file that is
    refused is reported in status (the agent keeps serving what is pinned), never fatal.
    `fault`: tests only (Dataplane's fault hook)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mcache_agent.dataplane import Dataplane

    store = VersionStore(state_dir)
    try:
        store.ensure()
    except OSError as e:
        print(f"cannot use the state directory {state_dir}: {e}", file=sys.stderr)
        return 1
    agent = Agent(Dataplane(Path(bpffs), fault=fault), store, startup_file=Path(config))
    server = ControlServer(socket_path, agent.handle)
    try:
        server.bind()
    except (OSError, RuntimeError) as e:
        print(f"cannot serve {socket_path}: {e}", file=sys.stderr)
        return 1
    agent.on_stop = server.stop
    metrics = _Metrics(agent)
    agent.on_config = metrics.reconfigure
    # /metrics from the start, on the default listen until a config says otherwise: a host
    # with no config yet (or a first apply under way) scrapes as up and says so in its data.
    metrics.reconfigure(None, None)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # The socket answers from the start: status during a first apply says what is going on.
    threading.Thread(target=start_up, args=(agent, metrics, Path(config), socket_path),
                     name="start", daemon=True).start()
    server.serve_forever()
    agent.stop_event.set()
    # Without --detach-on-exit the pinned data plane keeps serving after we are gone.
    if detach_on_exit and not agent.torn_down:
        with agent.lock:
            agent.dataplane.teardown()
            log.info("detached on exit")
    metrics.close()
    return 0


def start_up(agent: Agent, metrics: _Metrics, config: Path, socket_path: Path) -> None:
    """The start-up thread. Whatever goes wrong bringing the config in, the memcached watch and
    the probe threads start: the watch is what empties the cache when memcached restarts."""
    try:
        bring_up(agent, metrics, config)
    except Exception:  # the agent keeps serving its socket; status says what it can
        log.exception("start-up failed")
    finally:
        agent.starting = False
        threading.Thread(target=agent.watch_forever, name="memcached-watch",
                         daemon=True).start()
        threading.Thread(target=agent.probe_forever, name="probe", daemon=True).start()
    log.info("serving %s (version %s)", socket_path,
             agent.running.version if agent.running else "none")


def bring_up(agent: Agent, metrics: _Metrics, config: Path) -> None:
    """The start-up: the config file checked, the agent started with it, the metrics endpoint
    of what runs then. Raises nothing the agent cannot say in status (its caller logs the
    rest)."""
    cfg, faults = None, []
    try:
        # A host being prepared has no config yet: serve what is pinned (or nothing) until
        # one is applied through the socket.
        if config.exists():
            cfg = load_config(config)
            faults = check_semantics(cfg, None)
    except ConfigError as e:
        faults = e.faults
    except Exception as e:  # say it in status, as a refused file
        log.exception("checking the config file %s", config)
        faults = [Fault("$", f"cannot check the config file: {type(e).__name__}: {e}")]
    agent.start(None if faults else cfg, path=str(config), faults=faults)
    metrics.reconfigure(agent.running, None)


class _Metrics:
    """The metrics endpoint, following the running config's metrics.listen (the default, :9465,
    while none runs). It never raises:
    an endpoint that cannot be served (the port taken, an address not on this host) is
    logged, shown in status, and returned as a warning to the apply that asked for it."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.listen = ""
        self.server: Any = None

    def reconfigure(self, cfg: Config | None, _previous: Config | None) -> str | None:
        listen = cfg.metrics_listen if cfg else DEFAULT_METRICS_LISTEN
        if listen == self.listen and (self.server is not None or not listen):
            return None
        self.close()
        self.listen = listen
        if not listen:
            self.agent.metrics = None
            return None
        try:
            from mcache_agent.metrics import start_metrics

            self.server = start_metrics(listen, self.agent.status)
        except Exception as e:  # OSError, but any: see the class
            error = f"cannot serve metrics on {listen}: {type(e).__name__}: {e}"
            log.error("%s", error)
            self.agent.metrics = {"listen": listen, "serving": False, "error": error}
            return error
        self.agent.metrics = {"listen": listen, "serving": True, "error": None}
        return None

    def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            try:
                server.shutdown()
                server.server_close()
            except Exception:  # closing is best effort; the next bind says
                log.exception("closing the metrics endpoint")

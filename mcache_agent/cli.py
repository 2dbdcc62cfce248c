"""`mcache-agent`: the daemon entry point and the client commands.

Exit codes: 0 ok, 2 bad input (each fault as `$.path: message`), 1 runtime failure,
3 agent not reachable. `--json` prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mcache_agent import build, control
from mcache_agent.config import ConfigError, Fault, check_semantics, load_config
from mcache_agent.paths import DEFAULT_BPFFS, DEFAULT_SOCKET, DEFAULT_STATE_DIR

EXIT_OK, EXIT_RUNTIME, EXIT_INVALID, EXIT_UNREACHABLE = 0, 1, 2, 3
# status answers while an apply runs (the socket serves requests concurrently): a status that
# takes longer than this means the agent is stuck.
STATUS_TIMEOUT_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # Given on the parent and on every subcommand, so they may come before or after it.
    common.add_argument("--socket", type=Path, default=argparse.SUPPRESS,
                        help=f"control socket (default {DEFAULT_SOCKET})")
    common.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS,
                        help=f"versions store (default {DEFAULT_STATE_DIR})")
    common.add_argument("--bpffs", type=Path, default=argparse.SUPPRESS,
                        help=f"pin directory (default {DEFAULT_BPFFS})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="one JSON document on stdout")

    p = argparse.ArgumentParser(prog="mcache-agent", parents=[common],
                                description="mcache per-host agent")
    p.add_argument("--version", action="version", version=build.version_line())
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    run = sub.add_parser("run", parents=[common], help="run the daemon")
    run.add_argument("--config", type=Path, required=True,
                     help="config to start with; when the file does not exist yet, the agent "
                          "serves what is pinned (or nothing) until a config is applied")
    run.add_argument("--detach-on-exit", action="store_true",
                     help="tear the data plane down on SIGTERM (default: leave it serving)")
    v = sub.add_parser("validate", parents=[common], help="check config files (no daemon)")
    v.add_argument("files", nargs="+", type=Path, metavar="FILE")
    v.add_argument("--no-host-checks", action="store_true",
                   help="skip checks against this host's interfaces (controller side)")
    a = sub.add_parser("apply", parents=[common], help="apply a config file")
    a.add_argument("file", type=Path, metavar="FILE")
    a.add_argument("--check", action="store_true",
                   help="show the diff and strategy; change nothing")
    sub.add_parser("status", parents=[common], help="what is running")
    sub.add_parser("versions", parents=[common], help="stored versions")
    r = sub.add_parser("rollback", parents=[common],
                       help="re-apply the previous or a stored version")
    r.add_argument("--to", type=int, metavar="N",
                   help="the version to go back to (default: the previous one); naming a "
                        "rejected version takes it off the rejected list")
    r.add_argument("--reason", metavar="TEXT",
                   help="why (kept with the version left, which is recorded as rejected: no "
                        "start or apply takes its number again)")
    sub.add_parser("probe", parents=[common], help="run the health probe")
    sub.add_parser("stop", parents=[common], help="stop the daemon and tear the data plane down")
    c = sub.add_parser("capture", parents=[common],
                       help="write the frames the data plane sees, with its verdicts, to pcapng",
                       description="Frames the data plane decided about (requests, the replies "
                                   "it sent with XDP_TX, the replies it filled from), each "
                                   "with a comment naming its verdicts, path, key and config "
                                   "version. Reads the pins: works while the agent is down.")
    c.add_argument("--write", "-w", required=True, metavar="FILE",
                   help="new pcapng file to write (0600; an existing file is refused), or - "
                        "for stdout (| tshark -r -)")
    c.add_argument("--interface", "-i", metavar="IF", help="only frames of this interface")
    c.add_argument("--verdict", action="append", metavar="V",
                   help="only frames with this verdict (repeatable; 'none': frames that got "
                        "none, 'all': everything); default: every verdict but 'pass'")
    c.add_argument("--key", default="", metavar="PREFIX",
                   help="only frames about a key that starts with PREFIX (in the kernel)")
    c.add_argument("--filter", metavar="EXPR",
                   help="tcpdump expression, compiled by libpcap, run on each copied frame")
    c.add_argument("--count", "-c", type=int, default=0, metavar="N",
                   help="stop after N frames (default: no limit)")
    c.add_argument("--duration", type=float, default=60.0, metavar="S",
                   help="stop after S seconds (default 60; 0: until interrupted)")
    c.add_argument("--snaplen", type=int, default=0, metavar="BYTES",
                   help="bytes of each frame kept (default: whole frames)")
    return p


def main(argv: list[str] | None = None, *, fault: Any = None) -> int:
    """`fault`: tests only, passed to the daemon's data plane (see Dataplane)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: usage errors are bad input
        return EXIT_INVALID if e.code not in (0, None) else EXIT_OK
    args.socket = getattr(args, "socket", DEFAULT_SOCKET)
    args.state_dir = getattr(args, "state_dir", DEFAULT_STATE_DIR)
    args.bpffs = getattr(args, "bpffs", DEFAULT_BPFFS)
    args.json = getattr(args, "json", False)
    if args.cmd == "run":
        from mcache_agent import daemon

        return daemon.run(args.config, args.state_dir, args.socket, args.bpffs,
                          args.detach_on_exit, fault=fault)
    if args.cmd == "validate":
        return cmd_validate(args)
    if args.cmd == "status":
        return cmd_status(args)
    if args.cmd == "capture":
        return cmd_capture(args)
    if args.cmd == "apply":
        try:
            text = _read_config_text(args.file)
        except ConfigError as e:
            return _fail_invalid(args, "cannot read the config", e.faults)
        return _remote(args, {"op": "apply", "config": text, "check": args.check})
    if args.cmd == "rollback":
        req: dict[str, Any] = {"op": "rollback"}
        if args.to is not None:
            req["to"] = args.to
        if args.reason:
            req["reason"] = args.reason
        return _remote(args, req)
    return _remote(args, {"op": args.cmd})


def _read_config_text(path: Path) -> str:
    from mcache_agent.config import read_config_text

    return read_config_text(path)


# --------------------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0 when every file is valid, 2 when one has faults (bad input), 1 when a file could
    not be checked at all: an error of the checks themselves, reported like a fault at $ rather
    than as a traceback (any config gives a Config or faults, so this is a bug)."""
    results = []
    broken = False
    for path in args.files:
        faults: list[Fault]
        version = None
        try:
            cfg = load_config(Path(path))
            version = cfg.version
            faults = check_semantics(cfg, None, host_checks=not args.no_host_checks)
        except ConfigError as e:
            faults = e.faults
        except Exception as e:
            broken = True
            faults = [Fault("$", f"could not be checked: {type(e).__name__}: {e}")]
        results.append({"file": str(path), "ok": not faults, "version": version,
                        "faults": [f.to_dict() for f in faults]})
    all_ok = all(r["ok"] for r in results)
    if args.json:
        _print_json({"ok": all_ok, "files": results})
    else:
        for r in results:
            if r["ok"]:
                print(f"{r['file']}: ok (version {r['version']})")
            else:
                print(f"{r['file']}: {len(r['faults'])} fault(s)", file=sys.stderr)
                for f in r["faults"]:
                    print(f"{f['path']}: {f['message']}", file=sys.stderr)
    if broken:
        return EXIT_RUNTIME
    return EXIT_OK if all_ok else EXIT_INVALID


# --------------------------------------------------------------------------- remote


def _remote(args: argparse.Namespace, req: dict[str, Any]) -> int:
    try:
        resp = control.request(args.socket, req)
    except control.AgentUnreachable as e:
        return _unreachable(args, str(e))
    except ValueError as e:
        return _unreachable(args, f"bad response from the agent: {e}")
    return _show(args, req["op"], resp)


def _unreachable(args: argparse.Namespace, message: str) -> int:
    if args.json:
        _print_json({"ok": False, "error": {"kind": "unreachable", "message": message,
                                            "faults": []}})
    else:
        print(f"mcache-agent: agent not reachable: {message}", file=sys.stderr)
    return EXIT_UNREACHABLE


def _fail_invalid(args: argparse.Namespace, message: str, faults: list[Fault]) -> int:
    resp = control.error("invalid", message, [f.to_dict() for f in faults])
    return _show(args, "apply", resp)


def _show(args: argparse.Namespace, op: str, resp: dict[str, Any]) -> int:
    if args.json:
        _print_json(resp)
    if not resp.get("ok"):
        err = resp.get("error") or {}
        if not args.json:
            print(f"mcache-agent: {err.get('message', 'failed')}", file=sys.stderr)
            for f in err.get("faults") or []:
                print(f"{f['path']}: {f['message']}", file=sys.stderr)
        return EXIT_INVALID if err.get("kind") == "invalid" else EXIT_RUNTIME
    if not args.json:
        _human(op, resp.get("result"))
    if op == "probe" and not (resp.get("result") or {}).get("ok"):
        return EXIT_RUNTIME
    return EXIT_OK


def _human(op: str, result: Any) -> None:
    if op == "status":
        print(format_status(result))
    elif op == "versions":
        print(format_versions(result))
    elif op in ("apply", "rollback"):
        if result.get("check"):
            print(result.get("diff") or "(no change)", end="" if result.get("diff") else "\n")
            why = "; ".join(result.get("reasons") or [])
            print(f"would apply version {result.get('version')} with strategy "
                  f"{result.get('strategy')}" + (f" ({why})" if why else ""))
        elif not result.get("changed"):
            print(result.get("message", "no change"))
        else:
            print(f"version {result.get('version')} applied: strategy {result.get('strategy')}, "
                  f"{_ms(result.get('duration_ms'))} (switch {_ms(result.get('swap_ms'))}), "
                  f"cache kept: {_yes_no(result.get('cache_kept'))}")
        rejected = result.get("rejected") if op == "rollback" else None
        if rejected:
            print(f"version {rejected.get('version')} rejected: no start or apply takes it "
                  f"again ({rejected.get('reason')})")
        for w in result.get("warnings") or []:
            print(f"warning: {w}")
    elif op == "probe":
        print(f"probe {'ok' if result.get('ok') else 'FAILED'}: {result.get('detail')} "
              f"({_ms(result.get('duration_ms'))})")
    elif op == "stop":
        print("agent stopped" + (", data plane torn down" if result.get("teardown") else ""))
    else:
        print(json.dumps(result, indent=2))


def _ms(v: Any) -> str:
    """A duration for people: ms with one decimal; '-' when there is none."""
    return "-" if v is None else f"{float(v):.1f} ms"


def _bytes(v: Any) -> str:
    if v is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= size:
            return f"{v / size:.1f} {unit}"
    return f"{v} B"


def _yes_no(v: Any) -> str:
    return "-" if v is None else ("yes" if v else "no")


def _or_dash(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(key) for key, _value in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def format_status(st: dict[str, Any]) -> str:
    last = st.get("last_apply") or {}
    cache = st.get("cache") or {}
    probe = st.get("probe") or {}
    counters = st.get("counters") or {}
    cfile = st.get("config_file") or {}
    busy = st.get("apply_in_progress") or {}
    attached = ", ".join(f"{a.get('interface')}({a.get('mode')},{a.get('role')})"
                         for a in st.get("attached") or []) or "-"
    agent = "running" if st.get("running") else "not running"
    if st.get("starting"):
        agent += " (starting)"
    rows = [
        ("agent", agent),
        ("version", _or_dash(st.get("version"))),
        ("last apply", f"v{last.get('version')} {_or_dash(last.get('result'))} "
                       f"{_or_dash(last.get('strategy'))} {_ms(last.get('duration_ms'))}"
                       if last else "-"),
    ]
    if busy:
        rows.append(("applying", f"v{busy.get('version')} since {busy.get('since')}"))
    if cfile and cfile.get("result") not in ("applied", "running"):
        rows.append(("config file", f"{cfile.get('result')}: {cfile.get('message')}"))
        for f in cfile.get("faults") or []:
            rows.append(("", f"{f.get('path')}: {f.get('message')}"))
    used, entries = cache.get("used"), cache.get("entries")
    bypass = st.get("local_bypass") or {}
    rows += [
        ("attached", attached),
        ("local bypass", f"on at {bypass['cgroup']}, {bypass.get('sockets', 0)} sockets"
                         if bypass.get("cgroup") else
                         f"off, {bypass['sockets']} sockets leaving" if bypass.get("sockets")
                         else "off"),
        ("cache", f"{_or_dash(used)}/{_or_dash(entries)} entries, "
                  f"{_bytes(cache.get('memory_bytes'))} of kernel memory"
                  if entries is not None else "-"),
        ("hit ratio", "-" if st.get("hit_ratio") is None else f"{st['hit_ratio']:.2%}"),
        ("counters", " ".join(f"{k}={v}" for k, v in counters.items() if v) or "-"),
    ]
    reasons = {k: v for k, v in (st.get("flush_reasons") or {}).items() if v}
    if reasons:  # real traffic the write scanner could not read (docs/HOSTILE_INPUT.md)
        rows.append(("flushed for", " ".join(f"{k}={v}" for k, v in reasons.items())))
    for version, counts in sorted((st.get("counters_by_version") or {}).items(),
                                  key=lambda kv: -int(kv[0]))[:3]:
        rows.append(("", f"v{version}: " + " ".join(f"{k}={v}" for k, v in counts.items())))
    rows += [
        ("probe", f"{'ok' if probe.get('ok') else 'FAILED'} at {probe.get('at')}"
                  if probe else "-"),
    ]
    if last.get("error"):
        rows.append(("last error", str(last["error"])))
    for rej in st.get("rejected") or []:
        rows.append(("rejected", f"v{rej.get('version')} {_rejected_line(rej)}"))
    for e in st.get("errors") or []:
        rows.append(("error", e))
    return _table(rows)


def _rejected_line(rej: dict[str, Any]) -> str:
    to = rej.get("rolled_back_to")
    return (f"at {_or_dash(rej.get('at'))}"
            + (f", rolled back to v{to}" if to is not None else "")
            + f": {_or_dash(rej.get('reason'))}")


def format_versions(result: dict[str, Any]) -> str:
    lines = [f"{'':2}{'VERSION':>7}  {'RESULT':7}  {'STRATEGY':12}  APPLIED AT"]
    for v in result.get("versions", []):
        mark = "*" if v.get("current") else ("-" if v.get("previous") else " ")
        if v.get("rejected"):
            mark = "x"
        lines.append(f"{mark:2}{v['version']:>7}  {v.get('result') or '?':7}  "
                     f"{v.get('strategy') or '-':12}  {v.get('applied_at') or '-'}")
    lines.append("(* current, - previous, x rejected: never applied again)")
    for rej in result.get("rejected") or []:
        lines.append(f"rejected v{rej.get('version')} {_rejected_line(rej)}")
    return "\n".join(lines)


def _print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


# --------------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    """The agent's status; when it does not answer, what the pins and the versions store say,
    and exit 3 (not reachable)."""
    try:
        resp = control.request(args.socket, {"op": "status"}, timeout=STATUS_TIMEOUT_S)
    except (control.AgentUnreachable, ValueError) as e:
        offline = offline_status(args, str(e))
        if args.json:
            _print_json({"ok": False, "error": {"kind": "unreachable", "message": str(e),
                                                "faults": []}, "offline": offline})
        else:
            print(format_status(offline))
            print(f"mcache-agent: agent not reachable: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return _show(args, "status", resp)


def offline_status(args: argparse.Namespace, why: str) -> dict[str, Any]:
    """Status from the pins and the versions store when the daemon does not answer."""
    from mcache_agent.daemon import status_document
    from mcache_agent.versions import VersionStore

    store = VersionStore(args.state_dir)
    errors = [f"agent: {why}"]
    dataplane, pinned = None, None
    try:
        from mcache_agent.dataplane import Dataplane

        dataplane = Dataplane(Path(args.bpffs))
        pinned = dataplane.adopt()
    except Exception as e:  # the point is to say what we can
        errors.append(f"dataplane: {type(e).__name__}: {e}")
        dataplane = None
    cfg = None
    current = store.current()
    if current is not None and (pinned is None or pinned == current):
        try:
            cfg = load_config(store.get(current))
        except Exception as e:
            errors.append(f"versions: {e}")
    doc = status_document(dataplane, store, cfg, running=False, version=pinned,
                          last_apply=store.outcome(pinned) if pinned is not None else None,
                          probe=None)
    doc["errors"] = errors + doc.get("errors", [])
    return doc


# --------------------------------------------------------------------------- capture


def cmd_capture(args: argparse.Namespace) -> int:
    """Runs a capture in this process (the pins are root's, as is the capture)."""
    import signal

    from mcache_agent import capture
    from mcache_agent.pcap_filter import FilterError

    if os.geteuid() != 0:
        print("mcache-agent: capture needs root", file=sys.stderr)
        return EXIT_INVALID
    to_stdout = args.write == "-"
    if to_stdout and args.json:
        print("mcache-agent: --json prints on stdout, where --write - puts the capture",
              file=sys.stderr)
        return EXIT_INVALID
    if args.count < 0 or args.duration < 0:
        print("mcache-agent: --count and --duration are 0 or more", file=sys.stderr)
        return EXIT_INVALID
    spec = capture.Spec(interface=args.interface, verdicts=args.verdict,
                        key_prefix=args.key.encode(), expression=args.filter,
                        snaplen=args.snaplen, count=args.count, duration_s=args.duration)
    stop = False

    def on_signal(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        # A file is created (new, 0600) only once the capture has started: see capture.run.
        out = sys.stdout.buffer if to_stdout else Path(args.write)
        summary = capture.run(Path(args.bpffs), spec, out, should_stop=lambda: stop)
    except (capture.CaptureError, FilterError) as e:
        print(f"mcache-agent: capture: {e}", file=sys.stderr)
        return EXIT_INVALID
    except BrokenPipeError:  # the reader (tshark, head) went away: done
        return EXIT_OK
    except OSError as e:
        print(f"mcache-agent: capture: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    doc = {"written": summary.written, "filtered_out": summary.filtered_out,
           "lost": summary.lost, "stopped_by": summary.reason, "by_verdict": summary.by_verdict,
           "file": args.write}
    if args.json:
        _print_json({"ok": True, "result": doc})
    else:
        print(f"mcache-agent: {summary.written} frames written to {args.write} "
              f"(stopped by {summary.reason}; {summary.filtered_out} not matching --filter, "
              f"{summary.lost} lost in the kernel)", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

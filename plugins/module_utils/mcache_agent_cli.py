"""Shared by the mcache modules: reading what `mcache-agent ... --json` prints on a host."""

from __future__ import annotations

import json
import os


def parse_json(out):
    """The agent prints one JSON document; take the last line that parses as an object."""
    for line in reversed((out or "").strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    try:
        return json.loads(out)
    except (TypeError, ValueError):
        return None


def run_agent(module, argv):
    """Run the agent (argv list, never a shell); return (result, error message)."""
    rc, out, err = module.run_command(argv)
    doc = parse_json(out)
    if not isinstance(doc, dict):
        return None, "no JSON from %s (exit %d): %s" % (
            " ".join(argv[1:3]), rc, (err or out or "").strip()[-500:])
    if doc.get("ok") is False:
        error = doc.get("error") or {}
        return None, "%s: %s" % (error.get("kind"), error.get("message", "failed"))
    return doc.get("result", doc), None


def stored_text(state_dir, version):
    """A stored config version's text on the host, for --diff."""
    if version is None:
        return None
    try:
        with open(os.path.join(state_dir, "versions", "%d.yml" % int(version))) as f:
            return f.read()
    except (OSError, ValueError, TypeError):
        return None


def format_faults(faults):
    return "; ".join("%s: %s" % (f.get("path"), f.get("message")) for f in faults or [])

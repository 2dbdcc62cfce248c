# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Shared by the mcache modules: the host's agent, reached over its control socket.

The modules run under the host's own Python, not the agent's venv, so they carry this small
client of the agent's control protocol (mcache_agent/control.py: one JSON object on one line
each way, root only). Talking to the socket directly, instead of running `mcache-agent ...
--json`, saves a Python start and the agent's imports per call (measured in docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time

DEFAULT_SOCKET = "/run/mcache/agent.sock"

# The argument specs of the options every module shares (doc fragment mcache.fleet.agent).
SOCKET_ARGS = dict(socket=dict(type="path", default=DEFAULT_SOCKET))
STATE_DIR_ARGS = dict(state_dir=dict(type="path", default="/var/lib/mcache"))
PROBE_ARGS = dict(
    probe_retries=dict(type="int", default=5),
    probe_delay=dict(type="float", default=1.0),
    probe_deadline=dict(type="float", default=30.0),
)


class AgentUnreachable(Exception):
    """Nobody answers on the socket (the agent is not installed, not started, or gone)."""


class AgentRefused(Exception):
    """The agent answered with an error: kind (invalid, runtime, ...), message, faults."""

    def __init__(self, error):
        self.kind = error.get("kind")
        self.message = error.get("message", "failed")
        self.faults = error.get("faults") or []
        super().__init__(self.message)

    def describe(self):
        if not self.faults:
            return self.message
        return "%s (%s)" % (self.message, format_faults(self.faults))


def request(path, req, timeout=300.0):
    """Send one request, return the agent's `result`; AgentUnreachable or AgentRefused."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path or DEFAULT_SOCKET)
        except OSError as e:
            raise AgentUnreachable("%s: %s" % (path or DEFAULT_SOCKET, e.strerror or e)) from None
        data = bytearray()
        try:
            s.sendall((json.dumps(req) + "\n").encode())
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise AgentUnreachable("%s: %s" % (path or DEFAULT_SOCKET, e)) from None
    finally:
        s.close()
    try:
        doc = json.loads(bytes(data))
    except ValueError:
        raise AgentUnreachable("the agent closed the socket without an answer") from None
    if not isinstance(doc, dict):
        raise AgentUnreachable("the agent sent a non-object answer")
    if not doc.get("ok"):
        raise AgentRefused(doc.get("error") or {})
    return doc.get("result") or {}


def probe_until_ok(path, retries, delay, deadline):
    """The agent's health probe until one passes, at most `retries` times within `deadline`
    seconds; the last probe's evidence, with `attempts` and each attempt's `details`."""
    started = time.monotonic()
    details = []
    evidence = {}
    for attempt in range(1, max(retries, 1) + 1):
        try:
            evidence = request(path, {"op": "probe"}, timeout=max(deadline, 1.0))
        except AgentRefused as e:
            evidence = {"ok": False, "detail": e.describe()}
        except AgentUnreachable as e:
            evidence = {"ok": False, "detail": "agent not reachable: %s" % e}
        evidence["attempts"] = attempt
        details.append(evidence.get("detail"))
        if evidence.get("ok") or time.monotonic() - started + delay >= deadline:
            break
        time.sleep(delay)
    evidence["details"] = details
    evidence["elapsed_s"] = round(time.monotonic() - started, 3)
    return evidence


def stored_text(state_dir, version):
    """A stored config version's text on the host, for --diff."""
    if version is None:
        return None
    try:
        with open(os.path.join(state_dir, "versions", "%d.yml" % int(version))) as f:
            return f.read()
    except (OSError, ValueError, TypeError):
        return None


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def write_atomic(path, text, mode=0o600):
    """Write a file whole or not at all (temp file in the same directory, fsync, rename)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def format_faults(faults):
    return "; ".join("%s: %s" % (f.get("path"), f.get("message")) for f in faults or [])


def describe_rejection(rec):
    """One line: when, to what, and why a host rejected a version (the agent's words)."""
    to = rec.get("rolled_back_to")
    return "rolled back%s at %s: %s" % (" to version %s" % to if to is not None else "",
                                        rec.get("at"), rec.get("reason"))

"""The control socket: one JSON line in, one JSON line out, root only.

The server owns the transport rules (permissions, SO_PEERCRED, size cap, slow clients, garbage,
how many clients at once); what a request means is up to the handler it is given (the daemon).
Every request that is not served gets a JSON error answer when the client can still read one.
Each connection is served on its own thread, so `status` answers while an apply runs: the
handler decides what must wait for what.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 2 << 20
READ_TIMEOUT_S = 5.0  # the longest wait for the next bytes of a request
# From accept to the whole request: a client trickling a byte at a time (each recv well within
# READ_TIMEOUT_S) would otherwise hold one of the MAX_CLIENTS slots for as long as it liked.
REQUEST_DEADLINE_S = 5.0
# After a refusal, how long (and how much) to read what the client still sends (see _drain).
DRAIN_S = 1.0
# Requests are flat objects; json.loads recurses per level (RecursionError at ~1000, on the
# serving thread): deeper input is refused before it is parsed.
MAX_JSON_DEPTH = 32
# Connections served at once; more are answered "busy" (a runaway client cannot pile up threads).
MAX_CLIENTS = 16
# On stop, how long in-flight requests may take to send their answers.
DRAIN_TIMEOUT_S = 30.0
# An apply may compile and load programs; give it time before the client gives up.
CLIENT_TIMEOUT_S = 300.0

OPS = {"apply", "status", "versions", "rollback", "probe", "signals", "stop"}
# op -> {field: (allowed types, required)}
_FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "apply": {"config": ((str,), True), "check": ((bool,), False)},
    "status": {},
    "versions": {},
    "rollback": {"to": ((int, type(None)), False), "reason": ((str, type(None)), False)},
    "probe": {},
    "signals": {},
    "stop": {},
}

Response = dict[str, Any]
Handler = Callable[[dict[str, Any]], Response]


class RequestInvalid(Exception):
    pass


def ok(result: Any) -> Response:
    return {"ok": True, "result": result}


def error(kind: str, message: str, faults: list[dict[str, str]] | None = None) -> Response:
    return {"ok": False, "error": {"kind": kind, "message": message, "faults": faults or []}}


def check_request(req: Any) -> dict[str, Any]:
    """Shape-check a decoded request so handlers only see well-typed ones."""
    if not isinstance(req, dict):
        raise RequestInvalid("request must be a JSON object")
    op = req.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise RequestInvalid(f"unknown op {op!r} (ops: {', '.join(sorted(OPS))})")
    spec = _FIELDS[op]
    for key, value in req.items():
        if key == "op":
            continue
        if key not in spec:
            raise RequestInvalid(f"op {op!r} takes no field {key!r}")
        types, _required = spec[key]
        # bool is an int in Python; a version number given as true is garbage, not 1.
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise RequestInvalid(f"field {key!r} has the wrong type ({type(value).__name__})")
    for key, (_types, required) in spec.items():
        if required and key not in req:
            raise RequestInvalid(f"op {op!r} needs field {key!r}")
    if op == "rollback" and isinstance(req.get("to"), int) and req["to"] < 1:
        raise RequestInvalid("field 'to' must be a version number >= 1")
    if op == "rollback" and isinstance(req.get("reason"), str) and len(req["reason"]) > 1000:
        raise RequestInvalid("field 'reason' is over 1000 characters")
    return req


# The tokens that matter for nesting: a whole JSON string (an unterminated one runs to the end of
# the text, so no quote is scanned twice: linear on any input) or a bracket.
_NESTING_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[\]{}]', re.S)


def too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects nest deeper than `limit` in a JSON text (brackets inside
    strings do not count; text that is not JSON may be misjudged, and is refused anyway)."""
    if text.count("[") + text.count("{") <= limit:
        return False  # cannot be: no scan (almost every request)
    depth = 0
    for m in _NESTING_TOKEN.finditer(text):
        c = text[m.start()]
        if c in "[{":
            depth += 1
            if depth > limit:
                return True
        elif c in "]}":
            depth -= 1
    return False


def parse_request(line: str) -> dict[str, Any]:
    """A request line to a checked request; RequestInvalid for anything else."""
    if too_deep(line):
        raise RequestInvalid(f"request nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        req = json.loads(line)
    except RecursionError:  # the pre-check should have caught it; never kill the thread
        raise RequestInvalid("request nests too deep") from None
    except ValueError as e:
        raise RequestInvalid(f"request is not a JSON line: {e}") from None
    return check_request(req)


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer:
    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        allowed_uids: frozenset[int] = frozenset({0}),
        read_timeout: float = READ_TIMEOUT_S,
        request_deadline: float = REQUEST_DEADLINE_S,
        max_request: int = MAX_REQUEST_BYTES,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.path = Path(path)
        self.handler = handler
        self.allowed_uids = allowed_uids
        self.read_timeout = read_timeout
        self.request_deadline = request_deadline
        self.max_request = max_request
        self.stopping = threading.Event()
        self._sock: socket.socket | None = None
        self._slots = threading.BoundedSemaphore(max_clients)
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()

    def bind(self) -> None:
        self._check_dir()
        if self.path.is_socket():
            if _socket_alive(self.path):
                raise RuntimeError(f"another agent is serving {self.path}")
            self.path.unlink()
        elif self.path.exists():
            raise RuntimeError(f"{self.path} exists and is not a socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The umask closes the window between bind() and chmod() in which others could connect.
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.settimeout(0.2)
        self._sock = sock

    def _check_dir(self) -> None:
        """The socket's directory: made 0700 when missing; an existing one is used as it is
        (never chmodded: it may be shared, or the admin's choice) if only its owner, this
        process's user (root), can change what is in it. Anyone else who can write there could
        swap the socket for their own between the agent's bind and a client's connect."""
        parent = self.path.parent
        try:
            parent.mkdir(mode=0o700, parents=True)
            return
        except FileExistsError:
            pass
        st = parent.stat()
        if not stat.S_ISDIR(st.st_mode):
            raise RuntimeError(f"{parent} is not a directory")
        if st.st_uid != os.geteuid():
            raise RuntimeError(f"{parent} is owned by uid {st.st_uid}, not by uid "
                               f"{os.geteuid()} (root): not serving the control socket there")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise RuntimeError(f"{parent} is writable by group or others (mode "
                               f"{stat.S_IMODE(st.st_mode):04o}): not serving the control "
                               "socket there (make it 0700)")

    def serve_forever(self) -> None:
        """Serve until stop() or a handler asks to stop, each connection on its own thread;
        then wait (a while) for the requests still running to send their answers."""
        assert self._sock is not None, "bind() first"
        try:
            while not self.stopping.is_set():
                try:
                    conn, _addr = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self.stopping.is_set():
                        break
                    raise
                accepted = time.monotonic()
                if not self._slots.acquire(blocking=False):
                    with conn:
                        conn.settimeout(self.read_timeout)
                        _send(conn, error("busy", f"{MAX_CLIENTS} requests are being served; "
                                                  "try again"))
                    continue
                t = threading.Thread(target=self._serve_conn, args=(conn, accepted),
                                     daemon=True, name="control")
                with self._threads_lock:
                    self._threads.add(t)
                t.start()
        finally:
            self.close()
            self._drain_threads()

    def _serve_conn(self, conn: socket.socket, accepted: float) -> None:
        try:
            with conn:
                self._serve_one(conn, accepted + self.request_deadline)
        finally:
            self._slots.release()
            with self._threads_lock:
                self._threads.discard(threading.current_thread())

    def _drain_threads(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        with self._threads_lock:
            threads = list(self._threads)
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(deadline - time.monotonic(), 0))

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def _serve_one(self, conn: socket.socket, deadline: float) -> None:
        conn.settimeout(self.read_timeout)
        try:
            uid = peer_uid(conn)
        except OSError as e:
            log.warning("control: cannot read peer credentials: %s", e)
            return
        if uid not in self.allowed_uids:
            log.warning("control: refused a connection from uid %d (root only)", uid)
            _send(conn, error("denied", f"uid {uid} may not use the mcache agent (root only)"))
            return
        try:
            line = self._read_line(conn, deadline)
        except TimeoutError:
            if time.monotonic() >= deadline:
                why = f"no complete request within {self.request_deadline:g} s"
            else:
                why = f"nothing received within {self.read_timeout:g} s"
            log.warning("control: client too slow (%s), dropped", why)
            # No drain: a slow client would hold the slot through it. The answer fits in the
            # socket's buffer; a short timeout bounds the send all the same.
            conn.settimeout(self.read_timeout)
            _send(conn, error("invalid", why))
            return
        except RequestInvalid as e:
            self._refuse(conn, str(e))
            return
        except OSError as e:
            log.warning("control: read failed: %s", e)
            return
        try:
            req = parse_request(line)
        except RequestInvalid as e:
            self._refuse(conn, str(e))
            return
        try:
            resp = self.handler(req)
        except Exception as e:  # the agent must keep serving whatever one request does
            log.exception("control: op %s failed", req.get("op"))
            resp = error("runtime", f"{type(e).__name__}: {e}")
        conn.settimeout(self.read_timeout)
        _send(conn, resp)

    def _refuse(self, conn: socket.socket, message: str) -> None:
        conn.settimeout(self.read_timeout)
        _send(conn, error("invalid", message))
        # Closing a Unix socket with unread data resets it, and the client would lose the
        # answer: read (a bounded amount of, for a bounded time) what it is still sending.
        _drain(conn, limit=8 * self.max_request, seconds=DRAIN_S)

    def _read_line(self, conn: socket.socket, deadline: float) -> str:
        """One request line (the bytes before the first newline, or all of them at EOF);
        TimeoutError past the deadline or after read_timeout without a byte."""
        buf = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            conn.settimeout(min(self.read_timeout, left))
            chunk = conn.recv(65536)
            if not chunk:
                break
            nl = chunk.find(b"\n")
            if nl >= 0:
                buf += chunk[:nl]
                break
            buf += chunk
            if len(buf) > self.max_request:
                raise RequestInvalid(f"request is over {self.max_request} bytes")
        if len(buf) > self.max_request:
            raise RequestInvalid(f"request is over {self.max_request} bytes")
        if not buf.strip():
            raise RequestInvalid("empty request")
        try:
            return buf.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestInvalid(f"request is not UTF-8: {e}") from None


def _send(conn: socket.socket, resp: Response) -> None:
    try:
        conn.sendall((json.dumps(resp) + "\n").encode())
    except OSError as e:
        log.warning("control: could not send the response: %s", e)


def _drain(conn: socket.socket, limit: int, seconds: float) -> None:
    end = time.monotonic() + seconds
    try:
        conn.shutdown(socket.SHUT_WR)
        seen = 0
        while seen < limit:
            left = end - time.monotonic()
            if left <= 0:
                break
            conn.settimeout(left)
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            seen += len(chunk)
    except OSError:
        pass


def _socket_alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


# --------------------------------------------------------------------------- client


class AgentUnreachable(Exception):
    pass


def request(path: Path, req: dict[str, Any], timeout: float = CLIENT_TIMEOUT_S) -> Response:
    """Send one request and return the decoded response; AgentUnreachable when nobody answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except FileNotFoundError:
            raise AgentUnreachable(f"no agent socket at {path}") from None
        except PermissionError:
            raise AgentUnreachable(f"permission denied on {path} (root only)") from None
        except ConnectionRefusedError:
            raise AgentUnreachable(f"nobody is listening on {path}") from None
        try:
            s.sendall((json.dumps(req) + "\n").encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent answered and closed before reading (a refusal): read the answer
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise AgentUnreachable(f"no answer on {path} within {timeout}s") from None
    except OSError as e:
        raise AgentUnreachable(f"{path}: {e}") from None
    finally:
        s.close()
    if not data:
        raise AgentUnreachable(f"the agent closed {path} without answering")
    resp = json.loads(data)
    if not isinstance(resp, dict):
        raise AgentUnreachable(f"the agent sent a non-object response on {path}")
    return resp

"""The control socket: one JSON line in, one JSON line out, root only.

The server owns the transport rules (permissions, SO_PEERCRED, size cap, slow clients, garbage,
how many clients at once); what a request means is up to the handler it is given (the daemon).
Each connection is served on its own thread, so `status` answers while an apply runs: the
handler decides what must wait for what.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 2 << 20
READ_TIMEOUT_S = 5.0
# Connections served at once; more are answered "busy" (a runaway client cannot pile up threads).
MAX_CLIENTS = 16
# On stop, how long in-flight requests may take to send their answers.
DRAIN_TIMEOUT_S = 30.0
# An apply may compile and load programs; give it time before the client gives up.
CLIENT_TIMEOUT_S = 300.0

OPS = {"apply", "status", "versions", "rollback", "probe", "stop"}
# op -> {field: (allowed types, required)}
_FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "apply": {"config": ((str,), True), "check": ((bool,), False)},
    "status": {},
    "versions": {},
    "rollback": {"to": ((int, type(None)), False)},
    "probe": {},
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
    return req


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
        max_request: int = MAX_REQUEST_BYTES,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.path = Path(path)
        self.handler = handler
        self.allowed_uids = allowed_uids
        self.read_timeout = read_timeout
        self.max_request = max_request
        self.stopping = threading.Event()
        self._sock: socket.socket | None = None
        self._slots = threading.BoundedSemaphore(max_clients)
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()

    def bind(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
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
                if not self._slots.acquire(blocking=False):
                    with conn:
                        conn.settimeout(self.read_timeout)
                        _send(conn, error("busy", f"{MAX_CLIENTS} requests are being served; "
                                                  "try again"))
                    continue
                t = threading.Thread(target=self._serve_conn, args=(conn,), daemon=True,
                                     name="control")
                with self._threads_lock:
                    self._threads.add(t)
                t.start()
        finally:
            self.close()
            self._drain_threads()

    def _serve_conn(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._serve_one(conn)
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

    def _serve_one(self, conn: socket.socket) -> None:
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
            line = self._read_line(conn)
            req = check_request(json.loads(line))
        except RequestInvalid as e:
            _send(conn, error("invalid", str(e)))
            # Closing a Unix socket with unread data resets it, and the client would lose
            # the answer: read (a bounded amount of) what it is still sending.
            _drain(conn, limit=8 * self.max_request)
            return
        except (UnicodeDecodeError, ValueError) as e:
            _send(conn, error("invalid", f"request is not a JSON line: {e}"))
            return
        except TimeoutError:
            log.warning("control: client too slow, dropped")
            _send(conn, error("invalid", f"no complete request within {self.read_timeout}s"))
            return
        except OSError as e:
            log.warning("control: read failed: %s", e)
            return
        try:
            resp = self.handler(req)
        except Exception as e:  # the agent must keep serving whatever one request does
            log.exception("control: op %s failed", req.get("op"))
            resp = error("runtime", f"{type(e).__name__}: {e}")
        _send(conn, resp)

    def _read_line(self, conn: socket.socket) -> str:
        buf = bytearray()
        while True:
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
        return buf.decode("utf-8")


def _send(conn: socket.socket, resp: Response) -> None:
    try:
        conn.sendall((json.dumps(resp) + "\n").encode())
    except OSError as e:
        log.warning("control: could not send the response: %s", e)


def _drain(conn: socket.socket, limit: int) -> None:
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(1.0)
        seen = 0
        while seen < limit:
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

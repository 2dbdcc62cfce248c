"""mclab-init: PID 1 of a lab host (see lab/README.md).

Holds the host's namespaces, reaps orphans, and on SIGTERM/SIGINT ends every process of the
host and exits. It renames itself to `mclab-init` (/proc/1/comm): Ansible's service_mgr fact
reads that name, and a name of `init` or one ending in `sh` would make it fall back to
/sbin/init (systemd on the machine) and wrongly report `systemd`.

Run by lab/host-boot.sh with the system Python (no venv, standard library only).
"""

import ctypes
import os
import signal
import sys
import time

NAME = b"mclab-init"
PR_SET_NAME = 15


def set_name() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(NAME), 0, 0, 0)
    except OSError:
        pass


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def shutdown(signum: int, _frame: object) -> None:
    # kill(-1) from PID 1 of a PID namespace reaches every other process of the namespace.
    try:
        os.kill(-1, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        reap()
        try:
            os.kill(-1, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(0)


def main() -> None:
    set_name()
    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGCHLD, lambda *_: reap())
    if len(sys.argv) > 1:
        # readiness file: written once the name is set and the handlers are in place
        with open(sys.argv[1] + ".tmp", "w") as f:
            f.write("ready\n")
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    reap()
    while True:
        signal.pause()


if __name__ == "__main__":
    main()

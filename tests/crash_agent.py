"""`mcache-agent` with a fault injected: it SIGKILLs itself when an apply reaches a step.

    python -m tests.crash_agent STEP <mcache-agent arguments>

The shipped agent has no such switch: the kill tests inject it through the Dataplane's fault
hook (mcache_agent.dataplane.transaction.FAULT_POINTS)."""

from __future__ import annotations

import os
import signal
import sys

from mcache_agent import cli
from mcache_agent.dataplane.transaction import FAULT_POINTS


def main() -> int:
    step = sys.argv[1]
    if step not in FAULT_POINTS:
        print(f"no fault point {step!r} (points: {', '.join(FAULT_POINTS)})", file=sys.stderr)
        return 2

    def fault(at: str) -> None:
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return cli.main(sys.argv[2:], fault=fault)


if __name__ == "__main__":
    sys.exit(main())

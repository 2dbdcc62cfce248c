#!/usr/bin/python
# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Read the agent's signals (counters with their time), once or over a window."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: signals
short_description: Read the mcache agent's counters with the time they were read
description:
  - Asks the host's agent over its control socket for its signals - the data plane's verdict
    counters (hit, miss, pass, too_big, denied, fallback_flush, ...), the health probes run and
    failed, the memcached stats reads that failed, the running config version and release -
    with a monotonic and a wall clock time, so that two readings make a window.
  - With O(window_s), reads twice, that many seconds apart (the canary's bake), and returns
    both readings.
  - The comparison of windows is the mcache.fleet.canary_verdict filter's.
  - Read only; never reports C(changed). Runs in check mode too.
version_added: "0.2.0"
author: mcache contributors (@mcache)
options:
  window_s:
    description: Seconds between a first and a second reading; 0 reads once.
    type: float
    default: 0
  since:
    description: An earlier reading of this host (its C(at_monotonic) and C(boot_id) are
      used); with O(min_window_s), the reading waits until that many seconds have passed
      since it (the canary's window before a change is at least as long as its bake).
    type: dict
  min_window_s:
    description: Seconds that must have passed since O(since) before the (first) reading.
    type: float
    default: 0
extends_documentation_fragment:
  - mcache.fleet.agent
  - ansible.builtin.action_common_attributes
  - mcache.fleet.agent.reads
"""

EXAMPLES = r"""
- name: Read the signals over a five second window
  mcache.fleet.signals:
    window_s: 5
  register: baked
"""

RETURN = r"""
signals:
  description: The (last) reading - at_monotonic, at_unix, boot_id, agent_started_at_unix,
    version, release, counters (by verdict), probes (runs, failures), memcached (errors,
    reachable, last_error).
  returned: always
  type: dict
first:
  description: The first reading, when O(window_s) is over 0.
  returned: when window_s > 0
  type: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mcache.fleet.plugins.module_utils.agent_client import (
    SOCKET_ARGS,
    AgentRefused,
    AgentUnreachable,
    request,
)


def read(module, socket):
    try:
        return request(socket, {"op": "signals"}, timeout=10)
    except AgentRefused as e:
        module.fail_json(msg="the agent refused the signals request: %s (an agent older than "
                             "the canary analysis?)" % e.describe())
    except AgentUnreachable as e:
        module.fail_json(msg="agent not reachable: %s" % e, unreachable_agent=True)


def wait_since(since, min_window_s):
    """Sleep until min_window_s have passed since the reading `since` (same boot only: the
    monotonic clock of another boot says nothing). Returns the seconds slept."""
    if not since or min_window_s <= 0 or not isinstance(since.get("at_monotonic"), (int, float)):
        return 0.0
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            if f.read().strip() != since.get("boot_id"):
                return 0.0
    except OSError:
        return 0.0
    left = since["at_monotonic"] + min_window_s - time.monotonic()
    if left > 0:
        time.sleep(left)
        return left
    return 0.0


def main():
    module = AnsibleModule(
        argument_spec=dict(window_s=dict(type="float", default=0.0),
                           since=dict(type="dict"),
                           min_window_s=dict(type="float", default=0.0),
                           **SOCKET_ARGS),
        supports_check_mode=True,
    )
    p = module.params
    if p["window_s"] < 0:
        module.fail_json(msg="window_s must be 0 or more")
    wait_since(p["since"], p["min_window_s"])
    first = read(module, p["socket"])
    if p["window_s"] <= 0:
        module.exit_json(changed=False, signals=first)
    time.sleep(p["window_s"])
    module.exit_json(changed=False, first=first, signals=read(module, p["socket"]))


if __name__ == "__main__":
    main()

#!/usr/bin/python
# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Run the agent's health probe until it passes or time is up."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: probe
short_description: Health gate - prove that the kernel serves GET hits with memcached's value
description:
  - Asks the host's agent, over its control socket, to run its health probe until it passes,
    O(probe_retries) attempts are used up or O(probe_deadline) seconds have passed.
  - The probe SETs a fresh value over TCP and GETs it twice over UDP; it passes when both
    answers carry the value and the data plane counted a kernel hit for the probe key itself
    (its own counter, so other clients' traffic cannot sway it). The last probe's evidence is
    returned.
  - Never reports C(changed). In check mode nothing is applied, so the probe is not run.
version_added: "0.1.0"
author: mcache contributors (@mcache)
options: {}
extends_documentation_fragment:
  - mcache.fleet.agent
  - mcache.fleet.agent.probe
  - ansible.builtin.action_common_attributes
  - mcache.fleet.agent.reads
"""

EXAMPLES = r"""
- name: Probe within a deadline
  mcache.fleet.probe:
    probe_retries: 5
    probe_delay: 1
    probe_deadline: 20
"""

RETURN = r"""
ok:
  description: Whether the last probe passed.
  returned: always
  type: bool
attempts:
  description: How many probes ran.
  returned: always
  type: int
probe:
  description: The agent's evidence of the last probe (value_ok, hits_before, hits_after,
    cmd_get_before, cmd_get_after, duration_ms, detail, details of every attempt).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mcache.fleet.plugins.module_utils.agent_client import (
    PROBE_ARGS,
    SOCKET_ARGS,
    probe_until_ok,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(**SOCKET_ARGS, **PROBE_ARGS),
        supports_check_mode=True,
    )
    p = module.params
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, ok=None, attempts=0, probe={},
                         msg="check mode: nothing was applied, no probe run")
    evidence = probe_until_ok(p["socket"], p["probe_retries"], p["probe_delay"],
                              p["probe_deadline"])
    ret = dict(changed=False, ok=bool(evidence.get("ok")), attempts=evidence["attempts"],
               probe=evidence)
    if not ret["ok"]:
        module.fail_json(msg="probe failed after %d attempt(s) in %.1f s: %s"
                         % (evidence["attempts"], evidence["elapsed_s"],
                            evidence.get("detail")), **ret)
    module.exit_json(**ret)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# Copyright: mcache contributors
# GNU General Public License v2.0 (see pyproject.toml)

"""Run the agent's health probe (`mcache-agent probe --json`) until it passes or time is up."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mcache_probe
short_description: Health gate - prove that the kernel serves GET hits with memcached's value
description:
  - Runs C(mcache-agent probe --json) on the host (argv list, never a shell) until the probe
    passes, O(retries) attempts are used up or O(deadline) seconds have passed.
  - The probe SETs a fresh value over TCP and GETs it twice over UDP; it passes when both
    answers carry the value and the data plane counted a kernel hit for the probe key itself
    (its own counter, so other clients' traffic cannot sway it). The last probe's evidence is
    returned.
  - Never reports C(changed). In check mode nothing is applied, so the probe is not run.
version_added: "0.1.0"
author: mcache fleet
options:
  agent_bin:
    description: The agent's command line tool.
    type: path
    default: /opt/mcache/venv/bin/mcache-agent
  retries:
    description: How many probes at most.
    type: int
    default: 5
  delay:
    description: Seconds between probes.
    type: float
    default: 1.0
  deadline:
    description: Seconds after which no new probe starts.
    type: float
    default: 30
  socket:
    description: The agent's control socket (the agent's default when not given).
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Probe within a deadline
  mcache_probe:
    retries: 5
    delay: 1
    deadline: 20
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
    cmd_get_before, cmd_get_after, duration_ms, detail).
  returned: always
  type: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mcache_agent_cli import (
    parse_json,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            agent_bin=dict(type="path", default="/opt/mcache/venv/bin/mcache-agent"),
            retries=dict(type="int", default=5),
            delay=dict(type="float", default=1.0),
            deadline=dict(type="float", default=30),
            socket=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, ok=None, attempts=0, probe={},
                         msg="check mode: nothing was applied, no probe run")
    argv = [p["agent_bin"], "probe", "--json"]
    if p["socket"]:
        argv += ["--socket", p["socket"]]
    started = time.monotonic()
    attempts = 0
    evidence = {}
    history = []
    while True:
        attempts += 1
        rc, out, err = module.run_command(argv)
        doc = parse_json(out)
        if not isinstance(doc, dict):
            evidence = {"ok": False, "detail": "no JSON from mcache-agent probe (exit %d): %s"
                        % (rc, (err or out).strip()[-500:])}
        elif doc.get("ok") is False and "error" in doc:
            error = doc["error"] or {}
            evidence = {"ok": False, "detail": "%s: %s" % (error.get("kind"),
                                                           error.get("message"))}
        else:
            evidence = doc.get("result", doc)
        history.append(evidence.get("detail"))
        if evidence.get("ok"):
            break
        elapsed = time.monotonic() - started
        if attempts >= max(p["retries"], 1) or elapsed + p["delay"] >= p["deadline"]:
            break
        time.sleep(p["delay"])
    ret = dict(changed=False, ok=bool(evidence.get("ok")), attempts=attempts, probe=evidence,
               details=history, elapsed_s=round(time.monotonic() - started, 3))
    if not ret["ok"]:
        module.fail_json(msg="probe failed after %d attempt(s) in %.1f s: %s"
                         % (attempts, ret["elapsed_s"], evidence.get("detail")), **ret)
    module.exit_json(**ret)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# Copyright: mcache contributors
# GNU General Public License v2.0 (see pyproject.toml)

"""Read the agent's status and stored versions (`mcache-agent status --json`, `versions`)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mcache_status
short_description: Read what the mcache agent on a host is running
description:
  - Runs C(mcache-agent status --json) and C(mcache-agent versions --json) on the host (argv
    lists, never a shell) and returns both, plus a one-line summary for fleet tables.
  - Read only; never reports C(changed).
  - When the agent is not installed, returns C(installed=false) instead of failing.
version_added: "0.1.0"
author: mcache fleet
options:
  agent_bin:
    description: The agent's command line tool.
    type: path
    default: /opt/mcache/venv/bin/mcache-agent
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
- name: Read the agent's status
  mcache_status:
  register: st
"""

RETURN = r"""
installed:
  description: Whether the agent's tool exists on the host.
  returned: always
  type: bool
status:
  description: The agent's status document (see docs/ARCHITECTURE.md).
  returned: when installed
  type: dict
versions:
  description: The agent's stored versions (current, previous, versions[]).
  returned: when installed
  type: dict
summary:
  description: version, running, modes (attached XDP modes), hit_ratio, probe_ok, current,
    previous, stored (version numbers).
  returned: always
  type: dict
"""


from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mcache_agent_cli import (
    run_agent,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            agent_bin=dict(type="path", default="/opt/mcache/venv/bin/mcache-agent"),
            socket=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    import os

    summary = {"version": None, "running": False, "modes": [], "hit_ratio": None,
               "probe_ok": None, "current": None, "previous": None, "stored": []}
    if not os.path.exists(p["agent_bin"]):
        module.exit_json(changed=False, installed=False, summary=summary)
    extra = ["--socket", p["socket"]] if p["socket"] else []
    status, status_err = run_agent(module, [p["agent_bin"], "status", "--json"] + extra)
    versions, versions_err = run_agent(module, [p["agent_bin"], "versions", "--json"] + extra)
    errors = [e for e in (status_err, versions_err) if e]
    status = status or {}
    versions = versions or {}
    probe = status.get("probe") or {}
    modes = []
    for a in status.get("attached") or []:
        if a.get("role", "serve") == "serve" and a.get("mode") not in modes:
            modes.append(a.get("mode"))
    summary.update(
        version=status.get("version"),
        running=bool(status.get("running")),
        modes=modes,
        hit_ratio=status.get("hit_ratio"),
        probe_ok=probe.get("ok") if probe else None,
        current=versions.get("current", status.get("current")),
        previous=versions.get("previous", status.get("previous")),
        stored=[v.get("version") for v in versions.get("versions") or []],
    )
    module.exit_json(changed=False, installed=True, status=status, versions=versions,
                     summary=summary, errors=errors + list(status.get("errors") or []))


if __name__ == "__main__":
    main()

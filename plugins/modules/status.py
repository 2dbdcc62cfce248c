#!/usr/bin/python
# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Read the agent's status and stored versions."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: status
short_description: Read what the mcache agent on a host is running, and why not more
description:
  - Asks the host's agent over its control socket for its status and its stored versions, and
    returns both with a summary for fleet tables.
  - When the agent does not answer, says whether it is installed, and reads what the pins and
    the versions store say (C(mcache-agent status --json), which prints that when the agent is
    down).
  - Read only; never reports C(changed).
version_added: "0.1.0"
author: mcache contributors (@mcache)
options:
  agent_bin:
    description: The agent's command line tool (only run when the agent does not answer).
    type: path
    default: /opt/mcache/venv/bin/mcache-agent
  desired_version:
    description: The config version the host should run; the summary then says why it does
      not, or what is wrong, in C(reason).
    type: int
extends_documentation_fragment:
  - mcache.fleet.agent
  - ansible.builtin.action_common_attributes
  - mcache.fleet.agent.reads
"""

EXAMPLES = r"""
- name: Read the agent's status
  mcache.fleet.status:
  register: st
"""

RETURN = r"""
installed:
  description: Whether the agent's tool exists on the host.
  returned: always
  type: bool
status:
  description: The agent's status document (see docs/ARCHITECTURE.md); when the agent does not
    answer, what the pins and the versions store say.
  returned: when installed
  type: dict
versions:
  description: The agent's stored versions (current, previous, versions[]).
  returned: when the agent answers
  type: dict
summary:
  description: version, running, modes (attached XDP modes), hit_ratio, probe_ok,
    probe_detail, current, previous, stored (version numbers), rejected (the versions a
    rollback left - version, reason, at, rolled_back_to - never applied again), config_file
    (the start-up config's fate, with its faults), last_apply (result and error),
    unreachable (why the agent did not answer), reason (why the host is not right, or null),
    release and programs (the agent's build, as mcache_build_info says it).
  returned: always
  type: dict
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mcache.fleet.plugins.module_utils.agent_client import (
    SOCKET_ARGS,
    AgentRefused,
    AgentUnreachable,
    describe_rejection,
    request,
)


def offline(module, agent_bin, socket):
    """What `mcache-agent status` says from the pins and the store when the agent is down."""
    _rc, out, _err = module.run_command([agent_bin, "status", "--json", "--socket", socket])
    try:
        doc = json.loads(out)
    except ValueError:
        return {}
    return doc.get("offline") or doc.get("result") or {}


def reason(summary, desired):
    """Why a host is not at the desired version or not healthy, in one line; None when fine."""
    out = []
    if summary["unreachable"]:
        out.append(summary["unreachable"])
    cf = summary["config_file"] or {}
    if cf.get("result") in ("refused", "failed"):
        faults = "; ".join("%s: %s" % (f.get("path"), f.get("message"))
                           for f in cf.get("faults") or [])
        out.append("start-up config %s: %s%s" % (cf["result"], cf.get("message"),
                                                 " (%s)" % faults if faults else ""))
    last = summary["last_apply"] or {}
    if last.get("result") == "failed":
        out.append("apply of version %s failed: %s" % (last.get("version"), last.get("error")))
    if summary["probe_ok"] is False:
        out.append("probe failed: %s" % summary["probe_detail"])
    for rec in summary["rejected"] or []:
        if desired is not None and rec.get("version") == desired \
                and summary["version"] != desired:
            out.append("the desired version %s was rejected here (%s): give the change a new "
                       "version number" % (desired, describe_rejection(rec)))
    if not out and desired is not None and summary["version"] != desired:
        out.append("runs version %s, not yet rolled out" % summary["version"])
    return "; ".join(out) or None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            agent_bin=dict(type="path", default="/opt/mcache/venv/bin/mcache-agent"),
            desired_version=dict(type="int"),
            **SOCKET_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    summary = {"version": None, "running": False, "modes": [], "hit_ratio": None,
               "probe_ok": None, "probe_detail": None, "current": None, "previous": None,
               "stored": [], "rejected": [], "config_file": None, "last_apply": None,
               "unreachable": None, "reason": None, "release": None, "programs": None}
    installed = os.path.exists(p["agent_bin"])
    status, versions = {}, {}
    try:
        status = request(p["socket"], {"op": "status"}, timeout=10)
        versions = request(p["socket"], {"op": "versions"}, timeout=10)
    except (AgentUnreachable, AgentRefused) as e:
        summary["unreachable"] = "agent not installed" if not installed else \
            "agent not answering: %s" % e
        if installed:
            status = offline(module, p["agent_bin"], p["socket"])
    if not installed:
        summary["reason"] = summary["unreachable"]
        module.exit_json(changed=False, installed=False, summary=summary)
    probe = status.get("probe") or {}
    last = status.get("last_apply") or {}
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
        probe_detail=probe.get("detail") if probe else None,
        current=versions.get("current", status.get("current")),
        previous=versions.get("previous", status.get("previous")),
        stored=[v.get("version") for v in versions.get("versions") or []],
        rejected=[{k: r.get(k) for k in ("version", "reason", "at", "rolled_back_to")}
                  for r in versions.get("rejected", status.get("rejected")) or []],
        config_file=status.get("config_file"),
        # the agent's build (mcache_build_info): which hosts an upgrade has reached
        release=(status.get("build") or {}).get("release"),
        programs=(status.get("build") or {}).get("programs"),
        last_apply={"version": last.get("version"), "result": last.get("result"),
                    "error": last.get("error")} if last else None,
    )
    summary["reason"] = reason(summary, p["desired_version"])
    module.exit_json(changed=False, installed=True, status=status, versions=versions,
                     summary=summary, errors=list(status.get("errors") or []))


if __name__ == "__main__":
    main()

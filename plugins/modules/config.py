#!/usr/bin/python
# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Roll a config out on one host: apply, probe, roll back on a failed probe, keep."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: config
short_description: Apply an mcache config through the host's agent, gated by its health probe
description:
  - One call does what a config change needs on a host, over the agent's control socket (no
    shell, no agent process started). It applies the config (a map or program hot swap, or
    nothing when it already runs), runs the health probe until it passes or the deadline, rolls
    back to the version that ran before when it does not (O(rollback_on_failure)), and keeps the
    config that passed as the one the agent starts with (O(persist_path)).
  - With O(release), the host must run that release of the agent and its services first (the
    fingerprint this module records in O(release_path) once the host is prepared for it); when
    it does not, or when
    no agent answers, nothing is applied and C(prepared=false) is returned, so that the play
    prepares the host and calls the module again with O(record_release).
  - In check mode the agent plans the change (C(apply --check)) and nothing changes; the diff
    is the running config's text against the new one.
version_added: "0.1.0"
author: mcache contributors (@mcache)
options:
  content:
    description: The config text (YAML). Mutually exclusive with O(src).
    type: str
  src:
    description: Path of a config file on the host. Mutually exclusive with O(content).
    type: path
  release:
    description: The release the host must run before a config is applied (see above).
    type: str
  release_path:
    description: Where the host's release fingerprint is kept.
    type: path
    default: /etc/mcache/release
  record_release:
    description: The host was just prepared for O(release) (the C(mcache.fleet.mcache_host) role
      ran without a failure), so record it in O(release_path) instead of comparing.
    type: bool
    default: false
  probe:
    description: Run the health probe after the apply (a GET that must be served by the
      kernel), also when nothing changed.
    type: bool
    default: true
  rollback_on_failure:
    description: When the probe fails after a change, roll the host back to the version that
      ran before (and then fail).
    type: bool
    default: false
  persist_path:
    description: Keep the config that passed here (mode 0600), for the agent's next start.
    type: path
extends_documentation_fragment:
  - mcache.fleet.agent
  - mcache.fleet.agent.state_dir
  - mcache.fleet.agent.probe
  - ansible.builtin.action_common_attributes
  - mcache.fleet.agent.changes
"""

EXAMPLES = r"""
- name: Roll the fleet config out on a prepared host, roll back on a failed probe
  mcache.fleet.config:
    content: "{{ lookup('ansible.builtin.template', mcache_config_file) }}"
    release: "{{ mcache_config_release }}"
    rollback_on_failure: true
    persist_path: /etc/mcache/mcache.yml
  register: applied

- name: Apply a file already on the host, no probe
  mcache.fleet.config:
    src: /etc/mcache/mcache.yml
    probe: false
"""

RETURN = r"""
prepared:
  description: The host runs the wanted release and its agent answers; false means nothing was
    applied (prepare the host, then call again).
  returned: always
  type: bool
version:
  description: The version of the config that was applied (or would be, in check mode).
  returned: when prepared
  type: int
previous_version:
  description: The version that ran before (null when nothing ran).
  returned: when prepared
  type: int
strategy:
  description: How the agent swapped (map_swap, program_swap, reattach, none).
  returned: when prepared
  type: str
reasons:
  description: Why the agent chose that strategy.
  returned: when prepared
  type: list
  elements: str
duration_ms:
  description: How long the apply took on the host.
  returned: when applied
  type: float
probe:
  description: The last probe's evidence (ok, detail, attempts).
  returned: when probed
  type: dict
rolled_back_to:
  description: The version the host was rolled back to after a failed probe.
  returned: when rolled back
  type: int
persisted:
  description: Whether the config file for the agent's next start was written.
  returned: when prepared
  type: bool
faults:
  description: The agent's faults (JSON path and message) when it refused the config.
  returned: when refused
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mcache.fleet.plugins.module_utils.agent_client import (
    PROBE_ARGS,
    SOCKET_ARGS,
    STATE_DIR_ARGS,
    AgentRefused,
    AgentUnreachable,
    probe_until_ok,
    read_text,
    request,
    stored_text,
    write_atomic,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            content=dict(type="str"),
            src=dict(type="path"),
            release=dict(type="str"),
            release_path=dict(type="path", default="/etc/mcache/release"),
            record_release=dict(type="bool", default=False),
            probe=dict(type="bool", default=True),
            rollback_on_failure=dict(type="bool", default=False),
            persist_path=dict(type="path"),
            **SOCKET_ARGS, **STATE_DIR_ARGS, **PROBE_ARGS,
        ),
        mutually_exclusive=[("content", "src")],
        required_one_of=[("content", "src")],
        supports_check_mode=True,
    )
    p = module.params
    text = p["content"]
    if text is None:
        text = read_text(p["src"])
        if text is None:
            module.fail_json(msg="cannot read %s" % p["src"])

    # 1. Is the host ready for a config: the wanted release, an agent that answers?
    recorded = False
    if p["release"] is not None and p["record_release"]:
        recorded = (read_text(p["release_path"]) or "").strip() != p["release"]
        if recorded and not module.check_mode:
            write_atomic(p["release_path"], p["release"] + "\n", mode=0o644)
    elif p["release"] is not None:
        have = (read_text(p["release_path"]) or "").strip()
        if have != p["release"]:
            module.exit_json(changed=module.check_mode, prepared=False,
                             msg="the host runs release %s, not %s" % (have or "none",
                                                                       p["release"]))
    try:
        result = request(p["socket"], {"op": "apply", "config": text,
                                       "check": module.check_mode})
    except AgentUnreachable as e:
        module.exit_json(changed=module.check_mode, prepared=False,
                         msg="agent not reachable: %s" % e)
    except AgentRefused as e:
        module.fail_json(msg="the agent refused the config: %s" % e.describe(), prepared=True,
                         kind=e.kind, faults=e.faults)

    # 2. What changed, with the diff of the config text.
    changed = bool(result.get("changed"))
    previous = result.get("running_version") if module.check_mode else \
        result.get("previous_version")
    ret = dict(prepared=True, changed=changed or recorded, version=result.get("version"),
               previous_version=previous, strategy=result.get("strategy"),
               reasons=result.get("reasons") or [], duration_ms=result.get("duration_ms"),
               persisted=False)
    if changed:
        ret["diff"] = {"before": stored_text(p["state_dir"], previous) or "", "after": text,
                       "before_header": "version %s" % previous if previous is not None
                       else "(nothing running)",
                       "after_header": "version %s" % result.get("version")}

    # 3. The health gate (an unchanged host too: a rollout stops at an unhealthy host).
    if p["probe"] and not module.check_mode:
        ret["probe"] = probe_until_ok(p["socket"], p["probe_retries"], p["probe_delay"],
                                      p["probe_deadline"])
        if not ret["probe"].get("ok"):
            msg = "probe failed on version %s: %s" % (ret["version"], ret["probe"].get("detail"))
            if p["rollback_on_failure"] and changed and previous is not None:
                try:
                    # the version left is rejected on this host, with this reason: no start
                    # of the agent, and no later deploy of that number, applies it again
                    back = request(p["socket"], {"op": "rollback", "to": previous,
                                                 "reason": msg})
                    ret["rolled_back_to"] = back.get("rolled_back_to")
                    msg += "; rolled back to version %s" % ret["rolled_back_to"]
                except (AgentRefused, AgentUnreachable) as e:
                    msg += "; rollback to version %s failed: %s" % (previous, e)
            elif p["rollback_on_failure"] and changed:
                msg += "; nothing to roll back to: version %s was the first" % ret["version"]
            elif not changed:
                msg += "; nothing changed here, so nothing to roll back"
            module.fail_json(msg=msg, **ret)

    # 4. Keep what passed as the config the agent starts with.
    if p["persist_path"] and read_text(p["persist_path"]) != text:
        ret["persisted"] = True
        ret["changed"] = True
        if not module.check_mode:
            write_atomic(p["persist_path"], text)
    module.exit_json(**ret)


if __name__ == "__main__":
    main()

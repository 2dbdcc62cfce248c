#!/usr/bin/python
# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Roll the host's mcache config back, and probe the version rolled back to."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rollback
short_description: Roll an mcache host back to its previous or to a stored config version
description:
  - Asks the host's agent, over its control socket, to re-apply its previous version or the
    stored version O(to); fails clearly when there is nothing to roll back to.
  - O(to) must be a version the agent has stored (applied before on this host). Without O(to),
    a previous version that was itself rejected is refused (a second rollback would undo the
    first); name it with O(to) to go back to it.
  - The version left is recorded by the agent as rejected, with O(reason) - no start of the
    agent and no deploy of that number applies it again - and the version gone back to becomes
    the host's start-up config. Naming a rejected version in O(to) takes it off the list.
  - With O(probe), then runs the health probe on the version rolled back to (one module call
    for both).
  - C(changed) only when the running version changed. In check mode, reads the agent's versions
    and says what would happen (with the diff) without changing anything.
version_added: "0.1.0"
author: mcache contributors (@mcache)
options:
  to:
    description: The version to go back to (default - the previous one).
    type: int
  probe:
    description: Probe the version rolled back to.
    type: bool
    default: false
  reason:
    description: Why, kept with the rejected version (status and the deploy guard show it).
    type: str
    default: rolled back by mcache.fleet.rollback
extends_documentation_fragment:
  - mcache.fleet.agent
  - mcache.fleet.agent.state_dir
  - mcache.fleet.agent.probe
  - ansible.builtin.action_common_attributes
  - mcache.fleet.agent.changes
"""

EXAMPLES = r"""
- name: Back to the previous version, and probe it
  mcache.fleet.rollback:
    probe: true

- name: Back to version 3
  mcache.fleet.rollback:
    to: 3
"""

RETURN = r"""
version:
  description: The version running after the rollback.
  returned: success
  type: int
rolled_back_from:
  description: The version that ran before.
  returned: success
  type: int
rejected:
  description: The rejection the agent recorded for the version left (version, reason, at,
    rolled_back_to), or null when nothing was left.
  returned: success
  type: dict
probe:
  description: The last probe's evidence.
  returned: when probed
  type: dict
agent:
  description: The agent's full C(result) document of the rollback.
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mcache.fleet.plugins.module_utils.agent_client import (
    PROBE_ARGS,
    SOCKET_ARGS,
    STATE_DIR_ARGS,
    AgentRefused,
    AgentUnreachable,
    describe_rejection,
    probe_until_ok,
    request,
    stored_text,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            to=dict(type="int"),
            probe=dict(type="bool", default=False),
            reason=dict(type="str", default="rolled back by mcache.fleet.rollback"),
            **SOCKET_ARGS, **STATE_DIR_ARGS, **PROBE_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        versions = request(p["socket"], {"op": "versions"}, timeout=30)
    except AgentUnreachable as e:
        module.fail_json(msg="nothing to roll back: the mcache agent does not answer (%s)" % e)
    except AgentRefused as e:
        module.fail_json(msg="cannot read the agent's versions: %s" % e.describe())
    current = versions.get("current")
    stored = [v.get("version") for v in versions.get("versions") or []]
    target = p["to"] if p["to"] is not None else versions.get("previous")
    if target is None:
        module.fail_json(msg="nothing to roll back to: no previous version on this host "
                         "(current: %s, stored: %s)" % (current, stored or "none"),
                         current=current, stored=stored)
    if target not in stored:
        module.fail_json(msg="cannot roll back to version %s: not stored on this host "
                         "(current: %s, stored: %s)" % (target, current, stored or "none"),
                         current=current, stored=stored)

    rejected = dict((r.get("version"), r) for r in versions.get("rejected") or [])
    if p["to"] is None and target in rejected:
        module.fail_json(msg="cannot roll back: the previous version %s was rejected (%s); "
                         "name it (to: %s) to go back to it, or another stored version"
                         % (target, describe_rejection(rejected[target]), target),
                         current=current, stored=stored)

    changed = target != current
    diff = {"before": stored_text(p["state_dir"], current) or "",
            "after": stored_text(p["state_dir"], target) or "",
            "before_header": "version %s" % current, "after_header": "version %s" % target}
    if module.check_mode:
        module.exit_json(changed=changed, version=target, rolled_back_from=current, agent={},
                         rejected=None, diff=diff if changed else None)

    req = {"op": "rollback", "reason": p["reason"]}
    if p["to"] is not None:
        req["to"] = p["to"]
    try:
        result = request(p["socket"], req)
    except (AgentUnreachable, AgentRefused) as e:
        msg = e.describe() if isinstance(e, AgentRefused) else str(e)
        module.fail_json(msg="rollback refused: %s" % msg,
                         faults=getattr(e, "faults", []))
    version = result.get("rolled_back_to", result.get("version"))
    ret = dict(changed=current != version, version=version, rolled_back_from=current,
               agent=result, rejected=result.get("rejected"), diff=diff if changed else None)
    if p["probe"]:
        ret["probe"] = probe_until_ok(p["socket"], p["probe_retries"], p["probe_delay"],
                                      p["probe_deadline"])
        if not ret["probe"].get("ok"):
            module.fail_json(msg="rolled back to version %s, but its probe failed: %s"
                             % (version, ret["probe"].get("detail")), **ret)
    module.exit_json(**ret)


if __name__ == "__main__":
    main()

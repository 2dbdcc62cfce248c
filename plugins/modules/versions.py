#!/usr/bin/python
# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Read the agent's versions store: what runs, what is stored, what was rejected."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: versions
short_description: Read the config versions an mcache host stored and rejected
description:
  - Asks the host's agent, over its control socket, for its versions store - the current and
    previous versions, every stored version, and the versions it rejected (a rollback left
    them; the agent never applies their numbers again, at a start or an apply, until a
    rollback names them).
  - With O(desired), says whether the host rejected that version (C(desired_rejected)), as the
    first play of C(mcache.fleet.deploy) and C(mcache.fleet.canary) asks every host before any
    host is changed.
  - A host whose agent does not answer (not installed yet, or down) has rejected nothing that
    can be read - C(answered=false). Read only; never reports C(changed).
version_added: "0.2.0"
author: mcache contributors (@mcache)
options:
  desired:
    description: A config version to look up in the host's rejected versions.
    type: int
extends_documentation_fragment:
  - mcache.fleet.agent
  - ansible.builtin.action_common_attributes
  - mcache.fleet.agent.reads
"""

EXAMPLES = r"""
- name: Has this host rejected version 12?
  mcache.fleet.versions:
    desired: 12
  register: versions

- name: Stop when it has
  ansible.builtin.assert:
    that: not versions.desired_rejected
    fail_msg: "{{ versions.msg }}"
"""

RETURN = r"""
answered:
  description: Whether the agent answered (false - not installed or not running).
  returned: always
  type: bool
current:
  description: The version the host runs (its versions store's current one).
  returned: always
  type: int
previous:
  description: The version before it.
  returned: always
  type: int
stored:
  description: Every stored version number.
  returned: always
  type: list
  elements: int
rejected:
  description: The rejected versions, each with C(version), C(reason), C(at) (UTC) and
    C(rolled_back_to).
  returned: always
  type: list
  elements: dict
desired_rejected:
  description: The rejection of O(desired), when the host rejected it, else null.
  returned: always
  type: dict
msg:
  description: One line - whether and why the host rejected O(desired).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mcache.fleet.plugins.module_utils.agent_client import (
    SOCKET_ARGS,
    AgentRefused,
    AgentUnreachable,
    describe_rejection,
    request,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(desired=dict(type="int"), **SOCKET_ARGS),
        supports_check_mode=True,
    )
    p = module.params
    ret = dict(changed=False, answered=False, current=None, previous=None, stored=[],
               rejected=[], desired_rejected=None)
    try:
        doc = request(p["socket"], {"op": "versions"}, timeout=30)
    except AgentUnreachable as e:
        ret["msg"] = "the agent does not answer (%s): nothing rejected can be read" % e
        module.exit_json(**ret)
    except AgentRefused as e:
        module.fail_json(msg="cannot read the agent's versions: %s" % e.describe(), **ret)
    ret.update(answered=True, current=doc.get("current"), previous=doc.get("previous"),
               stored=[v.get("version") for v in doc.get("versions") or []],
               rejected=list(doc.get("rejected") or []))
    for rec in ret["rejected"]:
        if p["desired"] is not None and rec.get("version") == p["desired"]:
            ret["desired_rejected"] = rec
    if ret["desired_rejected"] is not None:
        ret["msg"] = "version %s was rejected on this host (%s)" % (
            p["desired"], describe_rejection(ret["desired_rejected"]))
    elif p["desired"] is not None:
        ret["msg"] = "version %s was not rejected on this host" % p["desired"]
    else:
        ret["msg"] = "%d rejected version(s)" % len(ret["rejected"])
    module.exit_json(**ret)


if __name__ == "__main__":
    main()

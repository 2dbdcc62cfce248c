#!/usr/bin/python
# Copyright: mcache contributors
# GNU General Public License v2.0 (see pyproject.toml)

"""Roll the host's mcache config back (`mcache-agent rollback [--to N] --json`)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mcache_rollback
short_description: Roll an mcache host back to its previous or to a stored config version
description:
  - Runs C(mcache-agent rollback [--to N] --json) on the host (argv list, never a shell).
  - Without O(to), goes back to the agent's previous version; fails clearly when there is none.
  - O(to) must be a version the agent has stored (applied before on this host).
  - C(changed) only when the running version changed. In check mode, reads the agent's versions
    and says what would happen (with the diff) without changing anything.
version_added: "0.1.0"
author: mcache fleet
options:
  to:
    description: The version to go back to (default - the previous one).
    type: int
  agent_bin:
    description: The agent's command line tool.
    type: path
    default: /opt/mcache/venv/bin/mcache-agent
  state_dir:
    description: The agent's state dir (versions store), read for the diff.
    type: path
    default: /var/lib/mcache
  socket:
    description: The agent's control socket (the agent's default when not given).
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Back to the previous version
  mcache_rollback:

- name: Back to version 3
  mcache_rollback:
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
agent:
  description: The agent's full C(result) document.
  returned: success
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mcache_agent_cli import (
    format_faults,
    parse_json,
    stored_text,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            to=dict(type="int"),
            agent_bin=dict(type="path", default="/opt/mcache/venv/bin/mcache-agent"),
            state_dir=dict(type="path", default="/var/lib/mcache"),
            socket=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    extra = ["--socket", p["socket"]] if p["socket"] else []
    if not os.path.exists(p["agent_bin"]):
        module.fail_json(msg="nothing to roll back to: the mcache agent is not installed (%s)"
                         % p["agent_bin"])

    rc, out, err = module.run_command([p["agent_bin"], "versions", "--json"] + extra)
    vdoc = parse_json(out)
    if not isinstance(vdoc, dict) or not vdoc.get("ok", True):
        module.fail_json(msg="cannot read the agent's versions (exit %d)" % rc, stdout=out,
                         stderr=err)
    versions = vdoc.get("result", vdoc)
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

    diff = {"before": stored_text(p["state_dir"], current) or "",
            "after": stored_text(p["state_dir"], target) or "",
            "before_header": "version %s" % current, "after_header": "version %s" % target}
    if module.check_mode:
        changed = target != current
        module.exit_json(changed=changed, version=target, rolled_back_from=current, agent={},
                         diff=diff if changed else None)

    argv = [p["agent_bin"], "rollback", "--json"] + extra
    if p["to"] is not None:
        argv += ["--to", str(p["to"])]
    rc, out, err = module.run_command(argv)
    doc = parse_json(out)
    if not isinstance(doc, dict):
        module.fail_json(msg="mcache-agent rollback printed no JSON (exit %d)" % rc, rc=rc,
                         stdout=out, stderr=err, cmd=argv)
    if not doc.get("ok"):
        error = doc.get("error") or {}
        faults = error.get("faults") or []
        msg = "rollback refused: %s" % error.get("message", "failed")
        if faults:
            msg += " (%s)" % format_faults(faults)
        module.fail_json(msg=msg, rc=rc, kind=error.get("kind"), faults=faults, cmd=argv)
    result = doc.get("result") or {}
    changed = current != result.get("rolled_back_to", result.get("version"))
    module.exit_json(changed=changed, version=result.get("rolled_back_to", result.get("version")),
                     rolled_back_from=current, agent=result, diff=diff if changed else None)


if __name__ == "__main__":
    main()

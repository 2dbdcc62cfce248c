#!/usr/bin/python
# Copyright: mcache contributors
# GNU General Public License v2.0 (see pyproject.toml)

"""Apply an mcache config through the host's agent (`mcache-agent apply --json`)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mcache_config
short_description: Apply an mcache config through the host's mcache agent
description:
  - Writes O(content) (or uses O(src)) and runs C(mcache-agent apply FILE --json) on the host,
    with an argv list (never a shell).
  - In check mode runs C(mcache-agent apply FILE --check --json), which changes nothing and
    returns what would change.
  - Reports C(changed) only when the running version changed (the agent says so); a config that
    is already running is a no-op.
  - With C(--diff), returns the running config text (from the agent's versions store) as
    C(before) and the new text as C(after).
version_added: "0.1.0"
author: mcache fleet
options:
  content:
    description: The config text (YAML). Mutually exclusive with O(src).
    type: str
  src:
    description: Path of a config file on the host. Mutually exclusive with O(content).
    type: path
  agent_bin:
    description: The agent's command line tool.
    type: path
    default: /opt/mcache/venv/bin/mcache-agent
  state_dir:
    description: The agent's state dir (versions store), read for the diff's C(before) text.
    type: path
    default: /var/lib/mcache
  socket:
    description: The agent's control socket (the agent's default when not given).
    type: path
notes:
  - Exit codes of the agent - 0 ok, 2 bad input, 1 runtime failure, 3 agent not reachable.
  - In check mode, an agent that is not running yet (a host being prepared in the same check
    run) is reported as C(changed) with the whole config as the diff.
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Apply the rendered fleet config
  mcache_config:
    content: "{{ lookup('ansible.builtin.template', mcache_config_file) }}"
  register: applied

- name: Apply a file already on the host
  mcache_config:
    src: /etc/mcache/mcache.yml
"""

RETURN = r"""
version:
  description: The version of the config that was applied (or would be, in check mode).
  returned: success
  type: int
previous_version:
  description: The version that ran before (null when nothing ran).
  returned: success
  type: int
strategy:
  description: How the agent swapped (map_swap, program_swap, reattach, none).
  returned: success
  type: str
duration_ms:
  description: How long the apply took on the host.
  returned: when applied
  type: float
agent:
  description: The agent's full C(result) document.
  returned: success
  type: dict
faults:
  description: The agent's faults (JSON path and message) when it refused the config.
  returned: failure
  type: list
  elements: dict
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
            content=dict(type="str"),
            src=dict(type="path"),
            agent_bin=dict(type="path", default="/opt/mcache/venv/bin/mcache-agent"),
            state_dir=dict(type="path", default="/var/lib/mcache"),
            socket=dict(type="path"),
        ),
        mutually_exclusive=[("content", "src")],
        required_one_of=[("content", "src")],
        supports_check_mode=True,
    )
    p = module.params
    if p["content"] is not None:
        path = os.path.join(module.tmpdir, "mcache.yml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(p["content"])
        new_text = p["content"]
    else:
        path = p["src"]
        try:
            with open(path) as f:
                new_text = f.read()
        except OSError as e:
            module.fail_json(msg="cannot read %s: %s" % (path, e))

    if not os.path.exists(p["agent_bin"]) and module.check_mode:
        module.exit_json(changed=True, version=None, previous_version=None, strategy=None,
                         agent={}, diff={"before": "", "after": new_text},
                         msg="agent not installed yet; it would start with this config")

    argv = [p["agent_bin"], "apply", path, "--json"]
    if p["socket"]:
        argv += ["--socket", p["socket"]]
    if module.check_mode:
        argv.append("--check")
    rc, out, err = module.run_command(argv)
    doc = parse_json(out)
    if not isinstance(doc, dict):
        module.fail_json(msg="mcache-agent apply printed no JSON (exit %d)" % rc, rc=rc,
                         stdout=out, stderr=err, cmd=argv)

    if not doc.get("ok"):
        error = doc.get("error") or {}
        if rc == 3 and module.check_mode:
            module.exit_json(changed=True, version=None, previous_version=None, strategy=None,
                             agent={}, diff={"before": "", "after": new_text},
                             msg="agent not running; it would start with this config: %s"
                             % error.get("message"))
        faults = error.get("faults") or []
        msg = "mcache-agent refused the config: %s" % error.get("message", "failed")
        if faults:
            msg += " (%s)" % format_faults(faults)
        module.fail_json(msg=msg, rc=rc, kind=error.get("kind"), faults=faults,
                         stderr=err, cmd=argv)

    result = doc.get("result") or {}
    # The agent says changed=false (strategy none) when this exact version is already running.
    changed = bool(result.get("changed"))
    if module.check_mode:
        previous = result.get("running_version")
    else:
        previous = result.get("previous_version")
    ret = dict(
        changed=changed,
        version=result.get("version"),
        previous_version=previous,
        strategy=result.get("strategy"),
        duration_ms=result.get("duration_ms"),
        agent=result,
    )
    if changed:
        before = stored_text(p["state_dir"], previous)
        if before is not None or previous is None:
            ret["diff"] = {
                "before": before or "",
                "after": new_text,
                "before_header": "version %s" % previous if previous is not None
                else "(nothing running)",
                "after_header": "version %s" % result.get("version"),
            }
        elif result.get("diff"):
            ret["diff"] = {"prepared": result["diff"]}
    module.exit_json(**ret)


if __name__ == "__main__":
    main()

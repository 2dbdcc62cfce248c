# Copyright: mcache contributors
# GNU General Public License v2.0 (see pyproject.toml)

"""Controller-side checks of an mcache config, with the agent's own code."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError


def mcache_config_faults(text):
    """Every fault of a config text (schema and the checks that need no host), as
    "<JSON path>: <message>" strings; an empty list when it is valid. The same checks as
    `mcache-agent validate --no-host-checks`, run inside ansible-playbook (no process per
    host)."""
    try:
        from mcache_agent.config import ConfigError, check_semantics, parse_config
    except ImportError as e:
        raise AnsibleFilterError("mcache_config_faults needs the mcache package on the "
                                 "controller (the repository's venv has it): %s" % e) from e
    try:
        faults = check_semantics(parse_config(text), None, host_checks=False)
    except ConfigError as e:
        faults = e.faults
    return ["%s: %s" % (f.path, f.message) for f in faults]


class FilterModule:
    def filters(self):
        return {"mcache_config_faults": mcache_config_faults}

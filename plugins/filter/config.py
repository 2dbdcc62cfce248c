# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Controller-side checks of an mcache config, with the agent's own code."""

from __future__ import annotations

import os
import sys

from ansible.errors import AnsibleFilterError

# The collection carries the agent's sources (its mcache_host role builds the agent from them):
# where mcache_agent is not installed on the controller, use those.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_faults(text):
    """Every fault of a config text (schema and the checks that need no host), as
    "<JSON path>: <message>" strings; an empty list when it is valid. The same checks as
    `mcache-agent validate --no-host-checks`, run inside ansible-playbook (no process per
    host)."""
    try:
        from mcache_agent.config import ConfigError, check_semantics, parse_config
    except ImportError:
        if os.path.isdir(os.path.join(_ROOT, "mcache_agent")) and _ROOT not in sys.path:
            sys.path.append(_ROOT)
        try:
            from mcache_agent.config import ConfigError, check_semantics, parse_config
        except ImportError as e:
            raise AnsibleFilterError("mcache.fleet.config_faults needs the agent's sources "
                                     "and PyYAML and jsonschema on the controller: %s" % e
                                     ) from e
    if isinstance(text, bytes):
        # A lookup may hand over bytes; the agent reads files as UTF-8, and so does this.
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            return ["$: not UTF-8 text: %s" % e]
    try:
        # parse_config takes anything (a non-str is a fault at $) and bounds the work any text
        # costs (docs/CONFIG_LIMITS.md): a rendering gives faults, never a traceback.
        faults = check_semantics(parse_config(text), None, host_checks=False)
    except ConfigError as e:
        faults = e.faults
    except Exception as e:
        # A bug of the checks, not a fault of the config: fail the task, saying so.
        raise AnsibleFilterError("mcache.fleet.config_faults could not check the config: "
                                 "%s: %s" % (type(e).__name__, e)) from e
    return ["%s: %s" % (f.path, f.message) for f in faults]


class FilterModule:
    def filters(self):
        return {"config_faults": config_faults}

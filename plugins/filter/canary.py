# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The canary's bake verdict on the controller (plugins/module_utils/canary_analysis.py)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.mcache.fleet.plugins.module_utils.canary_analysis import (
    analyse,
    describe,
)


def canary_verdict(readings, thresholds=None):
    """analyse() of one host's readings (start, before, bake_start, after, peers)."""
    if not isinstance(readings, dict):
        raise AnsibleFilterError("canary_verdict takes a dict of readings")
    return analyse(readings, thresholds or {})


def canary_describe(regressions, host):
    """The regressions of one host, one line: host, signal, before, after, why."""
    return describe(host, regressions or [])


class FilterModule:
    def filters(self):
        return {"canary_verdict": canary_verdict, "canary_describe": canary_describe}

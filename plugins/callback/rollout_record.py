# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Says in a canary run's record how the run ended, when no wave could say it."""

from __future__ import annotations

DOCUMENTATION = r"""
name: rollout_record
author: mcache contributors (@mcache)
version_added: "0.2.0"
type: aggregate
short_description: Ends a canary run's record with what stopped the run
description:
  - C(canary.yml) writes its run's record on the controller (in C(mcache_config_report_dir))
    as C(in progress) when the run starts, and each wave adds itself once it is baked. A run
    that stops anywhere else (a host unreachable at its wave, a failed probe or apply, a bake
    that could not be judged) has no wave left to say so, and its record would stay
    C(in progress) for C(status.yml) to show (or C(done), when its last wave's bake could not
    be judged after the wave was recorded).
  - At the end of the playbook this callback sets the result of such a record to C(stopped)
    and names each host that failed or was unreachable (not ignored), the task, and the
    message. A run without such a failure, or stopped by a bake (whose record already says
    C(stopped) and why), is left as it is. Nothing is written in check mode (no record is).
  - The role tells the callback where the record is through the fact
    C(mcache_config_record_file); the callback reads nothing else of the play.
  - A run killed outright (SIGKILL, the controller's reboot) reaches no callback; its record
    stays C(in progress), with the time it was last written.
requirements:
  - Enabled in ansible.cfg (C(callbacks_enabled = mcache.fleet.rollout_record)), as this
    repository's is.
"""

import json
import os
import tempfile
import time

from ansible.plugins.callback import CallbackBase

RECORD_FACT = "mcache_config_record_file"
MAX_MESSAGE = 300


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "mcache.fleet.rollout_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record_file = None
        # host -> (what, task, message): each host's first failure that was not ignored
        self.stops = {}

    def v2_runner_on_ok(self, result):
        facts = result._result.get("ansible_facts") or {}
        if facts.get(RECORD_FACT):
            self.record_file = str(facts[RECORD_FACT])

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if not ignore_errors:
            self._stop(result, "failed")

    def v2_runner_on_unreachable(self, result):
        if not result._task.ignore_unreachable:
            self._stop(result, "unreachable")

    def _stop(self, result, what):
        host = result._host.get_name()
        if host not in self.stops:
            msg = " ".join(str(result._result.get("msg", "")).split())
            if len(msg) > MAX_MESSAGE:
                msg = msg[:MAX_MESSAGE - 3] + "..."
            self.stops[host] = (what, result._task.get_name(), msg)

    def v2_playbook_on_stats(self, stats):
        if not self.record_file or not self.stops:
            return
        try:
            with open(self.record_file, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError) as e:
            self._display.warning("rollout record %s not read: %s" % (self.record_file, e))
            return
        # "in progress", or "done" written by a last wave whose host then failed (its bake
        # could not be judged): either way the run did not end well. A bake's own stop
        # ("stopped: ...") already says why.
        if not isinstance(record, dict) or str(record.get("result", "")).startswith("stopped"):
            return
        record["result"] = "stopped: " + "; ".join(
            "%s %s at '%s'%s" % (host, what, task, (": " + msg) if msg else "")
            for host, (what, task, msg) in sorted(self.stops.items()))
        record["ended"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # written whole or not at all: status.yml may read it at any moment
        d = os.path.dirname(self.record_file) or "."
        try:
            fd, tmp = tempfile.mkstemp(prefix=".rollout-", dir=d)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=4, sort_keys=True)
                f.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.record_file)
        except OSError as e:
            self._display.warning("rollout record %s not written: %s" % (self.record_file, e))

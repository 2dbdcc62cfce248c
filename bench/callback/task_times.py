# Copyright: mcache contributors
# GNU General Public License v2.0 (see pyproject.toml)

"""Where a playbook's time goes: each task's wall time (first start to last result, all hosts
of the batch), written as JSON to $MCACHE_TASK_TIMES at the end. bench/fleet.py enables it."""

from __future__ import annotations

DOCUMENTATION = r"""
name: task_times
type: aggregate
short_description: Each task's wall time, as JSON
description:
  - Writes every task's wall time to the file named by the environment variable
    MCACHE_TASK_TIMES when the playbook ends.
requirements:
  - enabled in the configuration (callbacks_enabled)
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.rows = []
        self.current = None
        self.started = time.monotonic()

    def _close(self):
        if self.current is not None:
            self.current["s"] = round(time.monotonic() - self.current.pop("t0"), 3)
            self.rows.append(self.current)
            self.current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self.current = {"task": task.get_name(), "t0": time.monotonic()}

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_play_start(self, play):
        self._close()

    def v2_playbook_on_stats(self, stats):
        self._close()
        path = os.environ.get("MCACHE_TASK_TIMES")
        if path:
            with open(path, "w") as f:
                json.dump({"total_s": round(time.monotonic() - self.started, 3),
                           "tasks": self.rows}, f, indent=1)

# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The fingerprint of an mcache release: what a prepared host must run."""

from __future__ import annotations

DOCUMENTATION = r"""
name: release
author: mcache contributors (@mcache)
version_added: "0.1.0"
short_description: Fingerprint of an mcache release (agent sources, roles, settings)
description:
  - A short sha256 over every regular file below the given paths (by path relative to the
    path given, and content; Python caches skipped) and over the variables that
    O(settings_pattern) names.
  - The C(mcache_host) role leaves it on a host once the host is prepared; the C(mcache_config)
    module compares it, so that a config rollout prepares only the hosts that are not at the
    desired release (a new agent, another role, other settings) and is one module call on the
    others.
  - Runs on the controller; file contents are read again only when a file's size or
    modification time changed.
options:
  _terms:
    description: Files and directories that make the release.
    required: true
    type: list
    elements: path
  settings_pattern:
    description: A regular expression; the variables whose names match it (as the play sees
      them, templated) are part of the release, e.g. the mcache_host_* settings given in the
      inventory. A value that cannot be templated yet (it needs facts) counts as its text.
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: The release of the agent in this repository and of the mcache_host role
  ansible.builtin.debug:
    msg: "{{ lookup('mcache.fleet.release', [playbook_dir ~ '/../mcache_agent', role_path],
                    settings_pattern='^mcache_host_') }}"
"""

RETURN = r"""
_raw:
  description: The fingerprint (16 hex digits).
  type: list
  elements: str
"""

import hashlib
import json
import os
import re

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
_DIGESTS = {}


def _files(path):
    if os.path.isfile(path):
        yield os.path.basename(path), path
        return
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(names):
            if not name.endswith((".pyc", ".pyo")):
                full = os.path.join(root, name)
                yield os.path.relpath(full, path), full


def _digest(path):
    """sha256 of a tree, recomputed only when a file's size or mtime changed."""
    files = list(_files(path))
    stamp = tuple((rel, os.stat(full).st_size, os.stat(full).st_mtime_ns) for rel, full in files)
    cached = _DIGESTS.get(path)
    if cached and cached[0] == stamp:
        return cached[1]
    h = hashlib.sha256()
    for rel, full in files:
        with open(full, "rb") as f:
            h.update(rel.encode() + b"\0" + f.read() + b"\0")
    _DIGESTS[path] = (stamp, h.hexdigest())
    return _DIGESTS[path][1]


def _flat(terms):
    for t in terms:
        if isinstance(t, (list, tuple)):
            yield from _flat(t)
        else:
            yield t


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        h = hashlib.sha256()
        for term in _flat(terms):
            path = os.path.normpath(os.path.expanduser(str(term)))
            if not os.path.exists(path):
                raise AnsibleLookupError("mcache.fleet.release: %s does not exist" % path)
            h.update(_digest(path).encode())
        h.update(json.dumps(self._settings(variables or {}), sort_keys=True,
                            default=str).encode())
        return [h.hexdigest()[:16]]

    def _settings(self, variables):
        pattern = self.get_option("settings_pattern")
        if not pattern:
            return {}
        out = {}
        for name in sorted(k for k in variables if re.search(pattern, k)):
            try:
                out[name] = self._templar.template(variables[name])
            except Exception:  # needs facts or other hosts' vars: its text stands for it
                out[name] = str(variables[name])
        return out

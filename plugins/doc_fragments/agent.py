# Copyright: (c) 2026, mcache contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Options that the mcache modules share: how they reach the agent, its store, its probe."""

from __future__ import annotations


class ModuleDocFragment:
    # The agent's control socket: every module talks to the agent through it.
    DOCUMENTATION = r"""
options:
  socket:
    description:
      - The agent's control socket (a Unix socket only root may use).
    type: path
    default: /run/mcache/agent.sock
notes:
  - The modules run under the host's own Python and talk to the agent's control socket
    directly (one JSON request and answer a call); the agent must run (role
    C(mcache.fleet.mcache_host)).
"""

    # The agent's versions store, read for --diff.
    STATE_DIR = r"""
options:
  state_dir:
    description:
      - The agent's state dir (versions store), read for the diff's C(before) text.
    type: path
    default: /var/lib/mcache
"""

    # The health probe's schedule.
    PROBE = r"""
options:
  probe_retries:
    description:
      - Probes at most, until one passes.
    type: int
    default: 5
  probe_delay:
    description:
      - Seconds between probes.
    type: float
    default: 1
  probe_deadline:
    description:
      - Seconds all probes may take together; no probe starts after it.
    type: float
    default: 30
"""

    # What a module that only reads the host (status, versions, signals, probe, memcached_check)
    # supports: check mode runs it as it is, and it has nothing to diff.
    READS = r"""
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
"""

    # What a module that changes the host's config (config, rollback) supports: check mode says
    # what it would do, and the diff shows the config text before and after.
    CHANGES = r"""
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
"""

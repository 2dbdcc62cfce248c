"""memcached as the host has it (mcache_host_memcached_mode), with the real role over ssh: the
distribution's memcached adopted through a systemd drop-in (systemd hosts), and a memcached of
the operator's own checked for what mcache needs (UDP on, the port) with a precise message
(plain hosts). Each test changes one host and puts it back to the default (own), at the
version test_fleet.py left (6), so test_systemd.py and test_truth.py find the fleet as before.
"""

from __future__ import annotations

import json

import pytest

from tests.fleet.labctl import AGENT, PREPARED, cfg, current, ok, run

V6 = cfg("v6-metrics.yml")


def probe_ok(host) -> bool:
    return host.exec([AGENT, "probe"]).returncode == 0


def unit(host, prop: str, name: str) -> str:
    return host.exec(["systemctl", "show", "-P", prop, name], check=True).stdout.strip()


# adopt is systemd's (a drop-in); a plain host refuses it (below)
@pytest.mark.parametrize("lab", ["systemd"], indirect=True)
def test_the_distributions_memcached_adopted_with_a_drop_in(lab):
    h = lab.host(3)
    ok(run(lab, "deploy.yml", *V6))
    out = ok(run(lab, "deploy.yml", *V6, "-e", "mcache_host_memcached_mode=adopt",
                 "--limit", h.name))
    assert PREPARED.search(out)
    try:
        dropin = h.exec(["cat", "/etc/systemd/system/memcached.service.d/mcache.conf"],
                        check=True).stdout
        assert f"-U 11211 -l {h.address} -p 11211" in dropin
        assert h.exec(["systemctl", "is-active", "memcached.service"]).stdout.strip() == "active"
        assert h.exec(["systemctl", "is-enabled", "memcached.service"]).stdout.strip() == \
            "enabled"
        pid = unit(h, "MainPID", "memcached.service")
        argv = h.exec(["cat", f"/proc/{pid}/cmdline"], check=True).stdout.split("\0")
        assert argv[:7] == ["/usr/bin/memcached", "-U", "11211", "-l", h.address, "-p", "11211"]
        # mcache's own instance is gone: one memcached on the host
        assert h.exec(["systemctl", "is-active", "mcache-memcached.service"]).stdout.strip() \
            != "active"
        assert h.exec(["pgrep", "-c", "-x", "memcached"]).stdout.strip() == "1"
        assert current(h) == 6 and probe_ok(h)
    finally:
        ok(run(lab, "deploy.yml", *V6, "--limit", h.name))
    # back to own: the distribution's stopped and disabled, mcache's running
    assert h.exec(["systemctl", "is-active", "mcache-memcached.service"]).stdout.strip() == \
        "active"
    assert h.exec(["systemctl", "is-active", "memcached.service"]).stdout.strip() != "active"
    assert h.exec(["systemctl", "is-enabled", "memcached.service"]).stdout.strip() != "enabled"
    assert probe_ok(h)


# the check is the same on both kinds of host; the start-stop-daemon side is the plain one's
@pytest.mark.parametrize("lab", ["plain"], indirect=True)
def test_bring_your_own_memcached_is_checked_for_what_mcache_needs(lab):
    h = lab.host(3)
    ok(run(lab, "deploy.yml", *V6))
    external = ["-e", "mcache_host_memcached_mode=external", "--limit", h.name, "-e",
                "mcache_host_memcached_check_wait=2"]
    # the operator's own memcached, in the background with a pidfile of root's
    mine = ["start-stop-daemon", "--start", "--background", "--make-pidfile", "--pidfile",
            "/run/byo-memcached.pid", "--exec", "/usr/bin/memcached", "--", "-p", "11211",
            "-l", h.address, "-u", "memcache"]
    try:
        # none: mcache's own instance is stopped (external), and nothing else answers
        res = run(lab, "deploy.yml", *V6, *external)
        assert res.returncode != 0
        assert (f"memcached does not answer over TCP on {h.address}:11211" in flat(res)
                and f"-l {h.address} -p 11211 -U 11211" in flat(res)), res.stdout[-3000:]
        assert h.exec(["pgrep", "-x", "memcached"]).returncode == 1
        # the operator's own, UDP off (memcached's default)
        h.exec([*mine, "-U", "0"], check=True)
        res = run(lab, "deploy.yml", *V6, *external)
        assert res.returncode != 0
        assert (f"memcached on {h.address}:11211 has UDP off (stats settings: udpport 0)"
                in flat(res) and "start memcached with -U 11211" in flat(res)), \
            res.stdout[-3000:]
        stop_mine(h)
        # UDP on another port
        h.exec([*mine, "-U", "11299"], check=True)
        res = run(lab, "deploy.yml", *V6, *external)
        assert res.returncode != 0
        assert f"memcached on {h.address}:11211 has UDP on port 11299, not 11211" in flat(res)
        stop_mine(h)
        # as mcache needs it: the host is prepared, and the kernel serves through it
        h.exec([*mine, "-U", "11211"], check=True)
        ok(run(lab, "deploy.yml", *V6, *external))
        st = json.loads(h.exec([AGENT, "status", "--json"], check=True).stdout)["result"]
        assert st["version"] == 6 and probe_ok(h)
        assert not h.exec(["ls", "/etc/rc2.d"]).stdout.count("S01mcache-memcached")
    finally:
        stop_mine(h)
        ok(run(lab, "deploy.yml", *V6, "--limit", h.name))
    # back to own: mcache's instance runs again, and starts at boot again
    assert "S01mcache-memcached" in h.exec(["ls", "/etc/rc2.d"], check=True).stdout
    assert h.exec(["pgrep", "-x", "memcached"]).returncode == 0 and probe_ok(h)
    # adopt needs systemd: said at once
    res = run(lab, "deploy.yml", *V6, "-e", "mcache_host_memcached_mode=adopt", "--limit",
              h.name)
    assert res.returncode != 0 and "adopt gives the distribution's memcached service a " \
        "systemd drop-in, and this host has no systemd" in flat(res)
    ok(run(lab, "deploy.yml", *V6, "--limit", h.name))
    assert current(h) == 6


def flat(res) -> str:
    """ansible-playbook's output with its line wrapping undone."""
    return " ".join((res.stdout + res.stderr).split())


def stop_mine(h) -> None:
    """The operator's memcached stopped (0) or not running (1)."""
    r = h.exec(["start-stop-daemon", "--stop", "--quiet", "--pidfile", "/run/byo-memcached.pid",
                "--exec", "/usr/bin/memcached", "--retry", "TERM/5/KILL/2", "--remove-pidfile"])
    assert r.returncode in (0, 1), r.stderr

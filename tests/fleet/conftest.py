"""Fleet test fixtures: the lab fleet (lab/lab.sh, see lab/README.md).

`lab` (session scope) brings up the lab hosts, yields a `Lab`, and tears the lab down at the
end of the session; once with hosts whose init is our own tiny one (plain) and once with
systemd as their init, so that the fleet tests run on both (a test that is about systemd asks
for `lab` with `indirect` parametrization). It never skips: if the lab cannot come up, every
test that uses it errors.
Set MCACHE_LAB_KEEP=1 to leave the lab up after the session (for debugging).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fleet.labctl import LAB_HOSTS, Lab, lab_hosts, lab_sh
from tests.fleet.promlab import lab_prometheus  # noqa: F401 (a fixture, for every fleet test)


@pytest.fixture(scope="session", params=["plain", "systemd"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    init = request.param
    up = lab_sh("up", str(LAB_HOSTS), init=init)
    if up.returncode != 0:
        down = lab_sh("down")
        pytest.fail(
            f"lab fleet did not come up (lab.sh up {LAB_HOSTS}: exit {up.returncode})\n"
            f"stdout:\n{up.stdout}\nstderr:\n{up.stderr}\nlab.sh down: {down.stderr}",
            pytrace=False,
        )
    try:
        hosts = lab_hosts()
        if len(hosts) != LAB_HOSTS or {h.init for h in hosts} != {init}:
            raise RuntimeError(f"expected {LAB_HOSTS} {init} lab hosts up, found {hosts}")
        yield Lab(hosts=hosts, init=init)
    finally:
        if os.environ.get("MCACHE_LAB_KEEP") != "1":
            down = lab_sh("down")
            if down.returncode != 0:
                print(f"lab.sh down failed: {down.stderr}")

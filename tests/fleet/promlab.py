"""A real Prometheus (Debian's `prometheus`) on the controller, scraping the lab's agents: the
`lab_prometheus` fixture starts one per test with the config the test gives and stops it after.

    def test_x(lab, lab_prometheus):
        prom = lab_prometheus({"scrape_configs": [...], "rule_files": [...]})
        prom.query("up")
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Fast enough for a test to see a change within seconds.
GLOBAL = {"scrape_interval": "1s", "evaluation_interval": "1s"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(fn: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    """fn's first truthy answer within timeout (an OSError counts as none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = fn()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"no {what} within {timeout} s")


class LabPrometheus:
    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config = {"global": dict(GLOBAL), **config}
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LabPrometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(json.dumps(self.config))
        self.log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        until(self.ready, 30, "prometheus ready")
        return self

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, (
            "prometheus exited: " + (self.workdir / "prometheus.log").read_text()[-2000:])
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
            return r.status == 200

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        if self.proc is not None:
            self.log.close()

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.api}/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's series."""
        return self.get("query", query=expr)["result"]

    def targets_up(self) -> list[str]:
        return [t["labels"]["instance"] for t in self.get("targets")["activeTargets"]
                if t["health"] == "up"]

    def alerts(self, state: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.get("alerts")["alerts"]
                if (state is None or a["state"] == state)
                and (name is None or a["labels"]["alertname"] == name)]

    def firing(self, name: str | None = None) -> list[dict[str, Any]]:
        return self.alerts("firing", name)


@pytest.fixture
def lab_prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], LabPrometheus]]:
    """Start a Prometheus with a config (scrape_configs, rule_files; global: every second);
    stopped when the test ends."""
    started: list[LabPrometheus] = []

    def start(config: dict[str, Any]) -> LabPrometheus:
        prom = LabPrometheus(tmp_path / f"prometheus{len(started)}", config)
        started.append(prom)
        return prom.start()

    yield start
    for prom in started:
        prom.stop()

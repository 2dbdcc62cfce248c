"""Fixtures of the agent tests: the real daemon in a pair's server namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentproc import AgentProc


@pytest.fixture
def agent(pair, tmp_path: Path) -> Iterator[AgentProc]:
    """An agent of the module's `pair`, with its own socket and state dir. Afterwards it is
    killed: what it pinned stays for the next test to adopt or replace."""
    a = AgentProc(pair, tmp_path)
    yield a
    a.kill9()

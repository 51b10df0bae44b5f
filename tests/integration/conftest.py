"""Fixtures shared by the integration tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest


@pytest.fixture()
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes (daemons, followers) started by a test; killed even when the test fails."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)

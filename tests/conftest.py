"""Suite-wide settings.

``AQ_STUB_SELFCHECK=1``: every coordinator-stub store (in this process and in
every stub process a test starts, which inherit the environment) checks each
commit and each cached read against a full reload of its files. A change the
journal failed to carry then fails the test that made it.
"""

import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

os.environ["AQ_STUB_SELFCHECK"] = "1"


@pytest.fixture()
def strays() -> Iterator[list[int]]:
    """Pids a test saw (background processes of tools); SIGKILLed at teardown whatever happened, so a
    failing containment test never leaks a ``sleep 300``."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)

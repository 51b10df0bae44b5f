"""The file store's lock: one exclusive flock(2) on ``DIR/.lock`` per operation, optionally with a deadline.

It is the same lock ``filelock.FileLock`` takes on Unix, minus its costs: the
command seam is a fresh process per operation, where importing filelock would
cost more than the operation, and in ``serve`` FileLock's bookkeeping was
~0.1 ms of a 0.4 ms operation. Both exclude each other and ``filelock.FileLock``
on the same file (a test proves it).
"""

from __future__ import annotations

import contextlib
import os

TYPE_CHECKING = False  # typing stays unimported on the seam's per-call path
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager as ContextManager
    from pathlib import Path
    from typing import Any

    LockFactory = Callable[[Path], ContextManager[Any]]

_LOCK_POLL_MAX_S = 0.01


class LockTimeout(Exception):
    """``flock`` gave up at its deadline. Not an AQError on purpose: ``api.handle`` must not answer it."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


@contextlib.contextmanager
def flock(path: Path, deadline: float | None = None) -> Iterator[None]:
    """Exclusive flock(2) on ``path`` for the block.

    With ``deadline`` (``time.monotonic``), LOCK_NB is polled with short sleeps and
    ``LockTimeout`` raised at the deadline: an in-process caller (the daemon's
    embedded seam) must never hang on a lock a stuck process holds.
    """
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if deadline is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            _flock_until(fd, path, deadline)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _flock_until(fd: int, path: Path, deadline: float) -> None:
    import fcntl
    import time

    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(path) from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, _LOCK_POLL_MAX_S)

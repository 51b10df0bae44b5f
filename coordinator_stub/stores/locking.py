"""The file store's lock: one exclusive flock(2) on ``DIR/.lock`` per operation, and the stalls it sees.

It is the same lock ``filelock.FileLock`` takes on Unix, minus its costs: the
command seam is a fresh process per operation, where importing filelock would
cost more than the operation, and in ``serve`` FileLock's bookkeeping was
~0.1 ms of a 0.4 ms operation. Both exclude each other and ``filelock.FileLock``
on the same file (a test proves it).

**Stalls.** While one holder is paused (SIGSTOP, a frozen VM, swap) or stuck
(a disk that does not answer), nobody can renew a lease. So the holders keep a
small record in the lock file itself (63 bytes, rewritten in place, never
synced: it only matters while processes run)::

    P0 P1 C     time.monotonic() seconds: [P0, P1] the longest hold no transaction
                has been told about yet; C: when the current holder took the lock (0: released)

Each holder writes ``C`` when it takes the lock and, when it lets go, its own
hold as ``[P0, P1]`` (a transaction's holder, who passed the previous record on
to the core) or the longer of the two (any other holder: a tidy, a checkpoint).
``LockHold.stall`` tells a transaction the longest of: that record, a holder
that died holding the lock while this one waited (``C`` still set), and this
holder's own time between taking the lock and handing the state over. The
monotonic clock is shared by every process of a host (Linux, macOS), which is
all a directory store serves; a record that cannot be parsed (a FileLock user
truncated it) is simply no information.
"""

from __future__ import annotations

import os
import time

from agent_queue import ctxlib
from coordinator_stub.stores.base import Stall, WouldBlock

TYPE_CHECKING = False  # typing stays unimported on the seam's per-call path
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager as ContextManager
    from os import PathLike
    from typing import Any

    StrPath = str | PathLike[str]

    LockFactory = Callable[[str], ContextManager[Any]]

_LOCK_POLL_MAX_S = 0.01
_clock = time.monotonic  # of the record (a test may pass its own); the deadline is always time.monotonic's
_RECORD = "%020.6f %020.6f %020.6f\n"
_RECORD_LEN = 63


class LockTimeout(Exception):
    """``flock`` gave up at its deadline. Not an AQError on purpose: ``api.handle`` must not answer it."""

    def __init__(self, path: StrPath) -> None:
        super().__init__(str(path))
        self.path = path


class LockHold:
    """This process's hold of the lock, and what the record in the lock file said when it took it."""

    __slots__ = ("fd", "acquired", "pending", "reported")

    def __init__(self, fd: int, blocked: bool) -> None:
        self.fd = fd
        self.acquired = _clock()
        self.reported = False  # a transaction passed ``pending`` on to the core
        p0, p1, current = _read_record(fd)
        now = self.acquired
        pending = (p0, p1) if 0 <= p0 <= p1 <= now else (0.0, 0.0)  # (a record from before a reboot: none)
        if blocked and 0 < current <= now:  # its holder died holding the lock, which freed it just now, for us
            pending = _longer(pending, (current, now))
        self.pending = pending
        _write_record(fd, pending, self.acquired)

    def stall(self) -> Stall | None:
        """The longest time nobody could be served that a transaction starting now learns of."""
        ready = _clock()
        start, end = _longer(self.pending, (self.acquired, ready))
        if end <= start:
            return None
        return Stall(end - start, ready - end)

    def release(self) -> None:
        own = (self.acquired, _clock())
        _write_record(self.fd, own if self.reported else _longer(self.pending, own), 0.0)


@ctxlib.contextmanager
def flock(path: StrPath, deadline: float | None = None, nowait: bool = False) -> Iterator[LockHold]:
    """Exclusive flock(2) on ``path`` for the block; yields the ``LockHold`` (stall bookkeeping).

    With ``deadline`` (``time.monotonic``), LOCK_NB is polled with short sleeps and
    ``LockTimeout`` raised at the deadline: an in-process caller (the daemon's
    embedded seam) must never hang on a lock a stuck process holds. With ``nowait``,
    a lock held elsewhere raises ``WouldBlock`` at once (``serve``'s event loop).
    """
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        blocked = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            blocked = True
            if nowait:
                raise WouldBlock(f"{path}: held by another process") from None
            if deadline is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                _flock_until(fd, path, deadline)
        try:
            hold = LockHold(fd, blocked)
            try:
                yield hold
            finally:
                hold.release()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _flock_until(fd: int, path: StrPath, deadline: float) -> None:
    import fcntl

    pause = 0.001
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockTimeout(path)
        time.sleep(min(pause, left))
        pause = min(pause * 2, _LOCK_POLL_MAX_S)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            continue


def _read_record(fd: int) -> tuple[float, float, float]:
    try:
        p0, p1, current = (float(x) for x in os.pread(fd, _RECORD_LEN, 0).split())
    except (OSError, ValueError):  # empty (a new lock file), truncated by a FileLock user, or garbage
        return 0.0, 0.0, 0.0
    return p0, p1, current


def _write_record(fd: int, hold: tuple[float, float], current: float) -> None:
    with ctxlib.suppress(OSError):  # bookkeeping only: a full disk must not fail the operation
        os.pwrite(fd, (_RECORD % (hold[0], hold[1], current)).encode(), 0)


def _longer(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a if a[1] - a[0] >= b[1] - b[0] else b

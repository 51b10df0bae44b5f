"""Group commit: concurrent operations of one ``serve`` share one journal fdatasync (B2 at 4 and 16 clients).

The file store still applies operations one at a time under its lock (lease
rules and their order are unchanged) and appends each one's journal line
without a sync. What changes is the wait for durability, outside the lock:

- ``wrote()``, called under the store's lock right after a line is whole in
  the file, hands out a ticket (1, 2, 3...: the order of the lines);
- ``wait(ticket)`` returns once a sync that *started after* that line was
  written has returned. The first waiter with nothing in flight leads: it
  notes the last ticket written, syncs, and moves the ``durable`` watermark
  there; waiters that arrive meanwhile wait on the condition, and the first
  of them still not covered leads the next sync. One fdatasync flushes every
  line of the file (it is per inode), so N waiters cost one sync.

A sync that fails fails every waiter it covered, and every later one: the
lines after the watermark may be lost (a failed fsync may drop the dirty
pages and report it once), and every operation after them may have read
their effects. So the store stops (``failed``) and refuses every later
operation until ``serve`` restarts and reads the journal again, as
PostgreSQL does after a failed WAL fsync. An answered operation was always
covered by a sync that returned.

Only ``serve`` builds one (``open_store(serving=True)``): it imports
``threading``, which a seam call (one operation per process) never pays for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent_queue.errors import StateError


class NotDurable(StateError):
    """The journal sync that would have made this operation durable failed (or an earlier one did)."""


class GroupCommit:
    """The ``durable up to ticket N`` watermark, moved by one syncer at a time (leader/follower)."""

    def __init__(self, sync: Callable[[], None], where: str = "journal") -> None:
        """``sync``: makes every line written so far durable (fdatasync of the journal); may raise OSError."""
        self._sync = sync
        self._where = where
        self._cond = threading.Condition(threading.Lock())
        self._written = 0  # the last ticket handed out: its line is whole in the file
        self._durable = 0  # every ticket up to this one is covered by a sync that returned
        self._syncing = False
        self._failed: BaseException | None = None
        self.syncs = 0  # syncs that returned (tests and benchmarks read it: operations per sync)

    @property
    def written(self) -> int:
        with self._cond:
            return self._written

    @property
    def durable(self) -> int:
        with self._cond:
            return self._durable

    def wrote(self) -> int:
        """The ticket of a line just written whole (call it under the store's lock, after the write)."""
        with self._cond:
            self._written += 1
            return self._written

    def check(self) -> None:
        """Raise ``NotDurable`` if a sync has failed: the store takes no further operation."""
        with self._cond:
            if self._failed is not None:
                raise self._error()

    def wait(self, ticket: int) -> None:
        """Return once a sync covering ``ticket`` has returned; ``NotDurable`` if one failed first."""
        with self._cond:
            while self._durable < ticket:
                if self._failed is not None:
                    raise self._error()
                if not self._syncing:
                    break
                self._cond.wait()
            else:
                return
            self._syncing = True  # this thread leads: everything written so far rides on its sync
            target = self._written
        try:
            self._sync()
        except BaseException as exc:
            with self._cond:
                self._syncing = False
                self._failed = exc
                self._cond.notify_all()
            if not isinstance(exc, Exception):
                raise  # (an interrupt, a test's simulated crash): as it is, to the leader only
            raise self._error() from exc
        with self._cond:
            self._syncing = False
            self._durable = max(self._durable, target)
            self.syncs += 1
            self._cond.notify_all()

    def sync_all(self) -> None:
        """Make every line written so far durable now (a checkpoint, under the store's lock: no new line comes)."""
        self.wait(self.written)

    def _error(self) -> NotDurable:
        # A new exception per waiter: one raised in many threads at once would share its traceback.
        return NotDurable(f"{self._where}: a sync failed ({self._failed}); this operation may not be durable, and "
                          "the store takes no more operations: restart serve (it reads the journal again)")

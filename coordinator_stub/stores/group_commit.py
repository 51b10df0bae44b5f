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

**Waiting without a thread.** ``serve`` runs its operations on one store
thread and does not block it on the sync: after an operation it calls
``when_durable(written, callback)`` and takes the next operation at once,
while a syncer thread (started on first use) leads the syncs and calls back
each waiter once a sync covering its ticket has returned (or failed). Thirty-two
threads waiting on one condition had made every sync wake all of them, and the
GIL turns that herd into CPU: at 16 clients each operation cost ~0.7 ms more
than at one (B2, issue 21). One thread applies the operations, one syncs, the
event loop answers.

Only ``serve`` builds one (``open_store(serving=True)``): it imports
``threading``, which a seam call (one operation per process) never pays for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent_queue.errors import StateError

Callback = Callable[[BaseException | None], None]


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
        self._callbacks: list[tuple[int, Callback]] = []  # when_durable's waiters, in ticket order
        self._syncer: threading.Thread | None = None
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
        failed = self._lead(target)
        if failed is not None:
            if not isinstance(failed, Exception):
                raise failed  # (an interrupt, a test's simulated crash): as it is, to the leader only
            raise self._error() from failed

    def when_durable(self, ticket: int, callback: Callback) -> None:
        """``callback(None)`` once a sync covering ``ticket`` has returned, ``callback(NotDurable)`` if one failed.

        Never blocks: called on the store thread, the callback runs on the syncer
        thread (or here, if the ticket is already settled). The callback must not
        block either (``serve``'s hands the answer to the event loop).
        """
        with self._cond:
            if self._failed is None and self._durable < ticket:
                self._callbacks.append((ticket, callback))
                if self._syncer is None:
                    self._syncer = threading.Thread(target=self._sync_forever, name="aq-journal-sync", daemon=True)
                    self._syncer.start()
                if not self._syncing:  # else the sync under way wakes the syncer as it ends (a wake-up is ~30 us)
                    self._cond.notify_all()
                return
            failed = self._failed is not None and self._durable < ticket
        callback(self._error() if failed else None)

    def _sync_forever(self) -> None:
        """The syncer thread: lead a sync whenever a callback waits and no other sync is under way."""
        while True:
            with self._cond:
                while not self._callbacks or self._syncing:
                    self._cond.wait()
                self._syncing = True
                target = self._written
            self._lead(target)

    def _lead(self, target: int) -> BaseException | None:
        """Run one sync covering tickets up to ``target`` (``_syncing`` already taken); settle who it covers."""
        try:
            self._sync()
        except BaseException as exc:  # noqa: BLE001 - recorded for every waiter; the caller re-raises its own
            failed: BaseException | None = exc
        else:
            failed = None
        with self._cond:
            self._syncing = False
            if failed is None:
                self._durable = max(self._durable, target)
                self.syncs += 1
            else:
                self._failed = failed
            due = [cb for t, cb in self._callbacks if failed is not None or t <= self._durable]
            self._callbacks = [(t, cb) for t, cb in self._callbacks if failed is None and t > self._durable]
            self._cond.notify_all()
        for callback in due:
            callback(None if failed is None else self._error())
        return failed

    def sync_all(self) -> None:
        """Make every line written so far durable now (a checkpoint, under the store's lock: no new line comes)."""
        self.wait(self.written)

    def _error(self) -> NotDurable:
        # A new exception per waiter: one raised in many threads at once would share its traceback.
        return NotDurable(f"{self._where}: a sync failed ({self._failed}); this operation may not be durable, and "
                          "the store takes no more operations: restart serve (it reads the journal again)")

"""Store operations one at a time, in arrival order: on the event loop when they cannot wait, else off it.

The store is synchronous (a process lock, file writes, a journal sync); the
event loop must keep reading heads, timing out slow clients and answering
health checks meanwhile. One worker thread runs the operations in arrival
order: the file store serialises them anyway, and one thread keeps its
in-process caches single-threaded.

**The hot operations run on the loop when nothing can make them wait.** A
claim, renew, release or report (and the tidy after it) runs on the event
loop itself when the store thread has nothing queued or under way and the
store offers a ``nowait`` mode (the file store in ``serve``): in it the
operation either finishes without waiting (its lock free, its state in
memory, no checkpoint due; the sync is the runner's, below) or raises
``WouldBlock`` having done nothing, and then goes to the thread like any
other. Handing an operation to a thread and its answer back cost about a
fifth of ``serve``'s CPU per operation (two GIL hand-offs and a wake-up of
the loop); the loop is held for the operation's own work, a fraction of a
millisecond, never for a lock held elsewhere, a disk read or a checkpoint.

``later(tidy)``, called once an answer is sent, queues the store's after-answer
bookkeeping on the same thread without waiting for it: the caller already has
its answer, and the next operation runs after it, in order.

**Answers wait for durability, the thread does not.** A store that lets an
operation return before its commit is durable (``Store.defer_durability``: the
file store with group commit) hands back its watermark. After each operation
the runner notes ``written`` (its own journal line, and every line whose
effects it may have read) and answers once a sync covers it, while the thread
goes on with the next operation: operations queued behind each other share
one sync (``stores/group_commit.py``). When nothing is queued, the store
thread leads that sync itself, so a lone client pays no extra thread handoff;
an operation run on the loop for a lone client (no other answer pending, not
``crowded``) leads it on the loop.

**With other clients, the loop syncs when it runs out of work.** ``serve``
takes the runner's ``idle_hook`` and its event loop calls it each time it is
about to wait for I/O (``web/server.py``): by then it has read and applied
every request that had arrived, and one sync on the loop answers all of them
(as Redis syncs its append-only file before it sleeps). Until ``serve`` took
that hook, the syncer thread answered them instead; on a 2-core VM waking it
and handing the answers back cost ~0.15 ms of ``serve``'s CPU per operation at
4 clients (GIL hand-offs and cross-CPU wake-ups): pairs/s +10-20% at 4 and 16
clients (B2, docs/performance.md). A loop that never runs out of work still
syncs once its oldest waiting answer is ``BATCH_WAIT_S`` old. Operations run on
the store thread keep the syncer thread: that thread must not block the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from coordinator_stub.stores.base import WouldBlock

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from coordinator_stub.stores.group_commit import GroupCommit

T = TypeVar("T")
Observer = Callable[[str, float], None]
Settle = Callable[[Any, BaseException | None], None]
NoWait = Callable[[], "AbstractContextManager[None]"]
log = logging.getLogger(__name__)
ON_LOOP = frozenset({"claim", "renew", "release", "report", "tidy"})  # the hot path (B2): tried on the loop first
BATCH_WAIT_S = 0.005  # a busy loop syncs its batch of answers once the oldest has waited this long


class StoreRunner:
    def __init__(self, observe: Observer | None = None, durability: GroupCommit | None = None,
                 nowait: NoWait | None = None, crowded: Callable[[], bool] | None = None) -> None:
        """``durability``: the store's watermark if it defers durability (``Coordinator.defer_durability``);
        ``nowait``: the store's mode for running on the loop (``Coordinator.nowait``), if it has one;
        ``crowded``: True while other clients may send meanwhile (``serve``: more than one connection open)."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aq-store")
        self.observe = observe  # (operation name, seconds): the store-operation latency histogram
        self._durability = durability
        self._nowait = nowait
        self._crowded = crowded or (lambda: False)
        self._queued = 0  # submitted, not yet started: an operation with none behind it syncs on its own
        self._busy = 0  # submitted, not yet finished: an operation on the loop would overtake it
        self._queued_lock = threading.Lock()
        self._pending = 0  # answers not yet settled (loop thread only): with none, the loop leads its own sync
        # Answers settled from other threads, delivered to the loop in batches: one wake-up of the loop for
        # all the answers one sync releases, not one each (B2 at 4 and 16 clients).
        self._mail: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self._mail_posted = False
        self._mail_lock = threading.Lock()
        # Answers of operations run on the loop, waiting for the sync the loop leads when idle (``idle_hook``):
        # (ticket, answer, result, error); None until ``serve`` takes the hook.
        self._batch: list[tuple[int, asyncio.Future[Any], Any, BaseException | None]] | None = None
        self._batch_since = 0.0

    def idle_hook(self) -> Callable[[bool], bool]:
        """For the event loop to call before it waits for I/O (``idle``) and, busy, before each poll.

        Once taken, an operation run on the loop with other answers pending waits for
        the loop's sync rather than the syncer thread's: the loop must then call the
        hook. It returns True when it settled answers (the loop has work again).
        """
        self._batch = []
        return self._sync_batch

    def _sync_batch(self, idle: bool) -> bool:
        """One sync on this (the loop's) thread for every answer in the batch; settles them."""
        batch = self._batch
        if not batch or not (idle or time.monotonic() - self._batch_since >= BATCH_WAIT_S):
            return False
        self._batch = []
        durability = self._durability
        assert durability is not None  # (only operations of a deferring store join the batch)
        try:
            durability.wait(batch[-1][0])  # tickets only grow: the last covers the batch
        except BaseException as failed:  # NotDurable, or an interrupt (answered, then raised on)
            for _, answer, _, _ in batch:
                _settle(answer, None, _not_durable(durability, failed))
            if not isinstance(failed, Exception):
                raise
            return True
        for _, answer, result, exc in batch:
            _settle(answer, result, exc)
        return True

    def run(self, name: str, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` on the loop if it cannot wait, else on the store thread; ``name`` labels its latency.
        Settled once durable."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        self._pending += 1
        answer.add_done_callback(self._answered)

        def settle(result: Any, exc: BaseException | None) -> None:
            self._post(loop, answer, result, exc)

        if self._on_loop(name, answer, settle, fn, *args):
            return answer

        def work() -> None:
            self._started()
            try:
                result = self._timed(name, fn, *args)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                self._finished()  # (before its answer: the next operation may run on the loop)
                self._when_durable(self._nothing_queued(), settle, settle, None, exc)
            else:
                self._finished()
                self._when_durable(self._nothing_queued(), settle, settle, result, None)

        self._submit(work)
        return answer

    def later(self, name: str, fn: Callable[[], object]) -> None:
        """``fn()`` after what is queued (on the loop if it cannot wait), unawaited; a failure is logged."""

        def work() -> None:
            self._started()
            try:
                self._timed(name, fn)
            except Exception:  # the answer stands (the journal holds it); the next operation re-reads
                log.exception("internal error after answering (%s)", name)
            finally:
                self._finished()

        try:
            if self._try_on_loop(name, fn) is not _WOULD_BLOCK:
                return
        except Exception:
            log.exception("internal error after answering (%s)", name)
            return
        with contextlib.suppress(RuntimeError):  # shut down: the stop's checkpoint does the rest
            self._submit(work)

    def _on_loop(self, name: str, answer: asyncio.Future[Any], settle: Settle, fn: Callable[..., Any],
                 *args: Any) -> bool:
        """Run and answer ``fn(*args)`` here if it can run without waiting; False: it is for the thread."""
        exc: Exception | None = None
        try:
            result = self._try_on_loop(name, fn, *args)
        except Exception as failed:  # handed to the awaiting request, as from the thread (an interrupt stops serve)
            result, exc = None, failed
        if result is _WOULD_BLOCK:
            return False
        # A lone client: the loop leads the sync now. Else the loop goes on reading the other clients' requests,
        # which share the next sync: its own when it runs out of work (idle_hook), or the syncer thread's.
        alone = self._pending <= 1 and not self._crowded()
        if not alone and self._batch is not None and self._durability is not None:
            if not self._batch:
                self._batch_since = time.monotonic()
            self._batch.append((self._durability.written, answer, result, exc))
            return True
        self._when_durable(alone, lambda r, e: _settle(answer, r, e), settle, result, exc)
        return True

    def _try_on_loop(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the store's ``nowait`` mode; ``_WOULD_BLOCK`` when it must go to the thread."""
        if self._nowait is None or name not in ON_LOOP or self._busy:
            return _WOULD_BLOCK
        start = time.perf_counter()
        try:
            with self._nowait():
                result = fn(*args)
        except WouldBlock:  # nothing was done
            return _WOULD_BLOCK
        except BaseException:
            self._observe(name, start)
            raise
        self._observe(name, start)
        return result

    def _post(self, loop: asyncio.AbstractEventLoop, answer: asyncio.Future[Any], result: Any,
              exc: BaseException | None) -> None:
        """Settle ``answer`` on the loop (from any thread); wakes the loop only if no delivery is on its way."""
        with self._mail_lock:
            self._mail.append((answer, result, exc))
            if self._mail_posted:
                return
            self._mail_posted = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to answer
            loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._mail_lock:
            mail, self._mail = self._mail, []
            self._mail_posted = False
        for answer, result, exc in mail:
            _settle(answer, result, exc)

    def _answered(self, _answer: asyncio.Future[Any]) -> None:
        self._pending -= 1

    def _submit(self, work: Callable[[], None]) -> None:
        with self._queued_lock:
            self._queued += 1
            self._busy += 1
        try:
            self._pool.submit(work)
        except BaseException:
            self._started()
            self._finished()
            raise

    def _started(self) -> None:
        with self._queued_lock:
            self._queued -= 1

    def _finished(self) -> None:
        with self._queued_lock:
            self._busy -= 1

    def _when_durable(self, alone: bool, here: Settle, elsewhere: Settle, result: Any,
                      exc: BaseException | None) -> None:
        """Settle once every journal line written so far is synced (at once, for a store that does not defer).

        ``alone`` (no other operation waits behind this one): lead the sync on this thread and settle ``here``;
        else the syncer thread settles ``elsewhere`` and this thread goes on with the next operation.
        """
        durability = self._durability
        if durability is None:
            here(result, exc)
            return
        ticket = durability.written
        if not alone:
            durability.when_durable(ticket,
                                    lambda failed: elsewhere(None, failed) if failed else elsewhere(result, exc))
            return
        try:
            durability.wait(ticket)
        except BaseException as failed:  # NotDurable, or an interrupt (answered, then raised on)
            here(None, failed)
            if not isinstance(failed, Exception):
                raise
        else:
            here(result, exc)

    def _nothing_queued(self) -> bool:
        with self._queued_lock:
            return self._queued == 0

    def _timed(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._observe(name, start)

    def _observe(self, name: str, start: float) -> None:
        if self.observe is not None:
            self.observe(name, time.perf_counter() - start)

    def close(self) -> None:
        """Wait for the operation under way (a store operation is never cut); drop queued ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)


_WOULD_BLOCK = object()  # (a result no store operation returns)


def _not_durable(durability: GroupCommit, failed: BaseException) -> BaseException:
    """The store's own error for one waiter (a new one each: awaited one by one, they would share a traceback)."""
    try:
        durability.check()
    except Exception as exc:  # noqa: BLE001 - NotDurable, returned for the waiter
        return exc
    return failed


def _settle(answer: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if answer.cancelled():  # the request was cut (graceful stop past its grace): nobody waits
        return
    if exc is not None:
        answer.set_exception(exc)
    else:
        answer.set_result(result)

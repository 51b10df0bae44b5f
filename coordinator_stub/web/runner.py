"""Store operations off the event loop, one at a time, in arrival order.

The store is synchronous (a process lock, file writes, a journal sync); the
event loop must keep reading heads, timing out slow clients and answering
health checks meanwhile. One worker thread runs the operations in arrival
order: the file store serialises them anyway, and one thread keeps its
in-process caches single-threaded.

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
thread leads that sync itself, so a lone client pays no extra thread handoff.
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

if TYPE_CHECKING:
    from coordinator_stub.stores.group_commit import GroupCommit

T = TypeVar("T")
Observer = Callable[[str, float], None]
Settle = Callable[[Any, BaseException | None], None]
log = logging.getLogger(__name__)


class StoreRunner:
    def __init__(self, observe: Observer | None = None, durability: GroupCommit | None = None) -> None:
        """``durability``: the store's watermark if it defers durability (``Coordinator.defer_durability``)."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aq-store")
        self.observe = observe  # (operation name, seconds): the store-operation latency histogram
        self._durability = durability
        self._queued = 0  # submitted, not yet started: an operation with none behind it syncs on its own
        self._queued_lock = threading.Lock()

    def run(self, name: str, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` on the store thread; ``name`` labels its latency. Settled once durable."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, exc: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to answer
                loop.call_soon_threadsafe(_settle, answer, result, exc)

        def work() -> None:
            self._started()
            try:
                result = self._timed(name, fn, *args)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                self._when_durable(settle, None, exc)
            else:
                self._when_durable(settle, result, None)

        self._submit(work)
        return answer

    def later(self, name: str, fn: Callable[[], object]) -> None:
        """``fn()`` on the store thread after what is queued, unawaited; a failure is logged."""

        def work() -> None:
            self._started()
            try:
                self._timed(name, fn)
            except Exception:  # the answer stands (the journal holds it); the next operation re-reads
                log.exception("internal error after answering (%s)", name)

        with contextlib.suppress(RuntimeError):  # shut down: the stop's checkpoint does the rest
            self._submit(work)

    def _submit(self, work: Callable[[], None]) -> None:
        with self._queued_lock:
            self._queued += 1
        try:
            self._pool.submit(work)
        except BaseException:
            self._started()
            raise

    def _started(self) -> None:
        with self._queued_lock:
            self._queued -= 1

    def _when_durable(self, settle: Settle, result: Any, exc: BaseException | None) -> None:
        """Settle once every journal line written so far is synced (at once, for a store that does not defer)."""
        durability = self._durability
        if durability is None:
            settle(result, exc)
            return
        ticket = durability.written
        with self._queued_lock:
            alone = self._queued == 0
        if not alone:  # the next operation goes ahead; the syncer thread answers this one
            durability.when_durable(ticket, lambda failed: settle(None, failed) if failed else settle(result, exc))
            return
        try:
            durability.wait(ticket)
        except BaseException as failed:  # NotDurable, or an interrupt (answered, then raised on)
            settle(None, failed)
            if not isinstance(failed, Exception):
                raise
        else:
            settle(result, exc)

    def _timed(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            if self.observe is not None:
                self.observe(name, time.perf_counter() - start)

    def close(self) -> None:
        """Wait for the operation under way (a store operation is never cut); drop queued ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _settle(answer: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if answer.cancelled():  # the request was cut (graceful stop past its grace): nobody waits
        return
    if exc is not None:
        answer.set_exception(exc)
    else:
        answer.set_result(result)

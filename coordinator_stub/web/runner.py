"""Store operations off the event loop, one at a time.

The store is synchronous (a process lock, file writes, an fsync per commit);
the event loop must keep reading heads, timing out slow clients and answering
health checks meanwhile. One worker thread runs them in arrival order: the
file store serialises its operations anyway, and one thread keeps its
in-process caches single-threaded as the old server's lock did.

``later(tidy)``, called once an answer is sent, queues the store's after-answer
bookkeeping on the same thread without waiting for it: the caller already has
its answer, and the next operation runs after it, in order. (Running it while
the answer is still being sent would make the two threads take turns on the
GIL in the middle of the answer.)

A store that gains from concurrent operations says so (``Store.concurrency``):
the file store with group commit runs them one at a time under its lock but
lets up to that many wait for one shared journal sync, so the pool has that
many threads. Order between concurrent requests is then the lock's order, but
``later`` keeps its promise: an operation submitted after a ``later`` starts
once it (and every ``later`` before it) is done, as on one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")
Observer = Callable[[str, float], None]
log = logging.getLogger(__name__)


class StoreRunner:
    def __init__(self, observe: Observer | None = None, workers: int = 1) -> None:
        """``workers``: the store's ``concurrency`` (1: one operation at a time, in arrival order)."""
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aq-store")
        self.observe = observe  # (operation name, seconds): the store-operation latency histogram
        self._last_later: Future[None] | None = None  # what the next operation waits for (event loop's thread only)

    def run(self, name: str, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` on the store thread; ``name`` labels its latency."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        after = self._last_later

        def work() -> None:
            if after is not None:  # (already running or done: the pool takes its queue in order)
                wait([after])
            try:
                result = self._timed(name, fn, *args)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                loop.call_soon_threadsafe(_settle, answer, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, answer, result, None)

        self._pool.submit(work)
        return answer

    def later(self, name: str, fn: Callable[[], object]) -> None:
        """``fn()`` on the store thread after what is queued, unawaited; a failure is logged."""
        previous = self._last_later

        def work() -> None:
            if previous is not None:
                wait([previous])
            try:
                self._timed(name, fn)
            except Exception:  # the answer stands (the journal holds it); the next operation re-reads
                log.exception("internal error after answering (%s)", name)

        with contextlib.suppress(RuntimeError):  # shut down: the stop's checkpoint does the rest
            self._last_later = self._pool.submit(work)

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

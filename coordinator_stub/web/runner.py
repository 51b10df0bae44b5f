"""Store operations off the event loop, one at a time.

The store is synchronous (a process lock, file writes, an fsync per commit);
the event loop must keep reading heads, timing out slow clients and answering
health checks meanwhile. One worker thread runs them in arrival order: the
file store serialises its operations anyway, and one thread keeps its
in-process caches single-threaded as the old server's lock did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
Observer = Callable[[str, float], None]


class StoreRunner:
    def __init__(self, observe: Observer | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aq-store")
        self.observe = observe  # (operation name, seconds): the store-operation latency histogram

    async def run(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the store thread; ``name`` labels its latency."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._timed, name, fn, args)

    def _timed(self, name: str, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            if self.observe is not None:
                self.observe(name, time.perf_counter() - start)

    def close(self) -> None:
        """Wait for the operation under way (a store operation is never cut); drop queued ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)

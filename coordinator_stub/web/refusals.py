"""Refusals (401/403) into the event log, rate-limited so a client hammering with a bad token cannot fill it.

Every refusal of ``serve`` is an ``op: refused`` event with the token's id
(issue #19). Each one is also a store transaction and a line in
``events.jsonl``, so an attacker with a wrong token could otherwise grow the
log at the server's request rate. ``RefusalLimit`` decides, in fixed windows
of ``window_s``: at most ``per_key`` events per (token id, status) and at most
``total`` overall; the rest are counted, and the first refusal after the
window ends first writes one ``op: refusals_suppressed`` event with that count
(so the log says that refusals were dropped, and how many). The clock is a
parameter: the tests step it instead of sleeping.

``Refusals`` is what ``serve`` calls: the limit, then the write on the store
thread. The decision runs on the event loop (one thread), so it needs no lock.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from coordinator_stub.core import Coordinator
from coordinator_stub.web.runner import StoreRunner

WINDOW_S = 60.0
PER_KEY = 10  # events per (token id or "unknown", status) per window
TOTAL = 100  # events per window, whatever the key (a client can vary the token id it sends)


class RefusalLimit:
    """Which refusals are written; how many were not, per window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S,
                 per_key: int = PER_KEY, total: int = TOTAL) -> None:
        self._clock = clock
        self.window_s = window_s
        self._per_key = per_key
        self._total = total
        self._start: float | None = None
        self._by_key: Counter[tuple[str, int]] = Counter()
        self._written = 0
        self.suppressed = 0

    def admit(self, token_id: str | None, status: int) -> tuple[bool, int]:
        """(write this refusal?, refusals suppressed in the window that just ended: 0 when none, or none ended)."""
        now = self._clock()
        rolled = 0
        if self._start is None or now - self._start >= self.window_s:
            rolled, self.suppressed = self.suppressed, 0
            self._start = now
            self._by_key.clear()
            self._written = 0
        key = (token_id or "unknown", status)
        if self._by_key[key] >= self._per_key or self._written >= self._total:
            self.suppressed += 1
            return False, rolled
        self._by_key[key] += 1
        self._written += 1
        return True, rolled


class Refusals:
    """The refusals ``serve`` writes: through ``RefusalLimit``, on the store thread, the token id only."""

    def __init__(self, coord: Coordinator, runner: StoreRunner, limit: RefusalLimit | None = None) -> None:
        self.coord = coord
        self.runner = runner
        self.limit = limit or RefusalLimit()

    async def record(self, token_id: str | None, status: int, why: str) -> None:
        write, rolled = self.limit.admit(token_id, status)
        if rolled:
            await self.runner.run("refused", self.coord.refusals_suppressed, rolled, self.limit.window_s)
        if write:
            await self.runner.run("refused", self.coord.refused, token_id, status, why)

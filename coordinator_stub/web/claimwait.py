"""Held claims (``"waitS"`` on ``POST /v1/fleet/claim``): instant pickup without polling.

A claim that finds nothing is not answered 204 at once: it waits, on the event
loop and never on the store thread, until this process hears of something that
can make a job claimable (an enqueue, release, reap, requeue, a report that
ships a dependency, a cancel), or a peer replica's hint arrives (``wake`` from
another thread), or ``recheck_s`` passes (the safety net for the seam, other
replicas and ``notBefore``), and then claims again. It answers 204 when
``waitS`` runs out or the server begins to stop. The store claim itself still
runs on the store thread, one at a time, like every other operation.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from coordinator_stub.web.responses import error_document
from coordinator_stub.web.runner import StoreRunner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from coordinator_stub.stores.pg_wake import PgWake

MAX_WAIT_S = 60.0
DEFAULT_RECHECK_S = 2.0
DEFAULT_MAX_HELD = 1000
# Operations whose success may make a job claimable for someone (report: a shipped dependency frees its dependants).
WAKING = frozenset({"enqueue", "release", "reap", "requeue", "report", "cancel", "approve"})
Answer = tuple[int, "dict[str, Any] | None"]


class Wakeup:
    """A generation of waiters: ``notify`` wakes every claim waiting now; a later waiter waits for the next.

    A waiter takes ``current()`` *before* it claims, so a notify between its empty
    claim and its wait is not lost: the event it waits on is already set.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def current(self) -> asyncio.Event:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._event

    def notify(self) -> None:
        """On the event loop: wake the waiters of this generation."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def notify_threadsafe(self) -> None:
        """From any thread (the PostgreSQL listener): a hint, dropped when nobody has waited yet."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.notify)


def wait_of(body: bytes) -> float | Answer:
    """``waitS`` of a claim body (0 when absent), or the 400 to answer; other fields are the dispatcher's."""
    try:
        doc = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # RecursionError: nesting too deep for the parser
        return 0.0  # the dispatcher answers the malformed (or too deeply nested) body
    if not isinstance(doc, dict) or "waitS" not in doc:
        return 0.0
    wait = doc["waitS"]
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not math.isfinite(wait) or not (
            0 <= wait <= MAX_WAIT_S):
        return 400, error_document("bad_input", f"waitS: must be a number from 0 to {MAX_WAIT_S:g}")
    return float(wait)


def wake_peers(url: str | None, holder: ClaimHolder, runner: StoreRunner) -> PgWake | None:
    """On PostgreSQL: hints to and from the other replicas (started here, stopped by the caller)."""
    if not url:
        return None
    from coordinator_stub.stores.pg_wake import PgWake

    wake = PgWake(url, holder.wakeup.notify_threadsafe).start()
    holder.tell_peers = lambda: runner.later("wake_peers", wake.notify)  # after the answer, off the loop
    return wake


class ClaimHolder:
    """Holds empty claims up to ``max_wait_s`` (0: never), at most ``max_held`` at once (more answer at once)."""

    def __init__(self, max_wait_s: float = MAX_WAIT_S, recheck_s: float = DEFAULT_RECHECK_S,
                 max_held: int = DEFAULT_MAX_HELD) -> None:
        self.max_wait_s = max_wait_s
        self.recheck_s = recheck_s
        self.max_held = max_held
        self.held = 0
        self.wakeup = Wakeup()
        self.tell_peers: Callable[[], None] | None = None  # other replicas (PostgreSQL NOTIFY), when there are
        self._stopping: asyncio.Event | None = None

    def features(self) -> dict[str, Any]:
        """What healthz advertises: the longest hold this server grants (0: it does not hold)."""
        return {"claimWaitS": self.max_wait_s}

    def heard(self, op: str, status: int) -> None:
        """An answered operation: wake the held claims when it may have made a job claimable."""
        if op in WAKING and 200 <= status < 300:
            self.wakeup.notify()
            if self.tell_peers is not None:
                self.tell_peers()

    def stop(self) -> None:
        """The server begins to stop: every held claim answers 204 now, and no new one is held."""
        self._stopping_event().set()
        self.wakeup.notify()

    def _stopping_event(self) -> asyncio.Event:
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    async def claim(self, body: bytes, attempt: Callable[[], Awaitable[Answer]]) -> Answer:
        """``attempt()`` (the store claim), again on every wake-up while it is empty and time is left."""
        wait = wait_of(body)
        if isinstance(wait, tuple):
            return wait
        wait = min(wait, self.max_wait_s)
        stopping = self._stopping_event()
        if wait <= 0 or self.held >= self.max_held or stopping.is_set():
            return await attempt()
        deadline = time.monotonic() + wait
        self.held += 1
        try:
            while True:
                woken = self.wakeup.current()
                answer = await attempt()
                left = deadline - time.monotonic()
                if answer[0] != 204 or left <= 0 or stopping.is_set():
                    return answer
                try:
                    async with asyncio.timeout(min(left, self.recheck_s)):
                        await woken.wait()
                except TimeoutError:
                    pass
                if stopping.is_set():
                    return 204, None
        finally:
            self.held -= 1

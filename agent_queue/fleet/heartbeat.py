"""Heartbeat: keep one lease alive while its job runs, and say so the moment it is lost.

A daemon thread renews the lease every ``ttl/3`` (or ``interval_s``). The
coordinator is the judge: a 409 (``Fenced`` / ``NotLeased``) or 404 means
another factory may own the job now, so ``on_lost("fenced: ...")`` is called
at once and the heartbeat stops. A transport error or 5xx proves nothing, so
renewing continues (short per-call deadlines) until the lease would have
expired by the LOCAL monotonic clock: last successful renew *sent* time +
ttl - a safety margin. Then ``on_lost("lease expired: coordinator
unreachable")``: by then the reaper may hand the job to someone else, and
the runner must stop it and never ship. ``on_lost`` is called at most once,
never after ``stop()`` has returned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from agent_queue.errors import AQError, Fenced, NotFound
from agent_queue.jobs import Lease

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.05


class Renewer(Protocol):
    """The part of ``FleetClient`` the heartbeat uses (a fake in tests)."""

    def renew(self, lease: Lease, *, deadline_s: float | None = None) -> Lease: ...


def safety_margin(ttl_s: float) -> float:
    """Give up a little before the coordinator would: 10% of the ttl, at most 10 s."""
    return min(ttl_s * 0.1, 10.0)


class Heartbeat:
    """Renew ``lease`` in the background; call ``on_lost(reason)`` once if it is lost.

    Use as a context manager (``with Heartbeat(...) as hb:``) around the
    job's execution, and read ``hb.current_lease`` for the report. Stop it
    before releasing or reporting, so a renew racing the final report cannot
    raise a false alarm. ``started_at`` is the local monotonic time at which
    the claim (or last renew) was *sent*; it defaults to construction time,
    so build the heartbeat right after the claim. ``tick()`` runs one step
    synchronously and is what the thread loops over (tests drive it directly).
    """

    def __init__(
        self,
        client: Renewer,
        lease: Lease,
        on_lost: Callable[[str], None],
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        started_at: float | None = None,
        call_deadline_s: float | None = None,
    ) -> None:
        self._client = client
        self._lease = lease
        self._on_lost = on_lost
        self._clock = clock
        ttl = lease.ttl_s
        self._valid_for = ttl - safety_margin(ttl)
        wanted = interval_s if interval_s is not None else ttl / 3
        # Never plan to sleep past the point where the lease would lapse.
        self.interval_s = max(MIN_INTERVAL_S, min(wanted, self._valid_for / 2))
        self.call_deadline_s = call_deadline_s if call_deadline_s is not None else max(1.0, self.interval_s)
        self._last_ok = clock() if started_at is None else started_at
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lost = False
        self._thread: threading.Thread | None = None

    # -- public -----------------------------------------------------------

    @property
    def current_lease(self) -> Lease:
        """The latest renewed lease (same epoch, newest expiry)."""
        with self._lock:
            return self._lease

    @property
    def lost(self) -> bool:
        with self._lock:
            return self._lost

    def start(self) -> Heartbeat:
        if self._thread is not None:
            raise RuntimeError("heartbeat already started")
        lease = self.current_lease
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{lease.job_id}-{lease.epoch}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing. Returns once no renew is in flight (bounded by the per-call deadline)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.call_deadline_s + 5.0)
            if thread.is_alive():
                log.warning("heartbeat thread did not stop in time", extra=self._fields())

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- one step ---------------------------------------------------------

    def tick(self) -> float | None:
        """Renew once; return the delay until the next tick, or None when the heartbeat is over."""
        if self._stop.is_set():
            return None
        now = self._clock()
        expires = self._last_ok + self._valid_for
        # Past local expiry (e.g. this process was paused) the coordinator still has the last word: one
        # short renew gets its verdict (a 409 when another factory took the job; the 409 is in its event
        # log), and only an unreachable coordinator makes the local clock decide.
        budget = min(self.call_deadline_s, expires - now) if now < expires else min(self.call_deadline_s, 2.0)
        sent = now
        try:
            renewed = self._client.renew(self.current_lease, deadline_s=budget)
        except (Fenced, NotFound) as exc:
            self._lose(f"fenced: {exc.message}")
            return None
        except AQError as exc:
            return self._after_failure(exc.message)
        except Exception as exc:  # a bug must not silently end renewals while the job runs
            log.exception("heartbeat renew crashed", extra=self._fields())
            return self._after_failure(f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._lease = renewed
            self._last_ok = sent
        log.debug("lease renewed", extra=self._fields())
        return self.interval_s

    def _after_failure(self, why: str) -> float | None:
        """Keep trying faster than the interval, and declare loss exactly at local expiry."""
        remaining = self._last_ok + self._valid_for - self._clock()
        log.warning("lease renew failed (%.1fs of local validity left): %s", max(remaining, 0.0), why,
                    extra=self._fields())
        if remaining <= 0:
            self._lose("lease expired: coordinator unreachable")
            return None
        return min(max(MIN_INTERVAL_S, self.interval_s / 3), remaining)

    def _lose(self, reason: str) -> None:
        with self._lock:
            if self._lost or self._stop.is_set():
                return
            self._lost = True
        self._stop.set()
        log.warning("lease lost: %s", reason, extra=self._fields())
        try:
            self._on_lost(reason)
        except Exception:
            log.exception("on_lost callback failed", extra=self._fields())

    # -- the thread -------------------------------------------------------

    def _run(self) -> None:
        delay: float | None = self.interval_s
        while delay is not None and not self._stop.wait(delay):
            delay = self.tick()

    def _fields(self) -> dict[str, object]:
        lease = self._lease
        return {"job_id": lease.job_id, "factory_id": lease.factory_id, "lease_epoch": lease.epoch}

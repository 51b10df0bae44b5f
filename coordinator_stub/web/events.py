"""The coordinator's audit logs, read as they grow: what the dashboard and the metrics know of the past.

``events.jsonl`` gets one line per operation from every process on the state
(``serve``, seam calls, embedded factories), so reading it, rather than
counting requests in this process, sees every claim, 409 and reclaim. Each
``poll`` reads only what was appended since the last one. At start-up the last
``backfill_bytes`` of a log are read as history: the dashboard shows them, the
metrics' counters do not count them (they count what happens while this
process serves; a restart is a counter reset, which Prometheus expects).
Memory is bounded: a ring of recent events, the last events of the most
recently active jobs, a ring of recent shadow reports.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from coordinator_stub.stores.log_tail import LogTail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from coordinator_stub.stores.base import LogReader

log = logging.getLogger(__name__)
Event = dict[str, Any]
Listener = Callable[[Event, bool], None]  # (event, live): live False for history read at start-up

BACKFILL_BYTES = 16 * 1024 * 1024
RECENT_EVENTS = 10_000
JOBS_KEPT = 20_000
EVENTS_PER_JOB = 200
SHADOW_KEPT = 10_000


class EventFeed:
    """Recent events and shadow reports of one store, and listeners told of each new event."""

    def __init__(self, logs: Path | Sequence[LogReader] | None, backfill_bytes: int = BACKFILL_BYTES) -> None:
        """``logs``: the store's two readers (``Store.log_readers``: events, then shadow reports), or a state
        directory (its two files); None: no feed."""
        if isinstance(logs, Path):
            logs = (LogTail(logs / "events.jsonl", backfill_bytes),
                    LogTail(logs / "shadow-reports.jsonl", backfill_bytes))
        self._tails = tuple(logs or ())
        self._lock = threading.Lock()
        self.listeners: list[Listener] = []
        self.recent: deque[Event] = deque(maxlen=RECENT_EVENTS)
        self.by_job: OrderedDict[str, deque[Event]] = OrderedDict()
        self.shadow: deque[Event] = deque(maxlen=SHADOW_KEPT)
        self.seq = 0  # events seen so far: a cursor for "anything new?"

    def poll(self) -> None:
        """Read what was appended since the last poll (thread-safe; call it off the event loop)."""
        if not self._tails:
            return
        events, shadow = self._tails
        with self._lock:
            for event, live in events.read():
                self._add(event, live)
            for report, _ in shadow.read():
                self.shadow.append(report)

    def _add(self, event: Event, live: bool) -> None:
        self.seq += 1
        event["seq"] = self.seq
        self.recent.append(event)
        job_id = event.get("jobId")
        if isinstance(job_id, str):
            kept = self.by_job.get(job_id)
            if kept is None:
                kept = self.by_job[job_id] = deque(maxlen=EVENTS_PER_JOB)
                while len(self.by_job) > JOBS_KEPT:
                    self.by_job.popitem(last=False)
            else:
                self.by_job.move_to_end(job_id)
            kept.append(event)
        for listener in self.listeners:
            try:
                listener(event, live)
            except Exception:  # a listener's bug must not stop the feed (nor the page)
                log.exception("event listener failed on %s", event.get("op"))

    def job_events(self, job_id: str) -> list[Event]:
        with self._lock:
            return list(self.by_job.get(job_id, ()))

    def recent_events(self) -> list[Event]:
        with self._lock:
            return list(self.recent)

    def shadow_reports(self) -> list[Event]:
        with self._lock:
            return list(self.shadow)

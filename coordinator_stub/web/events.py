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

import json
import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
Event = dict[str, Any]
Listener = Callable[[Event, bool], None]  # (event, live): live False for history read at start-up

BACKFILL_BYTES = 16 * 1024 * 1024
RECENT_EVENTS = 10_000
JOBS_KEPT = 20_000
EVENTS_PER_JOB = 200
SHADOW_KEPT = 10_000


class LogTail:
    """New complete lines of one append-only JSON-lines file, from where the last read stopped."""

    def __init__(self, path: Path, backfill_bytes: int) -> None:
        self.path = path
        self._ident: tuple[int, int] | None = None
        self._offset = 0
        self._live_from = 0
        self._partial = b""
        self._skip_to_line = False  # a backfill starts mid-file: its first (partial) line is dropped
        self._start(backfill_bytes)

    def _start(self, backfill_bytes: int) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return  # nothing yet: everything that comes is live
        self._ident = (st.st_dev, st.st_ino)
        self._live_from = st.st_size
        self._offset = max(0, st.st_size - backfill_bytes)
        self._skip_to_line = 0 < self._offset < st.st_size  # mid-file: the window's first line is partial

    def read(self) -> Iterator[tuple[Event, bool]]:
        """(record, live) for each complete line appended since the last call; unreadable lines are skipped."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            st = os.fstat(fd)
            if self._ident != (st.st_dev, st.st_ino) or st.st_size < self._offset:  # a new or truncated file
                if self._ident is not None:
                    self._offset, self._live_from, self._partial, self._skip_to_line = 0, 0, b"", False
                self._ident = (st.st_dev, st.st_ino)
            data = os.pread(fd, max(0, st.st_size - self._offset), self._offset)
        finally:
            os.close(fd)
        start = self._offset - len(self._partial)
        self._offset += len(data)
        data = self._partial + data
        if self._skip_to_line:
            cut = data.find(b"\n") + 1
            if cut == 0:
                self._partial = data
                return
            data, start, self._skip_to_line = data[cut:], start + cut, False
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            live = start >= self._live_from
            start += len(line) + 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record, live


class EventFeed:
    """Recent events and shadow reports of one state directory, and listeners told of each new event."""

    def __init__(self, state_dir: Path | None, backfill_bytes: int = BACKFILL_BYTES) -> None:
        """``state_dir`` None: a store whose logs are not files (PostgreSQL keeps them in tables): no feed yet."""
        self._tails = () if state_dir is None else (LogTail(state_dir / "events.jsonl", backfill_bytes),
                                                    LogTail(state_dir / "shadow-reports.jsonl", backfill_bytes))
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

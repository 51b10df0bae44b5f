"""What the coordinator recorded: lease intervals, 409s and accepted reports.

With an event log the demo may read (the stub's `events.jsonl`, one line per
operation) the evidence comes from there. Without one (live mode) lease
intervals come from sampling `GET /v1/fleet/status` every 0.2 s, and the
queries about single operations answer nothing: the scenarios then say what
they could not check.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .api import Api, ApiError

SAMPLE_S = 0.2
Event = dict[str, Any]


@dataclass
class Interval:
    job_id: str
    factory: str
    epoch: int
    start: float
    end: float


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class Evidence:
    """Lease intervals and 409s: from events.jsonl (stub) or from polling /v1/fleet/status (live)."""

    def __init__(self, events_path: Path | None, open_api: Callable[[], Api]) -> None:
        self.events_path = events_path
        self._open_api = open_api
        self._seen: dict[tuple[str, str, int], Interval] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> str:
        return "events.jsonl" if self.events_path is not None else "/v1/fleet/status samples"

    def start(self) -> None:
        if self.events_path is None:
            self._thread = threading.Thread(target=self._observe, args=(self._open_api(),), name="status-observer",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _observe(self, api: Api) -> None:
        try:
            while not self._stop.wait(SAMPLE_S):
                try:
                    leases = api.status().get("leases", [])
                except ApiError:
                    continue
                now = time.time()
                for lease in leases:
                    key = (str(lease["jobId"]), str(lease["factoryId"]), int(lease["leaseEpoch"]))
                    if key in self._seen:
                        self._seen[key].end = now
                    else:
                        self._seen[key] = Interval(*key, start=now, end=now)
        finally:
            api.close()

    def events(self) -> list[Event]:
        if self.events_path is None:
            return []
        out = []
        with contextlib.suppress(OSError):
            for line in self.events_path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def intervals(self) -> list[Interval]:
        """Each lease from its claim to its last renewal's expiry, or to the report/release/reclaim that ended it."""
        if self.events_path is None:
            return list(self._seen.values())
        spans: dict[tuple[str, str, int], Interval] = {}
        for ev in self.events():
            if ev.get("status") != 200 or None in (ev.get("jobId"), ev.get("factoryId"), ev.get("leaseEpoch")):
                continue
            key = (str(ev["jobId"]), str(ev["factoryId"]), int(ev["leaseEpoch"]))
            op, ts = ev.get("op"), float(ev.get("ts", 0))
            if op == "claim" and not ev.get("dryRun") and not ev.get("replay"):
                spans[key] = Interval(key[0], key[1], key[2], ts, _ts(ev["expiresAt"]))
            elif op == "renew" and key in spans:
                spans[key].end = _ts(ev["expiresAt"])
            elif op in ("report", "release", "reclaim") and key in spans:
                spans[key].end = ts
        return list(spans.values())

    def fenced(self, job_id: str, factory: str, epoch: int) -> list[Event]:
        return [ev for ev in self.events() if ev.get("status") == 409 and ev.get("jobId") == job_id
                and ev.get("factoryId") == factory and ev.get("leaseEpoch") == epoch]

    def accepted_since(self, job_id: str, factory: str, epoch: int, since: float) -> list[Event]:
        """Lease operations of that holder the coordinator accepted after `since` (a zombie's must be none)."""
        return [ev for ev in self.events() if ev.get("jobId") == job_id and ev.get("status") == 200
                and ev.get("factoryId") == factory and ev.get("leaseEpoch") == epoch
                and ev.get("op") in ("renew", "report", "release") and float(ev.get("ts", 0)) > since]

    def reclaims(self, job_id: str) -> list[Event]:
        return [ev for ev in self.events() if ev.get("op") == "reclaim" and ev.get("jobId") == job_id]

    def shipped_reports(self, job_id: str) -> list[Event]:
        return [ev for ev in self.events() if ev.get("op") == "report" and ev.get("status") == 200
                and ev.get("jobId") == job_id and ev.get("outcome") == "shipped" and not ev.get("replay")]

    def timeline_rows(self) -> list[tuple[float, str, str]]:
        rows = []
        for ev in self.events():
            op, status = ev.get("op"), ev.get("status")
            if op == "enqueue" or (op == "claim" and (status != 200 or ev.get("dryRun"))):
                continue
            if op in ("renew", "reap") and status == 200:
                continue
            text = (f"{op} {ev.get('jobId', '')} {ev.get('factoryId', '')} epoch={ev.get('leaseEpoch', '-')} "
                    f"-> {status}" + (f" {ev['code']}" if ev.get("code") else "")
                    + (f" {ev['outcome']}" if ev.get("outcome") else ""))
            rows.append((float(ev.get("ts", 0)), "coordinator", text))
        return rows

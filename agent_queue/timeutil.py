"""Times on the wire and in files are RFC 3339 UTC strings; in memory, epoch floats.

Formatting avoids ``datetime``: it is on the coordinator seam's per-call path,
where importing ``datetime`` costs ~1.6 ms of a ~10 ms budget (benchmark B1).
"""

from __future__ import annotations

import time


def to_rfc3339(ts: float) -> str:
    """``2026-11-25T13:49:09.244Z``: what ``datetime.fromtimestamp(ts, UTC).isoformat("milliseconds")`` gives.

    Like datetime: the fraction is rounded half-even to microseconds, then cut to milliseconds.
    """
    sec = int(ts // 1)
    us = round((ts - sec) * 1_000_000)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    prefix = _seconds.get(sec)
    if prefix is None:  # an operation formats the same few seconds again and again (now, enqueuedAt, ...)
        t = time.gmtime(sec)
        prefix = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        if len(_seconds) >= 1024:
            _seconds.clear()
        _seconds[sec] = prefix
    return f"{prefix}.{us // 1000:03d}Z"


_seconds: dict[int, str] = {}  # formatted seconds; a lost race only formats one twice


def parse_rfc3339(text: str) -> float:
    """Parse an RFC 3339 time (``Z`` or an offset); raises ValueError if it is not one."""
    from datetime import UTC, datetime

    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()

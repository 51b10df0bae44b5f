"""Times on the wire and in files are RFC 3339 UTC strings; in memory, epoch floats."""

from __future__ import annotations

from datetime import UTC, datetime


def to_rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def parse_rfc3339(text: str) -> float:
    """Parse an RFC 3339 time (``Z`` or an offset); raises ValueError if it is not one."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()

"""RFC 3339 formatting without datetime must say exactly what datetime says."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from agent_queue.timeutil import parse_rfc3339, to_rfc3339


def by_datetime(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.floats(min_value=0, max_value=253402300799.0, allow_nan=False))  # 1970 to 9999-12-31T23:59:59
def test_to_rfc3339_matches_datetime(ts: float) -> None:
    assert to_rfc3339(ts) == by_datetime(ts)


@given(st.integers(min_value=0, max_value=4_102_444_800_000))  # whole milliseconds up to 2100
def test_a_time_in_milliseconds_round_trips(ms: int) -> None:
    text = to_rfc3339(ms / 1000)
    assert round(parse_rfc3339(text) * 1000) == ms


def test_edges() -> None:
    for ts in (0.0, 0.0005, 0.9995, 0.9999995, 1795614557.5922775, 1795614557.9999996, 253402300799.9994):
        assert to_rfc3339(ts) == by_datetime(ts), ts
    assert to_rfc3339(1795614549.2449937) == "2026-11-25T13:49:09.244Z"

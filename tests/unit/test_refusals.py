"""The refusal log's rate limit (web/refusals.py) with a stepped clock: no sleeps."""

from __future__ import annotations

from coordinator_stub.web.refusals import RefusalLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_at_most_ten_per_token_and_code_then_one_count_when_the_window_rolls() -> None:
    clock = Clock()
    limit = RefusalLimit(clock)
    admitted = [limit.admit("abc", 401) for _ in range(25)]
    assert [w for w, _ in admitted] == [True] * 10 + [False] * 15
    assert all(rolled == 0 for _, rolled in admitted)
    assert limit.admit("abc", 403) == (True, 0)  # another code is another key
    assert limit.admit(None, 401) == (True, 0)  # no token: the key "unknown"
    clock.now += 59.9
    assert limit.admit("abc", 401) == (False, 0)  # same window
    clock.now += 0.1
    assert limit.admit("abc", 401) == (True, 16)  # the window rolled: 16 were suppressed in it
    assert limit.admit("abc", 401) == (True, 0)  # said once


def test_at_most_a_hundred_overall_whatever_the_token_ids() -> None:
    clock = Clock()
    limit = RefusalLimit(clock)
    written = sum(limit.admit(f"{n:012x}", 401)[0] for n in range(250))
    assert written == 100 and limit.suppressed == 150
    clock.now += 60
    assert limit.admit("fresh", 401) == (True, 150)


def test_a_quiet_window_rolls_without_a_count() -> None:
    clock = Clock()
    limit = RefusalLimit(clock)
    assert limit.admit("a", 401) == (True, 0)
    clock.now += 120
    assert limit.admit("a", 401) == (True, 0)


def test_refusals_write_the_kept_ones_and_one_suppressed_count_into_the_event_log() -> None:
    import asyncio

    from coordinator_stub.core import Coordinator
    from coordinator_stub.stores.memory import MemoryStore
    from coordinator_stub.web.refusals import Refusals
    from coordinator_stub.web.runner import StoreRunner

    store, clock = MemoryStore(), Clock()
    runner = StoreRunner()
    refusals = Refusals(Coordinator(store, lambda: clock.now), runner, RefusalLimit(clock))

    async def hammer(n: int) -> None:
        for _ in range(n):
            await refusals.record("abc", 401, "wrong token")

    try:
        asyncio.run(hammer(30))
        clock.now += 60
        asyncio.run(hammer(1))
    finally:
        runner.close()
    ops = [(e["op"], e.get("count")) for e in store.events]
    assert ops == [("refused", None)] * 10 + [("refusals_suppressed", 20), ("refused", None)]

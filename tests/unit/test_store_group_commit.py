"""Group commit (``stores/group_commit.py``): no waiter is released before a sync that covers its line.

The primitive is driven with a fake sync that blocks on an event the test
controls, and every step (a line written, a sync started or returned, a
waiter released) goes into one ordered log: the assertions are about that
order, never about time. The file store's own use of it is checked with real
threads on a real directory: N concurrent operations, fewer syncs than
operations, and every answer durable in a fresh read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator_stub.core import Coordinator
from coordinator_stub.stores.file import JsonStore
from coordinator_stub.stores.group_commit import GroupCommit, NotDurable

GUARD_S = 30  # a guard against a hang, never a measured time


class Log:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lines: list[tuple[str, int]] = []

    def add(self, what: str, n: int) -> None:
        with self.lock:
            self.lines.append((what, n))


class FakeSync:
    """A sync whose first call blocks until ``go`` is set (and may fail then); later calls return at once."""

    def __init__(self, log: Log, fail_first: bool = False) -> None:
        self.log = log
        self.fail_first = fail_first
        self.entered = threading.Event()
        self.go = threading.Event()
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        n = self.calls
        self.log.add("sync-start", n)
        if n == 1:
            self.entered.set()
            assert self.go.wait(GUARD_S)
            if self.fail_first:
                self.log.add("sync-failed", n)
                raise OSError(5, "Input/output error")
        self.log.add("sync-end", n)


def waiter(gc: GroupCommit, ticket: int, log: Log, errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            gc.wait(ticket)
        except NotDurable as exc:
            errors.append(exc)
            log.add("failed", ticket)
        else:
            log.add("released", ticket)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wrote(gc: GroupCommit, log: Log) -> int:
    ticket = gc.wrote()
    log.add("wrote", ticket)
    return ticket


def covering_sync_before_release(lines: list[tuple[str, int]]) -> None:
    """Each released ticket has, before its release, a sync that started after the ticket was written and ended."""
    for i, (what, ticket) in enumerate(lines):
        if what != "released":
            continue
        written_at = lines.index(("wrote", ticket))
        started = {n for what2, n in lines[written_at:i] if what2 == "sync-start"}
        ended = {n for what2, n in lines[written_at:i] if what2 == "sync-end"}
        assert started & ended, f"ticket {ticket} released without a sync that covers it: {lines}"


def test_a_waiter_is_released_only_by_a_sync_that_started_after_its_line() -> None:
    log = Log()
    sync = FakeSync(log)
    gc = GroupCommit(sync)
    errors: list[BaseException] = []
    threads = [waiter(gc, wrote(gc, log), log, errors)]  # leads the first sync, which blocks
    assert sync.entered.wait(GUARD_S)
    threads += [waiter(gc, wrote(gc, log), log, errors) for _ in range(3)]  # written while that sync is under way
    sync.go.set()
    for thread in threads:
        thread.join(GUARD_S)
    assert not errors and not any(t.is_alive() for t in threads)
    assert sorted(n for what, n in log.lines if what == "released") == [1, 2, 3, 4]
    covering_sync_before_release(log.lines)
    assert sync.calls == 2  # the three written meanwhile shared one sync
    assert gc.durable == 4


def test_a_waiter_already_covered_returns_without_a_sync() -> None:
    log = Log()
    sync = FakeSync(log)
    sync.go.set()
    gc = GroupCommit(sync)
    first, second = gc.wrote(), gc.wrote()
    gc.wait(second)  # one sync covers both lines
    gc.wait(first)
    assert sync.calls == 1


def test_a_failed_sync_fails_every_waiter_it_covered_and_every_later_operation() -> None:
    log = Log()
    sync = FakeSync(log, fail_first=True)
    gc = GroupCommit(sync, "journal.jsonl")
    errors: list[BaseException] = []
    early = gc.wrote()
    sync_ok = FakeSync(log)
    sync_ok.go.set()
    gc._sync, good = sync_ok, gc._sync  # a first sync that works: ticket 1 is durable before any failure
    gc.wait(early)
    gc._sync = good
    threads = [waiter(gc, wrote(gc, log), log, errors)]
    assert sync.entered.wait(GUARD_S)
    threads += [waiter(gc, wrote(gc, log), log, errors) for _ in range(3)]
    sync.go.set()
    for thread in threads:
        thread.join(GUARD_S)
    assert not any(t.is_alive() for t in threads)
    assert sorted(n for what, n in log.lines if what == "failed") == [2, 3, 4, 5]
    assert not [n for what, n in log.lines if what == "released"]
    assert all("journal.jsonl: a sync failed" in str(e) for e in errors)
    gc.wait(early)  # durable before the failure: still answered
    with pytest.raises(NotDurable):
        gc.wait(gc.wrote())  # after it: refused without another sync
    with pytest.raises(NotDurable):
        gc.check()
    assert sync.calls == 1


def run_threads(n: int, work: Callable[[int], object]) -> list[object]:
    out: list[object] = [None] * n
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def one(i: int) -> None:
        try:
            start.wait(GUARD_S)
            out[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD_S)
    assert not errors, errors
    return out


def test_the_file_store_answers_concurrent_operations_durable_and_shares_syncs(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    store = JsonStore(root, tidy_later=True, group_commit=True)  # not deferred: each operation waits in its thread
    coord = Coordinator(store, lambda: 100.0, 60.0)
    coord.enqueue({"id": "first", "command": ["true"]})  # the directory exists before the race
    group = store._group
    assert group is not None
    n = 16
    all_written = threading.Event()
    real_sync, real_wrote = group._sync, group.wrote

    def gated_sync() -> None:  # the first sync returns only once every operation has written its line
        assert all_written.wait(GUARD_S)
        real_sync()

    def counted_wrote() -> int:
        ticket = real_wrote()
        if ticket == 1 + n:
            all_written.set()
        return ticket

    group._sync, group.wrote = gated_sync, counted_wrote  # type: ignore[method-assign]
    answers = run_threads(n, lambda i: coord.enqueue({"id": f"j{i:02d}", "command": ["true"]}))
    assert all(a is not None for a in answers)
    # The first enqueue's; the race's first line's (its leader noted the target before the others wrote); then
    # one for the fifteen lines written while that sync was under way.
    assert group.syncs == 3
    fresh = Coordinator(JsonStore(root), lambda: 100.0, 60.0)  # what the files hold (a restart)
    assert {j["job"]["id"] for j in fresh.list_jobs()} == {"first", *(f"j{i:02d}" for i in range(n))}


def test_the_file_store_refuses_every_operation_after_a_failed_sync(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    store = JsonStore(root, tidy_later=True, group_commit=True)
    coord = Coordinator(store, lambda: 100.0, 60.0)
    coord.enqueue({"id": "a", "command": ["true"]})
    group = store._group
    assert group is not None

    def broken() -> None:
        raise OSError(5, "Input/output error")

    group._sync = broken
    with pytest.raises(NotDurable):
        coord.enqueue({"id": "b", "command": ["true"]})
    group._sync = store._sync_journal  # the disk came back: still refused until a restart
    with pytest.raises(NotDurable):
        coord.claim("f1", ())
    with pytest.raises(NotDurable):
        store.checkpoint()
    restarted = Coordinator(JsonStore(root, tidy_later=True, group_commit=True), lambda: 100.0, 60.0)
    assert restarted.get_job("a")["meta"]["state"] == "queued"  # the answered operation is there


# ------------------------------------------------------------ when_durable: waiting without a thread (serve)


def callback_into(log: Log, ticket: int, errors: list[BaseException]) -> Callable[[BaseException | None], None]:
    def called(failed: BaseException | None) -> None:
        if failed is None:
            log.add("released", ticket)
        else:
            errors.append(failed)
            log.add("failed", ticket)

    return called


def settled(log: Log) -> list[int]:
    return sorted(n for what, n in log.lines if what in ("released", "failed"))


def wait_until(cond: Callable[[], bool]) -> None:
    done = threading.Event()
    for _ in range(int(GUARD_S / 0.01)):
        if cond():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def test_when_durable_never_blocks_and_calls_back_only_after_a_covering_sync() -> None:
    log = Log()
    sync = FakeSync(log)
    gc = GroupCommit(sync)
    errors: list[BaseException] = []
    first = wrote(gc, log)
    gc.when_durable(first, callback_into(log, first, errors))  # returns at once; the syncer thread leads
    assert sync.entered.wait(GUARD_S)
    later = [wrote(gc, log) for _ in range(3)]  # written while that sync is under way
    for ticket in later:
        gc.when_durable(ticket, callback_into(log, ticket, errors))  # (the sync is blocked: returning proves it)
    assert settled(log) == []
    sync.go.set()
    wait_until(lambda: settled(log) == [1, 2, 3, 4])
    assert not errors
    covering_sync_before_release(log.lines)
    assert sync.calls == 2 and gc.durable == 4
    gc.when_durable(first, callback_into(log, 99, errors))  # already durable: called back here, no sync
    assert ("released", 99) in log.lines and sync.calls == 2


def test_when_durable_reports_a_failed_sync_to_every_waiter_and_later_ones() -> None:
    log = Log()
    sync = FakeSync(log, fail_first=True)
    gc = GroupCommit(sync, "journal.jsonl")
    errors: list[BaseException] = []
    tickets = [wrote(gc, log) for _ in range(3)]
    for ticket in tickets:
        gc.when_durable(ticket, callback_into(log, ticket, errors))
    assert sync.entered.wait(GUARD_S)
    sync.go.set()
    wait_until(lambda: settled(log) == [1, 2, 3])
    assert [n for what, n in log.lines if what == "failed"] == [1, 2, 3]
    gc.when_durable(gc.wrote(), callback_into(log, 4, errors))  # after the failure: refused, no new sync
    assert ("failed", 4) in log.lines and sync.calls == 1
    assert len(errors) == 4 and all(isinstance(e, NotDurable) and "a sync failed" in str(e) for e in errors)


def test_serves_runner_goes_on_with_the_next_operation_while_the_last_one_waits_for_its_sync(tmp_path: Path) -> None:
    """The store thread is never parked on a sync while operations queue; no answer comes before its sync."""
    import asyncio

    from coordinator_stub.web.runner import StoreRunner

    root = tmp_path / "coord"
    store = JsonStore(root, tidy_later=True, group_commit=True)
    coord = Coordinator(store, lambda: 100.0, 60.0)
    coord.enqueue({"id": "first", "command": ["true"]})  # the directory exists (and is durable) first
    group = coord.defer_durability()
    assert group is store._group and group is not None
    log = Log()
    gate = threading.Event()
    real_sync = group._sync

    def gated_sync() -> None:
        log.add("sync-start", group.written)
        assert gate.wait(GUARD_S)
        real_sync()
        log.add("sync-end", group.written)

    group._sync = gated_sync  # type: ignore[method-assign]
    n = 8

    def enqueue(i: int) -> str:
        coord.enqueue({"id": f"j{i}", "command": ["true"]})
        log.add("applied", i)
        return f"j{i}"

    async def main() -> list[str]:
        runner = StoreRunner(durability=group)
        plug = threading.Event()  # holds the store thread until all eight are queued behind it
        plugged = runner.run("plug", plug.wait, GUARD_S)
        answers = [runner.run("enqueue", enqueue, i) for i in range(n)]
        plug.set()
        assert await plugged
        loop = asyncio.get_running_loop()
        # Every operation is applied while the first sync is still blocked: the thread did not wait on it.
        await loop.run_in_executor(None, wait_until, lambda: sum(w == "applied" for w, _ in log.lines) == n)
        assert not any(a.done() for a in answers)  # ...and none of them is answered before a sync covers it
        gate.set()
        done = await asyncio.gather(*answers)
        runner.close()
        return list(done)

    assert asyncio.run(main()) == [f"j{i}" for i in range(n)]
    assert group.syncs <= 3  # the first operation's sync, then one (or two) for the seven queued behind it
    fresh = Coordinator(JsonStore(root), lambda: 100.0, 60.0)  # what the files hold (a restart)
    assert {j["job"]["id"] for j in fresh.list_jobs()} == {"first", *(f"j{i}" for i in range(n))}

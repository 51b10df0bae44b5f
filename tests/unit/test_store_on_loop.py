"""Operations on ``serve``'s event loop (``Store.nowait``, ``web/runner.py``): done whole without waiting, or
refused with ``WouldBlock`` having done nothing, and then run on the store thread in arrival order.

Each refusal is provoked for real: the file lock held through another open file
description (flock(2) treats it as another holder), the state changed by a second
store on the same directory (a ``coordinator-stub enqueue`` beside ``serve``), a
checkpoint falling due. What is checked is what the files hold afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import selectors
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator_stub.core import Coordinator
from coordinator_stub.stores import file as file_store
from coordinator_stub.stores.base import WouldBlock
from coordinator_stub.stores.file import JsonStore
from coordinator_stub.stores.group_commit import GroupCommit, NotDurable
from coordinator_stub.web import runner as runner_module
from coordinator_stub.web.runner import StoreRunner
from coordinator_stub.web.server import IdleHookSelector

GUARD_S = 30  # a guard against a hang, never a measured time


def serving(root: Path, jobs: int = 3) -> tuple[Coordinator, JsonStore]:
    """A store as ``serve`` builds it, with ``jobs`` queued and its state in memory."""
    store = JsonStore(root, tidy_later=True, group_commit=True)
    coord = Coordinator(store, lambda: 100.0, 60.0)
    for i in range(jobs):
        coord.enqueue({"id": f"j{i}", "command": ["true"]})
    coord.defer_durability()
    coord.tidy()
    return coord, store


def claim_noting_thread(coord: Coordinator, threads: list[int]) -> Callable[[], str]:
    """A claim for f1 that notes the thread it runs on (the loop's or the store thread's); the job's id."""

    def claim() -> str:
        threads.append(threading.get_ident())
        view = coord.claim("f1", [])
        assert view is not None
        return str(view["job"]["id"])
    return claim


def files(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in ("journal.jsonl", "events.jsonl", "state.json")}


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[Path]:
    """The state's file lock held by another holder until the test ends."""
    root = tmp_path / "coord"
    serving(root)
    fd = os.open(root / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield root
    os.close(fd)


def test_only_a_deferring_file_store_with_its_own_lock_offers_the_mode(tmp_path: Path) -> None:
    assert JsonStore(tmp_path / "a").nowait() is None  # the seam: every operation waits for its sync
    grouped = JsonStore(tmp_path / "b", group_commit=True)
    assert grouped.nowait() is None  # not deferred: its transactions wait for the sync themselves
    grouped.defer_durability()
    assert grouped.nowait() is not None
    other_lock = JsonStore(tmp_path / "c", group_commit=True, lock=lambda path: contextlib.nullcontext())
    other_lock.defer_durability()
    assert other_lock.nowait() is None  # a lock it cannot try without waiting


def test_a_lock_held_elsewhere_refuses_the_operation_and_nothing_changes(held_lock: Path) -> None:
    coord = Coordinator(JsonStore(held_lock, tidy_later=True, group_commit=True), lambda: 100.0, 60.0)
    coord.defer_durability()
    nowait = coord.nowait()
    assert nowait is not None
    before = files(held_lock)
    with nowait(), pytest.raises(WouldBlock, match="held by another process"):
        coord.claim("f1", [])
    assert files(held_lock) == before


def test_a_state_another_process_changed_is_read_on_the_thread_not_in_the_mode(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    coord, store = serving(root)
    nowait = coord.nowait()
    assert nowait is not None
    beside = Coordinator(JsonStore(root), lambda: 100.0, 60.0)  # coordinator-stub enqueue, beside serve
    beside.enqueue({"id": "urgent", "command": ["true"], "priority": 9})
    before = files(root)
    with nowait(), pytest.raises(WouldBlock, match="changed by another process"):
        coord.claim("f1", [])
    assert files(root) == before
    view = coord.claim("f1", [])  # as on the store thread: reads the files, sees the new job
    assert view is not None and view["job"]["id"] == "urgent"


def ship_in_the_mode(coord: Coordinator, nowait: Callable[[], contextlib.AbstractContextManager[None]],
                     tidy_after: bool) -> str:
    """Claim and ship one job in the ``nowait`` mode, tidying after the claim (and after the report); its id."""
    with nowait():
        view = coord.claim("f1", [])
        assert view is not None
        coord.tidy()
        coord.report(view["job"]["id"], "f1", view["lease"]["leaseEpoch"], "shipped")
        if tidy_after:
            coord.tidy()
    return str(view["job"]["id"])


def test_claim_and_report_in_the_mode_are_durable_and_whole(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    coord, store = serving(root)
    nowait = coord.nowait()
    group = store._group
    assert nowait is not None and group is not None
    job = ship_in_the_mode(coord, nowait, tidy_after=True)
    group.wait(group.written)
    fresh = Coordinator(JsonStore(root), lambda: 100.0, 60.0)  # what the files hold (a restart)
    assert fresh.get_job(job)["meta"]["state"] == "shipped"  # type: ignore[index]


def test_an_operation_on_the_loop_tidies_the_last_commit_first(tmp_path: Path) -> None:
    """A tidy still pending (the last answer is on its way) is done first, on the loop: not a refusal."""
    root = tmp_path / "coord"
    coord, store = serving(root)
    nowait = coord.nowait()
    group = store._group
    assert nowait is not None and group is not None
    job = ship_in_the_mode(coord, nowait, tidy_after=False)
    group.wait(group.written)  # the report's answer is sent (its archive file may now be written)
    assert (root / "jobs" / f"{job}.json").exists() and not (root / "archive" / f"{job}.json").exists()
    with nowait():
        after = coord.claim("f1", [])  # no WouldBlock: the report's tidy, then this claim
    assert after is not None and after["job"]["id"] == "j1"
    assert not (root / "jobs" / f"{job}.json").exists() and (root / "archive" / f"{job}.json").exists()


@pytest.mark.parametrize("crowded", [False, True])
def test_the_loop_leads_the_sync_only_for_a_lone_client(tmp_path: Path, crowded: bool) -> None:
    """A lone client: the loop syncs (no hand-off). Others connected: the syncer thread, and the loop goes on."""
    root = tmp_path / "coord"
    coord, _ = serving(root)
    group = coord.defer_durability()
    assert group is not None
    synced_on = recording_syncs(group)
    applied_on: list[int] = []

    claim = claim_noting_thread(coord, applied_on)

    async def main() -> tuple[str, int]:
        runner = StoreRunner(durability=group, nowait=coord.nowait(), crowded=lambda: crowded)
        got = await runner.run("claim", claim)
        runner.close()
        return got, threading.get_ident()

    got, loop_thread = asyncio.run(main())
    assert got == "j0" and applied_on == [loop_thread]  # applied on the loop either way
    assert synced_on  # (the claim's answer waited for a sync)
    if crowded:
        assert loop_thread not in synced_on  # the loop never blocked on the disk
    else:
        assert synced_on[-1] == loop_thread


def test_a_due_checkpoint_is_left_to_the_store_thread_and_then_done(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_store, "CHECKPOINT_MIN_BYTES", 1)
    root = tmp_path / "coord"
    coord, store = serving(root, jobs=30)
    nowait = coord.nowait()
    assert nowait is not None
    refused = 0
    shipped = []
    for _ in range(30):
        with nowait():
            view = coord.claim("f1", [])
        assert view is not None
        shipped.append(view["job"]["id"])
        try:
            with nowait():
                coord.tidy()
        except WouldBlock as exc:  # the journal outgrew the snapshot: the checkpoint is for the thread
            assert "checkpoint is due" in str(exc)
            refused += 1
            with nowait(), pytest.raises(WouldBlock, match="checkpoint is due"):  # and nothing runs ahead of it
                coord.claim("f2", [])
            coord.tidy()  # the thread's turn: the checkpoint
            assert (root / "journal.jsonl").stat().st_size == 0
        with nowait():
            coord.report(view["job"]["id"], "f1", view["lease"]["leaseEpoch"], "shipped")
        coord.tidy()
    assert refused > 0
    group = store._group
    assert group is not None
    group.wait(group.written)
    fresh = Coordinator(JsonStore(root), lambda: 100.0, 60.0)
    assert {j["job"]["id"] for j in fresh.list_jobs() if j["meta"]["state"] == "shipped"} == set(shipped)


def test_the_runner_runs_hot_operations_on_the_loop_and_queues_behind_the_thread(tmp_path: Path) -> None:
    """On the loop when the thread is idle; behind it, in order, when it is not; the rest always on it."""
    root = tmp_path / "coord"
    coord, store = serving(root, jobs=4)
    order: list[tuple[str, int]] = []

    def claim(who: str) -> str:
        order.append((who, threading.get_ident()))
        view = coord.claim(who, [])
        assert view is not None
        return str(view["job"]["id"])

    async def main() -> None:
        loop_thread = threading.get_ident()
        runner = StoreRunner(durability=coord.defer_durability(), nowait=coord.nowait())

        async def hot(answer: asyncio.Future[str]) -> str:
            got = await answer
            runner.later("tidy", coord.tidy)  # as serve does once the answer is sent
            return got

        assert await hot(runner.run("claim", claim, "a")) == "j0"
        assert order[-1] == ("a", loop_thread)
        await runner.run("status", lambda: order.append(("status", threading.get_ident())))
        assert order[-1][1] != loop_thread  # not a hot operation: the thread
        plug = threading.Event()
        plugged = runner.run("plug", plug.wait, GUARD_S)
        queued = runner.run("claim", claim, "b")  # the thread is busy: behind it, not ahead on the loop
        assert not queued.done() and order[-1][0] == "status"
        plug.set()
        assert await plugged and await hot(queued) == "j1"
        assert order[-1][0] == "b" and order[-1][1] != loop_thread
        await runner.run("status", lambda: None)  # behind the tidy: the thread is idle once it is answered
        assert await hot(runner.run("claim", claim, "c")) == "j2"  # idle again: the loop
        assert order[-1] == ("c", loop_thread)
        runner.close()

    asyncio.run(main())


def test_an_operation_refused_on_the_loop_runs_once_on_the_thread(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    serving(root)
    coord = Coordinator(JsonStore(root, tidy_later=True, group_commit=True), lambda: 100.0, 60.0)
    observed: list[str] = []
    calls: list[int] = []
    holder = os.open(root / ".lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)

    claim = claim_noting_thread(coord, calls)

    async def main() -> str:
        runner = StoreRunner(durability=coord.defer_durability(), nowait=coord.nowait())
        runner.observe = lambda name, _s: observed.append(name)
        answer = runner.run("claim", claim)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _wait_until, lambda: len(calls) == 2)  # the thread waits on the lock
        assert not answer.done()
        os.close(holder)
        got = await answer
        runner.close()
        return got

    try:
        assert asyncio.run(main()) == "j0"
    finally:
        with contextlib.suppress(OSError):
            os.close(holder)
    assert calls[0] != calls[1]  # tried on the loop, refused, then run on the thread
    assert observed == ["claim"]  # one operation in the latency histogram, not two


def _wait_until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + GUARD_S
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_answers_settled_by_other_threads_reach_the_loop_in_one_wake_up() -> None:
    """The answers one sync releases are delivered together: one wake-up of the loop, every answer settled."""
    runner = StoreRunner()
    wake_ups: list[object] = []

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counted(cb: Callable[..., object], *args: object) -> asyncio.Handle:
            wake_ups.append(cb)
            return real(cb, *args)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        answers: list[asyncio.Future[str]] = [loop.create_future() for _ in range(3)]
        failed: asyncio.Future[str] = loop.create_future()

        def syncer() -> None:  # as GroupCommit's syncer thread settles what one sync covered
            for i, answer in enumerate(answers):
                runner._post(loop, answer, f"a{i}", None)
            runner._post(loop, failed, None, RuntimeError("not durable"))

        thread = threading.Thread(target=syncer)
        thread.start()
        thread.join()  # all four posted before the loop runs again
        got = list(await asyncio.gather(*answers))
        with pytest.raises(RuntimeError, match="not durable"):
            await failed
        runner._post(loop, loop.create_future(), "later", None)  # a later batch wakes the loop again
        return got

    assert asyncio.run(main()) == ["a0", "a1", "a2"]
    assert len(wake_ups) == 2
    runner.close()


def test_an_operation_on_the_loop_is_answered_only_once_a_sync_covers_it(tmp_path: Path) -> None:
    """With another answer pending, the loop goes on and the syncer thread answers, after a covering sync."""
    root = tmp_path / "coord"
    coord, store = serving(root)
    group = coord.defer_durability()
    assert group is not None
    gate = threading.Event()
    entered = threading.Event()
    real_sync = group._sync

    def gated_sync() -> None:
        entered.set()
        assert gate.wait(GUARD_S)
        real_sync()

    group._sync = gated_sync  # type: ignore[method-assign]
    applied: list[int] = []

    claim = claim_noting_thread(coord, applied)

    nowait = coord.nowait()
    assert nowait is not None
    with nowait():  # a journal line not synced yet (as an answer on its way leaves it)
        assert coord.claim("f0", []) is not None
        coord.tidy()

    async def main() -> str:
        runner = StoreRunner(durability=group, nowait=nowait)
        loop = asyncio.get_running_loop()
        first = runner.run("status", coord.status)  # the thread: it read that line, so it waits for its sync
        await loop.run_in_executor(None, entered.wait, GUARD_S)  # ...which is under way, gated
        second = runner.run("claim", claim)  # the thread is free again, one answer pending: on the loop
        assert applied == [threading.get_ident()]
        await asyncio.sleep(0.05)
        assert applied == [threading.get_ident()]  # run once, on the loop (not refused and run again)
        assert not first.done() and not second.done()  # applied, not answered: no sync has covered it
        gate.set()
        await first
        got = await second
        runner.close()
        return got

    assert asyncio.run(main()) == "j1"


# ------------------------------------------------------------ the loop's own sync, when it runs out of work


def recording_syncs(group: GroupCommit) -> list[int]:
    """The threads the group's syncs run on, in order."""
    synced_on: list[int] = []
    real_sync = group._sync

    def recorded_sync() -> None:
        synced_on.append(threading.get_ident())
        real_sync()

    group._sync = recorded_sync  # type: ignore[method-assign]
    return synced_on


def test_with_others_connected_the_idle_loop_answers_all_with_one_sync_of_its_own(tmp_path: Path) -> None:
    """serve's loop (IdleHookSelector): the claims wait, applied, until the loop runs out of work; then one
    sync on the loop covers them all, and the syncer thread is never started."""
    coord, _ = serving(tmp_path / "coord")
    group = coord.defer_durability()
    assert group is not None
    synced_on = recording_syncs(group)
    syncs_before = group.syncs
    applied_on: list[int] = []
    claim = claim_noting_thread(coord, applied_on)
    runner = StoreRunner(durability=group, nowait=coord.nowait(), crowded=lambda: True)
    hook = runner.idle_hook()

    async def main() -> tuple[list[str], int]:
        async with asyncio.timeout(GUARD_S):
            answers = [runner.run("claim", claim) for _ in range(3)]
            assert not any(answer.done() for answer in answers)  # applied, not yet durable
            assert group.durable < group.written
            return [await answer for answer in answers], threading.get_ident()

    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(IdleHookSelector(hook))) as loop_runner:
        got, loop_thread = loop_runner.run(main())
    runner.close()
    assert got == ["j0", "j1", "j2"] and applied_on == [loop_thread] * 3
    assert synced_on == [loop_thread] and group.syncs == syncs_before + 1
    assert group.durable == group.written
    assert group._syncer is None  # no hand-off to the syncer thread


def test_a_busy_loop_syncs_its_batch_once_the_oldest_answer_has_waited(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    coord, _ = serving(tmp_path / "coord")
    group = coord.defer_durability()
    assert group is not None
    runner = StoreRunner(durability=group, nowait=coord.nowait(), crowded=lambda: True)
    hook = runner.idle_hook()
    claim = claim_noting_thread(coord, [])

    async def main() -> str:
        monkeypatch.setattr(runner_module, "BATCH_WAIT_S", GUARD_S)
        answer = runner.run("claim", claim)
        assert not hook(False)  # busy, and the batch is young: nothing done
        assert not answer.done() and group.durable < group.written
        monkeypatch.setattr(runner_module, "BATCH_WAIT_S", 0.0)
        assert hook(False)  # busy, but the oldest answer has waited long enough
        assert group.durable == group.written
        got = await answer
        assert not hook(True)  # nothing left to sync
        return got

    assert asyncio.run(main()) == "j0"
    runner.close()


def test_a_failed_loop_sync_fails_every_answer_of_its_batch(tmp_path: Path) -> None:
    coord, _ = serving(tmp_path / "coord")
    group = coord.defer_durability()
    assert group is not None

    def failing_sync() -> None:
        raise OSError(errno.EIO, "Input/output error")

    group._sync = failing_sync  # type: ignore[method-assign]
    runner = StoreRunner(durability=group, nowait=coord.nowait(), crowded=lambda: True)
    hook = runner.idle_hook()
    claim = claim_noting_thread(coord, [])

    async def main() -> list[BaseException | None]:
        answers = [runner.run("claim", claim) for _ in range(2)]
        assert hook(True)
        await asyncio.wait(answers)
        return [answer.exception() for answer in answers]

    errors = asyncio.run(main())
    runner.close()
    assert all(isinstance(error, NotDurable) for error in errors)
    assert errors[0] is not errors[1]  # one each: awaited one after another, they would share a traceback
    with pytest.raises(NotDurable):
        coord.claim("f2", [])  # and the store takes nothing more


def test_the_selector_tells_the_hook_if_the_loop_would_wait_and_polls_without_waiting_after_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    timeouts: list[float | None] = []
    real_select = selectors.DefaultSelector.select

    def recording_select(self: selectors.BaseSelector, timeout: float | None = None) -> Any:
        timeouts.append(timeout)
        return real_select(self, timeout)  # type: ignore[arg-type]

    monkeypatch.setattr(selectors.DefaultSelector, "select", recording_select)
    calls: list[bool] = []
    did_work = [False]

    def hook(idle: bool) -> bool:
        calls.append(idle)
        return did_work[0]

    selector = IdleHookSelector(hook)
    try:
        selector.select(0)  # callbacks ready: asyncio polls without waiting
        selector.select(0.001)  # the loop would wait
        did_work[0] = True
        selector.select(None)  # would wait for ever, but the hook settled answers: poll only
    finally:
        selector.close()
    assert calls == [False, True, True]
    assert timeouts == [0, 0.001, 0]

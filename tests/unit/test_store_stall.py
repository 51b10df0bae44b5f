"""A stalled store does not expire leases: time nobody could be served is given back to every lease.

The rule is the core's (``Coordinator._credit_stall``), checked here with a store
that reports a given stall; the measuring is the file store's lock
(``stores.locking``), checked with a fake clock and with a real process paused
(SIGSTOP) or killed while it holds ``STATE/.lock``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_queue.errors import NotLeased
from coordinator_stub.core import STALL_MIN_S, Coordinator
from coordinator_stub.stores import locking
from coordinator_stub.stores.base import Stall, Tx
from coordinator_stub.stores.file import JsonStore
from coordinator_stub.stores.memory import MemoryStore

TTL = 3.0


class StallingStore(MemoryStore):
    """A MemoryStore whose next transaction reports ``next_stall``, as a store that measured one would."""

    def __init__(self) -> None:
        super().__init__()
        self.next_stall: Stall | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with super().transaction() as tx:
            tx.stall, self.next_stall = self.next_stall, None
            yield tx


def leased(now: list[float], *jobs: tuple[str, str, float]) -> tuple[StallingStore, Coordinator]:
    """A coordinator where each (job, factory, time) was claimed at that time, with lease TTL 3 s."""
    store = StallingStore()
    c = Coordinator(store, lambda: now[0], TTL)
    for job_id, factory, at in jobs:
        c.enqueue({"id": job_id, "command": ["true"]})
        now[0] = at
        view = c.claim(factory, ())
        assert view is not None and view["job"]["id"] == job_id
    return store, c


def expires(c: Coordinator, job_id: str) -> str:
    lease = c.get_job(job_id)["lease"]
    return "none" if lease is None else str(lease["expiresAt"])


# ---------------------------------------------------------------- the core's rule


def test_a_stall_is_given_back_to_every_lease_before_the_reaper_looks() -> None:
    now = [100.0]
    store, c = leased(now, ("a", "f1", 100.0), ("b", "f2", 100.5))  # expire at 103.0 and 103.5
    now[0] = 104.5  # both expired by the clock, but the store could serve no one for the last 2 s
    store.next_stall = Stall(2.0, 0.0)
    assert c.renew("a", "f1", 1)["lease"]["expiresAt"] == "1970-01-01T00:01:47.500Z"  # renewed: 104.5 + 3
    assert expires(c, "b") == "1970-01-01T00:01:45.500Z"  # 103.5 + 2
    stall = [e for e in store.events if e["op"] == "stall"]
    assert [(e["seconds"], e["extended"]) for e in stall] == [(2.0, ["a", "b"])]
    assert not [e for e in store.events if e["op"] == "reclaim"]


def test_a_stall_two_transactions_learn_of_is_credited_once() -> None:
    now = [100.0]
    store, c = leased(now, ("a", "f1", 100.0))  # expires at 103.0
    now[0] = 104.5
    store.next_stall = Stall(2.0, 0.0)  # [102.5, 104.5]
    c.status()
    assert expires(c, "a") == "1970-01-01T00:01:45.000Z"  # 105.0
    now[0] = 104.6
    store.next_stall = Stall(2.0, 0.1)  # the same stall, told to the next transaction too
    c.status()
    assert expires(c, "a") == "1970-01-01T00:01:45.000Z"
    now[0] = 106.0
    store.next_stall = Stall(2.5, 0.0)  # [103.5, 106.0]: only [104.5, 106.0] is new
    c.status()
    assert expires(c, "a") == "1970-01-01T00:01:46.500Z"  # 105.0 + 1.5


def test_a_short_stall_moves_no_lease() -> None:
    now = [100.0]
    store, c = leased(now, ("a", "f1", 100.0))
    now[0] = 103.5
    store.next_stall = Stall(STALL_MIN_S * 0.9, 0.0)
    assert c.reap() == [{"jobId": "a", "factoryId": "f1", "leaseEpoch": 1}]


def test_a_lease_that_expired_before_the_stall_began_is_still_reaped() -> None:
    now = [100.0]
    store, c = leased(now, ("a", "f1", 100.0), ("b", "f2", 102.5))  # expire at 103.0 and 105.5
    now[0] = 106.0
    store.next_stall = Stall(2.0, 0.5)  # [103.5, 105.5]: a had expired before it, b had not
    assert c.reap() == [{"jobId": "a", "factoryId": "f1", "leaseEpoch": 1}]
    assert expires(c, "b") == "1970-01-01T00:01:47.500Z"  # 105.5 + 2
    with pytest.raises(NotLeased):
        c.renew("a", "f1", 1)


# ---------------------------------------------------------------- the file store's measuring (fake clock)


def test_the_lock_tells_the_next_transaction_of_a_long_hold_even_across_other_holders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(locking, "_clock", lambda: clock[0])
    path = tmp_path / ".lock"
    with locking.flock(path) as hold:  # a transaction's holder, paused 5 s while holding the lock
        clock[0] += 5.0
        hold.reported = True
    clock[0] += 1.0
    with locking.flock(path):  # a holder that is not a transaction (a tidy, a checkpoint): passes it on
        clock[0] += 0.01
    clock[0] += 1.0
    with locking.flock(path) as hold:
        stall = hold.stall()
        assert stall is not None and (stall.seconds, stall.ended_ago) == (5.0, pytest.approx(2.01))
        hold.reported = True
        clock[0] += 0.5
    with locking.flock(path) as hold:  # told once: now only that transaction's own hold (0.5 s) is left
        stall = hold.stall()
        assert stall is not None and (stall.seconds, stall.ended_ago) == (0.5, 0.0)


def test_a_transaction_paused_before_it_starts_tells_its_own_core(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Paused between taking the lock and reading the clock, its own reaper would run late: its core is told."""
    clock = [1000.0]
    monkeypatch.setattr(locking, "_clock", lambda: clock[0])
    with locking.flock(tmp_path / ".lock") as hold:
        clock[0] += 4.0
        stall = hold.stall()
    assert stall is not None and (stall.seconds, stall.ended_ago) == (4.0, 0.0)


# ---------------------------------------------------------------- real processes holding STATE/.lock


HOLDER = """
import os, signal, sys
from pathlib import Path
from coordinator_stub.stores.file import JsonStore
with JsonStore(Path(sys.argv[1])).transaction() as tx:  # a seam process's operation, holding STATE/.lock
    print("held", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
print("released", flush=True)
"""


@contextlib.contextmanager
def holder_of(state: Path) -> Iterator[subprocess.Popen[str]]:
    """A real process that takes the store's lock in a transaction and stops itself (SIGSTOP) holding it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(state)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        _, status = os.waitpid(proc.pid, os.WUNTRACED)  # returns once it is stopped, holding the lock
        assert os.WIFSTOPPED(status)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def paused_past_the_ttl(root: Path) -> tuple[list[float], Coordinator]:
    now = [100.0]
    c = Coordinator(JsonStore(root), lambda: now[0], TTL)
    c.enqueue({"id": "a", "command": ["true"]})
    assert c.claim("f1", ()) is not None  # expires at 103.0 on this coordinator's clock
    return now, c


def test_a_seam_process_paused_holding_the_lock_does_not_cost_healthy_factories_their_leases(
        tmp_path: Path) -> None:
    """The issue's repro, in small: SIGSTOP a process holding STATE/.lock longer than the lease TTL."""
    root = tmp_path / "coord"
    now, c = paused_past_the_ttl(root)
    pause = STALL_MIN_S * 2
    with holder_of(root) as proc:
        threading.Event().wait(pause)  # the store serves no one meanwhile (f1 could not renew)
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait(timeout=30) == 0
    JsonStore(root).checkpoint()  # another holder between the stall and the next operation passes it on
    now[0] = 103.5  # past the lease's expiry, inside the stall: f1 is healthy, the store was not
    renewed = c.renew("a", "f1", 1)["lease"]
    assert renewed["leaseEpoch"] == 1 and renewed["expiresAt"] == "1970-01-01T00:01:46.500Z"
    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    stall = [e for e in events if e["op"] == "stall"]
    assert len(stall) == 1 and stall[0]["extended"] == ["a"] and stall[0]["seconds"] >= pause
    assert not [e for e in events if e["op"] == "reclaim"]


def test_a_process_killed_holding_the_lock_while_another_waits_is_a_stall_too(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    now, c = paused_past_the_ttl(root)
    now[0] = 103.5
    answers: list[object] = []
    with holder_of(root) as proc:
        waiter = threading.Thread(target=lambda: answers.append(c.renew("a", "f1", 1)))
        waiter.start()  # blocks on the lock the stopped process holds
        threading.Event().wait(STALL_MIN_S * 2)
        proc.kill()  # it never lets go itself: the kernel frees the lock, its record still says "held"
        waiter.join(timeout=30)
    assert len(answers) == 1, "the renew did not finish"
    assert answers[0] == {"lease": {"jobId": "a", "factoryId": "f1", "leaseEpoch": 1,
                                    "expiresAt": "1970-01-01T00:01:46.500Z", "ttlS": TTL}}

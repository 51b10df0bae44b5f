"""``agent-queue cancel ID`` in the local queue: stop a job for good, and say how it ended.

A queued job moves to ``cancelled/`` at once. A running one is marked (``cancelmark``): the daemon
running it kills the tool group within a poll, ships nothing and files it under ``cancelled/``; when no
daemon holds the root (it crashed), this command takes the daemon lock and does that itself. A
composite parent cancels its children that have not ended and its verify gate. A job that came from
the coordinator is refused here: only the coordinator can cancel it (``cancel ID --fleet``), and it
fences the factory holding it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from filelock import Timeout

from agent_queue import cancelmark, composite_queue
from agent_queue.errors import Conflict, Unfinished
from agent_queue.fleet.records import read_lease
from agent_queue.inbox import LocalQueue, State
from agent_queue.local_source import recover_running

WAIT_S = 30.0  # a marked tool is stopped within a poll plus the kill grace; this is only a backstop


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did: the ids that ended cancelled (a parent's own id for its verify gate)."""

    job_id: str
    ids: tuple[str, ...]
    already: bool = False


def cancel(queue: LocalQueue, job_id: str, reason: str = cancelmark.DEFAULT_REASON, *, wait_s: float = WAIT_S,
           sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> Cancelled:
    parent = composite_queue.find_parent(queue, job_id)
    if parent is not None:
        already = parent.cancelled is not None
        ids = composite_queue.cancel_parent(queue, parent, reason)
        if not ids and not already:
            raise Conflict(f"composite {job_id}: nothing left to cancel (every child ended and no verify gate waits)")
        _settle(queue, [i for i in ids if i != job_id], wait_s, sleep, clock)
        return Cancelled(job_id, tuple(ids), already=already and not ids)
    entry = queue.get(job_id)
    lease = read_lease(entry)
    if lease is not None:
        raise Conflict(f"job {job_id}: came from the coordinator (lease epoch {lease.epoch}); cancel it there "
                       f"with `agent-queue cancel {job_id} --fleet`")
    if entry.state is State.CANCELLED:
        return Cancelled(job_id, (), already=True)
    if entry.state in (State.SHIPPED, State.QUARANTINE):
        raise Conflict(f"job {job_id}: already ended in {entry.state.value}/; nothing to cancel")
    queue.cancel(job_id, reason)
    _settle(queue, [job_id], wait_s, sleep, clock)
    return Cancelled(job_id, (job_id,))


def _settle(queue: LocalQueue, ids: list[str], wait_s: float, sleep: Callable[[float], None],
            clock: Callable[[], float]) -> None:
    """Until each job left running/: stopped by its daemon, or by this process when no daemon runs."""
    _stop_orphans(queue, ids)
    deadline = clock() + wait_s
    while any(queue.find(i) is State.RUNNING for i in ids):
        if clock() >= deadline:
            still = [i for i in ids if queue.find(i) is State.RUNNING]
            raise Unfinished(f"job {', '.join(still)}: cancel requested, but still running after {wait_s:g}s "
                             "(its daemon stops it at its next look; `agent-queue status` shows it)")
        sleep(0.05)
    late = [f"{i} ({state.value})" for i in ids if (state := queue.find(i)) not in (State.CANCELLED, None)]
    if late:
        raise Unfinished(f"job {', '.join(late)}: ended before the cancel took effect")


def _stop_orphans(queue: LocalQueue, ids: list[str]) -> None:
    """No daemon holds the root: its running/ jobs are a crash's leftovers, settled here (tool stopped)."""
    lock = queue.daemon_lock()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return  # the daemon running them sees the marks
    try:
        for job_id in ids:
            if queue.find(job_id) is State.RUNNING:
                recover_running(queue, queue.get(job_id))
    finally:
        lock.release()

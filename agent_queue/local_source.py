"""The offline Source (AQ_FLEET=0, or fleet route and shadow off): jobs from the local inbox.

Every ending of a ``LocalClaim`` is one directory rename in the ``LocalQueue``.
Composite children wait behind ``composite_queue.Gate`` and a parent's verify
gate is handed out as a claim of its own once its children shipped. The fleet
claim (``fleet.claim.FleetClaim``) reuses ``LocalClaim``'s local bookkeeping.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from agent_queue import cancelmark, composite_queue, process
from agent_queue.errors import Fenced, is_disk_full
from agent_queue.inbox import Entry, LocalQueue, State, now
from agent_queue.source import Claim, Record, Source
from agent_queue.timeutil import to_rfc3339

log = logging.getLogger(__name__)


def stop_leftover_tool(entry: Entry) -> None:
    """A crashed daemon's tool may still run in the job's workspace: stop its whole tree before anyone re-runs
    the job (its process tree while the recorded pid is still that process, and all of its cgroup scope)."""
    pid, cgroup = entry.result.get("pid"), entry.result.get("cgroup")
    process.stop_leftover(pid if isinstance(pid, int) and pid > 1 else 0, entry.result.get("pidStart"),
                          cgroup if isinstance(cgroup, str) else None)


class LocalClaim(Claim):
    """A job in running/ of the local queue; every ending is one directory rename."""

    def __init__(self, queue: LocalQueue, entry: Entry) -> None:
        self.queue = queue
        self.job = entry.job
        self.attempts_done = entry.attempts
        self.round = int(entry.result.get("round") or 1)
        self._history: list[Record] = list(entry.result.get("history", []))

    @property
    def folder(self) -> Path:
        return self.queue.dir(State.RUNNING) / self.job.id

    def begin(self, attempt: int) -> None:
        self.queue.update(self.job.id, State.RUNNING, {"attempt": attempt, "startedAt": now(), "pid": None})

    @contextlib.contextmanager
    def keepalive(self, on_lost: Callable[[str], None]) -> Iterator[None]:
        """Offline a claim is lost only by ``agent-queue cancel``: its marker stops the tool at once."""
        with cancelmark.watch(self.folder, on_lost):
            yield

    def note_pid(self, pid: int, cgroup: str | None = None) -> None:
        self.queue.update(self.job.id, State.RUNNING, {"pid": pid, "pidStart": process.identity(pid), "cgroup": cgroup})

    def note_ship_hook(self, outcome: Record) -> None:
        self.queue.update(self.job.id, State.SHIPPED, {"shipHook": outcome})

    def approve_ship(self, record: Record) -> None:
        """Offline this factory is the only authority; only a cancel that came in after the verify stops the ship."""
        reason = cancelmark.requested(self.folder)
        if reason is not None:
            raise Fenced(f"cancelled: {reason}")

    def shipped(self, record: Record) -> None:
        self._end(State.SHIPPED, record, counted=True)

    def retry(self, record: Record) -> None:
        self._end(State.INBOX, record, counted=True)

    def quarantine(self, record: Record) -> None:
        self._end(State.QUARANTINE, record, counted=True)

    def fenced(self, record: Record) -> None:
        """Offline a claim is lost only by a cancel: the job ends cancelled. Anything else (a push the
        remote refused) is kept total as a quarantine, so the runner needs no special case."""
        if cancelmark.requested(self.folder) is not None:
            self._end(State.CANCELLED, record, counted=True)
        else:
            self._end(State.QUARANTINE, record, counted=True)

    def give_back(self, reason: str) -> None:
        if cancelmark.requested(self.folder) is not None:  # the operator asked: never back to the inbox
            self._end(State.CANCELLED, {"attempt": self.attempts_done + 1, "outcome": "cancelled"}, counted=False)
            return
        try:
            self.queue.move(self.job.id, State.RUNNING, State.INBOX,
                            {"reason": reason, "pid": None, "attempt": None, "startedAt": None})
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # No room even for result.json: the rename alone puts the job back (attempts unchanged).
            self.queue.move(self.job.id, State.RUNNING, State.INBOX, None)

    def defer(self, record: Record, not_before: float) -> None:
        # result.json keeps notBefore; LocalQueue.pending() skips the job until then.
        self._end(State.INBOX, record, counted=False, extra={"notBefore": to_rfc3339(not_before)})

    def _end(self, dst: State, record: Record, *, counted: bool, extra: Record | None = None) -> None:
        cancel = cancelmark.requested(self.folder) if dst in (State.INBOX, State.CANCELLED) else None
        if cancel is not None:  # a failed attempt of a cancelled job is not retried
            dst, extra = State.CANCELLED, {**(extra or {}), "notBefore": None, "cancelledAt": now()}
            record.update(outcome="cancelled", reason=f"cancelled: {cancel}")  # in place: the runner logs it
        history = [*self._history, record]
        attempts = self.attempts_done + (1 if counted else 0)
        self.queue.move(self.job.id, State.RUNNING, dst,
                        {"attempts": attempts, "history": history, "reason": record.get("reason"),
                         "pid": None, "attempt": None, "startedAt": None, "notBefore": None, **(extra or {})})


class LocalSource(Source):
    """Work from the local inbox (AQ_FLEET=0): highest priority, then oldest."""

    def __init__(self, queue: LocalQueue) -> None:
        self.queue = queue

    def recover(self, only: set[str] | None = None) -> list[str]:
        """running/ -> inbox/ for jobs a crashed daemon left behind (all, or the ids in ``only``), attempt counted."""
        recovered = []
        for entry in self.queue.entries(State.RUNNING):
            if only is not None and entry.job.id not in only:
                continue
            recover_running(self.queue, entry)
            recovered.append(entry.job.id)
        return recovered + composite_queue.recover(self.queue)

    def next_claim(self) -> Claim | None:
        self.queue.normalise_inbox()
        composite_queue.advance_plans(self.queue)  # a shipped planning job's plan becomes children
        gate = composite_queue.Gate(self.queue)  # composite children wait for dependencies, phases, budget
        for entry in self.queue.pending():
            if not gate.allows(entry.job):
                continue
            taken = self.queue.take(entry.job.id)
            if taken is not None:
                return LocalClaim(self.queue, taken)
        return composite_queue.next_verify_claim(self.queue)


def recover_running(queue: LocalQueue, entry: Entry) -> State:
    """A local job no daemon runs any more (crash): stop its leftover tool, then back to the inbox with the
    attempt counted, or to cancelled/ when a cancel was asked for. Returns where it went."""
    stop_leftover_tool(entry)
    cancel = cancelmark.requested(entry.path)
    reason = f"cancelled: {cancel}" if cancel else "daemon stopped while the job was running"
    record = {"attempt": entry.attempts + 1, "outcome": "cancelled" if cancel else "crashed", "endedAt": now(),
              "reason": reason}
    dst = State.CANCELLED if cancel else State.INBOX
    queue.move(entry.job.id, State.RUNNING, dst,
               {"attempts": entry.attempts + 1, "history": [*entry.result.get("history", []), record],
                "reason": reason, "pid": None, "attempt": None, "startedAt": None,
                **({"cancelledAt": now()} if cancel else {})})
    log.warning("recovered job left in running/ (attempt counted)", extra={"job_id": entry.job.id, "to": dst.value})
    return dst

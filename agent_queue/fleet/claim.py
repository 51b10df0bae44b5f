"""FleetClaim: one coordinator lease on one job, as the runner's ``Claim`` (AQ_FLEET=1, route on).

The claimed job is materialized in ``<root>/running/<id>/`` (job.json,
result.json, lease.json) and a ``Heartbeat`` renews its lease from the moment
of the claim until its ending. A lost lease (renew 409, or renewals failing
until the lease would have expired locally) reaches the runner through
``keepalive(on_lost)``: the tool group is killed at once, nothing ships.

Why the coordinator decides every ending: the ship hook runs only after a 200
to ``report(shipped)`` with this lease's epoch; a job that leaves this factory
without a terminal outcome is ``release``d, and the coordinator counts the
attempt and picks who runs it next (see ``fleet.records`` for where the local
copy goes).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from agent_queue.errors import AQError, Conflict, Fenced, NotFound, NotLeased, ReportPending
from agent_queue.fleet.client import FleetClient
from agent_queue.fleet.heartbeat import Heartbeat
from agent_queue.fleet.records import FENCED_DIR, RELEASED_DIR, RETURN_FIELDS, archive, report_detail
from agent_queue.inbox import Entry, LocalQueue, State
from agent_queue.jobs import Lease
from agent_queue.local_source import LocalClaim
from agent_queue.source import Record

log = logging.getLogger(__name__)


class FleetClaim(LocalClaim):
    """A coordinator lease on one job, materialized in running/; the heartbeat runs from claim to ending.

    Inherits the local bookkeeping (begin, note_pid, shipped/ and quarantine/
    moves) from ``LocalClaim``; every ending first settles with the
    coordinator and never raises: the runner must survive any answer.
    """

    def __init__(self, queue: LocalQueue, entry: Entry, client: FleetClient, heartbeat: Heartbeat,
                 on_pending: Callable[[str], None] | None = None,
                 on_parked: Callable[[str, str], None] | None = None) -> None:
        super().__init__(queue, entry)
        self.client = client
        self.heartbeat = heartbeat
        self._on_pending = on_pending
        self._on_parked = on_parked
        self.can_pass_on = True
        self.on_cannot_run: Callable[[str], None] | None = None
        self.confirmed = False  # report(shipped) already answered 200 (set on resumed ships)
        self.epoch = heartbeat.current_lease.epoch
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._forward: Callable[[str], None] | None = None

    def on_heartbeat_lost(self, reason: str) -> None:
        """Heartbeat thread: remember the loss and pass it to the runner if the tool is running."""
        with self._lock:
            self._lost = reason
            forward = self._forward
        if forward is not None:
            forward(reason)

    @contextlib.contextmanager
    def keepalive(self, on_lost: Callable[[str], None]) -> Iterator[None]:
        with self._lock:
            self._forward = on_lost
            lost = self._lost
        if lost is not None:
            on_lost(lost)  # lost before the tool even started (e.g. while preparing the workspace)
        try:
            yield
        finally:
            with self._lock:
                self._forward = None

    def _settle(self) -> str | None:
        """Stop renewing (before any final call, so no renew races it); the loss reason, if lost."""
        self.heartbeat.stop()
        with self._lock:
            return self._lost

    @property
    def lease(self) -> Lease:
        return self.heartbeat.current_lease

    # --- endings ---------------------------------------------------------------------

    def approve_ship(self, record: Record) -> None:
        """Only a 200 to report(shipped) with this epoch lets the job ship.

        A 409 (or a lost lease) raises Fenced. An answer that never came (the client's
        retries spent) leaves the outcome unknown: shipping could double-ship, giving up
        could lose a job the coordinator counts as shipped. So the job stays in running/
        with its ``reportSent`` marker and ReportPending is raised; the source replays the
        report (an exact replay gets the same 200, a report never taken a 409 once the
        lease is gone) and resumes the ship or records it as fenced. The marker is written
        first, so a crash at any point here is settled the same way at the next start.
        """
        lost = self._settle()
        if self.confirmed:  # a resumed ship: the replay at recovery already got the coordinator's 200
            return
        if lost is not None:
            raise Fenced(f"lease lost: {lost}")
        self.queue.update(self.job.id, State.RUNNING, {"reportSent": {"epoch": self.lease.epoch, "record": record}})
        try:
            self.client.report(self.lease, "shipped", report_detail(record))
        except (Fenced, NotLeased, NotFound, Conflict) as exc:
            raise Fenced(exc.message) from None
        except AQError as exc:
            if self._on_pending is not None:
                self._on_pending(self.job.id)
            raise ReportPending(f"report(shipped) unanswered ({exc.message}); "
                                "it is replayed until the coordinator answers") from None
        self.confirmed = True
        log.info("coordinator accepted report(shipped)", extra=self._fields())

    def _park(self, why: str) -> bool:
        """After the coordinator's 200 the job is shipped fleet-wide: it may never be released, re-run
        or filed as fenced. Any ending but ``shipped`` leaves it in running/ for the source to settle
        (the replay gets the same 200 and the ship resumes, later each time: ``FleetSource``). True when parked."""
        if not self.confirmed:
            return False
        log.error("%s after the coordinator accepted the ship: the job waits in running/ and its ship resumes",
                  why, extra=self._fields())
        if self._on_parked is not None:
            self._on_parked(self.job.id, why)
        elif self._on_pending is not None:
            self._on_pending(self.job.id)
        return True

    def pass_on(self, record: Record) -> None:
        """This factory cannot run the job (its tool, profile or program is missing here): release it,
        attempt counted, and stop asking for it for a while so another factory can take it."""
        if self.on_cannot_run is not None:
            self.on_cannot_run(self.job.id)
        self.retry(record)

    def retry(self, record: Record) -> None:
        if not self._park(f"retry ({record.get('reason')})"):
            self._release(record, f"attempt failed: {record.get('reason')}", count_attempt=True)

    def give_back(self, reason: str) -> None:
        if not self._park(f"give back ({reason})"):
            self._release(None, reason, count_attempt=False)

    def defer(self, record: Record, not_before: float) -> None:
        """An agent's usage limit: back to the coordinator until ``not_before``, attempt not counted."""
        if not self._park("defer"):
            self._release(record, f"deferred: {record.get('reason')}", count_attempt=False, not_before=not_before)

    def quarantine(self, record: Record) -> None:
        """Attempts spent (or the job cannot run): report(quarantined), then quarantine/ locally."""
        if self._park(f"quarantine ({record.get('reason')})"):
            return
        if self._settle() is not None:
            self.fenced(record)
            return
        try:
            self.client.report(self.lease, "quarantined", report_detail(record))
        except (Fenced, NotLeased, NotFound, Conflict) as exc:
            self.fenced({**record, "outcome": "fenced", "reason": f"report refused: {exc.message}"})
            return
        except AQError as exc:
            log.warning("report(quarantined) not confirmed; the lease will expire", extra=self._fields())
            self._leave(RELEASED_DIR, record, counted=True, note=f"report(quarantined) not confirmed: {exc.message}")
            return
        super().quarantine(record)

    def fenced(self, record: Record) -> None:
        self._settle()
        if not self._park(f"fenced ({record.get('reason')})"):
            self._leave(FENCED_DIR, {**record, "outcome": "fenced"}, counted=True)

    def _release(self, record: Record | None, reason: str, *, count_attempt: bool,
                 not_before: float | None = None) -> None:
        """Give the job back to the coordinator; it decides (queued again, or quarantined when spent)."""
        lost = self._settle()
        if lost is not None:
            self._leave(FENCED_DIR, record, counted=count_attempt, note=f"lease lost: {lost}")
            return
        note = None
        try:
            self.client.release(self.lease, reason, retry=True, count_attempt=count_attempt, not_before=not_before)
        except (Fenced, NotLeased, NotFound, Conflict) as exc:
            self._leave(FENCED_DIR, record, counted=count_attempt, note=f"release refused: {exc.message}")
            return
        except AQError as exc:
            note = f"release not confirmed (the lease will expire): {exc.message}"
            log.warning(note, extra=self._fields())
        log.info("lease released", extra={**self._fields(), "countAttempt": count_attempt})
        self._leave(RELEASED_DIR, record, counted=count_attempt, note=note or reason)

    def _leave(self, kind: str, record: Record | None, *, counted: bool, note: str | None = None) -> None:
        history = self._history if record is None else [*self._history, record]
        update = {**RETURN_FIELDS, "attempts": self.attempts_done + (1 if counted else 0), "history": history,
                  "reason": note or (record or {}).get("reason"), "leaseEpoch": self.epoch}
        try:
            archive(self.queue, self.job.id, kind, self.lease.epoch, update)
        except OSError as exc:
            log.error("cannot move the local copy to %s/: %s", kind, exc, extra=self._fields())

    def _fields(self) -> dict[str, Any]:
        return {"job_id": self.job.id, "epoch": self.epoch}

"""The coordinator as the runner's Source: FleetSource / FleetClaim (AQ_FLEET=1), and shadow wiring.

``build_fleet_source`` is the one place that turns the resolved fleet flags
into a Source:

- route on (the default with AQ_FLEET=1): ``FleetSource`` claims from the
  coordinator with this factory's id and capabilities; the claimed job is
  materialized in ``<root>/running/<id>/`` (job.json, result.json,
  lease.json) and a ``Heartbeat`` renews its lease from the moment of the
  claim until its ending. A lost lease (renew 409, or renewals failing until
  the lease would have expired locally) reaches the runner through
  ``keepalive(on_lost)``: the tool group is killed at once, nothing ships.
- route off + shadow on: the local inbox is authoritative and a
  ``ShadowProbe`` observes each local decision (dry-run claims only).
- route off + shadow off: the local inbox alone; not one coordinator call.

Why the coordinator decides every ending: the ship hook runs only after a 200
to ``report(shipped)`` with this lease's epoch; a job that leaves this factory
without a terminal outcome is ``release``d, and the coordinator counts the
attempt and picks who runs it next. Local records of fleet jobs are never
deleted: a job given back or released for retry goes to
``<root>/released/<id>.<epoch>/``, a fenced one to ``<root>/fenced/<id>.<epoch>/``.

Crash recovery never re-runs a local copy: a job found in running/ at start-up
is released at the coordinator with the epoch from its lease.json (attempt
counted), or recorded as fenced when the coordinator refuses (409/404). While
the coordinator is unreachable the job stays in running/ and no new work is
claimed; the runner backs off and recovery is retried before each claim.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent_queue.errors import AQError, Conflict, Fenced, NotFound, NotLeased, ReportPending, TransportError
from agent_queue.fleet.client import FleetClient, RetryPolicy, is_retryable
from agent_queue.fleet.flags import ResolvedFlags, resolve_flags
from agent_queue.fleet.heartbeat import Heartbeat
from agent_queue.fleet.shadow import ShadowProbe, shadow_log_path
from agent_queue.fleet.transport import make_transport
from agent_queue.fsutil import read_json
from agent_queue.inbox import Entry, LocalQueue, State, now
from agent_queue.jobs import Job, Lease
from agent_queue.settings import Settings
from agent_queue.source import Claim, LocalClaim, LocalSource, Record, Source, stop_leftover_tool

log = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
FENCED_DIR = "fenced"
RELEASED_DIR = "released"
RERUN_DIR = "rerun"
TRANSPORT_TIMEOUT_S = 30.0
# A daemon call gives up sooner than a one-shot CLI call: the runner's own backoff takes over.
# A factory that cannot run a job leaves it to others this long before it may be offered again.
CANNOT_RUN_COOLDOWN_S = 600.0
DAEMON_RETRY = RetryPolicy(max_attempts=5, deadline_s=15.0, base_delay_s=0.2, max_delay_s=3.0)
_RETURN_FIELDS = {"pid": None, "attempt": None, "startedAt": None}


def fleet_flags(settings: Settings, warn: Callable[[str], None] | None = None) -> ResolvedFlags:
    """The resolved AQ_FLEET / ROUTE / SHADOW flags; each precedence warning is given once per process."""
    return resolve_flags(settings.fleet, settings.fleet_route, settings.fleet_shadow, warn or log.warning)


def make_client(settings: Settings, retry: RetryPolicy | None = None) -> FleetClient:
    """A FleetClient for this factory (seam if AQ_FLEET_API_CMD is set, else HTTP); ConfigError if neither."""
    transport = make_transport(settings.fleet_api_cmd, settings.fleet_api, settings.fleet_token, TRANSPORT_TIMEOUT_S)
    return FleetClient(transport, settings.factory_id, settings.capabilities, retry)


def build_fleet_source(settings: Settings, queue: LocalQueue) -> Source:
    """Pick the Source for fleet mode from the resolved flags (see the module docstring)."""
    flags = fleet_flags(settings)
    if flags.coordinator_sources_work:
        return FleetSource(queue, make_client(settings, DAEMON_RETRY))
    if flags.shadow:
        client = make_client(settings, DAEMON_RETRY)
        probe = ShadowProbe(client, settings.factory_id, shadow_log_path(settings.root),
                            log_idle=settings.shadow_log_idle)
        return ShadowSource(LocalSource(queue), probe, client)
    return LocalSource(queue)


# --- local records of fleet jobs ------------------------------------------------------


def archive(queue: LocalQueue, job_id: str, kind: str, epoch: int, update: dict[str, Any]) -> Path:
    """``running/<id>`` -> ``<root>/<kind>/<id>.<epoch>/``, ``update`` merged into result.json.

    Used when a fleet job leaves this factory without a terminal outcome here
    (released, given back) or is fenced. Nothing is deleted.
    """
    return queue.retire(job_id, State.RUNNING, kind, str(epoch), update)


def set_aside_earlier_run(queue: LocalQueue, job_id: str) -> Path | None:
    """A job the coordinator re-runs (requeue, composite re-run) may have ended here before: keep that record.

    Its ``quarantine/<id>`` (or ``shipped/<id>``) moves to ``<root>/rerun/<id>.<n>/``
    so the new lease can be materialized; nothing is deleted.
    """
    state = queue.find(job_id)
    if state not in (State.QUARANTINE, State.SHIPPED):
        return None
    target = queue.retire(job_id, state, RERUN_DIR)
    log.info("earlier local run set aside for the coordinator's re-run", extra={"job_id": job_id})
    return target


def read_lease(entry: Entry) -> Lease | None:
    """The lease a running/ job was claimed with (lease.json, else result.json); None for a local job."""
    raw: Any = None
    with contextlib.suppress(OSError, ValueError):
        raw = read_json(entry.path / LEASE_FILE)
    if raw is None:
        raw = entry.result.get("lease")
    if raw is None:
        return None
    try:
        return Lease.from_dict(raw)
    except AQError:
        log.warning("unreadable lease record; treating the job as fenced", extra={"job_id": entry.job.id})
        return Lease(entry.job.id, "", 0, 0.0, 1.0)


# --- the claim ------------------------------------------------------------------------


class FleetClaim(LocalClaim):
    """A coordinator lease on one job, materialized in running/; the heartbeat runs from claim to ending.

    Inherits the local bookkeeping (begin, note_pid, shipped/ and quarantine/
    moves) from ``LocalClaim``; every ending first settles with the
    coordinator and never raises: the runner must survive any answer.
    """

    def __init__(self, queue: LocalQueue, entry: Entry, client: FleetClient, heartbeat: Heartbeat,
                 on_pending: Callable[[str], None] | None = None) -> None:
        super().__init__(queue, entry)
        self.client = client
        self.heartbeat = heartbeat
        self._on_pending = on_pending
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
            self.client.report(self.lease, "shipped", _detail(record))
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
        (the replay gets the same 200 and the ship resumes). True when parked."""
        if not self.confirmed:
            return False
        log.error("%s after the coordinator accepted the ship: the job waits in running/ and its ship resumes",
                  why, extra=self._fields())
        if self._on_pending is not None:
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
            self.client.report(self.lease, "quarantined", _detail(record))
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
        update = {**_RETURN_FIELDS, "attempts": self.attempts_done + (1 if counted else 0), "history": history,
                  "reason": note or (record or {}).get("reason"), "leaseEpoch": self.epoch}
        try:
            archive(self.queue, self.job.id, kind, self.lease.epoch, update)
        except OSError as exc:
            log.error("cannot move the local copy to %s/: %s", kind, exc, extra=self._fields())

    def _fields(self) -> dict[str, Any]:
        return {"job_id": self.job.id, "epoch": self.epoch}


def _detail(record: Record) -> dict[str, Any]:
    keys = ("attempt", "exitCode", "verifyExitCode", "durationS", "reason")
    return {k: record[k] for k in keys if record.get(k) is not None}


# --- the sources ----------------------------------------------------------------------


class FleetSource(Source):
    """Claims from the coordinator (route on); see the module docstring for recovery."""

    def __init__(self, queue: LocalQueue, client: FleetClient,
                 heartbeat_interval_s: float | None = None) -> None:
        self.queue = queue
        self.client = client
        self.heartbeat_interval_s = heartbeat_interval_s
        self._pending: list[Entry] = []  # running/ jobs to settle with the coordinator before new work
        self._resume: list[Entry] = []  # report(shipped) accepted, ship not done yet
        self._cannot_run: dict[str, float] = {}  # job id -> monotonic time until which it is not asked for
        self._recovered: list[str] = []

    def recover(self) -> list[str]:
        """Settle every job left in running/ with the coordinator; never raises (retried in next_claim)."""
        self._pending = self.queue.entries(State.RUNNING)
        with contextlib.suppress(TransportError):
            self._settle_pending()
        return list(self._recovered)

    def _settle_pending(self) -> None:
        """Settle each pending running/ job with the coordinator; local leftovers go back to the inbox."""
        still: list[Entry] = []
        local: set[str] = set()
        failure: AQError | None = None
        for entry in self._pending:
            lease = read_lease(entry)
            if lease is None:
                local.add(entry.job.id)  # a local job from an offline run: LocalSource recovers it below
                continue
            try:
                self._recover_one(entry, lease)
            except AQError as exc:
                still.append(entry)
                failure = exc
        self._pending = still
        if local:  # they need no coordinator: back to the inbox even while it is unreachable
            self._recovered += LocalSource(self.queue).recover(only=local)
        if failure is not None:
            raise TransportError(f"coordinator unreachable, {len(still)} job(s) waiting in running/ to be "
                                 f"settled ({failure.message})")

    def _note_cannot_run(self, job_id: str) -> None:
        self._cannot_run[job_id] = time.monotonic() + CANNOT_RUN_COOLDOWN_S

    def _pend(self, job_id: str) -> None:
        """A claim whose report went unanswered (or that failed after it): settle it before new work."""
        entry = self.queue.get(job_id)
        if entry.state is State.RUNNING and all(e.job.id != job_id for e in self._pending):
            self._pending.append(entry)

    def _recover_one(self, entry: Entry, lease: Lease) -> None:
        ctx = {"job_id": entry.job.id, "epoch": lease.epoch}
        stop_leftover_tool(entry)
        sent = entry.result.get("reportSent")
        if isinstance(sent, dict) and sent.get("epoch") == lease.epoch:
            self._replay_report(entry, lease, sent.get("record") or {})
            return
        reason = "daemon stopped while the job was running"
        record: Record = {"attempt": entry.attempts + 1, "outcome": "crashed", "endedAt": now(), "reason": reason}
        update = {**_RETURN_FIELDS, "attempts": entry.attempts + 1,
                  "history": [*entry.result.get("history", []), record], "leaseEpoch": lease.epoch}
        try:
            self.client.release(lease, reason, retry=True, count_attempt=True)
        except (Fenced, NotLeased, NotFound, Conflict) as exc:
            archive(self.queue, entry.job.id, FENCED_DIR, lease.epoch, {**update, "reason": f"fenced: {exc.message}"})
            log.warning("recovered job was fenced: not re-run here", extra=ctx)
        except AQError as exc:
            if not is_retryable(exc):
                raise TransportError(exc.message) from None
            raise
        else:
            archive(self.queue, entry.job.id, RELEASED_DIR, lease.epoch, {**update, "reason": reason})
            log.warning("recovered job released to the coordinator (attempt counted)", extra=ctx)
        self._recovered.append(entry.job.id)

    def _replay_report(self, entry: Entry, lease: Lease, record: Record) -> None:
        """report(shipped) was sent (or about to be) and not answered: the coordinator decides now."""
        ctx = {"job_id": entry.job.id, "epoch": lease.epoch}
        try:
            self.client.report(lease, "shipped", _detail(record))
        except (Fenced, NotLeased, NotFound, Conflict) as exc:
            archive(self.queue, entry.job.id, FENCED_DIR, lease.epoch,
                    {**_RETURN_FIELDS, "reason": f"ship refused: the replayed report was answered {exc.message}"})
            log.warning("replayed report(shipped) refused: fenced, not shipped", extra=ctx)
            self._recovered.append(entry.job.id)
            return
        except AQError as exc:
            if not is_retryable(exc):
                raise TransportError(exc.message) from None
            raise
        log.warning("coordinator had accepted report(shipped): resuming the ship", extra=ctx)
        self._resume.append(self.queue.get(entry.job.id))

    def _resume_claim(self, entry: Entry) -> Claim | None:
        lease = read_lease(entry)
        sent = entry.result.get("reportSent")
        if lease is None or not isinstance(sent, dict):
            return None
        claim = FleetClaim(self.queue, entry, self.client, Heartbeat(self.client, lease, lambda reason: None),
                           self._pend)
        claim.resume_record = dict(sent.get("record") or {"attempt": entry.attempts + 1, "outcome": "passed"})
        claim.confirmed = True
        return claim

    def next_claim(self) -> Claim | None:
        if self._pending:
            self._settle_pending()
        while self._resume:
            claim = self._resume_claim(self._resume.pop(0))
            if claim is not None:
                return claim
        sent = time.monotonic()
        self._cannot_run = {jid: until for jid, until in self._cannot_run.items() if until > sent}
        # Its meta carries the attempt count (no get_job round trip); ``exclude`` keeps jobs this
        # factory cannot run from coming straight back to it while other factories may take them.
        got = self.client.claim_job(exclude=self._cannot_run)
        if got is None:
            return None
        job, lease = got.job, got.lease
        if lease is None:  # cannot happen for a real claim (the client checks); never run without one
            raise TransportError(f"claim of {job.id}: answer without a lease")
        return self._take(job, lease, sent, got.attempts)

    def _take(self, job: Job, lease: Lease, sent: float, attempts: int) -> Claim | None:
        """Start renewing at once, then materialize the job locally; release it if that is impossible."""
        holder: list[FleetClaim] = []

        def on_lost(reason: str) -> None:
            if holder:
                holder[0].on_heartbeat_lost(reason)

        heartbeat = Heartbeat(self.client, lease, on_lost, self.heartbeat_interval_s, started_at=sent).start()
        result = {"attempts": attempts, "lease": lease.to_dict(), "leaseEpoch": lease.epoch}
        try:
            set_aside_earlier_run(self.queue, job.id)
            # lease.json in the same rename: a running/ entry never lacks its lease (and 2 fsyncs fewer)
            entry = self.queue.materialize(job, result, {LEASE_FILE: lease.to_dict()})
        except (AQError, OSError) as exc:
            heartbeat.stop()
            reason = f"factory {lease.factory_id} cannot hold the job locally: {exc}"
            log.error(reason, extra={"job_id": job.id, "epoch": lease.epoch})
            # A local leftover with the same id (e.g. waiting to be settled) is this factory's problem,
            # not the job's: give it back without spending one of its attempts.
            with contextlib.suppress(AQError):
                self.client.release(lease, reason, retry=True, count_attempt=not isinstance(exc, Conflict))
            return None
        claim = FleetClaim(self.queue, entry, self.client, heartbeat, self._pend)
        claim.on_cannot_run = self._note_cannot_run
        holder.append(claim)
        if heartbeat.lost:
            claim.on_heartbeat_lost("lease lost before the job started")
        log.info("lease acquired", extra={"job_id": job.id, "epoch": lease.epoch, "ttlS": lease.ttl_s})
        return claim

    def close(self) -> None:
        self.client.transport.close()


class ShadowSource(Source):
    """The local inbox decides (route off); a ShadowProbe observes each decision without acting on it."""

    def __init__(self, inner: Source, probe: ShadowProbe, client: FleetClient) -> None:
        self.inner = inner
        self.probe = probe
        self.client = client
        self._iteration = 0

    def recover(self) -> list[str]:
        return self.inner.recover()

    def next_claim(self) -> Claim | None:
        claim = self.inner.next_claim()
        self._iteration += 1
        self.probe.observe(self._iteration, None if claim is None else claim.job.id)
        return claim

    def close(self) -> None:
        self.inner.close()
        self.client.transport.close()

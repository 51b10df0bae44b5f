"""The coordinator as the runner's Source: FleetSource (route on) and ShadowSource (route off, shadow on).

Which one a daemon uses is decided where the daemon is assembled
(``agent_queue.assemble``): route on claims from the coordinator with this
factory's id and capabilities (each claim a ``fleet.claim.FleetClaim``);
route off + shadow on keeps the local inbox authoritative while a
``ShadowProbe`` observes each local decision (dry-run claims only).

Crash recovery never re-runs a local copy: a job found in running/ at start-up
is released at the coordinator with the epoch from its lease.json (attempt
counted), or recorded as fenced when the coordinator refuses (409/404). While
the coordinator is unreachable the job stays in running/ and no new work is
claimed; the runner backs off and recovery is retried before each claim.
"""

from __future__ import annotations

import contextlib
import logging
import time

from agent_queue.errors import AQError, Conflict, DiskFull, Fenced, NotFound, NotLeased, TransportError, is_disk_full
from agent_queue.fleet.claim import FleetClaim
from agent_queue.fleet.client import FleetClient, is_retryable
from agent_queue.fleet.heartbeat import Heartbeat
from agent_queue.fleet.records import (
    FENCED_DIR,
    LEASE_FILE,
    RELEASED_DIR,
    RETURN_FIELDS,
    archive,
    read_lease,
    report_detail,
    set_aside_earlier_run,
)
from agent_queue.fleet.shadow import ShadowProbe
from agent_queue.inbox import Entry, LocalQueue, State, now
from agent_queue.jobs import Job, Lease
from agent_queue.local_source import LocalSource, stop_leftover_tool
from agent_queue.source import Claim, Record, Source

log = logging.getLogger(__name__)

# A factory that cannot run a job leaves it to others this long before it may be offered again.
CANNOT_RUN_COOLDOWN_S = 600.0
# A ship that failed after the coordinator accepted it is resumed after 1, 2, 4 ... s (at most
# PARK_BACKOFF_MAX_S), MAX_SHIP_RESUMES times per daemon run; then the local copy is filed as shipped
# with ``shipError`` (the coordinator counts it shipped) and the daemon goes on with other work.
PARK_BACKOFF_S = 1.0
PARK_BACKOFF_MAX_S = 300.0
MAX_SHIP_RESUMES = 6


class FleetSource(Source):
    """Claims from the coordinator (route on); see the module docstring for recovery."""

    def __init__(self, queue: LocalQueue, client: FleetClient,
                 heartbeat_interval_s: float | None = None, max_hold_s: float = 0.0) -> None:
        self.queue = queue
        self.client = client
        self.max_hold_s = max_hold_s  # a claim may be held this long (waitS), when the coordinator offers it
        self._hold_s: float | None = None  # what the coordinator offers; None: not asked yet (asked again after errors)
        self.heartbeat_interval_s = heartbeat_interval_s
        self._pending: list[Entry] = []  # running/ jobs to settle with the coordinator before new work
        self._resume: list[Entry] = []  # report(shipped) accepted, ship not done yet
        self._cannot_run: dict[str, float] = {}  # job id -> monotonic time until which it is not asked for
        self._parked: dict[str, int] = {}  # job id -> ships that failed after the coordinator accepted it
        self._due: dict[str, float] = {}  # job id -> monotonic time before which a parked ship is not resumed
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
        at = time.monotonic()
        for entry in self._pending:
            if self._due.get(entry.job.id, at) > at:
                still.append(entry)  # a parked ship backing off: other work may go on meanwhile
                continue
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
        """A claim whose report went unanswered: settled (the report replayed) before new work."""
        self._park(job_id, None)

    def _park(self, job_id: str, why: str | None) -> None:
        """A claim whose report went unanswered (``why`` None: settled before new work), or whose ship
        failed after the coordinator accepted it (``why``): resumed with a growing delay, a bounded
        number of times, so a ship that keeps failing can never spin the daemon."""
        entry = self.queue.get(job_id)
        if entry.state is not State.RUNNING:
            return
        if why is not None:
            n = self._parked[job_id] = self._parked.get(job_id, 0) + 1
            if n > MAX_SHIP_RESUMES:
                self._give_up_ship(entry, why, n - 1)
                return
            self._due[job_id] = time.monotonic() + min(PARK_BACKOFF_MAX_S, PARK_BACKOFF_S * 2 ** (n - 1))
        if all(e.job.id != job_id for e in self._pending):
            self._pending.append(entry)

    def _give_up_ship(self, entry: Entry, why: str, resumes: int) -> None:
        """The coordinator counts the job shipped, but its ship kept failing here: file it as shipped with the error."""
        job_id = entry.job.id
        reason = f"ship incomplete after {resumes} resumes: {why}"
        log.error("giving up resuming an accepted ship: filed as shipped with shipError; it needs an operator",
                  extra={"job_id": job_id, "reason": why})
        self._pending = [e for e in self._pending if e.job.id != job_id]
        self._due.pop(job_id, None)
        try:
            self.queue.move(job_id, State.RUNNING, State.SHIPPED, {"shipError": reason, "reason": reason, "pid": None})
        except (AQError, OSError) as exc:
            log.error("cannot file the job as shipped (it stays in running/ until the next start): %s", exc,
                      extra={"job_id": job_id})

    def _recover_one(self, entry: Entry, lease: Lease) -> None:
        ctx = {"job_id": entry.job.id, "epoch": lease.epoch}
        stop_leftover_tool(entry)
        sent = entry.result.get("reportSent")
        if isinstance(sent, dict) and sent.get("epoch") == lease.epoch:
            self._replay_report(entry, lease, sent.get("record") or {})
            return
        reason = "daemon stopped while the job was running"
        record: Record = {"attempt": entry.attempts + 1, "outcome": "crashed", "endedAt": now(), "reason": reason}
        update = {**RETURN_FIELDS, "attempts": entry.attempts + 1,
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
            self.client.report(lease, "shipped", report_detail(record))
        except (Fenced, NotLeased, NotFound, Conflict) as exc:
            archive(self.queue, entry.job.id, FENCED_DIR, lease.epoch,
                    {**RETURN_FIELDS, "reason": f"ship refused: the replayed report was answered {exc.message}"})
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
                           self._pend, self._park)
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
        if self._hold_s is None:
            self._hold_s = min(self.max_hold_s, self.client.claim_wait_s()) if self.max_hold_s > 0 else 0.0
        try:
            hold = self._hold_s
            got = (self.client.claim_job(exclude=self._cannot_run, wait_s=hold) if hold
                   else self.client.claim_job(exclude=self._cannot_run))
        except AQError:
            self._hold_s = None  # a coordinator replaced by an older one (or a newer) is asked again
            raise
        self.just_waited = got is None and self._hold_s > 0  # the coordinator waited: no poll interval on top
        if got is None:
            return None
        job, lease = got.job, got.lease
        if lease is None:  # cannot happen for a real claim (the client checks); never run without one
            raise TransportError(f"claim of {job.id}: answer without a lease")
        return self._take(job, lease, sent, got.attempts, got.round)

    def _take(self, job: Job, lease: Lease, sent: float, attempts: int, rounds: int = 1) -> Claim | None:
        """Start renewing at once, then materialize the job locally; release it if that is impossible."""
        holder: list[FleetClaim] = []

        def on_lost(reason: str) -> None:
            if holder:
                holder[0].on_heartbeat_lost(reason)

        heartbeat = Heartbeat(self.client, lease, on_lost, self.heartbeat_interval_s, started_at=sent).start()
        result = {"attempts": attempts, "lease": lease.to_dict(), "leaseEpoch": lease.epoch, "round": rounds}
        try:
            set_aside_earlier_run(self.queue, job.id)
            # lease.json in the same rename: a running/ entry never lacks its lease (and 2 fsyncs fewer)
            entry = self.queue.materialize(job, result, {LEASE_FILE: lease.to_dict()})
        except (AQError, OSError) as exc:
            heartbeat.stop()
            reason = f"factory {lease.factory_id} cannot hold the job locally: {exc}"
            log.error(reason, extra={"job_id": job.id, "epoch": lease.epoch})
            # A local leftover with the same id (a running/ copy waiting to be settled) is this factory's
            # problem, not the job's, and so is a full disk: give it back without spending one of its
            # attempts. A collision: stop asking for it for a while, so it can never turn into a
            # claim-release loop; a full disk: the runner holds new work until there is room again.
            full = is_disk_full(exc)
            with contextlib.suppress(AQError):
                self.client.release(lease, reason, retry=True,
                                    count_attempt=not (isinstance(exc, Conflict) or full))
            if isinstance(exc, Conflict):
                self._note_cannot_run(job.id)
            if full:
                raise DiskFull(reason) from exc
            return None
        claim = FleetClaim(self.queue, entry, self.client, heartbeat, self._pend, self._park)
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

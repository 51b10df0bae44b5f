"""The coordinator: a pure lease-and-fence state machine over a Store and an injected clock.

Every public method is one operation of docs/fleet-api.md. Each runs in one
store transaction: the reaper first (so an expired lease is never honoured),
then the operation's preconditions (raising before anything changes), then
its state change, then exactly one event line. There is no I/O here except
through the Store and no wall clock except the ``clock`` parameter, so every
rule is testable without sleeping. A store keeps state; it holds no rule.
One module on purpose (a little over 500 lines): every lease rule in one place.

Where each rule of the contract lives (one place each):

- claim order (highest priority, then oldest enqueue): ``claim_key``; what a
  caller may claim now (not before, capabilities, dependencies): ``_pick``, ``_ready``
- fencing (who may renew, release, report): ``_fence``, every decision there
- expiry and reaping: ``_reap``, run first in every operation (``_run``)
- a stalled store does not expire leases: ``_credit_stall`` (time the store
  measured it could serve no one is given back to every lease, before reaping)
- attempts and quarantine: ``_release``, ``_reap``, ``_finish``
- cancel (the operator ends a job; its holder is fenced: renew/report 409 ``not_leased``): ``_cancel_op``
- a factory's liveness and the queued jobs no live factory can run: ``liveness``, ``_stranded``
- replay of a lost answer: ``_fence`` answers the ``lastEnd`` that
  ``_finish``/``_requeue`` recorded; a claim's ``requestId``: ``_claim``
- idempotent enqueue: ``_enqueue`` (``records.digest_of``)
- composite readiness, verify gate, re-runs: ``composite_rules`` (family gates
  from ``agent_queue.composite``, shared with the local queue)
- crash leftovers (the archive wins): ``records.find_opt``, ``records.stale``
- record shape and states, wire shapes (views, events): ``records``
"""

from __future__ import annotations

# collections.abc's own class: importing collections.abc imports collections too, ~1.5 ms of a seam call (B1).
from _collections_abc import Mapping

from agent_queue.errors import AQError, BadInput, Conflict, Fenced, InvalidJob, NotFound, NotLeased, StateError
from agent_queue.timeutil import to_rfc3339
from coordinator_stub.records import (
    ENDED,
    LEASE_HISTORY,
    LISTABLE,
    TERMINAL,
    Ctx,
    JobState,
    LeaseState,
    create,
    digest_of,
    drop_if_stale,
    event,
    find,
    find_opt,
    lease_history,
    lease_state,
    lease_wire,
    max_attempts,
    not_before_of,
    stale,
    state_of,
    view,
)
from coordinator_stub.stores.base import Retry

# Start-up cost matters (the command seam is a fresh process per operation): typing,
# dataclasses, hashlib and agent_queue.jobs are imported only where they are needed.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from contextlib import AbstractContextManager as ContextManager
    from typing import Any, TypeVar

    from agent_queue.jobs import Job
    from coordinator_stub.stores.base import Store, Tx
    from coordinator_stub.stores.group_commit import GroupCommit

    T = TypeVar("T")
    Clock = Callable[[], float]

DEFAULT_LEASE_TTL_S = 60.0
SEEN_GRANULARITY_S = 10.0  # a factory's lastSeen (status) may lag by up to this much
STRANDED_SHOWN = 50  # stranded jobs listed by status (``strandedTotal`` counts them all)
CANNOT_RUN_KEPT = 100  # ids of a factory's last ``exclude`` kept for status
VERDICTS = ("AGREE", "DIVERGE", "COORD_EMPTY", "LOCAL_EMPTY", "IDLE")  # IDLE: only with --shadow-log-idle
# A stall shorter than this is ordinary waiting (a checkpoint, a busy disk, a queue of callers): no lease moves.
# Well above a normal hold of the store (milliseconds), well below any sensible lease TTL (default 60 s).
STALL_MIN_S = 1.0
_ATTEMPTS = 3  # runs of one operation a store may ask for (``Retry``)


def claim_key(rec: Mapping[str, Any]) -> tuple[int, int]:
    """Claim order: highest priority first, then oldest enqueue (``seq``). Stores index queued jobs by it."""
    return -rec["spec"].get("priority", 0), rec["seq"]


def liveness(age_s: float, ttl_s: float) -> str:
    """A factory last seen ``age_s`` ago: live within one lease TTL (plus the lastSeen granularity),
    offline after three, stale in between (it may be paused, or gone and its leases about to lapse)."""
    if age_s <= ttl_s + SEEN_GRANULARITY_S:
        return "live"
    return "stale" if age_s <= 3 * ttl_s + SEEN_GRANULARITY_S else "offline"


def full_view(tx: Tx, rec: dict[str, Any], now: float) -> dict[str, Any]:
    """A record as answered, with a composite parent's rollup (its state computed from its children)."""
    out = view(tx, rec, now)
    if rec.get("leases"):
        out["meta"]["leases"] = lease_history(rec)
    if rec["state"] == JobState.COMPOSITE:
        from coordinator_stub.composite_rules import rollup  # only for a composite

        out["rollup"] = rollup(tx, rec)
        out["meta"]["state"] = out["rollup"]["state"]
    return out


class InvalidReport(BadInput):
    """A shadow report that is not marked ``shadow: true`` (or lacks its fields)."""

    code = "invalid_report"
    http_status = 422


class Coordinator:
    """Leases with fencing tokens over a Store. Thread-safe as far as the Store's transactions are."""

    def __init__(self, store: Store, clock: Clock, lease_ttl_s: float = DEFAULT_LEASE_TTL_S) -> None:
        if not lease_ttl_s > 0:
            raise BadInput(f"lease ttl: must be > 0 seconds, got {lease_ttl_s}")
        self._store = store
        self._clock = clock
        self.lease_ttl_s = float(lease_ttl_s)

    # ------------------------------------------------------------ operations

    def enqueue(self, spec: Any) -> tuple[bool, dict[str, Any]]:
        """Add a job (or a composite with its children). Returns (created, view); same spec again is (False, view)."""
        from agent_queue.jobs import Job

        job = Job.from_dict(spec)
        raw = spec if isinstance(spec, Mapping) else {}
        return self._run("enqueue", lambda c: self._enqueue(c, job, raw), jobId=job.id)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._run("get", lambda c: full_view(c.tx, find(c.tx, job_id), c.now), log=False)

    def list_jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.list_page(state)["jobs"]
        return jobs

    def list_page(self, state: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """``{"jobs": [...], "total": n}``: jobs in enqueue order, only the ``limit`` most recent when given."""
        if state is not None and state not in LISTABLE:
            raise BadInput(f"state: {state[:40]!r} is not one of {', '.join(LISTABLE)}")
        return self._run("list", lambda c: self._list(c, state, limit), log=False)

    def claim(
        self, factory_id: str, capabilities: Iterable[str], dry_run: bool = False, request_id: str | None = None,
        exclude: Iterable[str] = (),
    ) -> dict[str, Any] | None:
        """Lease the best claimable job to ``factory_id``; None when nothing is claimable (HTTP 204).

        ``dry_run`` answers what would be handed out and changes nothing but the event log.
        A repeated ``request_id`` from the same factory gets its still-valid lease back.
        ``exclude``: ids this caller found it cannot run (its tool is missing); skipped for it only.
        """
        caps, skip = frozenset(capabilities), frozenset(exclude)
        return self._run(
            "claim", lambda c: self._claim(c, factory_id, caps, dry_run, request_id, skip),
            factoryId=factory_id, dryRun=dry_run, requestId=request_id,
        )

    def renew(self, job_id: str, factory_id: str, epoch: int) -> dict[str, Any]:
        return self._run("renew", lambda c: self._renew(c, job_id, factory_id, epoch),
                         jobId=job_id, factoryId=factory_id, leaseEpoch=epoch)

    def release(
        self, job_id: str, factory_id: str, epoch: int, reason: str = "", retry: bool = True,
        count_attempt: bool = True, not_before: float | None = None,
    ) -> dict[str, Any]:
        """End a lease without shipping: back to queued, or quarantined (``retry`` false, or attempts spent)."""
        return self._run(
            "release", lambda c: self._release(c, job_id, factory_id, epoch, reason, retry, count_attempt, not_before),
            jobId=job_id, factoryId=factory_id, leaseEpoch=epoch, reason=reason,
        )

    def report(
        self, job_id: str, factory_id: str, epoch: int, outcome: str, detail: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """End a lease with a terminal outcome; a 200 to ``shipped`` is the factory's licence to ship."""
        if outcome not in TERMINAL:
            raise BadInput(f"outcome: {str(outcome)[:40]!r} is not one of shipped, quarantined")
        detail_copy = dict(detail or {})
        return self._run("report", lambda c: self._report(c, job_id, factory_id, epoch, outcome, detail_copy),
                         jobId=job_id, factoryId=factory_id, leaseEpoch=epoch, outcome=outcome)

    def requeue(self, job_id: str) -> dict[str, Any]:
        """Re-run a quarantined job, or a composite's quarantined children and failed verify (attempts reset).

        Leases are not touched: nothing leased or queued changes, so fencing is as before.
        """
        return self._run("requeue", lambda c: self._requeue_op(c, job_id), jobId=job_id)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """End a queued or leased job as ``cancelled`` (a composite: its children that have not ended and its
        verify gate). A lease it had ends with it: the holder's next renew, release or report is 409
        ``not_leased``, so it stops the tool and ships nothing. Cancelling a cancelled job changes nothing."""
        return self._run("cancel", lambda c: self._cancel_op(c, job_id), jobId=job_id)

    def approve(self, job_id: str) -> dict[str, Any]:
        """A person approved a planned composite: its children are created (``queued``: their ids)."""
        return self._run("approve", lambda c: self._approve_op(c, job_id), jobId=job_id)

    def replan(self, job_id: str, spec: Mapping[str, Any], plan_spent: tuple[float, float] = (0.0, 0.0)
               ) -> dict[str, Any]:
        """A person's re-plan of a composite with a quarantined child, in one transaction: the unshipped
        children are replaced by ``spec``'s (``composite_rules.replan``); ``queued``: the ids created."""
        return self._run("replan", lambda c: self._replan_op(c, job_id, spec, plan_spent), jobId=job_id)

    def reap(self) -> list[dict[str, Any]]:
        """Return every expired lease's job to queued (or quarantine it when attempts are spent)."""
        return self._run("reap", lambda c: c.reclaimed)

    def status(self) -> dict[str, Any]:
        return self._run("status", self._status, log=False)

    def shadow_report(self, report: Any) -> dict[str, Any]:
        """Record a shadow verdict (append-only); it never changes a job."""
        return self._run("shadow_report", lambda c: self._shadow(c, report),
                         factoryId=report.get("factoryId") if isinstance(report, Mapping) else None)

    # ------------------------------------------------------------ enrolment (issue #19; rules in enrolment.py)

    def factory_add(self, factory_id: str, capabilities: list[str]) -> str:
        """Enrol a factory; its token (shown once, only its hash is kept)."""
        from coordinator_stub import enrolment

        return self._run("factory_add", lambda c: enrolment.add_factory(c, factory_id, capabilities),
                         factoryId=factory_id)

    def factory_rotate(self, factory_id: str) -> str:
        from coordinator_stub import enrolment

        return self._run("factory_rotate", lambda c: enrolment.rotate_factory(c, factory_id), factoryId=factory_id)

    def factory_revoke(self, factory_id: str) -> dict[str, Any]:
        """Its tokens stop working and its live leases are fenced, in one transaction (no attempt counted)."""
        return self._run("factory_revoke", lambda c: self._revoke_factory(c, factory_id), factoryId=factory_id)

    def token_add(self, scope: str, name: str) -> str:
        from coordinator_stub import enrolment

        return self._run("token_add", lambda c: enrolment.add_token(c, scope, name), scope=scope)

    def token_revoke(self, token_id: str) -> dict[str, Any]:
        from coordinator_stub import enrolment

        return self._run("token_revoke", lambda c: enrolment.revoke_token(c, token_id), tokenId=token_id)

    def credentials(self) -> dict[str, Any]:
        from coordinator_stub import enrolment

        return self._run("credentials", enrolment.listing, log=False)

    def enrolled(self) -> bool:
        """Whether any factory or token was ever enrolled (then ``serve`` is never open)."""
        listed = self.credentials()
        return bool(listed["factories"] or listed["tokens"])

    def identify(self, token: str) -> dict[str, Any] | None:
        """Who an enrolled token is (see ``enrolment.identify``); None for an unknown or revoked one."""
        from coordinator_stub import enrolment

        return self._run("identify", lambda c: enrolment.identify(c, token), log=False)

    def refused(self, token_id: str | None, status: int, why: str) -> None:
        """A request ``serve`` refused, into the event log: the token's id, never the token."""
        self._run("refused", lambda c: c.ev.update(status=status, reason=why[:200]), tokenId=token_id or "-")

    def defer_durability(self) -> GroupCommit | None:
        """``serve``: the watermark its answers wait on, if the store lets operations return before it (else None)."""
        return self._store.defer_durability()

    def nowait(self) -> Callable[[], ContextManager[None]] | None:
        """``serve``: the store's mode for operations on the event loop (``Store.nowait``), if it has one."""
        return self._store.nowait()

    def refusals_suppressed(self, count: int, window_s: float) -> None:
        """Refusals ``serve`` did not write in the last window (its rate limit, ``web/refusals.py``): how many."""
        self._run("refusals_suppressed", lambda c: c.ev.update(count=count, windowS=window_s))

    def token_live(self, token_id: str) -> bool:
        """Whether an enrolled token still works (a dashboard session opened with it ends once it does not)."""
        from coordinator_stub import enrolment

        return self._run("token_live", lambda c: enrolment.live(c, token_id), log=False)

    def check_store(self) -> None:
        """healthz: ``StoreUnavailable`` (503) while the store cannot serve; changes nothing, logs nothing."""
        self._store.check()

    def tidy(self) -> None:
        """Let the store finish what the last operation left for after its answer (``serve``, once it is sent)."""
        self._store.tidy()

    # ------------------------------------------------------------ the frame of every operation

    def _run(self, op: str, fn: Callable[[Ctx], T], *, log: bool = True, **fields: Any) -> T:
        for _ in range(_ATTEMPTS):
            try:
                return self._run_once(op, fn, log, fields)
            except Retry:  # the store kept nothing of that attempt
                continue
        raise StateError(f"{op}: the store asked to run it again {_ATTEMPTS} times")

    def _run_once(self, op: str, fn: Callable[[Ctx], T], log: bool, fields: dict[str, Any]) -> T:
        error: AQError | None = None
        result: Any = None
        with self._store.transaction() as tx:
            ctx = Ctx(tx, self._clock(), {"op": op, **{k: v for k, v in fields.items() if v is not None}})
            self._credit_stall(tx, ctx.now)
            ctx.reclaimed = self._reap(tx, ctx.now)
            try:
                result = fn(ctx)
                ctx.ev.setdefault("status", 200)
            except AQError as exc:  # preconditions raise before any change: commit only the reaper's work
                error = exc
                ctx.ev.update(status=exc.http_status, code=exc.code)
            if log or error is not None:
                tx.event(event(ctx.now, ctx.ev))
        if error is not None:
            raise error
        return result  # type: ignore[no-any-return]

    # ------------------------------------------------------------ fencing: every decision here

    def _fence(
        self, tx: Tx, job_id: str, factory_id: str, epoch: int, now: float, op: str, outcome: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Return (record, replayed result). Raise NotLeased/Fenced unless the caller holds the current lease.

        An exact replay (same op, factory, epoch and outcome) of the op that ended the
        job's most recent lease gets that op's result again: its first answer may have
        been lost in transit, and the caller must still learn that it took effect.
        """
        rec = find_opt(tx, job_id, lease=True)
        if rec is None:
            raise NotFound(f"job {job_id}: no such job")
        last = rec.get("lastEnd")
        if (
            op != "renew" and last is not None and last["op"] == op and last["factoryId"] == factory_id
            and last["leaseEpoch"] == epoch and last.get("outcome") == outcome
        ):
            result: dict[str, Any] = last["result"]
            if "job" not in result:  # kept without the spec in a hot record (see _requeue)
                result = {**result, "job": tx.spec_of(rec)}
            return rec, result
        state = lease_state(rec, now)
        where = f"job {job_id}: {op} by {factory_id} epoch {epoch}"
        if state == LeaseState.NONE:
            raise NotLeased(f"{where}: the job is {rec['state']}, it has no lease")
        lease = rec["lease"]
        if lease["factoryId"] != factory_id or lease["leaseEpoch"] != epoch:
            raise Fenced(f"{where}: the current lease is epoch {lease['leaseEpoch']} held by another holder")
        if state == LeaseState.EXPIRED:  # unreachable after the reaper; kept so no path honours an old lease
            raise Fenced(f"{where}: the lease expired")
        return rec, None

    # ------------------------------------------------------------ operation bodies

    def _enqueue(self, c: Ctx, job: Job, raw: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
        from coordinator_stub import composite_rules

        digest = digest_of(job, raw)
        existing = find_opt(c.tx, job.id)
        if existing is not None:
            if existing.get("digest") != digest:
                raise Conflict(f"job {job.id}: already exists with a different spec")
            if existing["state"] == JobState.COMPOSITE:  # idempotent re-run: what did not ship runs again
                composite_rules.create_missing_children(c, job, raw)
                c.ev["requeued"] = composite_rules.rerun(c, existing)
            c.ev["status"] = 200
            return False, full_view(c.tx, existing, c.now)
        if job.kind == "composite":
            composite_rules.create_composite(c, job, raw, digest)
        else:
            for dep in job.depends_on:
                if find_opt(c.tx, dep) is None:
                    raise InvalidJob(f"job {job.id}.dependsOn: unknown job id {dep!r}")
            create(c, job.to_dict(), not_before_of(raw, f"job {job.id}"), digest)
        c.ev["status"] = 201
        return True, full_view(c.tx, find(c.tx, job.id), c.now)

    def _claim(
        self, c: Ctx, factory_id: str, caps: frozenset[str], dry_run: bool, request_id: str | None,
        skip: frozenset[str] = frozenset(),
    ) -> dict[str, Any] | None:
        if request_id is not None and not dry_run:
            held = self._lease_for_request(c.tx, factory_id, request_id)
            if held is not None:
                self._note_lease(c, held, replay=True)
                return view(c.tx, held, c.now)
        if not dry_run:
            self._note_factory(c, factory_id, caps, skip)
        rec = self._pick(c.tx, caps, c.now, skip)
        if rec is None:
            c.ev["status"] = 204
            if not dry_run:
                self._seen(c, factory_id)
            return None
        if dry_run:
            c.ev["jobId"] = rec["spec"]["id"]
            return {**view(c.tx, rec, c.now), "lease": None, "dryRun": True}
        epoch = rec["leaseEpoch"] + 1
        rec.update(state=JobState.LEASED, leaseEpoch=epoch, lease={
            "factoryId": factory_id, "leaseEpoch": epoch, "expiresAt": c.now + self.lease_ttl_s,
            "ttlS": self.lease_ttl_s, "requestId": request_id, "claimedAt": c.now,
        }, leases=[*(rec.get("leases") or [])[-(LEASE_HISTORY - 1):],
                   {"leaseEpoch": epoch, "factoryId": factory_id, "claimedAt": c.now}])
        c.tx.touch()
        self._seen(c, factory_id)
        self._note_lease(c, rec)
        return view(c.tx, rec, c.now)

    def _renew(self, c: Ctx, job_id: str, factory_id: str, epoch: int) -> dict[str, Any]:
        rec, _ = self._fence(c.tx, job_id, factory_id, epoch, c.now, "renew")
        rec["lease"] = {**rec["lease"], "expiresAt": c.now + self.lease_ttl_s}  # replaced, never mutated in place
        c.tx.touch()
        self._seen(c, factory_id)
        self._note_lease(c, rec)
        return {"lease": lease_wire(rec)}

    def _release(
        self, c: Ctx, job_id: str, factory_id: str, epoch: int, reason: str, retry: bool,
        count_attempt: bool, not_before: float | None,
    ) -> dict[str, Any]:
        rec, replay = self._fence(c.tx, job_id, factory_id, epoch, c.now, "release")
        if replay is not None:
            c.ev["replay"] = True
            return replay
        end = {"op": "release", "factoryId": factory_id, "leaseEpoch": epoch, "outcome": None}
        attempts = rec["attempts"] + (1 if count_attempt else 0)
        limit = max_attempts(rec)
        rec["attempts"] = attempts
        self._seen(c, factory_id)
        if not retry:
            result = self._finish(c, rec, JobState.QUARANTINED, f"released without retry: {reason}", end)
        elif attempts >= limit:
            result = self._finish(c, rec, JobState.QUARANTINED, f"attempts exhausted ({attempts}/{limit}): {reason}",
                                  end)
        else:
            result = self._requeue(c, rec, reason, not_before, end)
        c.ev["state"] = rec["state"]
        return result

    def _report(
        self, c: Ctx, job_id: str, factory_id: str, epoch: int, outcome: str, detail: dict[str, Any]
    ) -> dict[str, Any]:
        rec, replay = self._fence(c.tx, job_id, factory_id, epoch, c.now, "report", outcome)
        if replay is not None:
            c.ev["replay"] = True
            return replay
        end = {"op": "report", "factoryId": factory_id, "leaseEpoch": epoch, "outcome": outcome}
        rec["detail"] = detail
        self._seen(c, factory_id)
        reason = str(detail.get("reason", "")) or f"reported {outcome} by {factory_id}"
        return self._finish(c, rec, outcome, reason, end)

    def _reap(self, tx: Tx, now: float) -> list[dict[str, Any]]:
        """Expired leases end here: one attempt counted, back to queued or quarantined; one event each."""
        reclaimed = []
        expired = [rec for rec in tx.leased_records() if lease_state(rec, now) == LeaseState.EXPIRED]
        for rec in expired:
            if drop_if_stale(tx, rec):  # crash leftover: the job already finished
                continue
            lease = rec["lease"]
            who = {"jobId": rec["spec"]["id"], "factoryId": lease["factoryId"], "leaseEpoch": lease["leaseEpoch"]}
            ctx = Ctx(tx, now, {"op": "reclaim", **who, "expiresAt": to_rfc3339(lease["expiresAt"])})
            end = {"op": "reap", "factoryId": lease["factoryId"], "leaseEpoch": lease["leaseEpoch"], "outcome": None}
            rec["attempts"] += 1
            limit = max_attempts(rec)
            if rec["attempts"] >= limit:
                self._finish(ctx, rec, JobState.QUARANTINED,
                             f"lease expired; attempts exhausted ({rec['attempts']}/{limit})", end)
            else:
                self._requeue(ctx, rec, "lease expired", None, end)
            ctx.ev.update(status=200, state=rec["state"])
            tx.event(event(now, ctx.ev))
            reclaimed.append(who)
        return reclaimed

    def _credit_stall(self, tx: Tx, now: float) -> None:
        """Time the store could serve no one (``tx.stall``, measured by the store) does not count against leases.

        While a holder of the store's lock is paused or stuck, no factory can renew:
        every lease live when the stall began is extended by the stall, before the
        reaper looks. ``stallCreditedUntil`` (in this clock) keeps a stall that two
        transactions learn of from being credited twice. Below ``STALL_MIN_S``, nothing.
        """
        stall = tx.stall
        if stall is None or stall.seconds < STALL_MIN_S:
            return
        end = now - stall.ended_ago
        start = max(end - stall.seconds, float(tx.hot.get("stallCreditedUntil", 0.0)))
        if end <= start:
            return
        extended = []
        for rec in tx.leased_records():
            lease = rec["lease"]
            if lease["expiresAt"] > start:
                rec["lease"] = {**lease, "expiresAt": lease["expiresAt"] + (end - start)}  # replaced, not mutated
                extended.append(rec["spec"]["id"])
        tx.hot["stallCreditedUntil"] = end
        tx.touch()
        tx.event(event(now, {"op": "stall", "status": 200, "seconds": round(end - start, 3), "extended": extended}))

    def _status(self, c: Ctx) -> dict[str, Any]:
        counts = {s: 0 for s in JobState.ALL if s != JobState.COMPOSITE}
        counts.update(c.tx.hot["terminalCounts"])
        leases = []
        for rec in c.tx.hot["jobs"].values():
            counts[rec["state"]] += 1
            if lease_state(rec, c.now) == LeaseState.ACTIVE:
                wire = lease_wire(rec)
                wire["timeLeftS"] = round(rec["lease"]["expiresAt"] - c.now, 3)
                leases.append(wire)
        info = c.tx.hot.get("factoryInfo") or {}
        factories = []
        for f, t in sorted(c.tx.hot["factories"].items()):
            age = round(max(0.0, c.now - t), 3)
            factories.append({"factoryId": f, "lastSeen": to_rfc3339(t), "ageS": age,
                              "liveness": liveness(age, self.lease_ttl_s), **(info.get(f) or {})})
        stranded = self._stranded(c, factories)
        return {"counts": counts, "leases": sorted(leases, key=lambda x: x["jobId"]), "factories": factories,
                "leaseTtlS": self.lease_ttl_s, "stranded": stranded[:STRANDED_SHOWN], "strandedTotal": len(stranded)}

    def _stranded(self, c: Ctx, factories: list[dict[str, Any]]) -> list[dict[str, str]]:
        """Queued jobs that no live factory can run: none has every capability the job ``requires``, or
        each one that has them said it cannot run the job (its ``exclude``: a tool or program missing there).
        A live factory whose capabilities are not known (seen before this was recorded) is assumed able."""
        live = [f for f in factories if f["liveness"] == "live"]
        out = []
        for rec in c.tx.hot["jobs"].values():
            if rec["state"] != JobState.QUEUED:
                continue
            job_id, needs = rec["spec"]["id"], frozenset(rec["spec"].get("requires", ()))
            able = [f for f in live if "capabilities" not in f or needs <= frozenset(f["capabilities"])]
            if not live:
                why = "no factory seen within the lease TTL"
            elif not able:
                why = f"requires {', '.join(sorted(needs))}: no live factory has it"
            elif all(job_id in f.get("cannotRun", ()) for f in able):
                why = "every live factory able to take it said it cannot run it (tool or program missing there)"
            else:
                continue
            out.append({"jobId": job_id, "why": why})
        return sorted(out, key=lambda x: x["jobId"])

    def _shadow(self, c: Ctx, report: Any) -> dict[str, Any]:
        if not isinstance(report, Mapping) or report.get("shadow") is not True:
            raise InvalidReport("shadow report: 'shadow' must be true (a shadow report never acts on a job)")
        if not isinstance(report.get("factoryId"), str) or not report["factoryId"]:
            raise InvalidReport("shadow report: 'factoryId' must be a non-empty string")
        if report.get("verdict") not in VERDICTS:
            raise InvalidReport(f"shadow report: 'verdict' must be one of {', '.join(VERDICTS)}")
        c.tx.shadow({**report, "receivedAt": to_rfc3339(c.now)})
        c.ev.update(status=202, verdict=report["verdict"])
        return {"accepted": True}

    def _list(self, c: Ctx, state: str | None, limit: int | None) -> dict[str, Any]:
        recs: list[dict[str, Any]] = []
        if state is None or state in (JobState.QUEUED, JobState.LEASED):
            recs.extend(r for r in c.tx.hot["jobs"].values() if (state is None or r["state"] == state)
                        and not stale(c.tx, r))  # a crash leftover: the archive wins
        if state is None or state in ENDED or state == JobState.COMPOSITE:
            recs.extend(r for r in c.tx.iter_archived() if state is None or r["state"] == state)
        recs.sort(key=lambda r: r["seq"])
        page = recs if limit is None else recs[len(recs) - limit:] if limit else []
        return {"jobs": [full_view(c.tx, r, c.now) for r in page], "total": len(recs)}

    # ------------------------------------------------------------ state changes shared by operations

    def _finish(
        self, c: Ctx, rec: dict[str, Any], state: str, reason: str, end: dict[str, Any]
    ) -> dict[str, Any]:
        rec.update(state=state, lease=None, reason=reason, finishedAt=c.now,
                   outcome=end.get("outcome") or state)
        _close_lease(rec, end, reason, c.now)
        result = view(c.tx, rec, c.now)
        if rec.get("verifyOf"):
            from coordinator_stub import composite_rules  # families only: a plain job's report never loads it

            composite_rules.finish_verify(c, rec, state, reason, {**end, "result": result})
            return result
        rec["lastEnd"] = {**end, "result": result}
        c.tx.hot["terminalCounts"][state] = c.tx.hot["terminalCounts"].get(state, 0) + 1
        c.tx.archive(rec["spec"]["id"], rec)
        parent_id = rec["spec"].get("parentId")
        if parent_id:
            from coordinator_stub import composite_rules

            composite_rules.after_planning(c, rec, state)
            if state == JobState.SHIPPED:
                composite_rules.maybe_verify(c, parent_id)
        return result

    def _cancel_op(self, c: Ctx, job_id: str) -> dict[str, Any]:
        from coordinator_stub import composite_rules

        rec = find(c.tx, job_id)
        if rec["state"] == JobState.COMPOSITE:
            cancelled = composite_rules.cancel_family(c, rec, self._cancel_one)
        elif rec["state"] in (JobState.QUEUED, JobState.LEASED):
            self._cancel_one(c, find_opt(c.tx, job_id, lease=True) or rec)
            cancelled = [job_id]
        elif rec["state"] == JobState.CANCELLED:
            cancelled = []  # a repeat (its first answer lost): the same state, nothing new
        else:
            raise Conflict(f"job {job_id}: is {rec['state']}; only a queued or leased job (or a composite) "
                           "can be cancelled")
        c.ev["cancelled"] = cancelled
        return {**full_view(c.tx, find(c.tx, job_id), c.now), "cancelled": cancelled}

    def _cancel_one(self, c: Ctx, rec: dict[str, Any]) -> None:
        """One queued or leased record ends cancelled. Its lease ends too: fencing (``_fence``) then finds no
        lease, so the holder's renew, release or report is 409 ``not_leased`` and nothing of it ships."""
        active = lease_state(rec, c.now) == LeaseState.ACTIVE
        holder = rec["lease"]["factoryId"] if active else None
        end = {"op": "cancel", "factoryId": holder, "leaseEpoch": rec["leaseEpoch"], "outcome": None}
        reason = "cancelled by the operator" + (f" (lease epoch {rec['leaseEpoch']} of {holder} ended)"
                                                if holder else "")
        if holder:
            c.ev.setdefault("fenced", []).append({"jobId": rec["spec"]["id"], "factoryId": holder,
                                                  "leaseEpoch": rec["leaseEpoch"]})
        self._finish(c, rec, JobState.CANCELLED, reason, end)

    def _note_factory(self, c: Ctx, factory_id: str, caps: frozenset[str], cannot_run: frozenset[str]) -> None:
        """What a claim says about its factory, for ``status`` (stranded jobs): written only when it changed."""
        info = c.tx.hot.setdefault("factoryInfo", {})
        now = {"capabilities": sorted(caps), "cannotRun": sorted(cannot_run)[:CANNOT_RUN_KEPT]}
        if info.get(factory_id) != now:
            info[factory_id] = now
            c.tx.touch()

    def _revoke_factory(self, c: Ctx, factory_id: str) -> dict[str, Any]:
        from coordinator_stub import enrolment

        tokens = enrolment.revoke_factory(c, factory_id)
        fenced = []
        for rec in list(c.tx.leased_records()):
            lease = rec["lease"]
            if lease["factoryId"] != factory_id or drop_if_stale(c.tx, rec):
                continue
            end = {"op": "revoke", "factoryId": factory_id, "leaseEpoch": lease["leaseEpoch"], "outcome": None}
            self._requeue(c, rec, "factory revoked", None, end)  # the attempt is not counted: not the job's fault
            fenced.append({"jobId": rec["spec"]["id"], "leaseEpoch": lease["leaseEpoch"]})
        c.ev.update(tokenIds=tokens, fenced=[f["jobId"] for f in fenced])
        return {"factoryId": factory_id, "tokenIds": tokens, "fenced": fenced}

    def _approve_op(self, c: Ctx, job_id: str) -> dict[str, Any]:
        from coordinator_stub import composite_rules

        queued = composite_rules.approve(c, job_id)
        return {**full_view(c.tx, find(c.tx, job_id), c.now), "queued": queued}

    def _replan_op(self, c: Ctx, job_id: str, spec: Mapping[str, Any], plan_spent: tuple[float, float]
                   ) -> dict[str, Any]:
        from coordinator_stub import composite_rules

        def retire(c: Ctx, rec: dict[str, Any], reason: str) -> None:
            self._finish(c, rec, JobState.CANCELLED, reason, {"op": "replan", "factoryId": None,
                                                               "leaseEpoch": rec["leaseEpoch"], "outcome": None})

        queued = composite_rules.replan(c, job_id, spec, plan_spent, retire)
        return {**full_view(c.tx, find(c.tx, job_id), c.now), "queued": queued}

    def _requeue_op(self, c: Ctx, job_id: str) -> dict[str, Any]:
        from coordinator_stub import composite_rules

        rec = find(c.tx, job_id)
        if rec["state"] == JobState.COMPOSITE:
            requeued = composite_rules.rerun(c, rec)
        elif rec["state"] == JobState.QUARANTINED:
            composite_rules.revive(c, rec)
            requeued = [job_id]
        else:
            raise Conflict(f"job {job_id}: is {rec['state']}; only a quarantined job or a composite can be requeued")
        c.ev["requeued"] = requeued
        return {**full_view(c.tx, find(c.tx, job_id), c.now), "requeued": requeued}

    def _requeue(
        self, c: Ctx, rec: dict[str, Any], reason: str, not_before: float | None, end: dict[str, Any]
    ) -> dict[str, Any]:
        rec.update(state=JobState.QUEUED, lease=None, reason=reason or None, notBefore=not_before)
        _close_lease(rec, end, reason, c.now)
        result = view(c.tx, rec, c.now)
        # Without the spec (it may hold a 1 MB prompt): the hot record and each journal line stay small;
        # a replay puts the spec, which never changes, back in (_fence).
        rec["lastEnd"] = {**end, "result": {k: v for k, v in result.items() if k != "job"}}
        c.tx.touch()
        return result

    def _seen(self, c: Ctx, factory_id: str) -> None:
        """Note the factory's lastSeen; on its own, written only when the stored one is SEEN_GRANULARITY_S old.

        An idle poll (204) would otherwise rewrite and fsync the whole hot document
        every few seconds per factory. Any other change in the operation writes it anyway.
        """
        factories = c.tx.hot["factories"]
        before = factories.get(factory_id)
        factories[factory_id] = c.now
        if before is None or not 0 <= c.now - before < SEEN_GRANULARITY_S:
            c.tx.touch()

    def _note_lease(self, c: Ctx, rec: dict[str, Any], replay: bool = False) -> None:
        lease = rec["lease"]
        c.ev.update(jobId=rec["spec"]["id"], leaseEpoch=lease["leaseEpoch"], expiresAt=to_rfc3339(lease["expiresAt"]))
        if replay:
            c.ev["replay"] = True

    # ------------------------------------------------------------ lookups

    def _lease_for_request(self, tx: Tx, factory_id: str, request_id: str) -> dict[str, Any] | None:
        for rec in tx.leased_records():
            lease = rec.get("lease")
            if lease and lease["factoryId"] == factory_id and lease.get("requestId") == request_id:
                found: dict[str, Any] = rec
                return found
        return None

    def _pick(self, tx: Tx, caps: frozenset[str], now: float,
              skip: frozenset[str] = frozenset()) -> dict[str, Any] | None:
        """Highest priority, then oldest enqueue, among queued jobs this caller may take now."""
        queued = JobState.QUEUED
        parents: dict[str, dict[str, Any] | None] = {}
        for rec in tx.queued_by(claim_key):
            if (rec["state"] != queued or (rec["notBefore"] is not None and rec["notBefore"] > now)
                    or not caps.issuperset(rec["spec"].get("requires", ())) or rec["spec"]["id"] in skip):
                continue
            if drop_if_stale(tx, rec):  # crash leftover: the archive is authoritative
                continue
            if self._ready(tx, rec, parents):
                picked: dict[str, Any] = rec
                return picked
        return None

    def _ready(self, tx: Tx, rec: dict[str, Any], parents: dict[str, dict[str, Any] | None]) -> bool:
        """All ``dependsOn`` shipped; a composite child also passes its family's gates (phases, budget)."""
        spec = rec["spec"]
        if any(state_of(tx, dep) != JobState.SHIPPED for dep in spec.get("dependsOn", ())):
            return False
        if spec.get("parentId") is None:
            return True
        from coordinator_stub import composite_rules

        return composite_rules.family_allows(tx, spec, parents)


def _close_lease(rec: dict[str, Any], end: Mapping[str, Any], reason: str, now: float) -> None:
    """The lease history entry of the lease ``end`` ended gets its end (op, outcome, reason, time)."""
    leases = list(rec.get("leases") or [])
    if not leases or leases[-1].get("endedAt") is not None or leases[-1]["leaseEpoch"] != end.get("leaseEpoch"):
        return
    how = end["op"] + (f" {end['outcome']}" if end.get("outcome") else "")
    leases[-1] = {**leases[-1], "endedAt": now, "end": how, "reason": reason or None}
    rec["leases"] = leases

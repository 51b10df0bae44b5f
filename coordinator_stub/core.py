"""The coordinator: a pure lease-and-fence state machine over a Store and an injected clock.

Every public method is one operation of docs/fleet-api.md. Each runs in one
store transaction: the reaper first (so an expired lease is never honoured),
then the operation's preconditions (raising before anything changes), then
its state change, then exactly one event line. All fencing decisions live in
``_fence``. There is no I/O here except through the Store and no wall clock
except the ``clock`` parameter, so every rule is testable without sleeping.

Records (the hot document's ``jobs`` values, and archived ones)::

    {"spec": {...job spec...}, "state": "queued|leased|shipped|quarantined|composite",
     "seq": n, "enqueuedAt": t, "attempts": n, "leaseEpoch": n, "digest": "...",
     "lease": null | {"factoryId", "leaseEpoch", "expiresAt", "ttlS", "requestId", "claimedAt"},
     "notBefore": t|null, "reason": str|null, "outcome": str|null, "detail": {}|null,
     "finishedAt": t|null, "lastEnd": null | {"op", "factoryId", "leaseEpoch", "outcome", "result"}}

A composite parent (archived, state ``composite``) adds ``childIds``, ``order`` and,
once its verify gate ran, ``verify: {"state": passed|failed, "round", "leaseEpoch",
"attempts", "reason", "finishedAt"}``. While that gate waits or runs, the hot document
holds a *verify record* under the parent's id: an ordinary leaf record (the spec of
``agent_queue.composite.verify_spec``) plus ``verifyOf`` and ``verifyRound``. It is
leased, renewed, released and reported like any job; its ending writes a new version
of the parent (the old one goes to ``archive/history/``), never a second archive file.

Times in records are epoch seconds (floats); on the wire they are RFC 3339.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import Enum, StrEnum

from agent_queue.errors import AQError, BadInput, Conflict, Fenced, InvalidJob, NotFound, NotLeased
from agent_queue.timeutil import parse_rfc3339, to_rfc3339

# Start-up cost matters (the command seam is a fresh process per operation): typing,
# dataclasses, hashlib and agent_queue.jobs are imported only where they are needed.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from agent_queue.jobs import Job
    from coordinator_stub.store import Store, Tx

    T = TypeVar("T")

Clock = Callable[[], float]
DEFAULT_LEASE_TTL_S = 60.0
SEEN_GRANULARITY_S = 10.0  # a factory's lastSeen (status) may lag by up to this much
VERDICTS = ("AGREE", "DIVERGE", "COORD_EMPTY", "LOCAL_EMPTY", "IDLE")  # IDLE: only with --shadow-log-idle


class JobState(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    SHIPPED = "shipped"
    QUARANTINED = "quarantined"
    COMPOSITE = "composite"  # a composite parent: never claimable, its state is a rollup of its children


TERMINAL = frozenset({JobState.SHIPPED.value, JobState.QUARANTINED.value})
LISTABLE = tuple(s.value for s in JobState)


class LeaseState(Enum):
    NONE = "none"
    ACTIVE = "active"
    EXPIRED = "expired"


def lease_state(rec: Mapping[str, Any], now: float) -> LeaseState:
    lease = rec.get("lease")
    if rec["state"] != JobState.LEASED.value or not lease:
        return LeaseState.NONE
    return LeaseState.ACTIVE if now < lease["expiresAt"] else LeaseState.EXPIRED


class InvalidReport(BadInput):
    """A shadow report that is not marked ``shadow: true`` (or lacks its fields)."""

    code = "invalid_report"
    http_status = 422


class _Ctx:
    """One operation's transaction, clock reading, event being built and reaper result."""

    __slots__ = ("tx", "now", "ev", "reclaimed")

    def __init__(self, tx: Tx, now: float, ev: dict[str, Any]) -> None:
        self.tx = tx
        self.now = now
        self.ev = ev
        self.reclaimed: list[dict[str, Any]] = []


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
        return self._run("get", lambda c: self._view(c.tx, self._find(c.tx, job_id), c.now, full=True), log=False)

    def list_jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        if state is not None and state not in LISTABLE:
            raise BadInput(f"state: {state[:40]!r} is not one of {', '.join(LISTABLE)}")
        return self._run("list", lambda c: self._list(c, state), log=False)

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

    def reap(self) -> list[dict[str, Any]]:
        """Return every expired lease's job to queued (or quarantine it when attempts are spent)."""
        return self._run("reap", lambda c: c.reclaimed)

    def status(self) -> dict[str, Any]:
        return self._run("status", self._status, log=False)

    def shadow_report(self, report: Any) -> dict[str, Any]:
        """Record a shadow verdict (append-only); it never changes a job."""
        return self._run("shadow_report", lambda c: self._shadow(c, report),
                         factoryId=report.get("factoryId") if isinstance(report, Mapping) else None)

    def tidy(self) -> None:
        """Let the store finish what the last operation left for after its answer (``serve``, once it is sent)."""
        self._store.tidy()

    # ------------------------------------------------------------ the frame of every operation

    def _run(self, op: str, fn: Callable[[_Ctx], T], *, log: bool = True, **fields: Any) -> T:
        error: AQError | None = None
        result: Any = None
        with self._store.transaction() as tx:
            ctx = _Ctx(tx, self._clock(), {"op": op, **{k: v for k, v in fields.items() if v is not None}})
            ctx.reclaimed = self._reap(tx, ctx.now)
            try:
                result = fn(ctx)
                ctx.ev.setdefault("status", 200)
            except AQError as exc:  # preconditions raise before any change: commit only the reaper's work
                error = exc
                ctx.ev.update(status=exc.http_status, code=exc.code)
            if log or error is not None:
                tx.event(_event(ctx.now, ctx.ev))
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
        rec = self._find_opt(tx, job_id, lease=True)
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
        if state is LeaseState.NONE:
            raise NotLeased(f"{where}: the job is {rec['state']}, it has no lease")
        lease = rec["lease"]
        if lease["factoryId"] != factory_id or lease["leaseEpoch"] != epoch:
            raise Fenced(f"{where}: the current lease is epoch {lease['leaseEpoch']} held by another holder")
        if state is LeaseState.EXPIRED:  # unreachable after the reaper; kept so no path honours an old lease
            raise Fenced(f"{where}: the lease expired")
        return rec, None

    # ------------------------------------------------------------ operation bodies

    def _enqueue(self, c: _Ctx, job: Job, raw: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
        digest = _digest(job, raw)
        existing = self._find_opt(c.tx, job.id)
        if existing is not None:
            if existing.get("digest") != digest:
                raise Conflict(f"job {job.id}: already exists with a different spec")
            if existing["state"] == JobState.COMPOSITE.value:  # idempotent re-run: what did not ship runs again
                self._create_missing_children(c, job, raw)
                c.ev["requeued"] = self._rerun(c, existing)
            c.ev["status"] = 200
            return False, self._view(c.tx, existing, c.now, full=True)
        if job.kind == "composite":
            self._create_composite(c, job, raw, digest)
        else:
            for dep in job.depends_on:
                if self._find_opt(c.tx, dep) is None:
                    raise InvalidJob(f"job {job.id}.dependsOn: unknown job id {dep!r}")
            self._create(c, job.to_dict(), _not_before(raw, f"job {job.id}"), digest)
        c.ev["status"] = 201
        return True, self._view(c.tx, self._find(c.tx, job.id), c.now, full=True)

    def _create_composite(self, c: _Ctx, job: Job, raw: Mapping[str, Any], digest: str) -> None:
        from agent_queue.composite import validate_graph

        order = validate_graph(job.children, where=f"job {job.id}")
        raw_children = raw.get("children") or []
        for child in job.children:
            if child.id == job.id:
                raise InvalidJob(f"job {job.id}: a child has the parent's id")
            if self._find_opt(c.tx, child.id) is not None:
                raise Conflict(f"job {job.id}: child id {child.id!r} already exists")
        child_nb = [_not_before(r, f"job {ch.id}") for ch, r in zip(job.children, raw_children, strict=True)]
        spec = job.to_dict()
        spec.pop("children", None)
        parent = self._new_record(c, spec, None, digest)
        parent.update(state=JobState.COMPOSITE.value, childIds=[ch.id for ch in job.children], order=order)
        c.tx.archive(job.id, parent)  # immutable from here on: the write-once archive is its home
        for child, nb in zip(job.children, child_nb, strict=True):
            self._create(c, child.to_dict(), nb, _digest(child, {}))
        c.ev["children"] = len(job.children)

    def _create_missing_children(self, c: _Ctx, job: Job, raw: Mapping[str, Any]) -> None:
        """A crash between archiving the parent and writing its children leaves them missing: the
        same enqueue again creates them (the parent is archived first, so this is the only gap)."""
        raw_children = raw.get("children") or []
        for child, raw_child in zip(job.children, raw_children, strict=False):
            if self._find_opt(c.tx, child.id) is None:
                self._create(c, child.to_dict(), _not_before(raw_child, f"job {child.id}"), _digest(child, {}))
                c.ev.setdefault("created", []).append(child.id)

    def _create(self, c: _Ctx, spec: dict[str, Any], not_before: float | None, digest: str) -> None:
        c.tx.hot["jobs"][spec["id"]] = self._new_record(c, spec, not_before, digest)
        c.tx.touch()

    def _new_record(self, c: _Ctx, spec: dict[str, Any], not_before: float | None, digest: str) -> dict[str, Any]:
        c.tx.hot["seq"] += 1
        if not_before is not None:
            spec["notBefore"] = to_rfc3339(not_before)
        from agent_queue.jobs import DEFAULT_MAX_ATTEMPTS

        max_attempts = spec.get("budget", {}).get("maxAttempts") or DEFAULT_MAX_ATTEMPTS
        return {
            "spec": spec, "state": JobState.QUEUED.value, "seq": c.tx.hot["seq"], "enqueuedAt": c.now,
            "maxAttempts": max_attempts,
            "attempts": 0, "leaseEpoch": 0, "lease": None, "notBefore": not_before, "digest": digest,
            "reason": None, "outcome": None, "detail": None, "finishedAt": None, "lastEnd": None,
        }

    def _claim(
        self, c: _Ctx, factory_id: str, caps: frozenset[str], dry_run: bool, request_id: str | None,
        skip: frozenset[str] = frozenset(),
    ) -> dict[str, Any] | None:
        if request_id is not None and not dry_run:
            held = self._lease_for_request(c.tx, factory_id, request_id)
            if held is not None:
                self._note_lease(c, held, replay=True)
                return self._view(c.tx, held, c.now)
        rec = self._pick(c.tx, caps, c.now, skip)
        if rec is None:
            c.ev["status"] = 204
            if not dry_run:
                self._seen(c, factory_id)
            return None
        if dry_run:
            c.ev["jobId"] = rec["spec"]["id"]
            return {**self._view(c.tx, rec, c.now), "lease": None, "dryRun": True}
        epoch = rec["leaseEpoch"] + 1
        rec.update(state=JobState.LEASED.value, leaseEpoch=epoch, lease={
            "factoryId": factory_id, "leaseEpoch": epoch, "expiresAt": c.now + self.lease_ttl_s,
            "ttlS": self.lease_ttl_s, "requestId": request_id, "claimedAt": c.now,
        })
        c.tx.touch()
        self._seen(c, factory_id)
        self._note_lease(c, rec)
        return self._view(c.tx, rec, c.now)

    def _renew(self, c: _Ctx, job_id: str, factory_id: str, epoch: int) -> dict[str, Any]:
        rec, _ = self._fence(c.tx, job_id, factory_id, epoch, c.now, "renew")
        rec["lease"] = {**rec["lease"], "expiresAt": c.now + self.lease_ttl_s}  # replaced, never mutated in place
        c.tx.touch()
        self._seen(c, factory_id)
        self._note_lease(c, rec)
        return {"lease": _lease_wire(rec)}

    def _release(
        self, c: _Ctx, job_id: str, factory_id: str, epoch: int, reason: str, retry: bool,
        count_attempt: bool, not_before: float | None,
    ) -> dict[str, Any]:
        rec, replay = self._fence(c.tx, job_id, factory_id, epoch, c.now, "release")
        if replay is not None:
            c.ev["replay"] = True
            return replay
        end = {"op": "release", "factoryId": factory_id, "leaseEpoch": epoch, "outcome": None}
        attempts = rec["attempts"] + (1 if count_attempt else 0)
        limit = _max_attempts(rec)
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
        self, c: _Ctx, job_id: str, factory_id: str, epoch: int, outcome: str, detail: dict[str, Any]
    ) -> dict[str, Any]:
        rec, replay = self._fence(c.tx, job_id, factory_id, epoch, c.now, "report", outcome)
        if replay is not None:
            c.ev["replay"] = True
            return replay
        end = {"op": "report", "factoryId": factory_id, "leaseEpoch": epoch, "outcome": outcome}
        rec["detail"] = detail
        self._seen(c, factory_id)
        reason = str(detail.get("reason", "")) or f"reported {outcome} by {factory_id}"
        return self._finish(c, rec, JobState(outcome), reason, end)

    def _reap(self, tx: Tx, now: float) -> list[dict[str, Any]]:
        """Expired leases end here: one attempt counted, back to queued or quarantined; one event each."""
        reclaimed = []
        expired = [rec for rec in tx.leased_records() if lease_state(rec, now) is LeaseState.EXPIRED]
        for rec in expired:
            if self._stale(tx, rec):  # crash leftover: the job already finished
                del tx.hot["jobs"][rec["spec"]["id"]]
                tx.touch()
                continue
            lease = rec["lease"]
            who = {"jobId": rec["spec"]["id"], "factoryId": lease["factoryId"], "leaseEpoch": lease["leaseEpoch"]}
            ctx = _Ctx(tx, now, {"op": "reclaim", **who, "expiresAt": to_rfc3339(lease["expiresAt"])})
            end = {"op": "reap", "factoryId": lease["factoryId"], "leaseEpoch": lease["leaseEpoch"], "outcome": None}
            rec["attempts"] += 1
            limit = _max_attempts(rec)
            if rec["attempts"] >= limit:
                self._finish(ctx, rec, JobState.QUARANTINED,
                             f"lease expired; attempts exhausted ({rec['attempts']}/{limit})", end)
            else:
                self._requeue(ctx, rec, "lease expired", None, end)
            ctx.ev.update(status=200, state=rec["state"])
            tx.event(_event(now, ctx.ev))
            reclaimed.append(who)
        return reclaimed

    def _status(self, c: _Ctx) -> dict[str, Any]:
        counts = {s.value: 0 for s in JobState if s is not JobState.COMPOSITE}
        counts.update(c.tx.hot["terminalCounts"])
        leases = []
        for rec in c.tx.hot["jobs"].values():
            counts[rec["state"]] += 1
            if lease_state(rec, c.now) is LeaseState.ACTIVE:
                wire = _lease_wire(rec)
                wire["timeLeftS"] = round(rec["lease"]["expiresAt"] - c.now, 3)
                leases.append(wire)
        factories = [{"factoryId": f, "lastSeen": to_rfc3339(t)} for f, t in sorted(c.tx.hot["factories"].items())]
        return {"counts": counts, "leases": sorted(leases, key=lambda x: x["jobId"]), "factories": factories,
                "leaseTtlS": self.lease_ttl_s}

    def _shadow(self, c: _Ctx, report: Any) -> dict[str, Any]:
        if not isinstance(report, Mapping) or report.get("shadow") is not True:
            raise InvalidReport("shadow report: 'shadow' must be true (a shadow report never acts on a job)")
        if not isinstance(report.get("factoryId"), str) or not report["factoryId"]:
            raise InvalidReport("shadow report: 'factoryId' must be a non-empty string")
        if report.get("verdict") not in VERDICTS:
            raise InvalidReport(f"shadow report: 'verdict' must be one of {', '.join(VERDICTS)}")
        c.tx.shadow({**report, "receivedAt": to_rfc3339(c.now)})
        c.ev.update(status=202, verdict=report["verdict"])
        return {"accepted": True}

    def _list(self, c: _Ctx, state: str | None) -> list[dict[str, Any]]:
        recs: list[dict[str, Any]] = []
        if state is None or state in (JobState.QUEUED.value, JobState.LEASED.value):
            recs.extend(r for r in c.tx.hot["jobs"].values() if (state is None or r["state"] == state)
                        and not self._stale(c.tx, r))  # a crash leftover: the archive wins
        if state is None or state in TERMINAL or state == JobState.COMPOSITE.value:
            recs.extend(r for r in c.tx.iter_archived() if state is None or r["state"] == state)
        recs.sort(key=lambda r: r["seq"])
        return [self._view(c.tx, r, c.now, full=True) for r in recs]

    # ------------------------------------------------------------ state changes shared by operations

    def _finish(
        self, c: _Ctx, rec: dict[str, Any], state: JobState, reason: str, end: dict[str, Any]
    ) -> dict[str, Any]:
        rec.update(state=state.value, lease=None, reason=reason, finishedAt=c.now,
                   outcome=end.get("outcome") or state.value)
        result = self._view(c.tx, rec, c.now)
        if rec.get("verifyOf"):
            self._finish_verify(c, rec, state, reason, {**end, "result": result})
            return result
        rec["lastEnd"] = {**end, "result": result}
        c.tx.hot["terminalCounts"][state.value] = c.tx.hot["terminalCounts"].get(state.value, 0) + 1
        c.tx.archive(rec["spec"]["id"], rec)
        parent_id = rec["spec"].get("parentId")
        if parent_id and state is JobState.SHIPPED:
            self._maybe_verify(c, parent_id)
        return result

    # ------------------------------------------------------------ composite: the parent's verify, re-runs

    def _maybe_verify(self, c: _Ctx, parent_id: str, force: bool = False) -> None:
        """Queue the parent's verify gate once every child shipped (``force``: again after it failed)."""
        parent = c.tx.archived(parent_id)
        if parent is None or parent.get("state") != JobState.COMPOSITE.value or not parent["spec"].get("verify"):
            return
        live = c.tx.hot["jobs"].get(parent_id)
        if live is not None and not self._stale(c.tx, live):
            return
        outcome = parent.get("verify") or {}
        if outcome.get("state") == "passed" or (outcome.get("state") == "failed" and not force):
            return
        from agent_queue import composite

        family = self._family(c.tx, parent)
        if any(m["state"] != JobState.SHIPPED.value for m in family.values()):
            return
        if composite.budget_stop(parent["spec"].get("budget"), family) is not None:
            return
        rec = self._new_record(c, composite.verify_spec(parent["spec"]), None, "")
        # Epochs continue across rounds, so a zombie of an earlier round is always fenced.
        rec.update(verifyOf=parent_id, verifyRound=int(outcome.get("round", 0)) + 1,
                   leaseEpoch=int(outcome.get("leaseEpoch", 0)))
        c.tx.hot["jobs"][parent_id] = rec
        c.tx.touch()
        c.ev["verifyQueued"] = parent_id

    def _finish_verify(self, c: _Ctx, rec: dict[str, Any], state: JobState, reason: str,
                       last_end: dict[str, Any]) -> None:
        """The verify gate ended: a new version of the parent records it (and answers exact replays)."""
        parent_id = rec["verifyOf"]
        parent = c.tx.archived(parent_id)
        if parent is None:  # cannot happen: the parent is archived before its children exist
            raise NotFound(f"job {parent_id}: composite parent missing")
        verify = {"state": "passed" if state is JobState.SHIPPED else "failed", "round": rec["verifyRound"],
                  "leaseEpoch": rec["leaseEpoch"], "attempts": rec["attempts"],
                  "reason": None if state is JobState.SHIPPED else reason, "finishedAt": c.now,
                  "detail": rec.get("detail")}
        c.tx.supersede(parent_id, {**parent, "verify": verify, "lastEnd": last_end})
        del c.tx.hot["jobs"][parent_id]
        c.tx.touch()

    def _rerun(self, c: _Ctx, parent: dict[str, Any]) -> list[str]:
        """Quarantined children back to queued (attempts reset); a failed verify queued again."""
        requeued = []
        for cid in parent["childIds"]:
            rec = c.tx.archived(cid)
            if rec is not None and rec["state"] == JobState.QUARANTINED.value:
                self._revive(c, rec)
                requeued.append(cid)
        if (parent.get("verify") or {}).get("state") == "failed":
            self._maybe_verify(c, parent["spec"]["id"], force=True)
            if c.ev.get("verifyQueued"):
                requeued.append(parent["spec"]["id"])
        return requeued

    def _revive(self, c: _Ctx, rec: dict[str, Any]) -> None:
        """A quarantined job runs again: its archived version goes to history, a fresh attempt count to hot.

        ``leaseEpoch`` keeps counting (a late report of an old lease stays fenced);
        what the earlier attempts spent is kept for the parent's budget.
        """
        job_id = rec["spec"]["id"]
        c.tx.supersede(job_id)
        detail = rec.get("detail") or {}
        rec.update(state=JobState.QUEUED.value, attempts=0, lease=None, notBefore=None, reason="requeued",
                   outcome=None, detail=None, finishedAt=None,
                   priorS=_num(rec.get("priorS")) + _num(detail.get("durationS")),
                   priorUsd=_num(rec.get("priorUsd")) + _num(detail.get("costUsd")))
        c.tx.hot["jobs"][job_id] = rec
        counts = c.tx.hot["terminalCounts"]
        counts[JobState.QUARANTINED.value] = max(0, counts.get(JobState.QUARANTINED.value, 0) - 1)
        c.tx.touch()

    def _requeue_op(self, c: _Ctx, job_id: str) -> dict[str, Any]:
        rec = self._find(c.tx, job_id)
        if rec["state"] == JobState.COMPOSITE.value:
            requeued = self._rerun(c, rec)
        elif rec["state"] == JobState.QUARANTINED.value:
            self._revive(c, rec)
            requeued = [job_id]
        else:
            raise Conflict(f"job {job_id}: is {rec['state']}; only a quarantined job or a composite can be requeued")
        c.ev["requeued"] = requeued
        return {**self._view(c.tx, self._find(c.tx, job_id), c.now, full=True), "requeued": requeued}

    def _requeue(
        self, c: _Ctx, rec: dict[str, Any], reason: str, not_before: float | None, end: dict[str, Any]
    ) -> dict[str, Any]:
        rec.update(state=JobState.QUEUED.value, lease=None, reason=reason or None, notBefore=not_before)
        result = self._view(c.tx, rec, c.now)
        # Without the spec (it may hold a 1 MB prompt): the hot record and each journal line stay small;
        # a replay puts the spec, which never changes, back in (_fence).
        rec["lastEnd"] = {**end, "result": {k: v for k, v in result.items() if k != "job"}}
        c.tx.touch()
        return result

    def _seen(self, c: _Ctx, factory_id: str) -> None:
        """Note the factory's lastSeen; on its own, written only when the stored one is SEEN_GRANULARITY_S old.

        An idle poll (204) would otherwise rewrite and fsync the whole hot document
        every few seconds per factory. Any other change in the operation writes it anyway.
        """
        factories = c.tx.hot["factories"]
        before = factories.get(factory_id)
        factories[factory_id] = c.now
        if before is None or not 0 <= c.now - before < SEEN_GRANULARITY_S:
            c.tx.touch()

    def _note_lease(self, c: _Ctx, rec: dict[str, Any], replay: bool = False) -> None:
        lease = rec["lease"]
        c.ev.update(jobId=rec["spec"]["id"], leaseEpoch=lease["leaseEpoch"], expiresAt=to_rfc3339(lease["expiresAt"]))
        if replay:
            c.ev["replay"] = True

    # ------------------------------------------------------------ lookups

    def _find_opt(self, tx: Tx, job_id: str, lease: bool = False) -> dict[str, Any] | None:
        """The record of ``job_id``; the archive wins over a stale hot copy left by a crash (which is dropped).

        A composite parent's id names two records while its verify gate waits or runs:
        the parent (archived) and the verify record (hot); ``lease`` asks for the latter.
        """
        arch = tx.archived(job_id)
        hot: dict[str, Any] | None = tx.hot["jobs"].get(job_id)
        if arch is None:
            return hot
        if hot is not None:
            if not self._stale(tx, hot):
                return hot if lease else arch
            del tx.hot["jobs"][job_id]
            tx.touch()
        return arch

    def _stale(self, tx: Tx, rec: dict[str, Any]) -> bool:
        """A hot record the archive already supersedes (a crash between the two writes)."""
        arch = tx.archived(rec["spec"]["id"])
        if arch is None:
            return False
        if rec.get("verifyOf"):  # live unless its round's outcome is already recorded in the parent
            return int((arch.get("verify") or {}).get("round", 0)) >= int(rec["verifyRound"])
        return True

    def _find(self, tx: Tx, job_id: str) -> dict[str, Any]:
        rec = self._find_opt(tx, job_id)
        if rec is None:
            raise NotFound(f"job {job_id}: no such job")
        return rec

    def _state_of(self, tx: Tx, job_id: str) -> str | None:
        rec = tx.hot["jobs"].get(job_id) or tx.archived(job_id)
        return None if rec is None else str(rec["state"])

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
        queued = JobState.QUEUED.value
        parents: dict[str, dict[str, Any] | None] = {}
        for rec in tx.queued_in_claim_order():
            if (rec["state"] != queued or (rec["notBefore"] is not None and rec["notBefore"] > now)
                    or not caps.issuperset(rec["spec"].get("requires", ())) or rec["spec"]["id"] in skip):
                continue
            job_id = rec["spec"]["id"]
            if self._stale(tx, rec):  # crash leftover: the archive is authoritative
                del tx.hot["jobs"][job_id]
                tx.touch()
                continue
            if self._ready(tx, rec, parents):
                picked: dict[str, Any] = rec
                return picked
        return None

    def _ready(self, tx: Tx, rec: dict[str, Any], parents: dict[str, dict[str, Any] | None]) -> bool:
        """All ``dependsOn`` shipped; a composite child also passes its family's gates (phases, budget)."""
        spec = rec["spec"]
        if any(self._state_of(tx, dep) != JobState.SHIPPED.value for dep in spec.get("dependsOn", ())):
            return False
        parent_id = spec.get("parentId")
        if parent_id is None:
            return True
        if parent_id not in parents:
            parents[parent_id] = tx.archived(parent_id)
        parent = parents[parent_id]
        if parent is None or parent.get("state") != JobState.COMPOSITE.value:
            return True
        from agent_queue import composite

        family = self._family(tx, parent)
        if composite.budget_stop(parent["spec"].get("budget"), family) is not None:
            return False
        return composite.blocker(family[spec["id"]], family) is None

    def _family(self, tx: Tx, parent: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The parent's children as ``agent_queue.composite`` family members (a missing record counts as queued)."""
        from agent_queue import composite

        family = {}
        for cid in parent["childIds"]:
            rec = tx.hot["jobs"].get(cid) or tx.archived(cid)
            if rec is None:
                family[cid] = composite.member(cid, "queued", {})
                continue
            detail = rec.get("detail") or {}
            family[cid] = composite.member(cid, rec["state"], rec["spec"],
                                           _num(detail.get("durationS")) + _num(rec.get("priorS")),
                                           _num(detail.get("costUsd")) + _num(rec.get("priorUsd")))
        return family

    # ------------------------------------------------------------ views (wire shapes)

    def _view(self, tx: Tx, rec: dict[str, Any], now: float, full: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "state": rec["state"], "attempts": rec["attempts"], "maxAttempts": _max_attempts(rec),
            "leaseEpoch": rec["leaseEpoch"], "enqueuedAt": to_rfc3339(rec["enqueuedAt"]),
        }
        for key in ("notBefore", "finishedAt"):
            if rec.get(key) is not None:
                meta[key] = to_rfc3339(rec[key])
        for key in ("reason", "outcome", "detail", "verifyOf"):
            if rec.get(key) is not None:
                meta[key] = rec[key]
        out: dict[str, Any] = {"job": tx.spec_of(rec), "meta": meta}  # hot records hold only a summary
        out["lease"] = _lease_wire(rec) if lease_state(rec, now) is LeaseState.ACTIVE else None
        if rec["state"] == JobState.COMPOSITE.value:
            out["job"] = {**rec["spec"], "childIds": rec["childIds"]}
            if full:
                out["rollup"] = self._rollup(tx, rec)
                meta["state"] = out["rollup"]["state"]
        return out

    def _rollup(self, tx: Tx, parent: dict[str, Any]) -> dict[str, Any]:
        """Computed from the children by the rules shared with the local queue (``agent_queue.composite``)."""
        from agent_queue import composite

        outcome = parent.get("verify") or {}
        verify = None
        if parent["spec"].get("verify"):
            live = tx.hot["jobs"].get(parent["spec"]["id"])
            if live is not None and live.get("verifyOf") and not self._stale(tx, live):
                verify = "running" if live["state"] == JobState.LEASED.value else "pending"
            else:
                verify = outcome.get("state") or "pending"
        out = composite.rollup(self._family(tx, parent), parent.get("order", parent["childIds"]),
                               budget=parent["spec"].get("budget"), verify=verify)
        if verify == "failed" and outcome.get("reason") and out.get("reason"):
            out["reason"] = f"{out['reason']}: {outcome['reason']}"
        return out


# ---------------------------------------------------------------- helpers


def _lease_wire(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The wire form of ``agent_queue.jobs.Lease.to_dict`` (a test pins the two together)."""
    lease = rec["lease"]
    return {"jobId": rec["spec"]["id"], "factoryId": lease["factoryId"], "leaseEpoch": lease["leaseEpoch"],
            "expiresAt": to_rfc3339(lease["expiresAt"]), "ttlS": lease["ttlS"]}


def _max_attempts(rec: Mapping[str, Any]) -> int:
    """Fixed at enqueue (the job's budget, else the shared default), so no later default change moves it."""
    return int(rec["maxAttempts"])


def _num(value: Any) -> float:
    """A reported number (seconds, dollars), 0 when absent or not a number."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _not_before(raw: Any, where: str) -> float | None:
    value = raw.get("notBefore") if isinstance(raw, Mapping) else None
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidJob(f"{where}.notBefore: must be an RFC 3339 string")
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise InvalidJob(f"{where}.notBefore: {value[:40]!r} is not an RFC 3339 time") from exc


def _digest(job: Job, raw: Mapping[str, Any]) -> str:
    """Identity of a spec for idempotent enqueue: the normalized spec (children included) plus notBefore."""
    import hashlib
    import json

    body = {"spec": job.to_dict(), "notBefore": raw.get("notBefore")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _event(now: float, ev: dict[str, Any]) -> dict[str, Any]:
    return {"time": to_rfc3339(now), "ts": round(now, 6), **ev}

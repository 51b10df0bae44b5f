"""FleetClient: the coordinator contract (docs/fleet-api.md) as typed calls.

One method per endpoint. Each call goes through one retry loop: a transport
error or a 5xx answer is retried with capped exponential backoff and jitter,
within a bounded number of attempts and an overall deadline; a 4xx answer is
never retried, it is mapped to the one exception hierarchy (409 -> Fenced /
NotLeased / Conflict, 404 -> NotFound, 422 -> InvalidJob, 413 -> TooLarge (bad
input: exit 2), 401 and other 4xx -> CoordinatorError). Retrying is safe because every mutating call is
idempotent at the coordinator: a claim carries a ``requestId`` that stays the
same across the retries of one call, and renew / release / report are exact
replays of the same (jobId, factoryId, leaseEpoch, outcome).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from agent_queue.errors import (
    AQError,
    BadInput,
    Conflict,
    CoordinatorError,
    Fenced,
    InvalidJob,
    NotFound,
    NotLeased,
    TooLarge,
    TransportError,
)
from agent_queue.fleet.wire import Response, Transport
from agent_queue.jobs import Job, Lease, validate_id
from agent_queue.timeutil import to_rfc3339

log = logging.getLogger(__name__)

T = TypeVar("T")
OUTCOMES = ("shipped", "quarantined")
JOB_STATES = ("queued", "leased", "shipped", "quarantined", "cancelled", "composite")
_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one call tries: attempts, overall deadline, backoff shape, and the injectable clock.

    Attempt ``n`` (1-based) that fails retryably waits
    ``min(max_delay_s, base_delay_s * 2**(n-1))`` scaled by a jitter factor in
    [0.5, 1.0), unless the wait would cross the deadline: then the call gives
    up with the last error. Each attempt's transport timeout is capped by the
    time left, so a call never outlives ``deadline_s`` by more than one spawn.
    """

    max_attempts: int = 6
    deadline_s: float = 30.0
    base_delay_s: float = 0.25
    max_delay_s: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        cap = min(self.max_delay_s, self.base_delay_s * 2.0 ** min(attempt - 1, 30))
        return cap * (0.5 + self.rand() / 2)

    def shorter(self, deadline_s: float) -> RetryPolicy:
        """This policy with an overall deadline of at most ``deadline_s`` (for the heartbeat)."""
        return replace(self, deadline_s=max(0.0, min(self.deadline_s, deadline_s)))


SINGLE_SHOT = RetryPolicy(max_attempts=1, deadline_s=10.0)


def is_retryable(exc: BaseException) -> bool:
    """True for errors that may heal by themselves: transport failures and 5xx answers."""
    if isinstance(exc, TransportError):
        return True
    return isinstance(exc, CoordinatorError) and exc.http_status >= 500


class FleetClient:
    """Typed, retrying calls to one coordinator on behalf of one factory.

    Thread-safe as long as the transport is (both shipped transports are):
    the heartbeat thread renews while the main thread may call other methods.
    """

    def __init__(
        self,
        transport: Transport,
        factory_id: str,
        capabilities: list[str] | tuple[str, ...],
        retry: RetryPolicy | None = None,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.factory_id = factory_id
        self.capabilities = tuple(capabilities)
        self.retry = retry or RetryPolicy()
        self._now = now

    def __repr__(self) -> str:
        return f"FleetClient({self.transport!r}, factory_id={self.factory_id!r})"

    # -- jobs -------------------------------------------------------------

    def enqueue(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """Submit a job spec (validated locally first); returns the coordinator's job.

        Idempotent: the same id with an identical spec answers 200 with the
        existing job; the same id with a different spec raises ``Conflict``.
        """
        Job.from_dict(job, where="enqueue")
        return self._call("POST", "/v1/fleet/jobs", dict(job), lambda r: _dict_field(r, "job"))

    def get_job(self, job_id: str) -> dict[str, Any]:
        """``{"job": {...}, "lease": {...}?}``; ``NotFound`` for an unknown id."""
        path = f"/v1/fleet/jobs/{_path_id(job_id)}"
        return self._call("GET", path, None, lambda r: _require_body(r, path))

    def list_jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        """Jobs at the coordinator, optionally only those in ``state``."""
        path = "/v1/fleet/jobs"
        if state is not None:
            if state not in JOB_STATES:
                raise BadInput(f"list_jobs: state {state[:40]!r} is not one of {', '.join(JOB_STATES)}")
            path += "?" + urlencode({"state": state})
        return self._call("GET", path, None, lambda r: _list_field(r, "jobs"))

    def jobs_page(self, state: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """``{"jobs": [...], "total": n}``: the ``limit`` most recently enqueued jobs (in enqueue order).

        A coordinator that predates ``limit`` answers every job and no ``total``: the page is cut here.
        """
        if state is not None and state not in JOB_STATES:
            raise BadInput(f"jobs: state {state[:40]!r} is not one of {', '.join(JOB_STATES)}")
        query = {k: v for k, v in (("state", state), ("limit", limit)) if v is not None}
        path = "/v1/fleet/jobs" + ("?" + urlencode(query) if query else "")
        body = self._call("GET", path, None, lambda r: _require_body(r, path))
        jobs = body.get("jobs")
        if not isinstance(jobs, list):
            raise TransportError(f"GET {path}: answer has no 'jobs' list")
        total = body.get("total")
        cut = jobs if limit is None else jobs[-limit:] if limit else []
        return {"jobs": cut, "total": total if isinstance(total, int) else len(jobs)}

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job (a composite: its children that have not ended, and its verify gate).

        Returns the view plus ``cancelled`` (ids cancelled now). The factory holding a cancelled
        job's lease gets 409 ``not_leased`` on its next renew or report, so it ships nothing.
        Idempotent: cancelling a cancelled job answers 200 with nothing new cancelled.
        """
        path = f"/v1/fleet/jobs/{_path_id(job_id)}/cancel"
        return self._call("POST", path, {}, lambda r: _require_body(r, path))

    def requeue(self, job_id: str) -> dict[str, Any]:
        """Re-run a quarantined job, or a composite's quarantined (and so blocked) children and failed verify.

        Returns the view plus ``requeued`` (ids queued again). Safe to retry for a
        composite (a repeat finds nothing quarantined); a leaf's repeat is a ``Conflict``.
        """
        path = f"/v1/fleet/jobs/{_path_id(job_id)}/requeue"
        return self._call("POST", path, {}, lambda r: _require_body(r, path))

    def approve(self, job_id: str) -> dict[str, Any]:
        """Approve a planned composite: the view plus ``queued`` (its children's ids). A repeat is a ``Conflict``."""
        path = f"/v1/fleet/jobs/{_path_id(job_id)}/approve"
        return self._call("POST", path, {}, lambda r: _require_body(r, path))

    def replan(self, job_id: str, spec: Mapping[str, Any], plan_spent: tuple[float, float]) -> dict[str, Any]:
        """Replace a composite's unshipped children by the approved plan ``spec``'s: the view plus ``queued``.

        ``plan_spent``: (seconds, dollars) its planner ran here, counted in the parent's budget. A repeat
        is a ``Conflict`` (nothing is quarantined any more).
        """
        path = f"/v1/fleet/jobs/{_path_id(job_id)}/replan"
        body = {"spec": dict(spec), "planSpent": {"spentS": plan_spent[0], "costUsd": plan_spent[1]}}
        return self._call("POST", path, body, lambda r: _require_body(r, path))

    # -- leases -----------------------------------------------------------

    def claim(self, dry_run: bool = False, factory_id: str | None = None) -> tuple[Job, Lease | None] | None:
        """``claim_job`` without the coordinator's meta: (job, lease), or ``None`` when there is none (204)."""
        got = self.claim_job(dry_run, factory_id)
        return None if got is None else (got.job, got.lease)

    def claim_job(self, dry_run: bool = False, factory_id: str | None = None,
                  exclude: Iterable[str] = (), wait_s: float = 0.0) -> Claimed | None:
        """Ask for the next job this factory can run; ``None`` when there is none (204).

        One ``requestId`` per call, reused by every retry, so an answer lost
        in transit gives back the same lease instead of a second job.
        ``dry_run=True`` never returns a lease: a coordinator that ignores
        ``dryRun`` and leases anyway gets that lease released at once
        (``countAttempt: false``). A leased job whose spec fails local
        validation is released with ``retry: false`` (quarantined at the
        coordinator) and ``InvalidJob`` is raised, so it cannot bounce
        between factories forever. ``wait_s`` > 0 asks the coordinator to
        hold the claim until a job is claimable (see ``claim_wait_s``).
        """
        fid = factory_id or self.factory_id
        body = {
            "factoryId": fid,
            "capabilities": list(self.capabilities),
            "dryRun": dry_run,
            "requestId": uuid.uuid4().hex,
        }
        skip = sorted(exclude)
        if skip:  # ids this factory found it cannot run; a coordinator that ignores the hint still works
            body["exclude"] = skip
        policy = None
        if wait_s > 0:
            body["waitS"] = wait_s
            policy = replace(self.retry, deadline_s=self.retry.deadline_s + wait_s)
        raw = self._call("POST", "/v1/fleet/claim", body, lambda r: _parse_claim(r, fid, dry_run), policy=policy)
        if raw is None:
            return None
        job_data, lease, attempts, rounds = raw
        if lease is not None and dry_run:
            log.warning("dry-run claim got a real lease; releasing it", extra=_fields(lease))
            self._release_quietly(lease, "dry-run claim returned a real lease", retry=True)
            lease = None
        try:
            job = Job.from_dict(job_data, where="claimed job")
        except InvalidJob as exc:
            if lease is not None:
                self._release_quietly(lease, f"invalid job spec: {exc.message}", retry=False)
            raise
        return Claimed(job, lease, attempts, rounds)

    def renew(self, lease: Lease, *, deadline_s: float | None = None) -> Lease:
        """Extend ``lease``; returns the lease with its new expiry. ``Fenced`` if it is no longer ours."""
        path = f"/v1/fleet/jobs/{_path_id(lease.job_id)}/renew"
        body = {"factoryId": lease.factory_id, "leaseEpoch": lease.epoch}
        return self._call("POST", path, body, lambda r: _parse_lease(r, lease), deadline_s=deadline_s)

    def release(
        self,
        lease: Lease,
        reason: str,
        retry: bool = True,
        count_attempt: bool = True,
        not_before: float | None = None,
        *,
        deadline_s: float | None = None,
    ) -> dict[str, Any]:
        """Give the job back: queued again (``retry``) or quarantined; returns the job.

        ``count_attempt=False`` (shutdown give-back, agent rate limit) does
        not spend one of the job's attempts; ``not_before`` (epoch seconds)
        keeps it unclaimable until then.
        """
        path = f"/v1/fleet/jobs/{_path_id(lease.job_id)}/release"
        body: dict[str, Any] = {
            "factoryId": lease.factory_id,
            "leaseEpoch": lease.epoch,
            "reason": reason[:2000],
            "retry": retry,
        }
        if not count_attempt:
            body["countAttempt"] = False
        if not_before is not None:
            body["notBefore"] = to_rfc3339(not_before)
        return self._call("POST", path, body, lambda r: _dict_field(r, "job"), deadline_s=deadline_s)

    def report(self, lease: Lease, outcome: str, detail: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Report the terminal outcome; returns the job. Ship only after this returns for "shipped".

        ``Fenced`` / ``NotLeased`` mean the lease is not ours: never ship.
        """
        if outcome not in OUTCOMES:
            raise BadInput(f"report: outcome {outcome[:40]!r} is not one of {', '.join(OUTCOMES)}")
        path = f"/v1/fleet/jobs/{_path_id(lease.job_id)}/report"
        body = {
            "factoryId": lease.factory_id,
            "leaseEpoch": lease.epoch,
            "outcome": outcome,
            "detail": dict(detail or {}),
        }
        return self._call("POST", path, body, lambda r: _dict_field(r, "job"))

    def reap(self) -> list[dict[str, Any]]:
        """Return expired leases' jobs to the queue; returns ``[{jobId, factoryId, leaseEpoch}]``."""
        return self._call("POST", "/v1/fleet/reap", {}, lambda r: _list_field(r, "reclaimed"))

    # -- observation ------------------------------------------------------

    def shadow_report(self, verdict: str, local_job_id: str | None, coord_job_id: str | None, factory_id: str) -> None:
        """Tell the coordinator one shadow verdict. Best effort: one attempt, every error logged and dropped."""
        body = {
            "factoryId": factory_id,
            "shadow": True,
            "verdict": verdict,
            "localJobId": local_job_id,
            "coordJobId": coord_job_id,
            "at": to_rfc3339(self._now()),
        }
        try:
            self._call("POST", "/v1/fleet/shadow-reports", body, lambda r: None, policy=SINGLE_SHOT)
        except AQError as exc:
            log.warning("shadow report not delivered: %s", exc.message, extra={"factory_id": factory_id})

    def status(self) -> dict[str, Any]:
        """``{"counts": {...}, "leases": [...], "factories": [...]}``."""
        return self._call("GET", "/v1/fleet/status", None, lambda r: _require_body(r, "status"))

    def healthz(self) -> bool:
        """One quick probe, no retries: True only for 200 ``{"ok": true}``."""
        try:
            body = self._call("GET", "/v1/fleet/healthz", None, lambda r: r.body, policy=SINGLE_SHOT)
        except AQError as exc:
            log.info("coordinator health check failed: %s", exc.message)
            return False
        return bool(body and body.get("ok") is True)

    def claim_wait_s(self) -> float:
        """The longest claim hold the coordinator grants (healthz ``features.claimWaitS``); 0: poll.

        Only a transport that can wait for a held answer asks (HTTP); the
        command seam and a coordinator that does not advertise the feature
        get plain claims.
        """
        if not getattr(self.transport, "holds_claims", False):
            return 0.0
        try:
            body = self._call("GET", "/v1/fleet/healthz", None, lambda r: r.body, policy=SINGLE_SHOT)
        except AQError:
            return 0.0
        features = body.get("features") if body else None
        wait = features.get("claimWaitS") if isinstance(features, dict) else None
        return float(wait) if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0 else 0.0

    # -- the one retry loop ----------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        parse: Callable[[Response], T],
        *,
        deadline_s: float | None = None,
        policy: RetryPolicy | None = None,
    ) -> T:
        """Send, map errors, parse; retry transport errors, 5xx and malformed successes."""
        pol = policy or self.retry
        if deadline_s is not None:
            pol = pol.shorter(deadline_s)
        deadline = pol.clock() + pol.deadline_s
        attempt = 0
        while True:
            attempt += 1
            left = deadline - pol.clock()
            try:
                resp = self.transport.request(method, path, body, timeout_s=max(left, 0.001))
                return parse(_raise_for_status(resp, method, path))
            except AQError as exc:
                if not is_retryable(exc):
                    raise
                wait = pol.delay(attempt)
                if attempt >= pol.max_attempts or pol.clock() + wait >= deadline:
                    log.warning("%s %s failed after %d attempt(s): %s", method, path, attempt, exc.message)
                    raise
                log.info("%s %s attempt %d failed (%s); retrying in %.2fs", method, path, attempt, exc.message, wait)
                pol.sleep(wait)

    def _release_quietly(self, lease: Lease, reason: str, retry: bool) -> None:
        try:
            self.release(lease, reason, retry=retry, count_attempt=False)
        except AQError as exc:
            log.warning("release failed (lease will expire): %s", exc.message, extra=_fields(lease))


# -- answers -> errors / values ---------------------------------------------


def _raise_for_status(resp: Response, method: str, path: str) -> Response:
    status = resp.status
    if 200 <= status < 300:
        return resp
    code, message = _error_of(resp.body)
    where = f"{method} {path}"
    detail = f"{where}: {message or code or status}"
    if status == 409:
        if code == "not_leased":
            raise NotLeased(detail)
        if code == "conflict":
            raise Conflict(detail)
        raise Fenced(detail)  # any other 409 on a lease: act on nothing
    if status == 404:
        raise NotFound(detail)
    if status == 422:
        raise InvalidJob(detail)
    if status == 413:  # e.g. a job whose prompt makes the request larger than the coordinator takes
        raise TooLarge(f"{where}: the coordinator refused the request as too large (HTTP 413): "
                       f"{message or 'no detail'}")
    if status == 401:
        raise CoordinatorError(f"{where}: unauthorized: check AQ_FLEET_TOKEN", 401, "unauthorized")
    raise CoordinatorError(f"{where}: coordinator answered {status}: {message or code or 'no detail'}",
                           status, code or "coordinator_error")


def _error_of(body: dict[str, Any] | None) -> tuple[str, str]:
    err = body.get("error") if body else None
    if not isinstance(err, dict):
        return "", ""
    code = err.get("code")
    message = err.get("message")
    code = code if isinstance(code, str) else ""
    message = " ".join(message.split())[:_MESSAGE_LIMIT] if isinstance(message, str) else ""
    return code[:64], message


def _require_body(resp: Response, what: str) -> dict[str, Any]:
    if resp.body is None:
        raise TransportError(f"{what}: {resp.status} answer without a body")
    return resp.body


@dataclass(frozen=True)
class Claimed:
    """A claim answer: the job, its lease (None for a dry run) and the attempts the coordinator has counted."""

    job: Job
    lease: Lease | None
    attempts: int
    round: int = 1  # 1 + how often the job was requeued (a re-run after quarantine); older coordinators: 1


def _dict_field(resp: Response, name: str) -> dict[str, Any]:
    value = _require_body(resp, name).get(name)
    if not isinstance(value, dict):
        raise TransportError(f"{resp.status} answer without a {name!r} object")
    return value


def _list_field(resp: Response, name: str) -> list[dict[str, Any]]:
    value = _require_body(resp, name).get(name)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TransportError(f"{resp.status} answer without a {name!r} list of objects")
    return value


def _lease_of(data: Any, what: str) -> Lease:
    try:
        return Lease.from_dict(data)
    except InvalidJob as exc:
        raise TransportError(f"{what}: {exc.message}") from None


def _parse_claim(
    resp: Response, factory_id: str, dry_run: bool
) -> tuple[dict[str, Any], Lease | None, int, int] | None:
    if resp.status == 204:
        return None
    job = _dict_field(resp, "job")
    if not isinstance(job.get("id"), str):
        raise TransportError("claim: job without an id")
    meta = (resp.body or {}).get("meta")
    attempts = _attempts_of(meta)
    rounds = _count_of(meta, "round", 1)
    raw_lease = (resp.body or {}).get("lease")
    if raw_lease is None:
        if not dry_run:
            raise TransportError("claim: 200 answer without a lease")
        return job, None, attempts, rounds
    lease = _lease_of(raw_lease, "claim")
    if lease.job_id != job["id"] or lease.factory_id != factory_id:
        raise TransportError(f"claim: lease is for {lease.job_id}/{lease.factory_id}, not {job['id']}/{factory_id}")
    return job, lease, attempts, rounds


def _attempts_of(meta: Any) -> int:
    """``meta.attempts`` of a claim answer; 0 when absent or malformed (informational: the coordinator
    enforces the limit itself, so a coordinator without meta is no reason to refuse the job)."""
    return _count_of(meta, "attempts", 0)


def _count_of(meta: Any, name: str, default: int) -> int:
    """A non-negative integer of a claim answer's meta (informational), ``default`` when absent or malformed."""
    value = meta.get(name) if isinstance(meta, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _parse_lease(resp: Response, old: Lease) -> Lease:
    new = _lease_of(_require_body(resp, "renew").get("lease"), "renew")
    if (new.job_id, new.factory_id, new.epoch) != (old.job_id, old.factory_id, old.epoch):
        raise TransportError(f"renew: answer is for another lease ({new.job_id} epoch {new.epoch})")
    return new


def _path_id(job_id: str) -> str:
    return quote(validate_id(job_id, "job id"), safe="")


def _fields(lease: Lease) -> dict[str, Any]:
    """Structured log fields, so a JSON formatter can emit them as keys."""
    return {"job_id": lease.job_id, "factory_id": lease.factory_id, "lease_epoch": lease.epoch}

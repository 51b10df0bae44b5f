"""The job records the coordinator keeps: their shape, how one is made, found by id, and shown on the wire.

Records (the hot document's ``jobs`` values, and archived ones)::

    {"spec": {...job spec...}, "state": "queued|leased|shipped|quarantined|cancelled|composite",
     "seq": n, "enqueuedAt": t, "maxAttempts": n, "attempts": n, "leaseEpoch": n, "digest": "...",
     "lease": null | {"factoryId", "leaseEpoch", "expiresAt", "ttlS", "requestId", "claimedAt"},
     "notBefore": t|null, "reason": str|null, "outcome": str|null, "detail": {}|null,
     "finishedAt": t|null, "lastEnd": null | {"op", "factoryId", "leaseEpoch", "outcome", "result"},
     "round": n (absent: 1; +1 per requeue), "leases": [{"leaseEpoch", "factoryId", "claimedAt",
     "endedAt"?, "end"?, "reason"?}] (the last ``LEASE_HISTORY`` leases; absent in older records)}

A composite parent (archived, state ``composite``) adds ``childIds``, ``order`` and,
once its verify gate ran, ``verify: {"state": passed|failed, "round", "leaseEpoch",
"attempts", "reason", "finishedAt"}``. While that gate waits or runs, the hot document
holds a *verify record* under the parent's id: an ordinary leaf record (the spec of
``agent_queue.composite.verify_spec``) plus ``verifyOf`` and ``verifyRound``. It is
leased, renewed, released and reported like any job; its ending writes a new version
of the parent (the old one goes to ``archive/history/``), never a second archive file.

Times in records are epoch seconds (floats); on the wire they are RFC 3339. A
view (what the API answers) carries ``{"job": <the spec as enqueued>, "meta":
{...}, "lease": ...}``: coordinator state is kept out of the spec, so
``Job.from_dict(view["job"])`` is the same job everywhere.

One rule lives here, because every lookup applies it: **the archive wins**. A
hot copy of a job the archive already holds is a crash leftover of an older
version (archived, then the hot write was lost); it is dropped when found.
"""

from __future__ import annotations

# collections.abc's own class: importing collections.abc imports collections too, ~1.5 ms of a seam call (B1).
from _collections_abc import Mapping

from agent_queue.errors import InvalidJob, NotFound
from agent_queue.timeutil import parse_rfc3339, to_rfc3339

# Start-up cost matters (the command seam is a fresh process per operation): typing,
# hashlib and agent_queue.jobs are imported only where they are needed.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    from agent_queue.jobs import Job
    from coordinator_stub.stores.base import Tx


class JobState:
    """A record's ``state``: the strings it is stored and answered as.

    Plain constants, not an ``Enum``: ``enum`` (with the ``functools`` and
    ``collections`` it imports) is ~5 ms of start-up, and the command seam
    imports this module in a fresh process per operation (benchmark B1).
    """

    QUEUED: Final = "queued"
    LEASED: Final = "leased"
    SHIPPED: Final = "shipped"
    QUARANTINED: Final = "quarantined"
    CANCELLED: Final = "cancelled"  # by the operator (``cancel``): terminal, and never reported by a factory
    COMPOSITE: Final = "composite"  # a composite parent: never claimable, its state is a rollup of its children
    ALL: Final = (QUEUED, LEASED, SHIPPED, QUARANTINED, CANCELLED, COMPOSITE)


TERMINAL = frozenset({JobState.SHIPPED, JobState.QUARANTINED})  # what a factory may report
ENDED = TERMINAL | {JobState.CANCELLED}  # archived: nothing runs any more
LISTABLE = JobState.ALL
LEASE_HISTORY = 20  # lease entries a record keeps (``show --fleet``); older ones are in events.jsonl


class LeaseState:
    """What ``lease_state`` says of a record's lease (plain strings, as ``JobState``)."""

    NONE: Final = "none"
    ACTIVE: Final = "active"
    EXPIRED: Final = "expired"


def lease_state(rec: Mapping[str, Any], now: float) -> str:
    lease = rec.get("lease")
    if rec["state"] != JobState.LEASED or not lease:
        return LeaseState.NONE
    return LeaseState.ACTIVE if now < lease["expiresAt"] else LeaseState.EXPIRED


class Ctx:
    """One operation's transaction, clock reading, event being built and reaper result."""

    __slots__ = ("tx", "now", "ev", "reclaimed")

    def __init__(self, tx: Tx, now: float, ev: dict[str, Any]) -> None:
        self.tx = tx
        self.now = now
        self.ev = ev
        self.reclaimed: list[dict[str, Any]] = []


# ---------------------------------------------------------------- making records


def new_record(c: Ctx, spec: dict[str, Any], not_before: float | None, digest: str) -> dict[str, Any]:
    """A queued record with the next enqueue sequence number."""
    c.tx.hot["seq"] += 1
    if not_before is not None:
        spec["notBefore"] = to_rfc3339(not_before)
    from agent_queue.jobs import DEFAULT_MAX_ATTEMPTS

    max_attempts = spec.get("budget", {}).get("maxAttempts") or DEFAULT_MAX_ATTEMPTS
    return {
        "spec": spec, "state": JobState.QUEUED, "seq": c.tx.hot["seq"], "enqueuedAt": c.now,
        "maxAttempts": max_attempts,
        "attempts": 0, "leaseEpoch": 0, "lease": None, "notBefore": not_before, "digest": digest,
        "reason": None, "outcome": None, "detail": None, "finishedAt": None, "lastEnd": None,
    }


def create(c: Ctx, spec: dict[str, Any], not_before: float | None, digest: str) -> None:
    c.tx.hot["jobs"][spec["id"]] = new_record(c, spec, not_before, digest)
    c.tx.touch()


def digest_of(job: Job, raw: Mapping[str, Any]) -> str:
    """Identity of a spec for idempotent enqueue: the normalized spec (children included) plus notBefore."""
    import hashlib

    from agent_queue import cjson

    body = {"spec": job.to_dict(), "notBefore": raw.get("notBefore")}
    return hashlib.sha256(cjson.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def not_before_of(raw: Any, where: str) -> float | None:
    value = raw.get("notBefore") if isinstance(raw, Mapping) else None
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidJob(f"{where}.notBefore: must be an RFC 3339 string")
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise InvalidJob(f"{where}.notBefore: {value[:40]!r} is not an RFC 3339 time") from exc


def max_attempts(rec: Mapping[str, Any]) -> int:
    """Fixed at enqueue (the job's budget, else the shared default), so no later default change moves it."""
    return int(rec["maxAttempts"])


def num(value: Any) -> float:
    """A reported number (seconds, dollars), 0 when absent or not a number."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


# ---------------------------------------------------------------- finding records (the archive wins)


def find_opt(tx: Tx, job_id: str, lease: bool = False) -> dict[str, Any] | None:
    """The record of ``job_id``; the archive wins over a stale hot copy left by a crash (which is dropped).

    A composite parent's id names two records while its verify gate waits or runs:
    the parent (archived) and the verify record (hot); ``lease`` asks for the latter.
    """
    arch = tx.archived(job_id)
    hot: dict[str, Any] | None = tx.hot["jobs"].get(job_id)
    if arch is None:
        return hot
    if hot is not None:
        if not stale(tx, hot):
            return hot if lease else arch
        del tx.hot["jobs"][job_id]
        tx.touch()
    return arch


def find(tx: Tx, job_id: str) -> dict[str, Any]:
    rec = find_opt(tx, job_id)
    if rec is None:
        raise NotFound(f"job {job_id}: no such job")
    return rec


def stale(tx: Tx, rec: dict[str, Any]) -> bool:
    """A hot record the archive already supersedes (a crash between the two writes)."""
    arch = tx.archived(rec["spec"]["id"])
    if arch is None:
        return False
    if rec.get("verifyOf"):  # live unless its round's outcome is already recorded in the parent
        return int((arch.get("verify") or {}).get("round", 0)) >= int(rec["verifyRound"])
    return True


def drop_if_stale(tx: Tx, rec: dict[str, Any]) -> bool:
    """Drop a crash leftover the archive supersedes; True if ``rec`` was one."""
    if not stale(tx, rec):
        return False
    del tx.hot["jobs"][rec["spec"]["id"]]
    tx.touch()
    return True


def state_of(tx: Tx, job_id: str) -> str | None:
    rec = tx.hot["jobs"].get(job_id) or tx.archived(job_id)
    return None if rec is None else str(rec["state"])


# ---------------------------------------------------------------- wire shapes (docs/fleet-api.md)


def view(tx: Tx, rec: dict[str, Any], now: float) -> dict[str, Any]:
    """A record as answered (``core.full_view`` adds a composite parent's rollup)."""
    meta: dict[str, Any] = {
        "state": rec["state"], "attempts": rec["attempts"], "maxAttempts": max_attempts(rec),
        "leaseEpoch": rec["leaseEpoch"], "enqueuedAt": to_rfc3339(rec["enqueuedAt"]),
    }
    for key in ("notBefore", "finishedAt"):
        if rec.get(key) is not None:
            meta[key] = to_rfc3339(rec[key])
    for key in ("reason", "outcome", "detail", "verifyOf"):
        if rec.get(key) is not None:
            meta[key] = rec[key]
    if rec.get("round", 1) > 1:
        meta["round"] = rec["round"]
    last = rec.get("lastEnd")
    if last is not None and last.get("factoryId"):
        meta["lastFactoryId"] = last["factoryId"]
    out: dict[str, Any] = {"job": tx.spec_of(rec), "meta": meta}  # hot records hold only a summary
    out["lease"] = lease_wire(rec) if lease_state(rec, now) == LeaseState.ACTIVE else None
    if rec["state"] == JobState.COMPOSITE:
        out["job"] = {**rec["spec"], "childIds": rec["childIds"]}
    return out


def lease_history(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The record's leases as answered by ``GET /jobs/{id}`` (``meta.leases``): oldest first, times RFC 3339."""
    out = []
    for entry in rec.get("leases") or []:
        item = dict(entry)
        for key in ("claimedAt", "endedAt"):
            if item.get(key) is not None:
                item[key] = to_rfc3339(item[key])
        out.append(item)
    return out


def lease_wire(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The wire form of ``agent_queue.jobs.Lease.to_dict`` (a test pins the two together)."""
    lease = rec["lease"]
    return {"jobId": rec["spec"]["id"], "factoryId": lease["factoryId"], "leaseEpoch": lease["leaseEpoch"],
            "expiresAt": to_rfc3339(lease["expiresAt"]), "ttlS": lease["ttlS"]}


def event(now: float, ev: dict[str, Any]) -> dict[str, Any]:
    """One line of ``events.jsonl``."""
    return {"time": to_rfc3339(now), "ts": round(now, 6), **ev}

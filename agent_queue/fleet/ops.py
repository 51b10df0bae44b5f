"""The fleet CLI operations (``enqueue``/``jobs``/``show``/``cancel``/``requeue`` ``--fleet``, ``fleet-status``,
``fleet-shadow-report``): data in, data out.

Like ``service.py`` for the local commands: cli.py parses and prints only.
These are one-shot calls made by a person, so they use the client's default
retry policy and close the transport when done.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

from agent_queue import composite, jobview, plan_job
from agent_queue.errors import NotFound
from agent_queue.fleet import shadow
from agent_queue.fleet.client import FleetClient
from agent_queue.fleet.connect import fleet_flags, make_client
from agent_queue.inbox import LocalQueue
from agent_queue.jobs import Job, new_job_id, validate_id
from agent_queue.settings import Settings, redact_spec, redact_url
from agent_queue.timeutil import parse_rfc3339

# The coordinator writes a factory's lastSeen at most this often when nothing else changes
# (coordinator_stub.core.SEEN_GRANULARITY_S): a live factory may look this much older.
SEEN_SLACK_S = 10.0


def enqueue(settings: Settings, spec: Any, where: str) -> str:
    """Validate ``spec`` locally, send it to the coordinator; return the job id (idempotent for the same spec)."""
    if isinstance(spec, Mapping) and "id" not in spec:
        spec = {**spec, "id": new_job_id()}
    if isinstance(spec, Mapping) and spec.get("kind") == "composite" and isinstance(spec.get("plan"), dict):
        spec = plan_job.with_rules(spec, sorted(settings.tools), sorted(settings.profiles))
        plan_job.plan_field(spec, f"job {spec.get('id')}")
    job = Job.from_dict(spec, where=where)  # InvalidJob before anything is sent
    if job.kind == "composite":
        composite.validate_graph(job.children, where=f"job {job.id}")  # exit 2 naming the cycle / id, nothing sent
        composite.validate_budget(job, where=f"job {job.id}")
    with _client(settings) as client:
        client.enqueue(job.to_dict())
    return job.id


@contextlib.contextmanager
def _client(settings: Settings) -> Iterator[FleetClient]:
    """A client for one command, its transport closed when the command is done."""
    client = make_client(settings)
    try:
        yield client
    finally:
        client.transport.close()


def fleet_status(settings: Settings) -> dict[str, Any]:
    """The coordinator's counts and leases; each factory live / stale / offline and busy / idle with what it
    holds; the queued jobs no live factory can run; composites' rollups; this host's resolved fleet flags."""
    flags = fleet_flags(settings)
    with _client(settings) as client:
        coord = client.status()
        parents = client.list_jobs("composite")
    ttl = coord.get("leaseTtlS")
    leases = coord.get("leases", [])
    factories = [_factory_row(f, leases, ttl, time.time()) for f in coord.get("factories", [])]
    return {"flags": flags.to_dict(), "mode": settings.fleet_mode, "flagsText": flags.describe(),
            "factoryId": settings.factory_id, "coordinator": _coordinator_name(settings), "leaseTtlS": ttl,
            "counts": coord.get("counts", {}), "leases": leases, "factories": factories,
            "stranded": coord.get("stranded", []), "composites": [_rollup_of(v) for v in parents]}


def _factory_row(f: Mapping[str, Any], leases: list[dict[str, Any]], ttl: Any, now: float) -> dict[str, Any]:
    """One factory as fleet-status shows it. The coordinator says how long ago it saw it and whether that is
    live (``liveness``, by its clock and lease TTL); an older coordinator gives only ``lastSeen``, judged here."""
    age = f.get("ageS")
    if not isinstance(age, int | float) and isinstance(f.get("lastSeen"), str):
        age = max(0.0, now - parse_rfc3339(f["lastSeen"]))
    liveness = f.get("liveness") or _liveness(age, ttl)
    holds = [lease for lease in leases if lease.get("factoryId") == f.get("factoryId")]
    return {**f, "ageS": age, "liveness": liveness, "holds": holds}


def _liveness(age: Any, ttl: Any) -> str:
    """The coordinator's rule (``coordinator_stub.core.liveness``) for a coordinator that does not apply it."""
    if not isinstance(age, int | float) or not isinstance(ttl, int | float):
        return "unknown"
    if age <= ttl + SEEN_SLACK_S:
        return "live"
    return "stale" if age <= 3 * ttl + SEEN_SLACK_S else "offline"


def _coordinator_name(settings: Settings) -> str:
    if settings.fleet_api_cmd:
        return f"seam `{settings.fleet_api_cmd}`"
    return redact_url(settings.fleet_api) if settings.fleet_api else "-"


def jobs(settings: Settings, state: str | None, limit: int | None) -> dict[str, Any]:
    """``jobs --fleet``: the coordinator's most recently enqueued jobs, newest first, as ``jobs`` rows."""
    wanted = jobview.state_name(state, jobview.FLEET_STATES)
    with _client(settings) as client:
        page = client.jobs_page(wanted, limit)
    now = time.time()
    return {"jobs": [_fleet_row(view, now) for view in reversed(page["jobs"])], "total": page["total"]}


def _fleet_row(view: Mapping[str, Any], now: float) -> dict[str, Any]:
    job, meta, lease = view.get("job") or {}, view.get("meta") or {}, view.get("lease") or {}
    enqueued = meta.get("enqueuedAt")
    age = round(max(0.0, now - parse_rfc3339(enqueued)), 1) if isinstance(enqueued, str) else None
    kind = job.get("kind", "leaf")
    return {"id": job.get("id"), "state": (view.get("rollup") or {}).get("state") or meta.get("state"),
            "kind": kind, "tool": "composite" if kind == "composite" else job.get("tool", "shell"),
            "attempts": meta.get("attempts"), "enqueuedAt": enqueued, "ageS": age,
            "factory": lease.get("factoryId") or meta.get("lastFactoryId"), "reason": jobview.short(meta.get("reason")),
            "leaseEpoch": meta.get("leaseEpoch")}


def show(settings: Settings, job_id: str) -> dict[str, Any]:
    """``show ID --fleet``: the coordinator's view (state, lease and its history by epoch, spec redacted) and
    what this host kept of its own attempts, if it ran any."""
    validate_id(job_id, "job id")
    with _client(settings) as client:
        view = client.get_job(job_id)
    job, meta = view.get("job") or {}, view.get("meta") or {}
    secrets = [settings.fleet_token]
    out: dict[str, Any] = {"id": job_id, "state": meta.get("state"), "spec": redact_spec(job, secrets)}
    prompt = out["spec"].pop("prompt", None)
    if isinstance(prompt, str):
        first = prompt.strip().splitlines()[0] if prompt.strip() else ""
        out["prompt"] = {"bytes": len(prompt.encode("utf-8", "surrogatepass")), "path": "the coordinator",
                         "preview": first[:jobview.PREVIEW_CHARS]}
    out.update({k: meta[k] for k in ("attempts", "maxAttempts", "round", "leaseEpoch", "reason", "enqueuedAt",
                                      "finishedAt", "notBefore") if meta.get(k) is not None})
    out.update(lease=view.get("lease"), leases=redact_spec({"h": meta.get("leases") or []}, secrets)["h"],
               detail=meta.get("detail"))
    if view.get("rollup"):
        out["rollup"] = view["rollup"]
    if settings.root.is_dir():
        with contextlib.suppress(NotFound):
            here = jobview.show(LocalQueue(settings.root), job_id, settings.factory_id, secrets)
            out.update(history=here["history"], log=here["log"], records=here["records"],
                       local=here.get("state"))
    return out


def cancel(settings: Settings, job_id: str) -> list[str]:
    """``cancel ID --fleet``: the coordinator cancels the job (a composite: its unshipped children) and
    fences the factory holding it; returns the ids cancelled now."""
    validate_id(job_id, "job id")
    with _client(settings) as client:
        return [str(x) for x in client.cancel(job_id).get("cancelled") or []]


def _rollup_of(view: Mapping[str, Any]) -> dict[str, Any]:
    """One composite's line in fleet-status: its id and the rollup the coordinator computed."""
    return {"id": (view.get("job") or {}).get("id"), **(view.get("rollup") or {})}


def requeue(settings: Settings, job_id: str) -> list[str]:
    """``requeue ID --fleet``: the coordinator re-runs the job, or a composite's quarantined/blocked part."""
    validate_id(job_id, "job id")
    with _client(settings) as client:
        return [str(x) for x in client.requeue(job_id).get("requeued") or []]


def approve(settings: Settings, job_id: str) -> list[str]:
    """``approve ID --fleet``: the coordinator queues the planned children; their ids."""
    with _client(settings) as client:
        return [str(x) for x in client.approve(validate_id(job_id, "job id")).get("queued") or []]


def family_views(settings: Settings, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``replan ID --fleet``: the coordinator's views of the composite and of each of its children, in order."""
    with _client(settings) as client:
        parent = client.get_job(validate_id(job_id, "job id"))
        if (parent.get("job") or {}).get("kind") != "composite":
            raise NotFound(f"job {job_id}: not a composite job")
        ids = [c["id"] for c in (parent.get("rollup") or {}).get("children") or ()]
        return parent, [client.get_job(cid) for cid in ids]


def replan(settings: Settings, job_id: str, spec: Mapping[str, Any], plan_spent: tuple[float, float]) -> list[str]:
    """``replan ID --fleet``, once approved: the coordinator swaps the unshipped children; the ids it queued."""
    with _client(settings) as client:
        return [str(x) for x in client.replan(validate_id(job_id, "job id"), spec, plan_spent).get("queued") or []]


def shadow_report(settings: Settings, since: str | None) -> shadow.ShadowSummary:
    """Summarize ``<root>/.state/fleet-shadow.log``; ``since`` is RFC 3339 or a duration (15m, 2h, 7d)."""
    start = None if since is None else shadow.parse_since(since, time.time())
    return shadow.summarize(shadow.shadow_log_path(settings.root), since=start)

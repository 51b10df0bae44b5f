"""The fleet CLI operations (``enqueue --fleet``, ``fleet-status``, ``fleet-shadow-report``): data in, data out.

Like ``service.py`` for the local commands: cli.py parses and prints only.
These are one-shot calls made by a person, so they use the client's default
retry policy and close the transport when done.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from agent_queue import composite, plan_job
from agent_queue.fleet import shadow
from agent_queue.fleet.connect import fleet_flags, make_client
from agent_queue.jobs import Job, new_job_id, validate_id
from agent_queue.settings import Settings


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
    client = make_client(settings)
    try:
        client.enqueue(job.to_dict())
    finally:
        client.transport.close()
    return job.id


def fleet_status(settings: Settings) -> dict[str, Any]:
    """The coordinator's counts, leases and factories, plus this factory's resolved fleet flags."""
    flags = fleet_flags(settings)
    client = make_client(settings)
    try:
        coord = client.status()
        parents = client.list_jobs("composite")
    finally:
        client.transport.close()
    return {"flags": flags.to_dict(), "mode": settings.fleet_mode, "factoryId": settings.factory_id,
            "counts": coord.get("counts", {}), "leases": coord.get("leases", []),
            "factories": coord.get("factories", []), "composites": [_rollup_of(v) for v in parents]}


def _rollup_of(view: Mapping[str, Any]) -> dict[str, Any]:
    """One composite's line in fleet-status: its id and the rollup the coordinator computed."""
    return {"id": (view.get("job") or {}).get("id"), **(view.get("rollup") or {})}


def requeue(settings: Settings, job_id: str) -> list[str]:
    """``requeue ID --fleet``: the coordinator re-runs the job, or a composite's quarantined/blocked part."""
    validate_id(job_id, "job id")
    client = make_client(settings)
    try:
        answer = client.requeue(job_id)
    finally:
        client.transport.close()
    return [str(x) for x in answer.get("requeued") or []]


def approve(settings: Settings, job_id: str) -> list[str]:
    """``approve ID --fleet``: the coordinator queues the planned children; their ids."""
    client = make_client(settings)
    try:
        answer = client.approve(validate_id(job_id, "job id"))
    finally:
        client.transport.close()
    return [str(x) for x in answer.get("queued") or []]


def format_status(report: Mapping[str, Any]) -> str:
    flags = report["flags"]
    lines = [f"flags: fleet={int(flags['fleet'])} route={int(flags['route'])} shadow={int(flags['shadow'])} "
             f"(mode {report['mode']}, factory {report['factoryId']})"]
    lines += [f"warning: {w}" for w in flags["warnings"]]
    lines.append("jobs: " + "  ".join(f"{k}: {v}" for k, v in report["counts"].items()))
    for lease in report["leases"]:
        lines.append(f"lease: {lease.get('jobId')} holder {lease.get('factoryId')} epoch {lease.get('leaseEpoch')} "
                     f"left {lease.get('timeLeftS')}s")
    for factory in report["factories"]:
        lines.append(f"factory: {factory.get('factoryId')} last seen {factory.get('lastSeen')}")
    for comp in report.get("composites", []):
        counts = ", ".join(f"{k} {n}" for k, n in (comp.get("counts") or {}).items() if n)
        verify = f", verify {comp['verify']}" if comp.get("verify") else ""
        lines.append(f"composite: {comp.get('id')} {comp.get('state')} ({counts}{verify})"
                     + (f": {comp['reason']}" if comp.get("reason") else ""))
        lines += [line for line in [plan_job.plan_line(comp, fleet=True)] if line]
    return "\n".join(lines)


def shadow_report(settings: Settings, since: str | None) -> shadow.ShadowSummary:
    """Summarize ``<root>/.state/fleet-shadow.log``; ``since`` is RFC 3339 or a duration (15m, 2h, 7d)."""
    start = None if since is None else shadow.parse_since(since, time.time())
    return shadow.summarize(shadow.shadow_log_path(settings.root), since=start)

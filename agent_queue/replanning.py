"""``agent-queue replan`` on the local queue: a planning request from a composite's history, and its approved result.

The planner is shown what shipped (kept unchanged: the idempotent re-run),
what failed and why, and what never ran; its new plan replaces only the
unshipped children (``composite_queue.replan`` holds the graph and budget
rules and the crash-safe swap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent_queue import composite_queue, plan_prompt
from agent_queue.composite_queue import Parent
from agent_queue.errors import Conflict, NotFound
from agent_queue.inbox import LocalQueue
from agent_queue.jobs import Job
from agent_queue.planner import Outcome, Request
from agent_queue.settings import Settings
from agent_queue.tools import check_known

REPLANNABLE = ("quarantined", "blocked")


def load_failed(queue: LocalQueue, job_id: str) -> Parent:
    """The composite ``job_id``, when it has children to re-plan (a quarantined child or verify)."""
    parent = composite_queue.find_parent(queue, job_id)
    if parent is None:
        raise NotFound(f"job {job_id}: no composite job with this id in this queue")
    composite_queue.finish_replan(queue, job_id)  # one a crash interrupted
    parent = composite_queue.load(queue, job_id) or parent
    state = composite_queue.rollup(queue, parent)["state"]
    if state not in REPLANNABLE:
        raise Conflict(f"job {job_id}: is {state}; only a composite with quarantined children is re-planned")
    return parent


def request(queue: LocalQueue, parent: Parent, *, note: str | None, tool: str | None, profile: str,
            max_tries: int) -> Request:
    """The planning request: the epic (plus the person's ``note``), the shipped children kept, the history."""
    epic = _epic(parent.spec, note)
    kept, context = composite_queue.replan_context(queue, parent)
    return _request(parent.spec, epic, kept, context, tool=tool, profile=profile, max_tries=max_tries)


def _epic(spec: Mapping[str, Any], note: str | None) -> str:
    planned_by = _planned_by(spec)
    epic = spec.get("prompt") or planned_by.get("prompt")
    if not isinstance(epic, str) or not epic.strip():
        raise Conflict(f"job {spec.get('id')}: has no epic prompt to re-plan from")
    return f"{epic}\n\nNote for this re-plan: {note}" if note else epic


def _planned_by(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    plan = spec.get("plan")
    return plan if isinstance(plan, Mapping) else {}


def _request(spec: Mapping[str, Any], epic: str, kept: Sequence[Mapping[str, Any]], context: Sequence[str], *,
             tool: str | None, profile: str, max_tries: int) -> Request:
    """The planner is given the parent's own fields (never its ``plan``: the new spec has children)."""
    planned_by = _planned_by(spec)
    repo = spec.get("repo")
    fields = {k: v for k, v in spec.items() if k not in ("plan", "children", "childIds")}
    return Request(epic=epic, parent=fields, tool=tool or str(planned_by.get("tool") or "claude"),
                   profile=profile, max_tries=max_tries, kept=kept, context=context,
                   repo=Path(repo) if isinstance(repo, str) and Path(repo).is_dir() else None)


def fleet_request(parent: Mapping[str, Any], children: Sequence[Mapping[str, Any]], *, note: str | None,
                  tool: str | None, profile: str, max_tries: int) -> Request:
    """``replan --fleet``: the planning request from the coordinator's views of the composite and its
    children (what shipped is kept, what failed and why, what never ran). Refused (``Conflict``) unless a
    child is quarantined and none is running; the coordinator checks the same when the plan is applied."""
    spec = parent.get("job") or {}
    states = {str(v["job"]["id"]): str((v.get("meta") or {}).get("state")) for v in children}
    if "quarantined" not in states.values():
        state = (parent.get("rollup") or {}).get("state")
        raise Conflict(f"job {spec.get('id')}: is {state}; only a composite with quarantined children is re-planned")
    kept, context = [], []
    for view in children:
        child, meta = view["job"], view.get("meta") or {}
        if meta.get("state") == "leased":
            raise Conflict(f"job {spec.get('id')}: child {child['id']} is running; re-plan once it has finished")
        if meta.get("state") == "shipped":
            kept.append(child)
        # A quarantining report does not count an attempt: each lease the child had was one run.
        tries = max(int(meta.get("attempts") or 0), len(meta.get("leases") or ()))
        line = plan_prompt.history_line(str(child["id"]), str(meta.get("state")), child, tries, meta.get("reason"))
        if line is not None:
            context.append(line)
    return _request(spec, _epic(spec, note), kept, context, tool=tool, profile=profile, max_tries=max_tries)


def apply(settings: Settings, queue: LocalQueue, parent: Parent, outcome: Outcome) -> list[str]:
    """Swap the unshipped children for the approved plan's; the ids queued. The planner's runs count in
    the parent's budget."""
    job = Job.from_dict(outcome.spec, where=f"re-plan of {parent.id}")
    return composite_queue.replan(queue, parent, job, lambda j: check_known(j, settings.tools, settings.profiles),
                                  (outcome.spent_s, outcome.cost_usd))

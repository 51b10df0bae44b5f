"""``agent-queue replan`` on the local queue: a planning request from a composite's history, and its approved result.

The planner is shown what shipped (kept unchanged: the idempotent re-run),
what failed and why, and what never ran; its new plan replaces only the
unshipped children (``composite_queue.replan`` holds the graph and budget
rules and the crash-safe swap).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_queue import composite_queue
from agent_queue.composite_queue import Parent
from agent_queue.errors import Conflict, NotFound
from agent_queue.inbox import LocalQueue
from agent_queue.jobs import Job
from agent_queue.planner import Request
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
    planned_by = parent.spec.get("plan")
    planned_by = planned_by if isinstance(planned_by, dict) else {}
    epic = parent.spec.get("prompt") or planned_by.get("prompt")
    if not isinstance(epic, str) or not epic.strip():
        raise Conflict(f"job {parent.id}: has no epic prompt to re-plan from")
    if note:
        epic = f"{epic}\n\nNote for this re-plan: {note}"
    kept, context = composite_queue.replan_context(queue, parent)
    repo = parent.spec.get("repo")
    return Request(epic=epic, parent=parent.spec, tool=tool or str(planned_by.get("tool") or "claude"),
                   profile=profile, max_tries=max_tries, kept=kept, context=context,
                   repo=Path(repo) if isinstance(repo, str) and Path(repo).is_dir() else None)


def apply(settings: Settings, queue: LocalQueue, parent: Parent, spec: dict[str, Any]) -> list[str]:
    """Swap the unshipped children for the approved plan's; the ids queued."""
    job = Job.from_dict(spec, where=f"re-plan of {parent.id}")
    return composite_queue.replan(queue, parent, job, lambda j: check_known(j, settings.tools, settings.profiles))

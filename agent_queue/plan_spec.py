"""From a planner agent's answer to a composite spec: find the JSON, complete it, list what is wrong with it.

The answer is third-party text: the plan is the last fenced ```json block that
decodes to an object, else the last top-level JSON object in it. ``compose``
turns the agent's children into the composite spec a person approves (the
epic's id prefixed to each child id, the epic's repo given to children that
name none). ``problems`` applies the rules every composite obeys (job fields,
known tools and profiles, ``composite.validate_graph``,
``composite.budget_problems``), one line per problem, so a refused plan can be
fed back to the agent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent_queue import composite
from agent_queue.errors import InvalidJob
from agent_queue.jobs import Job

# Only the end of a long answer is searched: the plan comes last, and a scan must stay linear-ish.
SCAN_CHARS = 1024 * 1024
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)


class NoPlan(ValueError):
    """The answer holds no JSON object that could be a plan."""


def extract(answer: str) -> dict[str, Any]:
    """The plan object in ``answer``; ``NoPlan`` naming why there is none."""
    text = answer[-SCAN_CHARS:]
    for block in reversed(_FENCE.findall(text)):
        try:
            value = json.loads(block)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    found = _last_top_level_object(text)
    if found is None:
        raise NoPlan("the answer holds no JSON object (expected a ```json block with {\"children\": [...]})")
    return found


def _last_top_level_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    last, i = None, text.find("{")
    while i != -1:
        try:
            value, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(value, dict):
            last = value
        i = text.find("{", end)
    return last


def compose(plan: Mapping[str, Any], parent: Mapping[str, Any],
            kept: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The composite spec: ``parent``'s fields (id, prompt, repo, verify, budget...), ``kept`` children
    (shipped ones when re-planning, unchanged), then the plan's children with the epic's id prefixed."""
    epic = str(parent["id"])
    raw = plan.get("children")
    children = [dict(c) for c in kept]
    for child in raw if isinstance(raw, list) else []:
        children.append(_child(child, epic, parent) if isinstance(child, Mapping) else child)
    return {**dict(parent), "kind": "composite", "children": children if isinstance(raw, list) else raw}


def _child(child: Mapping[str, Any], epic: str, parent: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in child.items() if k != "parentId"}
    if isinstance(out.get("id"), str):
        out["id"] = prefixed(out["id"], epic)
    deps = out.get("dependsOn")
    if isinstance(deps, list):
        out["dependsOn"] = [prefixed(d, epic) if isinstance(d, str) else d for d in deps]
    if parent.get("repo") and "repo" not in out:
        out["repo"] = parent["repo"]
    return out


def prefixed(child_id: str, epic: str) -> str:
    """``epic.child``: child ids are unique in the queue, so each epic's own names cannot collide."""
    return child_id if child_id.startswith(f"{epic}.") else f"{epic}.{child_id}"


def problems(spec: Mapping[str, Any], check_child: Callable[[Job], None],
             fixed: Sequence[str] = ()) -> list[str]:
    """Everything wrong with ``spec``, one line per problem; empty when it may be enqueued.

    ``check_child`` refuses a child this host cannot name (unknown tool or
    profile); ``fixed`` are ids the plan may not redefine (shipped children).
    """
    raw = spec.get("children")
    if not isinstance(raw, list) or not raw:
        return ['the plan needs a non-empty "children" list']
    lines = []
    redefined = [c.get("id") for c in raw[len(fixed):] if isinstance(c, Mapping) and c.get("id") in fixed]
    lines += [f"child {cid!r} already shipped: it is kept as it is, do not plan it again" for cid in redefined]
    for i, child in enumerate(raw):
        try:
            check_child(Job.from_dict(child, where=f"children[{i}]"))
        except InvalidJob as exc:
            lines.append(exc.message)
    if lines:
        return lines
    try:
        job = Job.from_dict(spec, where="plan")
        composite.validate_graph(job.children, where="plan")
    except InvalidJob as exc:
        return [exc.message]
    return composite.budget_problems(job, where="plan")

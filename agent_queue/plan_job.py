"""Planning in the queue, the rules both queues share: a composite with a ``plan`` instead of ``children``.

``{"id": "epic", "kind": "composite", "plan": {"tool": "claude", "prompt": "...", "approve": true}}``

The queue creates the parent and one planning child ``<id>.plan-1``: an
ordinary leaf job of the plan's tool (leased, fenced, retried like any job,
its run time and cost counted in the parent's budget) whose prompt is the
built-in planning prompt. Its attempt record carries the agent's answer
(``answer``). When it ships, ``judge`` reads the plan from the answer and
checks it with the composite rules; a refused plan queues ``<id>.plan-2``
with the problems in its prompt, up to ``maxTries``. A valid plan becomes the
children (``planned`` first when ``approve`` is set, until a person approves).

The parent's plan record (``plan`` in the parent's result) is:
``{"state": planning | planned | expanded | failed, "tries": n, "job": current planning child,
"refused": [[problem, ...], ...], "reason": ..., "children": [planned child ids]}``.
"""

from __future__ import annotations

from agent_queue import plan_prompt, plan_spec
from agent_queue.errors import InvalidJob
from agent_queue.jobs import NAME_RE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from agent_queue.jobs import Job

PLANNING, PLANNED, EXPANDED, FAILED = "planning", "planned", "expanded", "failed"
DEFAULT_TRIES = 3
MAX_ANSWER_CHARS = 256 * 1024  # what a planning attempt's record (and its report) carries of the answer
_KEYS = {"tool", "prompt", "approve", "profile", "maxTries", "tools", "profiles"}


def plan_field(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The composite's ``plan``, checked; ``InvalidJob`` naming the bad key."""
    plan = spec.get("plan")
    w = f"{where}.plan"
    if not isinstance(plan, dict):
        raise InvalidJob(f"{w}: must be an object with tool and prompt")
    unknown = sorted(set(plan) - _KEYS)
    if unknown:
        raise InvalidJob(f"{w}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    for key in ("tool", "profile"):
        if key in plan and not (isinstance(plan[key], str) and NAME_RE.fullmatch(plan[key])):
            raise InvalidJob(f"{w}.{key}: {str(plan[key])[:40]!r} is not a valid name")
    if "tool" not in plan:
        raise InvalidJob(f"{w}.tool: missing")
    if not isinstance(plan.get("prompt"), str) or not plan["prompt"].strip():
        raise InvalidJob(f"{w}.prompt: the epic must be a non-empty string")
    if not isinstance(plan.get("approve", False), bool):
        raise InvalidJob(f"{w}.approve: must be true or false")
    tries = plan.get("maxTries", DEFAULT_TRIES)
    if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= 20:
        raise InvalidJob(f"{w}.maxTries: must be an integer in [1, 20]")
    for key in ("tools", "profiles"):
        if key in plan and not (isinstance(plan[key], list) and all(isinstance(t, str) for t in plan[key])):
            raise InvalidJob(f"{w}.{key}: must be a list of names")
    return plan


def with_rules(spec: Mapping[str, Any], tools: Sequence[str], profiles: Sequence[str]) -> dict[str, Any]:
    """The spec with the tools and profiles its children may name (the enqueuing host's), unless it says."""
    plan = dict(spec["plan"])
    plan.setdefault("tools", sorted(tools))
    plan.setdefault("profiles", sorted(profiles))
    return {**spec, "plan": plan}


def planning_child(parent: Mapping[str, Any], number: int, problems: Sequence[str] = ()) -> dict[str, Any]:
    """The leaf spec of planning try ``number`` (``<id>.plan-<n>``): the plan's tool, the planning prompt."""
    plan = parent["plan"]
    prompt = plan_prompt.build(plan["prompt"], tool=plan["tool"], tools=plan.get("tools") or [plan["tool"]],
                               profiles=plan.get("profiles") or ["default"], budget=plan_prompt.budget_text(parent),
                               problems=problems)
    spec: dict[str, Any] = {"id": f"{parent['id']}.plan-{number}", "tool": plan["tool"],
                            "profile": plan.get("profile", "default"), "prompt": prompt,
                            "parentId": parent["id"], "planFor": parent["id"], "budget": {"maxAttempts": 2}}
    spec.update({k: parent[k] for k in ("repo", "base", "env", "requires") if parent.get(k)})
    return spec


def is_planning(spec: Mapping[str, Any]) -> bool:
    return bool(spec.get("planFor"))


def judge(parent: Mapping[str, Any], answer: str) -> tuple[dict[str, Any] | None, list[str]]:
    """(the composite spec with its children, []) for a valid plan in ``answer``; else (None, problems)."""
    plan = parent["plan"]
    tools, profiles = set(plan.get("tools") or ()), set(plan.get("profiles") or ())

    def check(job: Job) -> None:
        if tools and job.tool not in tools:
            raise InvalidJob(f"job {job.id}.tool: {job.tool!r} is not one of {', '.join(sorted(tools))}")
        if profiles and job.profile not in profiles:
            raise InvalidJob(f"job {job.id}.profile: {job.profile!r} is not one of {', '.join(sorted(profiles))}")

    fields = {k: v for k, v in parent.items() if k not in ("plan", "kind", "children")}
    try:
        spec = plan_spec.compose(plan_spec.extract(answer), {**fields, "prompt": plan["prompt"]})
    except plan_spec.NoPlan as exc:
        return None, [str(exc)]
    problems = plan_spec.problems(spec, check)
    return (None, problems) if problems else (spec, [])


def after_try(parent: Mapping[str, Any], record: Mapping[str, Any], answer: str
              ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The parent's next plan record after its current planning child shipped with ``answer``, and
    the spec of the next planning child to queue (None: no further try)."""
    spec, problems = judge(parent, answer)
    if spec is not None:
        state = PLANNED if parent["plan"].get("approve") else EXPANDED
        return {**record, "state": state, "children": [c["id"] for c in spec["children"]], "spec": spec}, None
    refused = [*record.get("refused", []), problems]
    tries = int(record.get("tries", 1))
    if tries >= int(parent["plan"].get("maxTries", DEFAULT_TRIES)):
        reason = f"no valid plan after {tries} tries: " + "; ".join(problems)
        return {**record, "state": FAILED, "refused": refused, "reason": reason}, None
    child = planning_child(parent, tries + 1, problems)
    return {**record, "tries": tries + 1, "job": child["id"], "refused": refused}, child


def first_record(parent: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plan record of a newly enqueued planned composite, and its first planning child."""
    child = planning_child(parent, 1)
    return {"state": PLANNING, "tries": 1, "job": child["id"], "refused": []}, child


def failed_try(record: Mapping[str, Any], reason: str) -> dict[str, Any]:
    return {**record, "state": FAILED, "reason": f"planning job {record.get('job')} quarantined: {reason}"}


def shape_rollup(out: dict[str, Any], record: Mapping[str, Any] | None,
                 family: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The rollup of a planned composite: ``planned`` until approved, ``quarantined`` when planning failed,
    never ``shipped`` while planning; ``plan`` summarises the planning (state, tries, problems) and draws
    the plan (``dag``: each planned child's id, dependsOn and state, ``planned`` until it exists).
    With the ``family``, ``budget.planSpent`` is what the planning runs spent of the parent's budget."""
    if not record:
        return out
    state = record.get("state")
    summary: dict[str, Any] = {"state": state, "tries": record.get("tries"),
                               "refused": len(record.get("refused") or ())}
    if record.get("children"):
        summary["children"] = list(record["children"])
    dag = plan_dag(record, family, {c['id']: c['state'] for c in out.get('children') or ()})
    if dag:
        summary["dag"] = dag
    out["plan"] = summary
    if family is not None:
        planning = [m for m in family.values() if is_planning_id(str(m["id"]), record)]
        out.setdefault("budget", {})["planSpent"] = {
            "spentS": round(sum(float(m.get("spentS") or 0.0) for m in planning), 3),
            "costUsd": round(sum(float(m.get("costUsd") or 0.0) for m in planning), 6)}
    if state == PLANNED and out["state"] not in ("quarantined",):
        out["state"] = PLANNED
    elif state == FAILED:
        out.update(state="quarantined", reason=record.get("reason"))
    elif state == PLANNING and out["state"] == "shipped":
        out["state"] = "running"
    if str(out.get("reason") or "").startswith("over budget") and out.get("budget", {}).get("planSpent"):
        spent = out["budget"]["planSpent"]
        out["reason"] += f" (planning runs: {spent['spentS']:g}s, ${spent['costUsd']:.4f})"
    return out


def is_planning_id(child_id: str, record: Mapping[str, Any]) -> bool:
    """``child_id`` is one of the parent's planning children (``<id>.plan-<n>``, n up to its tries)."""
    job = str(record.get("job") or "")
    stem = job.rpartition(".plan-")[0]
    return bool(stem) and child_id.startswith(f"{stem}.plan-") and child_id[len(stem) + 6:].isdigit()


def plan_dag(record: Mapping[str, Any], family: Mapping[str, Mapping[str, Any]] | None,
             states: Mapping[str, str]) -> list[dict[str, Any]]:
    """The plan as nodes ``{id, dependsOn, state}``: the planned children (``planned`` while they wait for
    approval), and the family's other children (a re-plan's) in their rollup ``states``."""
    planned = (record.get("spec") or {}).get("children") or []
    family = {cid: m for cid, m in (family or {}).items() if not is_planning_id(cid, record)}
    nodes = {str(c["id"]): {"id": str(c["id"]), "dependsOn": list(c.get("dependsOn") or ()), "state": PLANNED}
             for c in planned if isinstance(c, dict) and "id" in c}
    for cid, m in family.items():
        nodes[cid] = {"id": cid, "dependsOn": list(m.get("dependsOn") or ()), "state": states.get(cid, m["state"])}
    listed = set(record.get("children") or ())
    return [n for cid, n in nodes.items() if cid in family or cid in listed]


def plan_line(rollup: Mapping[str, Any], fleet: bool = False) -> str | None:
    """The status line of a composite's plan (None: it has none), for ``status`` and ``fleet-status``."""
    plan = rollup.get("plan")
    if not plan:
        return None
    text = f"  plan: {plan.get('state')} (try {plan.get('tries')}, {plan.get('refused')} refused)"
    if plan.get("children"):
        text += ": " + ", ".join(plan["children"])
    if plan.get("state") == PLANNED:
        text += f"; approve with: agent-queue approve {rollup.get('id')}{' --fleet' if fleet else ''}"
    return text


def answer_of(record: Mapping[str, Any] | None) -> str:
    """The answer a planning attempt's record carries (empty when none)."""
    answer = (record or {}).get("answer")
    return answer if isinstance(answer, str) else ""


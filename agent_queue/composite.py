"""Validation of a composite job's child graph, shared by the coordinator and the local queue.

A composite job is a parent plus leaf children linked by ``dependsOn`` (ids of
siblings that must ship first) and an optional ``phase`` (no child of phase
N+1 runs before every child of phase N shipped). Whoever accepts a composite
job calls ``validate_graph`` once, at the edge, so nothing downstream can meet
an unknown dependency, a duplicate id or a cycle that would block work forever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent_queue.errors import InvalidJob

# The coordinator's per-call seam path imports this module: typing and jobs only for the type checker.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from agent_queue.jobs import Job


def validate_graph(children: Sequence[Job], *, where: str = "composite") -> list[str]:
    """Return the child ids in a dependency-respecting order; raise ``InvalidJob`` naming the problem.

    Refuses duplicate ids, a ``dependsOn`` naming no sibling (or the child itself),
    cycles (the message names the ids on the cycle), and a dependency on a child
    of a later phase (it could never ship before its dependent's phase opens).
    """
    by_id: dict[str, Job] = {}
    for child in children:
        if child.id in by_id:
            raise InvalidJob(f"{where}: duplicate child id {child.id!r}")
        by_id[child.id] = child
    for child in children:
        for dep in child.depends_on:
            if dep == child.id:
                raise InvalidJob(f"{where}: child {child.id!r} depends on itself")
            if dep not in by_id:
                raise InvalidJob(f"{where}: child {child.id!r} depends on unknown id {dep!r}")
            dep_phase = by_id[dep].phase
            if child.phase is not None and dep_phase is not None and dep_phase > child.phase:
                raise InvalidJob(
                    f"{where}: child {child.id!r} (phase {child.phase}) depends on {dep!r} "
                    f"of the later phase {dep_phase}"
                )
    return _topological_order(by_id, where)


def budget_problems(job: Job, *, where: str = "composite") -> list[str]:
    """What makes a composite over budget before anything runs, one line per problem (empty: none).

    A child's ``budget.timeoutS`` / ``costUsd`` is what one attempt of it may
    spend; the children's together may not exceed the parent's budget, which
    ``budget_stop`` enforces at run time anyway: a plan that exceeds it on paper
    would only be quarantined half-way through.
    """
    problems = []
    limits = {"timeoutS": job.budget.timeout_s, "costUsd": job.budget.cost_usd}
    for key, limit in limits.items():
        if limit is None:
            continue
        asked = {c.id: v for c in job.children
                 if (v := c.budget.timeout_s if key == "timeoutS" else c.budget.cost_usd) is not None}
        problems += [f"{where}: child {cid!r} budget.{key} {v:g} exceeds the parent's budget.{key} {limit:g}"
                     for cid, v in asked.items() if v > limit]
        if sum(asked.values()) > limit:
            problems.append(f"{where}: the children's budget.{key} add up to {sum(asked.values()):g}, "
                            f"over the parent's budget.{key} {limit:g}")
    return problems


def validate_budget(job: Job, *, where: str = "composite") -> None:
    """Raise ``InvalidJob`` (one line per problem) when the children's budgets exceed the parent's."""
    problems = budget_problems(job, where=where)
    if problems:
        raise InvalidJob("\n".join(problems))


def _topological_order(by_id: dict[str, Job], where: str) -> list[str]:
    """Depth-first order; a back edge is a cycle, reported as ``a -> b -> a``."""
    order: list[str] = []
    done: set[str] = set()
    for root in by_id:
        if root in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                path.append(node)
                on_path.add(node)
            deps = by_id[node].depends_on
            if i < len(deps):
                stack.append((node, i + 1))
                dep = deps[i]
                if dep in on_path:
                    cycle = path[path.index(dep):] + [dep]
                    raise InvalidJob(f"{where}: dependency cycle {' -> '.join(cycle)}")
                if dep not in done:
                    stack.append((dep, 0))
                continue
            path.pop()
            on_path.discard(node)
            done.add(node)
            order.append(node)
    return order


# ---------------------------------------------------------------- scheduling and rollup (shared)
#
# Both queues describe a composite's children as a "family": child id -> a plain
# dict {"id", "state", "dependsOn", "phase", "spentS", "costUsd"} where state is
# where the child record is (queued | running | shipped | quarantined). Plain
# dicts keep this importable from the coordinator's per-call seam path cheaply.
# The rollup is always computed from the children, never stored.

SHIPPED = "shipped"
QUARANTINED = "quarantined"
CANCELLED = "cancelled"
ROLLUP_KEYS = ("queued", "running", "blocked", "shipped", "quarantined", "cancelled")
# A child in one of these never ships: whatever waits for it is blocked.
_DEAD = (QUARANTINED, "blocked", CANCELLED)


def verify_spec(parent: Mapping[str, Any]) -> dict[str, Any]:
    """The parent's verify gate as a leaf spec (wire form): a shell job with the parent's id, repo and ship.

    Both queues run it as an ordinary job, so it gets the parent's workspace (the
    parent's repo branch, else a plain directory) and the usual verify-less tool run.
    """
    spec: dict[str, Any] = {"id": parent["id"], "kind": "leaf", "tool": "shell",
                            "profile": parent.get("profile", "default"), "command": list(parent["verify"])}
    spec.update({k: parent[k] for k in ("repo", "base", "env", "ship") if parent.get(k)})
    attempts = (parent.get("budget") or {}).get("maxAttempts")
    if attempts is not None:
        spec["budget"] = {"maxAttempts": attempts}
    return spec


def member(child_id: str, state: str, spec: Mapping[str, Any], spent_s: float = 0.0,
           cost_usd: float = 0.0) -> dict[str, Any]:
    """One family member from a stored child spec (wire form) and where its record is."""
    return {"id": child_id, "state": state, "dependsOn": list(spec.get("dependsOn") or ()),
            "phase": spec.get("phase"), "spentS": float(spent_s), "costUsd": float(cost_usd)}


def blocker(child: Mapping[str, Any], family: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why ``child`` may not start now (None: it may): a dependency or an earlier phase has not shipped."""
    for dep in child.get("dependsOn", ()):
        sib = family.get(dep)
        if sib is None or sib["state"] != SHIPPED:
            return f"waiting for {dep}"
    phase = child.get("phase")
    if phase is None:
        return None
    for sib in family.values():
        if sib.get("phase") is not None and sib["phase"] < phase and sib["state"] != SHIPPED:
            return f"phase {phase} waits for phase {sib['phase']} ({sib['id']})"
    return None


def statuses(family: Mapping[str, Mapping[str, Any]], stopped: bool = False) -> dict[str, str]:
    """Each child's rollup status; a queued child that can never start is ``blocked``.

    Blocked: a dependency (or an earlier-phase sibling) is quarantined, cancelled or
    itself blocked, or ``stopped`` (the parent's budget is spent). Propagation runs to
    a fixed point, so the order of ``family`` does not matter.
    """
    out = {cid: {"leased": "running"}.get(m["state"], m["state"]) for cid, m in family.items()}
    if stopped:
        return {cid: "blocked" if st == "queued" else st for cid, st in out.items()}
    dead = _DEAD
    changed = True
    while changed:
        changed = False
        for cid, m in family.items():
            if out[cid] != "queued":
                continue
            phase = m.get("phase")
            if any(out.get(dep, "blocked") in dead for dep in m.get("dependsOn", ())) or (
                phase is not None and any(
                    s.get("phase") is not None and s["phase"] < phase and out[sid] in dead
                    for sid, s in family.items()
                )
            ):
                out[cid] = "blocked"
                changed = True
    return out


Spend = tuple[float, float]  # (seconds, dollars)


def spent(family: Mapping[str, Mapping[str, Any]], prior: Spend = (0.0, 0.0)) -> Spend:
    """(seconds, dollars) spent by every child's attempts so far, plus ``prior``: what the parent spent
    outside its current children (planning runs, children a re-plan replaced)."""
    return (round(prior[0] + sum(float(m.get("spentS") or 0.0) for m in family.values()), 3),
            round(prior[1] + sum(float(m.get("costUsd") or 0.0) for m in family.values()), 6))


def budget_stop(budget: Mapping[str, Any] | None, family: Mapping[str, Mapping[str, Any]],
                prior: Spend = (0.0, 0.0)) -> str | None:
    """The quarantine reason when the children have spent more than the parent's budget, else None.

    A parent's ``budget.timeoutS`` is the run time of all children together and
    ``budget.costUsd`` their summed cost; ``maxAttempts`` applies to its verify.
    """
    if not budget:
        return None
    secs, cost = spent(family, prior)
    limit_s, limit_cost = budget.get("timeoutS"), budget.get("costUsd")
    if limit_s is not None and secs > float(limit_s):
        return f"over budget: children ran {secs:g}s, budget.timeoutS is {float(limit_s):g}s"
    if limit_cost is not None and cost > float(limit_cost):
        return f"over budget: children cost ${cost:.4f}, budget.costUsd is ${float(limit_cost):.4f}"
    return None


def rollup(family: Mapping[str, Mapping[str, Any]], order: Sequence[str] | None = None, *,
           budget: Mapping[str, Any] | None = None, verify: str | None = None,
           prior: Spend = (0.0, 0.0)) -> dict[str, Any]:
    """The parent's state, computed from its children (``verify``: None when it has no verify gate,
    else pending | running | passed | failed | cancelled).

    shipped: every child shipped (and the parent's verify passed); quarantined: over
    budget, verify failed, or a child quarantined and nothing else can run; cancelled:
    the parent was cancelled, or a child was and nothing else can run; blocked: a child
    is quarantined, cancelled or blocked while others still run; else running / queued.
    """
    stop = budget_stop(budget, family, prior)
    status = statuses(family, stopped=stop is not None)
    ids = [cid for cid in (order or ()) if cid in status] + [cid for cid in status if cid not in (order or ())]
    counts = dict.fromkeys(ROLLUP_KEYS, 0)
    for st in status.values():
        counts[st] += 1
    state, reason = _rollup_state(status, counts, stop, verify)
    secs, cost = spent(family, prior)
    out: dict[str, Any] = {
        "state": state, "counts": counts, "children": [{"id": cid, "state": status[cid]} for cid in ids],
        "budget": {"spentS": secs, "costUsd": cost},
    }
    if budget:
        out["budget"].update(limit={k: budget[k] for k in ("timeoutS", "costUsd") if budget.get(k) is not None})
    if verify is not None:
        out["verify"] = verify
    if reason is not None:
        out["reason"] = reason
    return out


def _rollup_state(status: Mapping[str, str], counts: Mapping[str, int], stop: str | None,
                  verify: str | None) -> tuple[str, str | None]:
    if stop is not None:
        return QUARANTINED, stop
    if counts["shipped"] == len(status):
        if verify in (None, "passed"):
            return SHIPPED, None
        if verify == "failed":
            return QUARANTINED, "the parent's verify gate failed"
        if verify == CANCELLED:
            return CANCELLED, "the parent's verify gate was cancelled"
        return ("running" if verify == "running" else "queued"), None
    if counts["queued"] + counts["running"] == 0:
        bad = sorted(cid for cid, st in status.items() if st == QUARANTINED)
        if bad:
            return QUARANTINED, f"child {', '.join(bad)} quarantined"
        gone = sorted(cid for cid, st in status.items() if st == CANCELLED)
        return (CANCELLED, f"child {', '.join(gone)} cancelled") if gone else (QUARANTINED, "no child can run")
    if counts["blocked"] or counts["quarantined"] or counts["cancelled"]:
        return "blocked", None
    return ("running" if counts["running"] else "queued"), None

"""The coordinator's composite rules: a parent and its children, the parent's verify gate, re-runs.

A composite's family rules (DAG order, phases, budget, rollup) are shared with
the local queue and live in ``agent_queue.composite``; this module applies them
to coordinator records:

- **enqueue**: the parent is archived first (immutable from then on), then its
  children are created as ordinary queued jobs; the same enqueue again creates
  the children a crash left missing and re-runs what did not ship (``rerun``).
- **readiness** (``family_allows``): a child is claimable only when its
  family's gates (phase order, budget) let it run.
- **verify gate** (``maybe_verify``/``finish_verify``): once every child
  shipped, a verify record is queued under the parent's id; its ending writes
  a new version of the parent. Epochs continue across rounds, so a zombie of an
  earlier round is always fenced.
- **re-run** (``rerun``/``revive``): quarantined children back to queued with a
  fresh attempt count (their earlier cost kept for the budget) and the next
  ``round``, a failed verify queued again.
- **cancel** (``cancel_family``): the children not ended and the verify gate.
- **re-plan** (``replan``): a person's new plan replaces the unshipped children of a
  composite with a quarantined child; shipped ones stay as they are, with their history.
- **rollup**: the parent's state as answered, computed from its children.

Imported only when a composite is involved (most seam calls never are).
"""

from __future__ import annotations

from agent_queue import composite, plan_job
from agent_queue.errors import Conflict, InvalidJob, NotFound
from coordinator_stub.records import (
    Ctx,
    JobState,
    create,
    digest_of,
    find,
    find_opt,
    new_record,
    not_before_of,
    num,
    stale,
    state_of,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from agent_queue.jobs import Job
    from coordinator_stub.stores.base import Tx


def create_composite(c: Ctx, job: Job, raw: Mapping[str, Any], digest: str) -> None:
    if "plan" in job.extra:
        create_planned(c, job, digest)
        return
    order = composite.validate_graph(job.children, where=f"job {job.id}")
    composite.validate_budget(job, where=f"job {job.id}")
    raw_children = raw.get("children") or []
    for child in job.children:
        if child.id == job.id:
            raise InvalidJob(f"job {job.id}: a child has the parent's id")
        if find_opt(c.tx, child.id) is not None:
            raise Conflict(f"job {job.id}: child id {child.id!r} already exists")
    child_nb = [not_before_of(r, f"job {ch.id}") for ch, r in zip(job.children, raw_children, strict=True)]
    spec = job.to_dict()
    spec.pop("children", None)
    parent = new_record(c, spec, None, digest)
    parent.update(state=JobState.COMPOSITE, childIds=[ch.id for ch in job.children], order=order)
    c.tx.archive(job.id, parent)  # immutable from here on: the write-once archive is its home
    for child, nb in zip(job.children, child_nb, strict=True):
        create(c, child.to_dict(), nb, digest_of(child, {}))
    c.ev["children"] = len(job.children)


def create_planned(c: Ctx, job: Job, digest: str) -> None:
    """A composite with a ``plan``: the parent (archived first), then its first planning child."""
    from agent_queue.jobs import Job

    spec = job.to_dict()
    plan_job.plan_field(spec, f"job {job.id}")
    record, first = plan_job.first_record(spec)
    child = Job.from_dict(first, where=f"job {job.id} planning")
    if find_opt(c.tx, child.id) is not None:
        raise Conflict(f"job {job.id}: child id {child.id!r} already exists")
    parent = new_record(c, spec, None, digest)
    parent.update(state=JobState.COMPOSITE, childIds=[child.id], order=[child.id], plan=record)
    c.tx.archive(job.id, parent)
    create(c, child.to_dict(), None, digest_of(child, {}))
    c.ev["children"] = 1


def after_planning(c: Ctx, rec: dict[str, Any], state: str) -> None:
    """A child ended: when it is its parent's current planning child, judge its answer (shipped) and
    queue the next try, or expand the plan. (A hot record's spec is a summary: the id decides.)"""
    from agent_queue.jobs import Job

    parent = c.tx.archived(rec["spec"]["parentId"])
    record = (parent or {}).get("plan")
    if parent is None or not record or record.get("job") != rec["spec"]["id"] or record["state"] != plan_job.PLANNING:
        return
    if state != JobState.SHIPPED:
        c.tx.supersede(parent["spec"]["id"], {**parent, "plan": plan_job.failed_try(record, str(rec.get("reason")))})
        return
    record, nxt = plan_job.after_try(parent["spec"], record, plan_job.answer_of(rec.get("detail")))
    parent = {**parent, "plan": record}
    if nxt is not None:
        child = Job.from_dict(nxt, where="planning")
        create(c, child.to_dict(), None, digest_of(child, {}))
        parent.update(childIds=[*parent["childIds"], child.id], order=[*parent["order"], child.id])
    if record["state"] == plan_job.EXPANDED:
        _expand(c, parent)
    else:
        c.tx.supersede(parent["spec"]["id"], parent)


def approve(c: Ctx, job_id: str) -> list[str]:
    """A person approved the plan of ``job_id``: its children are created. ``Conflict`` unless planned."""
    parent = find_opt(c.tx, job_id)
    record = (parent or {}).get("plan") or {}
    if parent is None:
        raise NotFound(f"job {job_id}: no such job")
    if record.get("state") != plan_job.PLANNED:
        raise Conflict(f"job {job_id}: nothing to approve (plan state: {record.get('state') or 'no plan'})")
    return _expand(c, {**parent, "plan": {**record, "state": plan_job.EXPANDED, "approvedAt": c.now}})


def _expand(c: Ctx, parent: dict[str, Any]) -> list[str]:
    """The planned children are created and join the family after the planning children."""
    from agent_queue.jobs import Job

    record = parent["plan"]
    job = Job.from_dict(record["spec"], where=f"job {parent['spec']['id']} plan")
    taken = [ch.id for ch in job.children if find_opt(c.tx, ch.id) is not None]
    if taken:
        record = {**record, "state": plan_job.FAILED, "reason": f"child id {taken[0]!r} already exists"}
        c.tx.supersede(parent["spec"]["id"], {**parent, "plan": record})
        return []
    order = composite.validate_graph(job.children, where=f"job {job.id}")
    for child in job.children:
        create(c, child.to_dict(), None, digest_of(child, {}))
    ids = [ch.id for ch in job.children]
    c.tx.supersede(parent["spec"]["id"], {**parent, "childIds": [*parent["childIds"], *ids],
                                          "order": [*parent["order"], *order], "plan": {**record, "done": True}})
    c.ev["queued"] = ids
    return ids


def create_missing_children(c: Ctx, job: Job, raw: Mapping[str, Any]) -> None:
    """A crash between archiving the parent and writing its children leaves them missing: the
    same enqueue again creates them (the parent is archived first, so this is the only gap)."""
    raw_children = raw.get("children") or []
    for child, raw_child in zip(job.children, raw_children, strict=False):
        if find_opt(c.tx, child.id) is None:
            create(c, child.to_dict(), not_before_of(raw_child, f"job {child.id}"), digest_of(child, {}))
            c.ev.setdefault("created", []).append(child.id)


def family_allows(tx: Tx, spec: Mapping[str, Any], parents: dict[str, dict[str, Any] | None]) -> bool:
    """A composite child passes its family's gates (phases, budget); ``parents`` caches lookups per claim."""
    parent_id = spec["parentId"]
    if parent_id not in parents:
        parents[parent_id] = tx.archived(parent_id)
    parent = parents[parent_id]
    if parent is None or parent.get("state") != JobState.COMPOSITE:
        return True
    family = _family(tx, parent)
    if composite.budget_stop(parent["spec"].get("budget"), family, prior(parent)) is not None:
        return False
    if spec["id"] not in family:
        return True  # a child a re-plan replaced: it is no longer the family's (never claimable: retired)
    return composite.blocker(family[spec["id"]], family) is None


def maybe_verify(c: Ctx, parent_id: str, force: bool = False) -> None:
    """Queue the parent's verify gate once every child shipped (``force``: again after it failed)."""
    parent = c.tx.archived(parent_id)
    if parent is None or parent.get("state") != JobState.COMPOSITE or not parent["spec"].get("verify"):
        return
    live = c.tx.hot["jobs"].get(parent_id)
    if live is not None and not stale(c.tx, live):
        return
    if parent.get("plan") and not parent["plan"].get("done"):
        return  # planning, or waiting for approval: the children are not all there yet
    outcome = parent.get("verify") or {}
    if outcome.get("state") == "passed" or (outcome.get("state") == "failed" and not force):
        return
    family = _family(c.tx, parent)
    if any(m["state"] != JobState.SHIPPED for m in family.values()):
        return
    if composite.budget_stop(parent["spec"].get("budget"), family, prior(parent)) is not None:
        return
    rec = new_record(c, composite.verify_spec(parent["spec"]), None, "")
    # Epochs continue across rounds, so a zombie of an earlier round is always fenced.
    rec.update(verifyOf=parent_id, verifyRound=int(outcome.get("round", 0)) + 1,
               leaseEpoch=int(outcome.get("leaseEpoch", 0)))
    c.tx.hot["jobs"][parent_id] = rec
    c.tx.touch()
    c.ev["verifyQueued"] = parent_id


def finish_verify(c: Ctx, rec: dict[str, Any], state: str, reason: str, last_end: dict[str, Any]) -> None:
    """The verify gate ended: a new version of the parent records it (and answers exact replays)."""
    parent_id = rec["verifyOf"]
    parent = c.tx.archived(parent_id)
    if parent is None:  # cannot happen: the parent is archived before its children exist
        raise NotFound(f"job {parent_id}: composite parent missing")
    word = {JobState.SHIPPED: "passed", JobState.CANCELLED: "cancelled"}.get(state, "failed")
    verify = {"state": word, "round": rec["verifyRound"],
              "leaseEpoch": rec["leaseEpoch"], "attempts": rec["attempts"],
              "reason": None if state == JobState.SHIPPED else reason, "finishedAt": c.now,
              "detail": rec.get("detail")}
    c.tx.supersede(parent_id, {**parent, "verify": verify, "lastEnd": last_end})
    del c.tx.hot["jobs"][parent_id]
    c.tx.touch()


def rerun(c: Ctx, parent: dict[str, Any]) -> list[str]:
    """Quarantined children back to queued (attempts reset); a failed verify queued again."""
    requeued = []
    for cid in parent["childIds"]:
        rec = c.tx.archived(cid)
        if rec is not None and rec["state"] == JobState.QUARANTINED:
            revive(c, rec)
            requeued.append(cid)
    if (parent.get("verify") or {}).get("state") == "failed":
        maybe_verify(c, parent["spec"]["id"], force=True)
        if c.ev.get("verifyQueued"):
            requeued.append(parent["spec"]["id"])
    return requeued


def revive(c: Ctx, rec: dict[str, Any]) -> None:
    """A quarantined job runs again: its archived version goes to history, a fresh attempt count to hot.

    ``leaseEpoch`` keeps counting (a late report of an old lease stays fenced);
    what the earlier attempts spent is kept for the parent's budget.
    """
    job_id = rec["spec"]["id"]
    c.tx.supersede(job_id)
    detail = rec.get("detail") or {}
    rec.update(state=JobState.QUEUED, attempts=0, lease=None, notBefore=None, reason="requeued",
               outcome=None, detail=None, finishedAt=None, round=int(rec.get("round") or 1) + 1,
               priorS=num(rec.get("priorS")) + num(detail.get("durationS")),
               priorUsd=num(rec.get("priorUsd")) + num(detail.get("costUsd")))
    c.tx.hot["jobs"][job_id] = rec
    counts = c.tx.hot["terminalCounts"]
    counts[JobState.QUARANTINED] = max(0, counts.get(JobState.QUARANTINED, 0) - 1)
    c.tx.touch()


def cancel_family(c: Ctx, parent: dict[str, Any], cancel_one: Callable[[Ctx, dict[str, Any]], None]) -> list[str]:
    """Cancel a composite: each child still queued or leased (``cancel_one`` fences a holder), and the
    verify gate unless it passed (a waiting or running verify record is cancelled like a job; one not
    queued yet is recorded as cancelled in a new version of the parent, so it is never queued). Shipped
    and quarantined children stay as they are. Returns the ids cancelled (the parent's for its gate);
    nothing left to cancel is a 409 ``conflict`` unless the composite was cancelled before (a repeat)."""
    parent_id = parent["spec"]["id"]
    done = []
    for cid in parent["childIds"]:
        rec = c.tx.hot["jobs"].get(cid)
        if rec is not None and not stale(c.tx, rec) and rec["state"] in (JobState.QUEUED,
                                                                          JobState.LEASED):
            cancel_one(c, rec)
            done.append(cid)
    outcome = (parent.get("verify") or {}).get("state")
    live = c.tx.hot["jobs"].get(parent_id)
    if live is not None and live.get("verifyOf") and not stale(c.tx, live):
        cancel_one(c, live)  # its ending writes the parent's verify: cancelled
        done.append(parent_id)
    elif parent["spec"].get("verify") and outcome not in ("passed", "cancelled"):
        current = c.tx.archived(parent_id) or parent
        c.tx.supersede(parent_id, {**current, "verify": {
            **(current.get("verify") or {}), "state": "cancelled", "reason": "cancelled by the operator",
            "finishedAt": c.now}})
        done.append(parent_id)
    if not done and outcome != "cancelled" and not any(
            state_of(c.tx, cid) == JobState.CANCELLED for cid in parent["childIds"]):
        raise Conflict(f"composite {parent_id}: nothing left to cancel (its children ended and no verify gate waits)")
    return done


def rollup(tx: Tx, parent: dict[str, Any]) -> dict[str, Any]:
    """Computed from the children by the rules shared with the local queue (``agent_queue.composite``)."""
    outcome = parent.get("verify") or {}
    verify = None
    if parent["spec"].get("verify"):
        live = tx.hot["jobs"].get(parent["spec"]["id"])
        if live is not None and live.get("verifyOf") and not stale(tx, live):
            verify = "running" if live["state"] == JobState.LEASED else "pending"
        else:
            verify = outcome.get("state") or "pending"
    family = _family(tx, parent)
    out = plan_job.shape_rollup(composite.rollup(family, parent.get("order", parent["childIds"]),
                                                 budget=parent["spec"].get("budget"), verify=verify,
                                                 prior=prior(parent)),
                                parent.get("plan"), family)
    if verify == "failed" and outcome.get("reason") and out.get("reason"):
        out["reason"] = f"{out['reason']}: {outcome['reason']}"
    return out


def _family(tx: Tx, parent: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The parent's children as ``agent_queue.composite`` family members (a missing record counts as queued)."""
    family = {}
    for cid in parent["childIds"]:
        rec = tx.hot["jobs"].get(cid) or tx.archived(cid)
        if rec is None:
            family[cid] = composite.member(cid, "queued", {})
            continue
        detail = rec.get("detail") or {}
        family[cid] = composite.member(cid, rec["state"], rec["spec"],
                                       num(detail.get("durationS")) + num(rec.get("priorS")),
                                       num(detail.get("costUsd")) + num(rec.get("priorUsd")))
    return family


def prior(parent: Mapping[str, Any]) -> composite.Spend:
    """What the parent spent outside its current children: each re-plan's replaced children and its planner."""
    plans = parent.get("replans") or ()
    return (sum(num(p.get("spentS")) for p in plans), sum(num(p.get("costUsd")) for p in plans))


def replan(c: Ctx, job_id: str, raw: Mapping[str, Any], plan_spent: composite.Spend,
           retire: Callable[[Ctx, dict[str, Any], str], None]) -> list[str]:
    """Replace the unshipped children of composite ``job_id`` by the children of ``raw`` (the approved plan).

    Refused (``Conflict``, nothing changed) unless a child is quarantined, no child
    is leased, and the plan keeps every shipped child unchanged; the new family
    passes the graph and budget rules (``InvalidJob``). Shipped children keep their
    records; a replaced child still queued is retired (``retire``: it ends
    cancelled, its history kept), a quarantined or cancelled one stays archived,
    and an id the plan uses again gets a fresh record (the old version kept as
    history). What the replaced children and the planner spent stays counted in
    the parent's budget (``replans``). The caller's transaction makes it one change.
    """
    from agent_queue.jobs import Job

    parent = find_opt(c.tx, job_id)
    if parent is None:
        raise NotFound(f"job {job_id}: no such job")
    if parent.get("state") != JobState.COMPOSITE:
        raise Conflict(f"job {job_id}: is {parent['state']}; only a composite job is re-planned")
    states = {cid: state_of(c.tx, cid) for cid in parent["childIds"]}
    if JobState.QUARANTINED not in states.values():
        raise Conflict(f"job {job_id}: no child is quarantined; only a composite with quarantined children "
                       "is re-planned")
    running = [cid for cid, st in states.items() if st == JobState.LEASED]
    if running:
        raise Conflict(f"job {job_id}: child {running[0]} is running; re-plan once it has finished")
    fields = {k: v for k, v in parent["spec"].items() if k not in ("plan", "children")}
    job = Job.from_dict({**fields, "children": raw.get("children")}, where=f"job {job_id} re-plan")
    order = composite.validate_graph(job.children, where=f"job {job_id}")
    composite.validate_budget(job, where=f"job {job_id}")
    new = {ch.id: ch for ch in job.children}
    kept = [cid for cid, st in states.items() if st == JobState.SHIPPED]
    for cid in kept:
        if cid not in new or _same(new[cid].to_dict()) != _same(find(c.tx, cid)["spec"]):
            raise Conflict(f"job {job_id}: shipped child {cid} must be kept unchanged by a re-plan")
    replaced = [cid for cid in parent["childIds"] if cid not in kept]
    for ch in job.children:
        if ch.id == job_id or (ch.id not in parent["childIds"] and find_opt(c.tx, ch.id) is not None):
            raise Conflict(f"job {job_id}: child id {ch.id!r} already used")
    family = _family(c.tx, parent)
    spent = composite.spent({cid: family[cid] for cid in replaced}, plan_spent)
    number = len(parent.get("replans") or ()) + 1
    why = f"replaced by re-plan {number} of {job_id}"
    for cid in replaced:
        hot = c.tx.hot["jobs"].get(cid)
        if hot is not None and not stale(c.tx, hot):
            if cid in new:
                del c.tx.hot["jobs"][cid]
            else:
                retire(c, hot, why)
        elif cid in new and c.tx.archived(cid) is not None:
            c.tx.supersede(cid)  # the old version goes to history; the id runs again as a new record
    queued = [ch.id for ch in job.children if ch.id not in kept]
    for ch in job.children:
        if ch.id in queued:
            create(c, ch.to_dict(), None, digest_of(ch, {}))
    entry = {"round": number, "at": c.now, "replaced": replaced, "queued": queued,
             "spentS": spent[0], "costUsd": spent[1], "planSpentS": plan_spent[0], "planCostUsd": plan_spent[1]}
    update: dict[str, Any] = {"childIds": [ch.id for ch in job.children], "order": order,
                              "replans": [*(parent.get("replans") or ()), entry]}
    if parent.get("plan"):
        update["plan"] = {**parent["plan"], "children": [ch.id for ch in job.children
                                                         if not plan_job.is_planning(ch.extra)]}
    if (parent.get("verify") or {}).get("state") == "failed":
        update["verify"] = {**parent["verify"], "state": "pending"}
    c.tx.supersede(job_id, {**parent, **update})
    c.ev.update(replanned=number, queued=queued)
    return queued


def _same(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A child spec as a re-plan compares it: normalized, without the coordinator's own ``notBefore``."""
    from agent_queue.jobs import Job

    out = Job.from_dict({k: v for k, v in spec.items() if k != "notBefore"}, where="child").to_dict()
    return out

"""Composite jobs in the local queue: the parent record, the claim gate, the parent's verify, the rollup.

A composite parent is never executed by a tool. Its record lives once, in
``<root>/composite/<id>/parent.json`` (its spec without the children's specs,
plus ``childIds`` and a dependency order); each child is an ordinary job
directory (``inbox/`` ... ``shipped/``) whose spec carries ``parentId``. The
rollup is computed from the children each time it is asked for, with the
rules shared with the coordinator (``agent_queue.composite``); the only state
the parent owns is its verify gate's outcome (``result.json``).

Crash safety: the parent record is written before its children, so a crash
mid-enqueue leaves a parent with missing children, and enqueueing the same
spec again (idempotent re-run) creates exactly the missing ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_queue import cancelmark, composite, plan_job, plan_prompt
from agent_queue.errors import Conflict, Fenced, NotFound, StateError
from agent_queue.fsutil import ensure_dir, read_json, write_json_atomic
from agent_queue.inbox import Entry, LocalQueue, State, now
from agent_queue.jobs import Job, validate_id
from agent_queue.source import Claim, Record

log = logging.getLogger(__name__)

PARENT_FILE = "parent.json"
RESULT_FILE = "result.json"
ROLLUP_STATE = {State.INBOX: "queued", State.RUNNING: "running", State.SHIPPED: "shipped",
                State.QUARANTINE: "quarantined", State.CANCELLED: "cancelled"}


@dataclass(frozen=True)
class Parent:
    """A stored composite parent: its spec (no children), its children's ids and its verify state."""

    spec: dict[str, Any]
    child_ids: tuple[str, ...]
    order: tuple[str, ...]
    digest: str
    result: dict[str, Any]
    path: Path

    @property
    def id(self) -> str:
        return str(self.spec["id"])

    @property
    def cancelled(self) -> str | None:
        """The cancel reason when ``agent-queue cancel`` named this parent (its marker), else None."""
        return cancelmark.requested(self.path)

    @property
    def verify_state(self) -> str | None:
        """None (no verify gate) or pending | running | passed | failed | cancelled."""
        if not self.spec.get("verify"):
            return None
        state = str(self.result.get("verify") or "pending")
        return "cancelled" if state == "pending" and self.cancelled is not None else state


def parents_dir(queue: LocalQueue) -> Path:
    return queue.root / "composite"


def load(queue: LocalQueue, parent_id: str) -> Parent | None:
    path = parents_dir(queue) / parent_id
    if not (path / PARENT_FILE).is_file():
        return None
    try:
        rec = read_json(path / PARENT_FILE)
        result = read_json(path / RESULT_FILE) if (path / RESULT_FILE).exists() else {}
        return Parent(rec["spec"], tuple(rec["childIds"]), tuple(rec["order"]), rec["digest"], result, path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{path}: unreadable composite parent ({exc})") from exc


def all_parents(queue: LocalQueue) -> Iterator[Parent]:
    base = parents_dir(queue)
    for path in sorted(base.iterdir()) if base.is_dir() else []:
        parent = load(queue, path.name)
        if parent is not None:
            yield parent


# --- enqueue and requeue --------------------------------------------------------


def enqueue(queue: LocalQueue, job: Job, check: Callable[[Job], None]) -> list[str]:
    """Create the parent and each child (with parentId); the same spec again re-runs what has not shipped.

    Validates everything (graph, each child's tool/profile, ids free) before
    writing anything. Returns the child ids queued by this call.
    """
    if "plan" in job.extra:
        return _enqueue_planned(queue, job, check)
    order = composite.validate_graph(job.children, where=f"job {job.id}")
    composite.validate_budget(job, where=f"job {job.id}")
    check(job)
    for child in job.children:
        check(child)
        if child.id == job.id:
            raise Conflict(f"job {job.id}: a child has the parent's id")
    digest = _digest(job)
    existing = load(queue, job.id)
    if existing is not None and existing.digest != digest:
        raise Conflict(f"job {job.id}: a composite with this id exists with a different spec")
    if queue.find(job.id) is not None:
        raise Conflict(f"job {job.id}: id already used by a leaf job")
    if existing is None:
        for child in job.children:
            if queue.find(child.id) is not None:
                raise Conflict(f"job {job.id}: child id {child.id!r} already used")
        _write_parent(queue, job, order, digest)
    queued = []
    for child in job.children:
        state = queue.find(child.id)
        if state is None:
            queue.enqueue(child)
        elif state is State.QUARANTINE:
            queue.requeue(child.id)
        else:
            continue  # shipped: never re-run; queued or running: already on its way
        queued.append(child.id)
    parent = load(queue, job.id)
    if parent is not None and parent.verify_state == "failed":
        _set_result(parent, verify="pending", reason=None)
    log.info("composite enqueued", extra={"job_id": job.id, "queued": len(queued)})
    return queued


def _enqueue_planned(queue: LocalQueue, job: Job, check: Callable[[Job], None]) -> list[str]:
    """A composite with a ``plan``: the parent, then its first planning child (``plan_job``)."""
    spec = job.to_dict()
    plan_job.plan_field(spec, f"job {job.id}")
    record, first = plan_job.first_record(spec)
    child = Job.from_dict(first, where=f"job {job.id} planning")
    check(child)
    digest = _digest(job)
    existing = load(queue, job.id)
    if existing is not None:
        if existing.digest != digest:
            raise Conflict(f"job {job.id}: a composite with this id exists with a different spec")
        return []
    if queue.find(job.id) is not None or queue.find(child.id) is not None:
        raise Conflict(f"job {job.id}: id already used")
    _write_parent(queue, job, [child.id], digest, child_ids=[child.id], plan=record)
    queue.enqueue(child)
    log.info("composite enqueued for planning", extra={"job_id": job.id})
    return [child.id]


def advance_plans(queue: LocalQueue) -> None:
    """Move each planned composite on: judge a shipped planning child's answer, queue the next try,
    or expand a valid plan into children (``plan_job``). Idempotent; run before each claim."""
    for parent in all_parents(queue):
        record = parent.result.get("plan")
        if not record or record.get("state") not in (plan_job.PLANNING, plan_job.EXPANDED) or record.get("done"):
            continue
        if record["state"] == plan_job.EXPANDED:
            _expand(queue, parent, record)
            continue
        state = queue.find(record["job"])
        if state is None:  # a crash between recording the next try and queueing it
            queue.enqueue(_planning_job(parent, record))
        elif state is State.QUARANTINE:
            _set_result(parent, plan=plan_job.failed_try(record, str(queue.get(record["job"]).result.get("reason"))))
        elif state is State.SHIPPED:
            history = queue.get(record["job"]).result.get("history") or [{}]
            record, nxt = plan_job.after_try(parent.spec, record, plan_job.answer_of(history[-1]))
            if nxt is not None:
                parent = _add_children(queue, parent, [_planning_job(parent, record)], [nxt["id"]])
            _set_result(parent, plan=record)
            if nxt is not None:
                queue.enqueue(_planning_job(parent, record))
            elif record["state"] == plan_job.EXPANDED:
                _expand(queue, load(queue, parent.id) or parent, record)


def _planning_job(parent: Parent, record: dict[str, Any]) -> Job:
    """The current planning child, rebuilt from the plan record (the prompt carries the last problems)."""
    refused = record.get("refused") or [[]]
    spec = plan_job.planning_child(parent.spec, int(record["tries"]), refused[-1] if record["tries"] > 1 else ())
    return Job.from_dict(spec, where=f"job {parent.id} planning")


def approve(queue: LocalQueue, parent_id: str) -> list[str]:
    """A person approved the plan of ``parent_id``: its children are queued. ``Conflict`` unless planned."""
    parent = find_parent(queue, parent_id)
    if parent is None:
        raise NotFound(f"job {parent_id}: no composite job with this id in this queue")
    record = parent.result.get("plan") or {}
    if record.get("state") != plan_job.PLANNED:
        raise Conflict(f"job {parent_id}: nothing to approve (plan state: {record.get('state') or 'no plan'})")
    record = {**record, "state": plan_job.EXPANDED, "approvedAt": now()}
    _set_result(parent, plan=record)
    return _expand(queue, load(queue, parent_id) or parent, record)


def _expand(queue: LocalQueue, parent: Parent, record: dict[str, Any]) -> list[str]:
    """The planned children join the family (after the planning children) and are queued; idempotent."""
    job = Job.from_dict(record["spec"], where=f"job {parent.id} plan")
    taken = [c.id for c in job.children if c.id not in parent.child_ids and queue.find(c.id) is not None]
    if taken:
        _set_result(parent, plan={**record, "state": plan_job.FAILED, "reason": f"child id {taken[0]!r} already used"})
        return []
    order = composite.validate_graph(job.children, where=f"job {parent.id}")
    new = [c for c in job.children if c.id not in parent.child_ids]
    parent = _add_children(queue, parent, new, order)
    queued = []
    for child in job.children:
        if queue.find(child.id) is None:
            queue.enqueue(child)
            queued.append(child.id)
    _set_result(parent, plan={**record, "done": True})
    log.info("composite plan expanded", extra={"job_id": parent.id, "queued": len(queued)})
    return queued


def _add_children(queue: LocalQueue, parent: Parent, children: list[Job], order: list[str]) -> Parent:
    """Rewrite the parent record with ``children`` added (ids and order); enqueue nothing."""
    ids = [*parent.child_ids, *(c.id for c in children if c.id not in parent.child_ids)]
    full = [*parent.order, *(cid for cid in order if cid not in parent.order)]
    write_json_atomic(parent.path / PARENT_FILE, {"spec": parent.spec, "childIds": ids, "order": full,
                                                  "digest": parent.digest})
    return load(queue, parent.id) or parent


def requeue_parent(queue: LocalQueue, parent: Parent) -> list[str]:
    """Re-run only the quarantined children (blocked ones then unblock) and a failed verify gate."""
    requeued = [cid for cid in parent.child_ids if queue.find(cid) is State.QUARANTINE]
    for cid in requeued:
        queue.requeue(cid)
    if parent.verify_state == "failed":
        _set_result(parent, verify="pending", reason=None, attempts=0)
    return requeued


def cancel_parent(queue: LocalQueue, parent: Parent, reason: str) -> list[str]:
    """Cancel every child not yet ended (queued ones at once, running ones through their daemon) and
    the parent's verify gate unless it passed. Returns the ids cancelled (the parent's own for its gate).

    The parent is marked first: a verify gate that is about to be handed out sees the mark, so nothing
    of this composite starts after the call. Shipped and quarantined children stay as they are.
    """
    verify_open = parent.verify_state in ("pending", "running")
    cancelmark.mark(parent.path, reason)
    cancelled = [cid for cid in parent.child_ids
                 if queue.find(cid) in (State.INBOX, State.RUNNING)
                 and queue.cancel(cid, reason) in (State.INBOX, State.RUNNING)]
    return [*cancelled, parent.id] if verify_open else cancelled


def _write_parent(queue: LocalQueue, job: Job, order: list[str], digest: str,
                  child_ids: list[str] | None = None, plan: dict[str, Any] | None = None) -> None:
    spec = job.to_dict()
    spec.pop("children", None)
    path = ensure_dir(parents_dir(queue) / job.id)
    result: dict[str, Any] = {"jobId": job.id, "enqueuedAt": now(), "attempts": 0, "history": []}
    if plan is not None:
        result["plan"] = plan
    write_json_atomic(path / RESULT_FILE, result)
    write_json_atomic(path / PARENT_FILE, {"spec": spec, "childIds": child_ids or [c.id for c in job.children],
                                           "order": order, "digest": digest})


def _digest(job: Job) -> str:
    return hashlib.sha256(json.dumps(job.to_dict(), sort_keys=True).encode("utf-8")).hexdigest()


def _set_result(parent: Parent, **update: Any) -> dict[str, Any]:
    result = {**parent.result, **update, "updatedAt": now()}
    write_json_atomic(parent.path / RESULT_FILE, result)
    return result


# --- re-planning ------------------------------------------------------------------


REPLAN_FILE = "replan.json"
REPLACED = "replaced"  # <root>/replaced/<child>.r<round>/: unshipped children a re-plan replaced, kept


def replan_context(queue: LocalQueue, parent: Parent) -> tuple[list[dict[str, Any]], list[str]]:
    """What a re-planning agent is shown: the shipped children's specs (kept unchanged) and, one line
    per child, what happened to each (shipped, failed and why, never ran). A running child: ``Conflict``."""
    kept, lines = [], []
    for cid in parent.order:
        entry = queue.get(cid) if queue.find(cid) is not None else None
        if entry is None:
            lines.append(f"{cid}: never ran")
            continue
        if entry.state is State.RUNNING:
            raise Conflict(f"job {parent.id}: child {cid} is running; re-plan once it has finished")
        if entry.state is State.SHIPPED:
            kept.append(entry.job.to_dict())
        state = {State.SHIPPED: "shipped", State.QUARANTINE: "quarantined"}.get(entry.state, "waiting")
        line = plan_prompt.history_line(cid, state, entry.job.to_dict(), entry.attempts, entry.result.get("reason"))
        if line is not None:
            lines.append(line)
    return kept, lines


def replan(queue: LocalQueue, parent: Parent, job: Job, check: Callable[[Job], None],
           plan_spent: composite.Spend = (0.0, 0.0)) -> list[str]:
    """Replace the parent's unshipped children by ``job``'s; shipped ones must be in ``job`` unchanged.

    The graph and budget rules hold for the whole new family. Replaced children
    leave the queue for ``replaced/`` (history kept). Crash-safe: the new plan is
    written first (``replan.json``) and ``finish_replan`` completes it, also at
    the next daemon start.
    """
    order = composite.validate_graph(job.children, where=f"job {job.id}")
    composite.validate_budget(job, where=f"job {job.id}")
    kept, _ = replan_context(queue, parent)
    new = {c.id: c for c in job.children}
    for spec in kept:
        child = new.get(spec["id"])
        if child is None or child.to_dict() != spec:
            raise Conflict(f"job {job.id}: shipped child {spec['id']} must be kept unchanged by a re-plan")
    old = set(parent.child_ids)
    for child in job.children:
        check(child)
        if child.id not in old and queue.find(child.id) is not None:
            raise Conflict(f"job {job.id}: child id {child.id!r} already used")
    rounds = len(parent.result.get("plans") or ()) + 1
    replaced = [cid for cid in parent.child_ids if cid not in {k["id"] for k in kept}]
    fam = family(queue, parent)
    spend = composite.spent({cid: fam[cid] for cid in replaced}, plan_spent)  # the planner's runs count too
    write_json_atomic(parent.path / REPLAN_FILE, {"spec": job.to_dict(), "order": order, "round": rounds,
                                                  "replaced": replaced, "digest": _digest(job),
                                                  "spentS": spend[0], "costUsd": spend[1]})
    return finish_replan(queue, parent.id)


def finish_replan(queue: LocalQueue, parent_id: str) -> list[str]:
    """Complete a re-plan written to ``replan.json`` (idempotent); the child ids it queued."""
    parent = load(queue, parent_id)
    if parent is None or not (parent.path / REPLAN_FILE).exists():
        return []
    plan = read_json(parent.path / REPLAN_FILE)
    job = Job.from_dict(plan["spec"], where=f"{parent.path / REPLAN_FILE}")
    if not plan.get("retired"):
        for cid in plan["replaced"]:
            state = queue.find(cid)
            if state in (State.INBOX, State.QUARANTINE):
                queue.retire(cid, state, REPLACED, label=f"r{plan['round']}",
                             update={"reason": f"replaced by re-plan {plan['round']} of {parent_id}"})
        write_json_atomic(parent.path / REPLAN_FILE, {**plan, "retired": True})
    spec = job.to_dict()
    spec.pop("children", None)
    write_json_atomic(parent.path / PARENT_FILE, {"spec": spec, "childIds": [c.id for c in job.children],
                                                  "order": plan["order"], "digest": plan["digest"]})
    queued = [c.id for c in job.children if queue.find(c.id) is None]
    for child in job.children:
        if child.id in queued:
            queue.enqueue(child)
    entry = {"round": plan["round"], "at": now(), "replaced": plan["replaced"], "queued": queued,
             "spentS": plan["spentS"], "costUsd": plan["costUsd"]}
    history = [p for p in parent.result.get("plans") or () if p.get("round") != plan["round"]]
    update: dict[str, Any] = ({"verify": "pending", "attempts": 0, "reason": None}
                              if parent.verify_state == "failed" else {})
    if parent.result.get("plan"):  # the plan drawn (``plan.dag``) is the new one
        update["plan"] = {**parent.result["plan"],
                          "children": [c.id for c in job.children if not plan_job.is_planning(c.extra)]}
    _set_result(parent, plans=[*history, entry], **update)
    (parent.path / REPLAN_FILE).unlink()
    log.info("composite re-planned", extra={"job_id": parent_id, "queued": len(queued)})
    return queued


# --- the family and its rollup ------------------------------------------------------


def family(queue: LocalQueue, parent: Parent) -> dict[str, dict[str, Any]]:
    """The children as shared family members: where each is, and what its attempts spent."""
    out = {}
    for cid in parent.child_ids:
        try:
            entry: Entry | None = queue.get(cid)
        except (NotFound, StateError):
            entry = None
        if entry is None:
            out[cid] = composite.member(cid, "queued", {})
            continue
        history = entry.result.get("history") or []
        secs = sum(_num(r.get("durationS")) for r in history)
        cost = sum(_num(r.get("costUsd")) for r in history)
        out[cid] = composite.member(cid, ROLLUP_STATE[entry.state], entry.job.to_dict(), secs, cost)
    return out


def rollup(queue: LocalQueue, parent: Parent) -> dict[str, Any]:
    """The parent's status, computed from its children (never stored)."""
    fam = family(queue, parent)
    out = plan_job.shape_rollup(
        composite.rollup(fam, parent.order, budget=parent.spec.get("budget"),
                         verify=parent.verify_state, prior=prior(parent)), parent.result.get("plan"), fam)
    if parent.verify_state == "failed" and parent.result.get("reason"):
        out["reason"] = f"{out['reason']}: {parent.result['reason']}"
    return {"id": parent.id, **out}


def prior(parent: Parent) -> composite.Spend:
    """What the parent spent outside its current children: each re-plan's replaced children."""
    plans = parent.result.get("plans") or ()
    return (sum(_num(p.get("spentS")) for p in plans), sum(_num(p.get("costUsd")) for p in plans))


def rollups(queue: LocalQueue) -> list[dict[str, Any]]:
    return [rollup(queue, p) for p in all_parents(queue)]


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


# --- scheduling -------------------------------------------------------------------------


class Gate:
    """Answers "may this inbox job start now?" for one pass of the source (parents read once per pass)."""

    def __init__(self, queue: LocalQueue) -> None:
        self.queue = queue
        self._families: dict[str, tuple[Parent, dict[str, dict[str, Any]]] | None] = {}

    def allows(self, job: Job) -> bool:
        if job.parent_id is None:
            return True
        if job.parent_id not in self._families:
            parent = load(self.queue, job.parent_id)
            self._families[job.parent_id] = None if parent is None else (parent, family(self.queue, parent))
        found = self._families[job.parent_id]
        if found is None or job.id not in found[1]:
            return True  # a child whose parent is not in this queue follows only its own dependsOn
        parent, fam = found
        if composite.budget_stop(parent.spec.get("budget"), fam, prior(parent)) is not None:
            return False
        return composite.blocker(fam[job.id], fam) is None


def next_verify_claim(queue: LocalQueue) -> Claim | None:
    """The verify gate of a parent whose children all shipped, taken for one attempt (or None)."""
    for parent in all_parents(queue):
        if parent.verify_state != "pending" or not _plan_done(parent):
            continue
        fam = family(queue, parent)
        if any(m["state"] != composite.SHIPPED for m in fam.values()):
            continue
        if composite.budget_stop(parent.spec.get("budget"), fam, prior(parent)) is not None:
            continue
        return VerifyClaim(parent)
    return None


def _plan_done(parent: Parent) -> bool:
    """No plan, or its children are all in the family (a parent's verify never runs before that)."""
    record = parent.result.get("plan")
    return not record or bool(record.get("done"))


def recover(queue: LocalQueue) -> list[str]:
    """A verify gate a crashed daemon left running goes back to pending (cancelled when marked), the attempt counted."""
    recovered = []
    for parent in all_parents(queue):
        finish_replan(queue, parent.id)  # a re-plan a crash interrupted
        parent = load(queue, parent.id) or parent
        if parent.verify_state == "running":
            cancel = parent.cancelled
            _set_result(parent, verify="cancelled" if cancel else "pending",
                        attempts=int(parent.result.get("attempts", 0)) + 1,
                        reason=f"cancelled: {cancel}" if cancel else "daemon stopped while the verify gate was running")
            recovered.append(parent.id)
    return recovered


def verify_job(parent: Parent) -> Job:
    """The parent's verify gate as a shell job in the parent's own workspace (its repo branch, if any)."""
    return Job.from_dict(composite.verify_spec(parent.spec), where=f"job {parent.id} verify")


class VerifyClaim(Claim):
    """One attempt of a parent's verify gate; every ending is a rewrite of the parent's result.json."""

    def __init__(self, parent: Parent) -> None:
        self.parent = parent
        self.job = verify_job(parent)
        self.attempts_done = int(parent.result.get("attempts", 0))
        self._result = dict(parent.result)

    def _write(self, **update: Any) -> None:
        self._result = {**self._result, **update, "updatedAt": now()}
        write_json_atomic(self.parent.path / RESULT_FILE, self._result)

    def begin(self, attempt: int) -> None:
        self._write(verify="running", attempt=attempt, startedAt=now())

    @contextlib.contextmanager
    def keepalive(self, on_lost: Callable[[str], None]) -> Iterator[None]:
        """``agent-queue cancel PARENT`` marks the parent: the gate is stopped like a cancelled job."""
        with cancelmark.watch(self.parent.path, on_lost):
            yield

    def note_ship_hook(self, outcome: Record) -> None:
        self._write(shipHook=outcome)

    def approve_ship(self, record: Record) -> None:
        cancel = cancelmark.requested(self.parent.path)  # offline: only a cancel stops the ship
        if cancel is not None:
            raise Fenced(f"cancelled: {cancel}")

    def shipped(self, record: Record) -> None:
        self._end("passed", record)

    def retry(self, record: Record) -> None:
        self._end("pending", record)

    def quarantine(self, record: Record) -> None:
        self._end("failed", record)

    def fenced(self, record: Record) -> None:
        self._end("failed", record)

    def give_back(self, reason: str) -> None:
        if cancelmark.requested(self.parent.path) is not None:
            self._end("pending", {"attempt": self.attempts_done + 1, "outcome": "cancelled"})
            return
        self._write(verify="pending", reason=reason, attempt=None, startedAt=None)

    def _end(self, verify: str, record: Record) -> None:
        cancel = cancelmark.requested(self.parent.path) if verify != "passed" else None
        if cancel is not None:  # nothing of a cancelled composite runs again
            verify, record = "cancelled", {**record, "outcome": "cancelled", "reason": f"cancelled: {cancel}"}
        self._write(verify=verify, attempts=self.attempts_done + 1, reason=record.get("reason"),
                    history=[*self._result.get("history", []), record], attempt=None, startedAt=None,
                    finishedAt=now() if verify in ("passed", "failed", "cancelled") else None)
        log.info("composite verify %s", verify, extra={"job_id": self.parent.id})


def find_parent(queue: LocalQueue, job_id: str) -> Parent | None:
    """The composite parent ``job_id``, or None when it names no composite."""
    return load(queue, validate_id(job_id, "job id"))

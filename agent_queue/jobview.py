"""What ``agent-queue jobs`` and ``agent-queue show`` read from the local queue: data only, never a write.

``list_jobs`` pages: it ranks job directories by their last change (one ``stat`` each, no file read)
and reads ``result.json`` and ``job.json`` only for the page it returns, so ``--limit 20`` over 10,000
jobs reads 20 jobs. ``show`` gathers everything known about one id: its spec (secrets redacted), every
attempt (also those kept under ``released/``, ``fenced/`` and ``rerun/`` when this factory ran it
under earlier leases), its lease and its log.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_queue import composite_queue
from agent_queue.errors import BadInput, NotFound, StateError
from agent_queue.fsutil import read_json
from agent_queue.inbox import JOB_FILE, PROMPT_FILE, RESULT_FILE, LocalQueue, State, read_spec
from agent_queue.jobs import ID_RE, validate_id
from agent_queue.settings import redact_spec
from agent_queue.timeutil import parse_rfc3339

# Record directories of jobs that left this factory: <kind>/<id>.<epoch or n>/ (fleet.records).
RECORD_KINDS = ("released", "fenced", "rerun")
COMPOSITE = "composite"
# The words each side uses for the same state: ``--state`` takes either, locally and with --fleet.
LOCAL_STATES = {s.value: s.value for s in State} | {"queued": "inbox", "leased": "running",
                                                     "quarantined": "quarantine", COMPOSITE: COMPOSITE}
FLEET_STATES = {"queued": "queued", "leased": "leased", "shipped": "shipped", "quarantined": "quarantined",
                "cancelled": "cancelled", COMPOSITE: COMPOSITE,
                "inbox": "queued", "running": "leased", "quarantine": "quarantined"}
REASON_CHARS = 80
PREVIEW_CHARS = 120


def state_name(state: str | None, table: Mapping[str, str]) -> str | None:
    """``--state`` in the words of the queue asked (local or fleet); BadInput naming the choices."""
    if state is None:
        return None
    if state not in table:
        raise BadInput(f"--state: {state[:40]!r} is not one of {', '.join(sorted(table))}")
    return table[state]


@dataclass(frozen=True)
class _Candidate:
    changed: float
    state: str
    path: Path


def list_jobs(queue: LocalQueue, state: str | None, limit: int | None, now: float) -> dict[str, Any]:
    """``{"jobs": [...], "total": n}``: the ``limit`` most recently changed jobs (all when None)."""
    wanted = state_name(state, LOCAL_STATES)
    found = list(_candidates(queue, wanted))
    found.sort(key=lambda c: (-c.changed, c.path.name))
    page = found if limit is None else found[:limit]
    return {"jobs": [_row(queue, c, now) for c in page], "total": len(found)}


def _candidates(queue: LocalQueue, wanted: str | None) -> Iterator[_Candidate]:
    dirs = [(s.value, queue.dir(s)) for s in State if wanted in (None, s.value)]
    if wanted in (None, COMPOSITE):
        dirs.append((COMPOSITE, composite_queue.parents_dir(queue)))
    for state, folder in dirs:
        with contextlib.suppress(FileNotFoundError), os.scandir(folder) as it:
            for item in it:
                if ID_RE.fullmatch(item.name) and item.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        yield _Candidate(item.stat(follow_symlinks=False).st_mtime, state, Path(item.path))


def _row(queue: LocalQueue, c: _Candidate, now: float) -> dict[str, Any]:
    job_id = c.path.name
    if c.state == COMPOSITE:
        return _parent_row(queue, job_id, now)
    row: dict[str, Any] = {"id": job_id, "state": c.state, "kind": "leaf", "tool": None, "attempts": None,
                           "enqueuedAt": None, "ageS": None, "factory": None, "reason": None}
    try:
        spec, result = read_spec(c.path, with_prompt=False), _read_optional(c.path / RESULT_FILE) or {}
    except (OSError, ValueError) as exc:
        return {**row, "reason": f"unreadable: {exc}"[:REASON_CHARS]}
    row.update(tool=spec.get("tool", "shell"), attempts=result.get("attempts", 0),
               enqueuedAt=result.get("enqueuedAt"), ageS=_age(result.get("enqueuedAt"), now),
               reason=short(result.get("reason")), parentId=spec.get("parentId"))
    return row


def _parent_row(queue: LocalQueue, parent_id: str, now: float) -> dict[str, Any]:
    try:
        parent = composite_queue.load(queue, parent_id)
    except StateError as exc:
        return {"id": parent_id, "state": COMPOSITE, "kind": COMPOSITE, "reason": short(exc.message)}
    if parent is None:
        return {"id": parent_id, "state": COMPOSITE, "kind": COMPOSITE, "reason": "no parent.json"}
    roll = composite_queue.rollup(queue, parent)
    enqueued = parent.result.get("enqueuedAt")
    reason = roll.get("reason")
    return {"id": parent_id, "state": roll["state"], "kind": COMPOSITE, "tool": COMPOSITE,
            "attempts": None, "enqueuedAt": enqueued, "ageS": _age(enqueued, now), "factory": None,
            "reason": short(reason), "children": len(parent.child_ids)}


def short(reason: Any) -> str | None:
    """One line of at most ``REASON_CHARS`` characters, for listings."""
    if not reason:
        return None
    text = " ".join(str(reason).split())
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 3] + "..."


def _age(stamp: Any, now: float) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return round(max(0.0, now - parse_rfc3339(stamp)), 1)
    except ValueError:
        return None


def _read_optional(path: Path) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        return None


# --- show ------------------------------------------------------------------------------


def show(queue: LocalQueue, job_id: str, factory_id: str, secrets: Iterable[str | None] = ()) -> dict[str, Any]:
    """Everything this factory knows about ``job_id``; NotFound when it knows nothing."""
    validate_id(job_id, "job id")
    hidden = list(secrets)
    parent = composite_queue.find_parent(queue, job_id)
    folders = _folders(queue, job_id)
    if parent is None and not folders:
        raise NotFound(f"job {job_id}: not found under {queue.root}")
    out: dict[str, Any] = {"id": job_id, "log": _log(queue, job_id)}
    if parent is not None:
        roll = composite_queue.rollup(queue, parent)
        out.update(kind=COMPOSITE, state=roll["state"], spec=redact_spec(parent.spec, hidden), rollup=roll,
                   verify=_verify_of(parent, hidden), path=str(parent.path))
    attempts: list[dict[str, Any]] = []
    for kind, folder in folders:
        attempts += _attempts_of(folder, kind, factory_id, hidden)
        if parent is None and ("state" not in out or kind in (s.value for s in State)):
            out.update(_current(folder, kind, hidden))
    attempts.sort(key=lambda a: (str(a.get("startedAt") or a.get("endedAt") or ""), a.get("attempt") or 0))
    out["history"] = attempts
    out["records"] = [{"kind": kind, "path": str(folder)} for kind, folder in folders]
    return out


def _folders(queue: LocalQueue, job_id: str) -> list[tuple[str, Path]]:
    """Where this id's directories are: its record dirs (oldest first), then its queue state dir."""
    out: list[tuple[str, Path]] = []
    for kind in RECORD_KINDS:
        base = queue.root / kind
        with contextlib.suppress(FileNotFoundError), os.scandir(base) as it:
            out += [(kind, Path(e.path)) for e in it if e.name.startswith(job_id + ".") and e.is_dir()
                    and e.name[len(job_id) + 1:].replace(".", "").isdigit()]
    out.sort(key=lambda kf: _mtime(kf[1]))
    state = queue.find(job_id)
    if state is not None:
        out.append((state.value, queue.dir(state) / job_id))
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _current(folder: Path, kind: str, hidden: list[str | None]) -> dict[str, Any]:
    """The job's spec, state, result summary and lease, from its newest directory."""
    out: dict[str, Any] = {"state": kind, "path": str(folder)}
    try:
        spec = read_spec(folder, with_prompt=False)
        result = _read_optional(folder / RESULT_FILE) or {}
    except (OSError, ValueError) as exc:
        return {**out, "reason": f"unreadable: {exc}"}
    out["spec"] = redact_spec(spec, hidden) if isinstance(spec, Mapping) else spec
    out["prompt"] = _prompt(folder, spec)
    out.update({k: result.get(k) for k in ("attempts", "reason", "enqueuedAt", "updatedAt", "requeuedAt",
                                            "cancelledAt", "notBefore", "pid", "leaseEpoch") if result.get(k)
                is not None})
    lease = _read_optional(folder / "lease.json")
    if lease is not None:
        out["lease"] = lease
    return out


def _prompt(folder: Path, spec: Any) -> dict[str, Any] | None:
    """Size and first line of the prompt (stored once: prompt.txt, or inside an older job.json)."""
    path = folder / PROMPT_FILE
    if path.is_file():
        text = path.read_bytes().decode("utf-8", "replace")
        where = str(path)
    elif isinstance(spec, Mapping) and isinstance(spec.get("prompt"), str):
        text, where = spec["prompt"], str(folder / JOB_FILE)
    else:
        return None
    first = text.strip().splitlines()[0] if text.strip() else ""
    return {"bytes": len(text.encode("utf-8", "surrogatepass")), "path": where,
            "preview": first if len(first) <= PREVIEW_CHARS else first[:PREVIEW_CHARS - 3] + "..."}


def _attempts_of(folder: Path, kind: str, factory_id: str, hidden: list[str | None]) -> list[dict[str, Any]]:
    result = _read_optional(folder / RESULT_FILE) or {}
    lease = _read_optional(folder / "lease.json") or {}
    where = lease.get("factoryId") or factory_id
    epoch = lease.get("leaseEpoch", result.get("leaseEpoch"))
    out = []
    for rec in result.get("history") or []:
        if isinstance(rec, dict):
            item = {k: rec.get(k) for k in ("attempt", "startedAt", "endedAt", "durationS", "exitCode",
                                            "verifyExitCode", "costUsd", "outcome", "reason", "transcript")
                    if rec.get(k) is not None}
            item.update(factory=where, record=kind, **({"epoch": epoch} if epoch is not None else {}))
            out.append(redact_spec(item, hidden))
    return out


def _verify_of(parent: composite_queue.Parent, hidden: list[str | None]) -> dict[str, Any] | None:
    if parent.verify_state is None:
        return None
    return redact_spec({"state": parent.verify_state, "attempts": parent.result.get("attempts", 0),
                        "reason": parent.result.get("reason"), "history": parent.result.get("history") or []}, hidden)


def _log(queue: LocalQueue, job_id: str) -> dict[str, Any]:
    path = queue.log_path(job_id)
    try:
        size: int | None = path.stat().st_size
    except OSError:
        size = None
    return {"path": str(path), "bytes": size}

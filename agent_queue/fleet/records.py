"""Local records of fleet jobs: where a fleet job's files go when it leaves this factory.

Shared by the claim (``fleet.claim``) and the source's crash recovery
(``fleet.source``). Local records of fleet jobs are never deleted: a job given
back or released for retry goes to ``<root>/released/<id>.<epoch>/``, a fenced
one to ``<root>/fenced/<id>.<epoch>/``, an earlier run the coordinator re-runs
to ``<root>/rerun/<id>.<n>/``; ``lease.json`` next to a running job holds the
lease (and its epoch) it was claimed with.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from agent_queue.errors import AQError
from agent_queue.fsutil import read_json
from agent_queue.inbox import Entry, LocalQueue, State
from agent_queue.jobs import Lease
from agent_queue.source import Record

log = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
FENCED_DIR = "fenced"
RELEASED_DIR = "released"
RERUN_DIR = "rerun"
# result.json fields of a running attempt, cleared when the job leaves running/.
RETURN_FIELDS = {"pid": None, "attempt": None, "startedAt": None}


def archive(queue: LocalQueue, job_id: str, kind: str, epoch: int, update: dict[str, Any]) -> Path:
    """``running/<id>`` -> ``<root>/<kind>/<id>.<epoch>/``, ``update`` merged into result.json.

    Used when a fleet job leaves this factory without a terminal outcome here
    (released, given back) or is fenced. Nothing is deleted.
    """
    return queue.retire(job_id, State.RUNNING, kind, str(epoch), update)


def set_aside_earlier_run(queue: LocalQueue, job_id: str) -> Path | None:
    """A job the coordinator hands out may have a local leftover with its id: keep that record, once.

    An earlier run that ended here (``quarantine/<id>``, ``shipped/<id>``, ``cancelled/<id>``: the
    coordinator re-runs it), or a copy in ``inbox/<id>`` that route mode never reads (e.g. an older
    version's local requeue of a fleet job), moves to ``<root>/rerun/<id>.<n>/`` so the new lease can be
    materialized. Without this the claim collided with the leftover on every poll, forever. A copy in
    ``running/`` is not touched: it is settled with the coordinator first. Nothing is deleted.
    """
    state = queue.find(job_id)
    if state is None or state is State.RUNNING:
        return None
    target = queue.retire(job_id, state, RERUN_DIR)
    log.warning("local leftover set aside for the coordinator's claim",
                extra={"job_id": job_id, "was": state.value, "keptIn": str(target)})
    return target


def read_lease(entry: Entry) -> Lease | None:
    """The lease a running/ job was claimed with (lease.json, else result.json); None for a local job."""
    raw: Any = None
    with contextlib.suppress(OSError, ValueError):
        raw = read_json(entry.path / LEASE_FILE)
    if raw is None:
        raw = entry.result.get("lease")
    if raw is None:
        return None
    try:
        return Lease.from_dict(raw)
    except AQError:
        log.warning("unreadable lease record; treating the job as fenced", extra={"job_id": entry.job.id})
        return Lease(entry.job.id, "", 0, 0.0, 1.0)


def report_detail(record: Record) -> dict[str, Any]:
    """The attempt fields a report to the coordinator carries."""
    keys = ("attempt", "exitCode", "verifyExitCode", "durationS", "reason", "costUsd", "answer")
    return {k: record[k] for k in keys if record.get(k) is not None}

"""The operations behind each CLI command (like Procrastinate's manager): cli.py parses and prints only.

Each function takes the resolved ``Settings`` and returns data; errors are
``errors.AQError`` subclasses that the CLI maps to exit codes in one place.
``run_daemon`` also owns the per-root daemon lock (two daemons on one root
would recover each other's running jobs) and ``.state/daemon.json``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from agent_queue import composite_queue
from agent_queue import log as aqlog
from agent_queue.errors import StateError
from agent_queue.fleet.flags import resolve_flags
from agent_queue.fsutil import read_json, write_json_atomic
from agent_queue.inbox import LocalQueue, State, decode_spec
from agent_queue.jobs import Job, new_job_id
from agent_queue.settings import Settings
from agent_queue.timeutil import parse_rfc3339, to_rfc3339
from agent_queue.tools import check_known

if TYPE_CHECKING:
    from agent_queue.runner import RunOptions

log = logging.getLogger(__name__)

__all__ = ["decode_spec", "doctor", "enqueue", "requeue", "run_daemon", "status", "stream_log"]


def queue_for(settings: Settings) -> LocalQueue:
    return LocalQueue(settings.root).init()


def enqueue(settings: Settings, spec: Any, where: str) -> str:
    """Validate ``spec`` fully (fields, tool, profile, unique id) before writing anything; return the id."""
    if isinstance(spec, Mapping) and "id" not in spec:
        spec = {**spec, "id": new_job_id()}
    job = Job.from_dict(spec, where=where)
    if job.kind == "composite":
        composite_queue.enqueue(queue_for(settings), job,
                                lambda j: check_known(j, settings.tools, settings.profiles))
        return job.id
    check_known(job, settings.tools, settings.profiles)
    queue_for(settings).enqueue(job)
    return job.id


def requeue(settings: Settings, job_id: str) -> None:
    queue = queue_for(settings)
    parent = composite_queue.find_parent(queue, job_id)
    if parent is not None:
        composite_queue.requeue_parent(queue, parent)
        return
    queue.requeue(job_id)


def run_daemon(settings: Settings, opts: RunOptions) -> int:
    """Start-up checks, lock, then the runner loop; returns the number of jobs processed."""
    # The daemon's modules (runner, attempt, shipping, git, the Sources) load only when a daemon runs.
    from agent_queue.assemble import build_source
    from agent_queue.runner import Runner

    aqlog.setup(settings.log_format, settings.verbose, settings.factory_id)
    # Resolved once; each precedence warning (ROUTE wins over SHADOW...) is given once per process.
    flags = resolve_flags(settings.fleet, settings.fleet_route, settings.fleet_shadow, log.warning)
    queue = queue_for(settings)
    source = build_source(settings, queue)
    lock = FileLock(str(queue.state_dir / "daemon.lock"), mode=0o600)
    try:
        lock.acquire(timeout=1.0)  # not 0: `status` takes this lock for an instant to see if a daemon runs
    except Timeout:
        raise StateError(f"{settings.root}: another agent-queue daemon is running on this root") from None
    try:
        write_json_atomic(queue.state_dir / "daemon.json", {"pid": os.getpid(), "factoryId": settings.factory_id,
                                                            "startedAt": to_rfc3339(time.time())})
        runner = Runner(settings, source)
        log.info("daemon started", extra={"root": str(settings.root), "fleetMode": settings.fleet_mode,
                                            "fleetFlags": flags.describe()})
        with runner.signals():
            done = runner.work(opts)
        log.info("daemon stopped", extra={"jobs": done})
        return done
    finally:
        lock.release()


def doctor(settings: Settings) -> list[Any]:
    """``agent-queue doctor``: the checks of ``agent_queue.doctor`` for this host's settings and queue.

    Required: every tool named in ``[tools.*]`` of the config or by a waiting /
    running job, git when such a job has a repo, the root, and the coordinator
    in fleet mode. The other built-in tools are shown, but only as warnings.
    """
    from agent_queue import doctor as checks

    needed, needs_git = set(settings.configured_tools), False
    queue = LocalQueue(settings.root)
    for state in (State.INBOX, State.RUNNING):
        for entry in queue.entries(state):
            needed.add(entry.job.tool)
            needs_git = needs_git or entry.job.repo is not None
    return checks.run_checks(settings.root, settings.tools, needed_tools=needed, needs_git=needs_git,
                             fleet_health=_fleet_health(settings) if settings.fleet else None,
                             env=settings.host_env)


def _fleet_health(settings: Settings) -> Callable[[], object]:
    """A probe that raises when the coordinator is unreachable or unhealthy (the token stays in the transport)."""

    def probe() -> object:
        from agent_queue.errors import CoordinatorError
        from agent_queue.fleet.client import FleetClient
        from agent_queue.fleet.transport import make_transport

        client = FleetClient(make_transport(settings.fleet_api_cmd, settings.fleet_api, settings.fleet_token, 5.0),
                             settings.factory_id, settings.capabilities)
        if not client.healthz():
            raise CoordinatorError("coordinator did not answer healthz with ok (see the daemon log)")
        return True

    return probe


def status(settings: Settings) -> dict[str, Any]:
    """Counts per state, the running job(s) with elapsed time and pid, the daemon, the settings (redacted)."""
    queue = queue_for(settings)
    now = time.time()
    running = []
    for entry in queue.entries(State.RUNNING):
        started = entry.result.get("startedAt")
        running.append({"id": entry.job.id, "tool": entry.job.tool, "attempt": entry.result.get("attempt"),
                        "pid": _live_pid(entry.result),
                        "elapsedS": None if not started else round(now - parse_rfc3339(started), 1)})
    return {"counts": queue.counts(), "running": running, "composites": composite_queue.rollups(queue),
            "daemon": _daemon(queue), "settings": settings.describe()}


def _live_pid(result: Mapping[str, Any]) -> int | None:
    """The recorded tool pid only while it is still that process: a crash's leftover record is not a running tool."""
    from agent_queue.process import identity

    pid, ident = result.get("pid"), result.get("pidStart")
    return pid if isinstance(pid, int) and pid > 1 and ident is not None and identity(pid) == ident else None


def _daemon(queue: LocalQueue) -> dict[str, Any] | None:
    lock = FileLock(str(queue.state_dir / "daemon.lock"), mode=0o600)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        info = _read_optional(queue.state_dir / "daemon.json")
        return {"running": True, **(info or {})}
    lock.release()
    return {"running": False}


def _read_optional(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def stream_log(settings: Settings, job_id: str, follow: bool, write: Callable[[str], None],
               poll_s: float = 0.2) -> None:
    """Write the job's log; with ``follow``, keep writing until the job leaves inbox/ and running/."""
    queue = LocalQueue(settings.root)
    queue.get(job_id)  # NotFound for an unknown id
    path = queue.log_path(job_id)
    offset = 0
    while True:
        offset = _copy_from(path, offset, write)
        if not follow or queue.find(job_id) not in (State.INBOX, State.RUNNING):
            _copy_from(path, offset, write)
            return
        time.sleep(poll_s)


def _copy_from(path: Path, offset: int, write: Callable[[str], None]) -> int:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return offset
    if data:
        write(data.decode("utf-8", "replace"))
    return offset + len(data)

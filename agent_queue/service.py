"""The operations behind each CLI command (like Procrastinate's manager): cli.py parses and prints only.

Each function takes the resolved ``Settings`` and returns data; errors are
``errors.AQError`` subclasses that the CLI maps to exit codes in one place.
``run_daemon`` also owns the per-root daemon lock (two daemons on one root
would recover each other's running jobs) and ``.state/daemon.json``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import Timeout

from agent_queue import composite_queue, jobview, logfollow, plan_job
from agent_queue import log as aqlog
from agent_queue.cancel import Cancelled
from agent_queue.cancel import cancel as cancel_job
from agent_queue.errors import Conflict, NotFound, StateError
from agent_queue.fleet.flags import resolve_flags
from agent_queue.fleet.records import read_lease
from agent_queue.fsutil import read_json, write_json_atomic
from agent_queue.hardening import drop_secrets, make_undumpable
from agent_queue.inbox import LocalQueue, State, decode_spec
from agent_queue.jobs import Job, new_job_id
from agent_queue.settings import Settings
from agent_queue.timeutil import parse_rfc3339, to_rfc3339
from agent_queue.tools import check_known

if TYPE_CHECKING:
    from agent_queue.runner import RunOptions

log = logging.getLogger(__name__)

__all__ = ["cancel", "decode_spec", "doctor", "enqueue", "jobs", "requeue", "run_daemon", "show", "status",
           "stream_log"]


def queue_for(settings: Settings) -> LocalQueue:
    """The root's queue, created if missing: for the commands that add work (enqueue, run)."""
    return LocalQueue(settings.root).init()


def existing_queue(settings: Settings) -> LocalQueue:
    """The root's queue for a command that reads or changes existing jobs: a missing root is an error, never created."""
    root = settings.root
    if not root.is_dir():
        raise NotFound(f"{root}: not found: no queue here (`agent-queue enqueue` or `agent-queue run` creates one)")
    return LocalQueue(root)


def enqueue(settings: Settings, spec: Any, where: str) -> str:
    """Validate ``spec`` fully (fields, tool, profile, unique id) before writing anything; return the id."""
    if isinstance(spec, Mapping) and "id" not in spec:
        spec = {**spec, "id": new_job_id()}
    if isinstance(spec, Mapping) and spec.get("kind") == "composite" and isinstance(spec.get("plan"), dict):
        spec = plan_job.with_rules(spec, sorted(settings.tools), sorted(settings.profiles))
    job = Job.from_dict(spec, where=where)
    if job.kind == "composite":
        composite_queue.enqueue(queue_for(settings), job,
                                lambda j: check_known(j, settings.tools, settings.profiles))
        return job.id
    check_known(job, settings.tools, settings.profiles)
    queue_for(settings).enqueue(job)
    return job.id


def requeue(settings: Settings, job_id: str) -> None:
    """quarantine -> inbox (a composite: its quarantined children); a job that came from the coordinator is refused.

    Route mode never reads the local inbox, and running a fleet job's local copy outside its lease
    could ship it twice: only the coordinator may run it again (``requeue ID --fleet``).
    """
    queue = existing_queue(settings)
    parent = composite_queue.find_parent(queue, job_id)
    if parent is not None:
        composite_queue.requeue_parent(queue, parent)
        return
    lease = read_lease(queue.get(job_id))
    if lease is not None:
        raise Conflict(f"job {job_id}: came from the coordinator (lease epoch {lease.epoch}); requeue it there "
                       f"with `agent-queue requeue {job_id} --fleet`")
    queue.requeue(job_id)


def cancel(settings: Settings, job_id: str) -> Cancelled:
    """``agent-queue cancel ID``: see ``agent_queue.cancel``."""
    return cancel_job(existing_queue(settings), job_id)


def jobs(settings: Settings, state: str | None, limit: int | None) -> dict[str, Any]:
    """``agent-queue jobs``: the most recently changed jobs first, ``limit`` of them (None: all)."""
    return jobview.list_jobs(existing_queue(settings), state, limit, time.time())


def show(settings: Settings, job_id: str) -> dict[str, Any]:
    """``agent-queue show ID``: spec (secrets redacted), attempts, lease, log."""
    return jobview.show(existing_queue(settings), job_id, settings.factory_id, [settings.fleet_token])


def run_daemon(settings: Settings, opts: RunOptions) -> int:
    """Start-up checks, lock, then the runner loop; returns the number of jobs that ended (not attempts)."""
    # The daemon's modules (runner, attempt, shipping, git, the Sources) load only when a daemon runs.
    from agent_queue.assemble import build_source
    from agent_queue.runner import Runner

    aqlog.setup(settings.log_format, settings.verbose, settings.factory_id)
    # The token is in ``settings`` now; before any tool can start, no copy is left within its reach.
    drop_secrets(os.environ)
    if not make_undumpable() and sys.platform.startswith("linux"):
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed: a tool under this uid can read /proc/<daemon>/environ")
    # Resolved once; each precedence warning (ROUTE wins over SHADOW...) is given once per process.
    flags = resolve_flags(settings.fleet, settings.fleet_route, settings.fleet_shadow, log.warning)
    queue = queue_for(settings)
    source = build_source(settings, queue, hold_claims=not (opts.once or opts.drain))
    lock = queue.daemon_lock()
    try:
        lock.acquire(timeout=1.0)  # not 0: `status` takes this lock for an instant to see if a daemon runs
    except Timeout:
        raise StateError(f"{settings.root}: another agent-queue daemon is running on this root") from None
    try:
        write_json_atomic(queue.state_dir / "daemon.json", {"pid": os.getpid(), "factoryId": settings.factory_id,
                                                            "startedAt": to_rfc3339(time.time()),
                                                            "fleetMode": settings.fleet_mode,
                                                            "fleetFlags": flags.describe()})
        runner = Runner(settings, source)
        log.info("daemon started", extra={"root": str(settings.root), "fleetMode": settings.fleet_mode,
                                            "fleetFlags": flags.describe()})
        with runner.signals():
            done = runner.work(opts)
        log.info("daemon stopped", extra={"jobs": done, "attempts": runner.attempts_run})
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
                             env=settings.host_env, token_file=settings.fleet_token_file,
                             shared_token_host=_shared_token_host(settings))


def _shared_token_host(settings: Settings) -> str | None:
    """The coordinator's host when it is reached over a non-loopback address with a token no factory owns."""
    from urllib.parse import urlsplit

    from agent_queue.fleet.http_transport import is_loopback_host

    host = urlsplit(settings.fleet_api).hostname if settings.fleet_api and not settings.fleet_api_cmd else None
    token = settings.fleet_token or ""
    if host is None or is_loopback_host(host) or not token or token.startswith("aqf_"):
        return None
    return host


def _fleet_health(settings: Settings) -> Callable[[], object]:
    """A probe that raises when the coordinator is unreachable, unhealthy or refuses this host's token.

    healthz needs no token, so it alone passed with a wrong one while the daemon then logged
    ``unauthorized`` forever: an authenticated read (``status``) follows it. The token stays in the transport.
    """

    def probe() -> object:
        from agent_queue.errors import CoordinatorError
        from agent_queue.fleet.client import SINGLE_SHOT, FleetClient
        from agent_queue.fleet.transport import make_transport

        client = FleetClient(make_transport(settings.fleet_api_cmd, settings.fleet_api, settings.fleet_token, 5.0),
                             settings.factory_id, settings.capabilities, SINGLE_SHOT)
        try:
            if not client.healthz():
                raise CoordinatorError("coordinator did not answer healthz with ok (see the daemon log)")
            client.status()  # authenticated: a wrong or missing token fails here
        finally:
            client.transport.close()
        return True

    return probe


def status(settings: Settings) -> dict[str, Any]:
    """Counts per state, the running job(s) with elapsed time and pid, the daemon, the fleet mode (the running
    daemon's, as its start line gave it; else what this host's settings resolve to), the settings (redacted)."""
    queue = existing_queue(settings)
    now = time.time()
    running = []
    for entry in queue.entries(State.RUNNING):
        started = entry.result.get("startedAt")
        running.append({"id": entry.job.id, "tool": entry.job.tool, "attempt": entry.result.get("attempt"),
                        "pid": _live_pid(entry.result),
                        "elapsedS": None if not started else round(now - parse_rfc3339(started), 1)})
    daemon = _daemon(queue, now)
    mode = daemon.get("fleetMode") if daemon["running"] else None
    flags = daemon.get("fleetFlags") if daemon["running"] else None
    return {"counts": queue.counts(), "running": running, "composites": composite_queue.rollups(queue),
            "daemon": daemon, "fleetMode": mode or settings.fleet_mode,
            "fleetFlags": flags or settings.fleet_flags.describe(), "settings": settings.describe()}


def _live_pid(result: Mapping[str, Any]) -> int | None:
    """The recorded tool pid only while it is still that process: a crash's leftover record is not a running tool."""
    from agent_queue.process import identity

    pid, ident = result.get("pid"), result.get("pidStart")
    return pid if isinstance(pid, int) and pid > 1 and ident is not None and identity(pid) == ident else None


def _daemon(queue: LocalQueue, now: float) -> dict[str, Any]:
    if not queue.daemon_running():
        return {"running": False}
    info = _read_optional(queue.state_dir / "daemon.json") or {}
    started = info.get("startedAt")
    up = round(now - parse_rfc3339(started), 1) if isinstance(started, str) else None
    return {"running": True, **info, "upS": up}


def _read_optional(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def stream_log(settings: Settings, job_id: str, follow: bool, write: Callable[[str], None],
               note: Callable[[str], None]) -> int:
    """``agent-queue logs``: see ``agent_queue.logfollow``; returns the exit status (0 only for shipped)."""
    return logfollow.stream(existing_queue(settings), job_id, follow, write, note)

"""The directory a job's tool runs in: ``<root>/work/<id>``, a git worktree when ``job.repo`` is set.

Git mechanics live in ``agent_queue.gitrepo`` (worktrees) and ``gitship``
(shipping); this module is the runner's one door to them, so the runner never
branches on "repo or not" more than once per step. Plain workspaces are kept for inspection. Worktrees of
finished (shipped / quarantined / fenced) jobs are pruned after
``keep_worktrees_days``, their branches stay; worktrees of unfinished jobs
that are not in ``running/`` are removed at start-up (a crashed attempt).
A job in ``running/`` is never touched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from agent_queue import gitrepo, gitship
from agent_queue.errors import AQError
from agent_queue.fsutil import ensure_dir
from agent_queue.jobs import Job

log = logging.getLogger(__name__)

RUNNING_DIR = "running"  # the local queue's running/ (inbox.State.RUNNING), where live jobs sit


class WorkspaceUnavailable(Exception):
    """The job cannot get a workspace on this factory right now (e.g. a fetch failed): a failed attempt."""


def prepare(root: Path, job: Job) -> Path:
    """Create (or, on a new attempt, reset to its clean base) the job's workspace and return its path.

    For a repo job, ``gitrepo.prepare_worktree`` fetches the cache and resets an
    existing worktree (``reset --hard`` + ``clean -ffdx``), so no attempt sees
    the leftovers of the previous one.
    """
    if job.repo is None:
        return ensure_dir(root / "work" / job.id)
    try:
        return gitrepo.prepare_worktree(root, job)
    except AQError as exc:
        raise WorkspaceUnavailable(exc.message) from exc


def repo_allowed(repo: str, allowed: tuple[str, ...]) -> bool:
    """``repo`` is one of the ``allowed`` prefixes or below one (no prefixes: any repo).

    A local path is normalised first, so ``/srv/git/../../etc`` is not below ``/srv/git``;
    a prefix matches whole path segments only (``/srv/git`` does not allow ``/srv/gitx``).
    """
    if not allowed:
        return True
    target = repo if "://" in repo or repo.startswith("git@") else os.path.normpath(os.path.abspath(repo))
    for prefix in allowed:
        base = prefix if "://" in prefix or prefix.startswith("git@") else os.path.normpath(os.path.abspath(prefix))
        if target == base or target.startswith(base.rstrip("/") + "/"):
            return True
    return False


def existing(root: Path, job: Job) -> Path:
    """The job's workspace as the last attempt left it (never reset): where an interrupted ship resumes."""
    return ensure_dir(root / "work" / job.id) if job.repo is None else gitrepo.worktree_path(root, job.id)


def record_verified(root: Path, job: Job, workdir: Path) -> str | None:
    """Pin what the verify gate saw, so exactly that ships (a repo job; a plain job ships no content).

    Returns the git tree of a repo job's worktree; raises ``GitError`` when git cannot record it.
    """
    return None if job.repo is None else gitship.record_verified(root, job, workdir)


def push(root: Path, job: Job, workdir: Path, *, factory_id: str, epoch: int | None) -> gitship.ShipResult:
    """Commit what the agent left and push ``aq/<id>`` (fenced); no hook. Idempotent.

    Raises ``gitcmd.GitFenced`` when a newer attempt owns the branch, ``GitError`` otherwise.
    """
    return gitship.ship_worktree(root, replace(job, ship=()), workdir, factory_id=factory_id, epoch=epoch)


def run_ship_hook(root: Path, job: Job, workdir: Path, hook: tuple[str, ...], *, factory_id: str,
                  epoch: int | None, env: Mapping[str, str], log_cap: int) -> gitship.ShipResult:
    """Run the ship hook of an already pushed repo job, once (a completed hook is never re-run).

    Goes through ``ship_worktree`` again: the commit and push are already
    there (no-ops), and it records ``hookDone`` so a re-ship skips the hook.
    """
    return gitship.ship_worktree(root, replace(job, ship=hook), workdir, factory_id=factory_id, epoch=epoch,
                                 hook_env=env, log_cap=log_cap)


def finish(root: Path, job: Job, outcome: str) -> None:
    """A repo job reached an end here (quarantined / fenced): its worktree becomes prunable by age."""
    if job.repo is None:
        return
    try:
        gitrepo.mark_finished(root, job.id, outcome)
    except AQError as exc:
        log.warning("cannot mark worktree finished: %s", exc.message, extra={"job_id": job.id})


def running_ids(root: Path) -> set[str]:
    folder = root / RUNNING_DIR
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


def housekeeping(root: Path, keep_days: float, now: float, *, startup: bool) -> list[str]:
    """Remove orphaned worktrees (start-up only) and finished ones older than ``keep_days``; never running ones.

    Failures are logged, never raised: cleaning up must not stop the daemon.
    """
    removed: list[str] = []
    live = running_ids(root)
    try:
        if startup:
            removed += gitrepo.clean_orphans(root, live)
        removed += gitrepo.prune_worktrees(root, keep_days, live, now)
    except (AQError, OSError) as exc:
        log.warning("worktree clean-up failed: %s", getattr(exc, "message", exc))
    if removed:
        log.info("worktrees removed", extra={"jobs": removed})
    return removed

"""The directory a job's tool runs in: ``<root>/work/<id>``, a git worktree when ``job.repo`` is set.

Git handling lives in ``agent_queue.gitrepo`` (another module, imported lazily
so a build without it still runs plain jobs). Workspaces are kept after the
job ends, for inspection: the runner deletes nothing.
"""

from __future__ import annotations

from pathlib import Path

from agent_queue.fsutil import ensure_dir
from agent_queue.jobs import Job


class WorkspaceUnavailable(Exception):
    """The job cannot get a workspace on this factory; the reason is final (quarantine)."""


def prepare(root: Path, job: Job) -> Path:
    """Create (or reuse, on a retry) the job's workspace and return its path."""
    if job.repo is None:
        return ensure_dir(root / "work" / job.id)
    try:
        from agent_queue.gitrepo import prepare_worktree  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise WorkspaceUnavailable("git workspaces not available") from None
    path: Path = prepare_worktree(root, job)
    return path

"""Running git for the workspaces of repo jobs, and the errors every git step raises.

All git runs as argv (``git -C ...``) with ``GIT_TERMINAL_PROMPT=0``, a
protocol allow-list (no ``ext::``), no repository hooks and no automatic gc,
never with ``AQ_FLEET_TOKEN`` in its environment; every failure becomes a
``GitError`` naming the repo (or job) and the step. Used by ``gitrepo``
(cache and worktrees) and ``gitship`` (commit, fenced push, ship hook).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent_queue.errors import AQError

GIT_TIMEOUT_S = 600.0
# Every git call: never prompt for credentials (a daemon has no terminal),
# never run an `ext::` transport named by a job spec.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh"}
_GIT_CFG = ("-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "core.hooksPath=/dev/null")


class GitError(AQError):
    """A git step failed; the message names the repo (or job) and the step."""

    code = "git_error"


class NotFoundWorktree(GitError):
    """No worktree record for the job (never prepared here, or already pruned)."""

    code = "not_found"


class GitFenced(GitError):
    """The remote branch moved since this attempt started: a newer attempt owns it."""

    code = "fenced"
    http_status = 409


def branch_name(job_id: str) -> str:
    return f"aq/{job_id}"


def git(args: Sequence[str], *, cwd: Path | None = None, what: str, stdin: str | None = None,
        check: bool = True, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["git", *_GIT_CFG, *(["-C", str(cwd)] if cwd else []), *args]
    full_env = {**os.environ, **_GIT_ENV, **(env or {})}
    full_env.pop("AQ_FLEET_TOKEN", None)
    try:
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, env=full_env,
            timeout=GIT_TIMEOUT_S, start_new_session=True, check=False,
        )
    except FileNotFoundError as exc:
        raise GitError(f"{what}: git is not installed or not on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"{what}: git {args[0]} timed out after {GIT_TIMEOUT_S:.0f}s") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise GitError(f"{what}: git {args[0]} failed ({detail[-1] if detail else f'exit {proc.returncode}'})")
    return proc


def git_out(args: Sequence[str], *, cwd: Path | None = None, what: str) -> str:
    return git(args, cwd=cwd, what=what).stdout.strip()

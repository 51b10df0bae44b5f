"""Git workspaces of repo jobs: the bare clone cache and one worktree per job, from prepare to prune.

Layout under the agent-queue root:

* ``repos/<name>-<hash>.git`` - a bare clone of ``job.repo``, shared by every
  job on that repo, fetched (never re-cloned) on later jobs; remote branches
  live under ``refs/remotes/origin/*`` so our own ``aq/<id>`` branches in
  ``refs/heads`` are never clobbered by a fetch. ``repos/<name>-<hash>.lock``
  is the one filelock that serialises every change to that cache.
* ``work/<id>`` - ``git worktree add`` of branch ``aq/<id>`` at ``job.base``
  (default: the remote's HEAD).
* ``.state/worktrees/<id>.json`` - what this worktree started from: the base
  SHA, and the remote SHA of ``aq/<id>`` when the attempt began (the lease
  that the push is fenced against), plus what was pushed and whether the
  ship hook ran. It makes shipping idempotent across crashes.

This module makes and removes worktrees; shipping one (commit, fenced push,
ship hook) is ``gitship``; running git and its errors, ``gitcmd``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from agent_queue.errors import BadInput, StateError
from agent_queue.fsutil import ensure_dir, read_json, write_json_atomic
from agent_queue.gitcmd import GitError, NotFoundWorktree, branch_name, git, git_out
from agent_queue.jobs import Job

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 900.0


# --------------------------------------------------------------------------- the cache


def repo_url(repo: str) -> str:
    """A job's ``repo`` as git should see it: an absolute local path, or the URL untouched."""
    if repo.startswith("-"):
        raise BadInput(f"repo {repo!r}: must not start with '-'")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", repo) or re.match(r"^[\w.-]+@[\w.-]+:", repo):
        return repo
    return str(Path(repo).expanduser().resolve())


def cache_path(root: Path, repo: str) -> Path:
    url = repo_url(repo)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))[:40] or "repo"
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    return root / "repos" / f"{stem}-{digest}.git"


@contextlib.contextmanager
def _repo_lock(cache: Path, repo: str) -> Iterator[None]:
    ensure_dir(cache.parent)
    lock = FileLock(str(cache.with_suffix(".lock")), timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            yield
    except Timeout as exc:
        raise GitError(f"repo {repo}: waited {LOCK_TIMEOUT_S:.0f}s for the cache lock {cache}.lock") from exc


def _ensure_cache(cache: Path, repo: str) -> None:
    """Clone once (into a temp dir, renamed into place), then only ever fetch. Caller holds the lock."""
    url = repo_url(repo)
    if not (cache / "HEAD").exists():
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        git(["clone", "--bare", "--quiet", "--", url, str(tmp)], what=f"repo {repo}: clone")
        git(["config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*"], cwd=tmp,
             what=f"repo {repo}: configure cache")
        # The bare clone put the remote's branches in refs/heads; from now on
        # refs/heads holds only our aq/* branches.
        for ref in git_out(["for-each-ref", "--format=%(refname)", "refs/heads"], cwd=tmp, what=f"repo {repo}").split():
            git(["update-ref", "-d", ref], cwd=tmp, what=f"repo {repo}: configure cache")
        git(["fetch", "--prune", "--tags", "--force", "--quiet", "origin"], cwd=tmp, what=f"repo {repo}: fetch")
        git(["remote", "set-head", "origin", "--auto"], cwd=tmp, what=f"repo {repo}: find the remote's HEAD",
             check=False)
        os.replace(tmp, cache)
        return
    git(["fetch", "--prune", "--tags", "--force", "--quiet", "origin"], cwd=cache, what=f"repo {repo}: fetch")


def _resolve_base(cache: Path, job: Job) -> str:
    repo = job.repo or ""
    candidates = (
        [f"refs/remotes/origin/{job.base}", f"refs/tags/{job.base}", job.base]
        if job.base else ["refs/remotes/origin/HEAD"]
    )
    for ref in candidates:
        if ref.startswith("-"):
            continue
        proc = git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=cache, what=f"repo {repo}",
                    check=False)
        if proc.returncode == 0:
            return proc.stdout.strip()
    if job.base:
        raise GitError(f"repo {repo}: base {job.base!r} of job {job.id} is neither a branch, tag nor commit")
    raise GitError(f"repo {repo}: cannot tell the remote's default branch (empty repository?); set job.base")


def _remote_branch_sha(cache: Path, job: Job) -> str | None:
    proc = git(["rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch_name(job.id)}"], cwd=cache,
                what=f"repo {job.repo}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


# --------------------------------------------------------------------------- metadata


def meta_path(root: Path, job_id: str) -> Path:
    return root / ".state" / "worktrees" / f"{job_id}.json"


def read_meta(root: Path, job_id: str) -> dict[str, Any] | None:
    path = meta_path(root, job_id)
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable worktree record ({exc})") from exc
    if not isinstance(data, dict):
        raise StateError(f"{path}: worktree record is not a JSON object")
    return data


def write_meta(root: Path, job_id: str, meta: dict[str, Any]) -> None:
    meta["updatedAt"] = time.time()
    write_json_atomic(ensure_dir(meta_path(root, job_id).parent) / f"{job_id}.json", meta)


def worktree_path(root: Path, job_id: str) -> Path:
    return root / "work" / job_id


# --------------------------------------------------------------------------- prepare / reset


def prepare_worktree(root: Path, job: Job) -> Path:
    """Fetch the repo cache and give the job a clean worktree on ``aq/<id>``; returns its path.

    A new attempt of the same job gets the same path, reset to a clean state
    at the base. The caller guarantees no live lease of this job is using it.
    """
    if not job.repo:
        raise BadInput(f"job {job.id}: prepare_worktree needs job.repo")
    root = root.resolve()
    cache = cache_path(root, job.repo)
    path = worktree_path(root, job.id)
    with _repo_lock(cache, job.repo):
        _ensure_cache(cache, job.repo)
        base_sha = _resolve_base(cache, job)
        lease_sha = _remote_branch_sha(cache, job)
        git(["worktree", "prune"], cwd=cache, what=f"repo {job.repo}: worktree prune")
        if (path / ".git").exists():
            _reset(path, base_sha, job)
        else:
            if path.exists():
                shutil.rmtree(path)  # a half-made worktree from a crash
            ensure_dir(path.parent)
            git(["worktree", "add", "--quiet", "-B", branch_name(job.id), str(path), base_sha], cwd=cache,
                 what=f"repo {job.repo}: worktree add for job {job.id}")
    write_meta(root, job.id, {
        "jobId": job.id, "repo": job.repo, "cache": str(cache), "path": str(path), "branch": branch_name(job.id),
        "baseSha": base_sha, "remoteShaAtStart": lease_sha, "pushedSha": None, "hookDone": False,
        "finished": None, "preparedAt": time.time(),
    })
    log.info("worktree ready", extra={"job_id": job.id, "repo": job.repo, "base": base_sha})
    return path


def _reset(path: Path, base_sha: str, job: Job) -> None:
    what = f"repo {job.repo}: reset worktree of job {job.id}"
    git(["checkout", "--quiet", "--force", "-B", branch_name(job.id), base_sha], cwd=path, what=what)
    git(["reset", "--quiet", "--hard", base_sha], cwd=path, what=what)
    git(["clean", "-ffdxq"], cwd=path, what=what)


def reset_worktree(root: Path, job: Job) -> Path:
    """Put an existing worktree back to the clean base it started from (a re-run of an attempt)."""
    meta = read_meta(root.resolve(), job.id)
    if meta is None:
        raise NotFoundWorktree(f"job {job.id}: no worktree to reset")
    path = Path(meta["path"])
    _reset(path, str(meta["baseSha"]), job)
    meta.update(pushedSha=None, hookDone=False, finished=None, verifiedHead=None, verifiedTree=None)
    write_meta(root.resolve(), job.id, meta)
    return path


# --------------------------------------------------------------------------- cleanup


def mark_finished(root: Path, job_id: str, outcome: str) -> None:
    """Record that the job reached a terminal state here (``shipped``/``quarantined``): prune by age only."""
    root = root.resolve()
    meta = read_meta(root, job_id)
    if meta is not None:
        meta["finished"] = outcome
        write_meta(root, job_id, meta)


def _remove(root: Path, meta: dict[str, Any]) -> None:
    job_id = str(meta["jobId"])
    cache, path = Path(meta["cache"]), Path(meta["path"])
    repo = str(meta.get("repo"))
    if cache.exists():
        with _repo_lock(cache, repo):
            git(["worktree", "remove", "--force", str(path)], cwd=cache, what=f"repo {repo}: remove worktree",
                 check=False)
            git(["worktree", "prune"], cwd=cache, what=f"repo {repo}: worktree prune", check=False)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    meta_path(root, job_id).unlink(missing_ok=True)


def _all_meta(root: Path) -> list[dict[str, Any]]:
    folder = root / ".state" / "worktrees"
    out = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            meta = read_meta(root, p.stem)
        except StateError as exc:
            log.warning("skipping worktree record: %s", exc)
            continue
        if meta is not None:
            out.append(meta)
    return out


def prune_worktrees(root: Path, keep_days: float, live_ids: set[str], now: float) -> list[str]:
    """Remove worktrees of finished jobs idle for more than ``keep_days``; their branches stay.

    Never touches a job in ``live_ids`` (its lease is live). Returns the ids removed.
    """
    root = root.resolve()
    removed = []
    for meta in _all_meta(root):
        job_id = str(meta.get("jobId"))
        if job_id in live_ids or not meta.get("finished"):
            continue
        if now - float(meta.get("updatedAt", 0)) >= keep_days * 86400:
            _remove(root, meta)
            removed.append(job_id)
    return removed


def clean_orphans(root: Path, running_ids: set[str]) -> list[str]:
    """At start-up: remove worktrees of unfinished jobs that are not in running/ (a crashed attempt).

    Finished jobs' worktrees are left for ``prune_worktrees``. Returns the ids removed.
    """
    root = root.resolve()
    removed = []
    for meta in _all_meta(root):
        job_id = str(meta.get("jobId"))
        if job_id in running_ids or meta.get("finished"):
            continue
        _remove(root, meta)
        removed.append(job_id)
    return removed

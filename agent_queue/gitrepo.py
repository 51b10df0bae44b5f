"""Git workspaces of repo jobs: bare clone cache, one worktree per job, fenced shipping.

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

Fencing reaches git: the push is ``--force-with-lease`` against the remote
SHA this attempt saw (or that it pushed last), so a stale worker can never
overwrite a newer attempt's branch; and the ship commit carries trailers
(``Agent-Queue-Job``/``-Factory``/``-Epoch``) so a re-ship recognises its own
commit already on the remote and pushes nothing.

All git runs as argv (``git -C ...``) with ``GIT_TERMINAL_PROMPT=0``, a
protocol allow-list (no ``ext::``), and every failure becomes a ``GitError``
naming the repo and the step.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from agent_queue.errors import AQError, BadInput, StateError
from agent_queue.fsutil import ensure_dir, read_json, write_json_atomic
from agent_queue.jobs import Job

log = logging.getLogger(__name__)

GIT_TIMEOUT_S = 600.0
LOCK_TIMEOUT_S = 900.0
HOOK_TIMEOUT_S = 600.0
TRAILER_JOB = "Agent-Queue-Job"
TRAILER_FACTORY = "Agent-Queue-Factory"
TRAILER_EPOCH = "Agent-Queue-Epoch"
FALLBACK_NAME = "agent-queue"
FALLBACK_EMAIL = "agent-queue@localhost"
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


@dataclass(frozen=True)
class ShipResult:
    """``pushed`` is False when the remote already had this exact commit (a re-ship)."""

    pushed: bool
    sha: str
    branch: str
    hook_ran: bool = False


def branch_name(job_id: str) -> str:
    return f"aq/{job_id}"


# --------------------------------------------------------------------------- running git


def _git(args: Sequence[str], *, cwd: Path | None = None, what: str, stdin: str | None = None,
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


def _out(args: Sequence[str], *, cwd: Path | None = None, what: str) -> str:
    return _git(args, cwd=cwd, what=what).stdout.strip()


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
        _git(["clone", "--bare", "--quiet", "--", url, str(tmp)], what=f"repo {repo}: clone")
        _git(["config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*"], cwd=tmp,
             what=f"repo {repo}: configure cache")
        # The bare clone put the remote's branches in refs/heads; from now on
        # refs/heads holds only our aq/* branches.
        for ref in _out(["for-each-ref", "--format=%(refname)", "refs/heads"], cwd=tmp, what=f"repo {repo}").split():
            _git(["update-ref", "-d", ref], cwd=tmp, what=f"repo {repo}: configure cache")
        _git(["fetch", "--prune", "--tags", "--force", "--quiet", "origin"], cwd=tmp, what=f"repo {repo}: fetch")
        _git(["remote", "set-head", "origin", "--auto"], cwd=tmp, what=f"repo {repo}: find the remote's HEAD",
             check=False)
        os.replace(tmp, cache)
        return
    _git(["fetch", "--prune", "--tags", "--force", "--quiet", "origin"], cwd=cache, what=f"repo {repo}: fetch")


def _resolve_base(cache: Path, job: Job) -> str:
    repo = job.repo or ""
    candidates = (
        [f"refs/remotes/origin/{job.base}", f"refs/tags/{job.base}", job.base]
        if job.base else ["refs/remotes/origin/HEAD"]
    )
    for ref in candidates:
        if ref.startswith("-"):
            continue
        proc = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=cache, what=f"repo {repo}",
                    check=False)
        if proc.returncode == 0:
            return proc.stdout.strip()
    if job.base:
        raise GitError(f"repo {repo}: base {job.base!r} of job {job.id} is neither a branch, tag nor commit")
    raise GitError(f"repo {repo}: cannot tell the remote's default branch (empty repository?); set job.base")


def _remote_branch_sha(cache: Path, job: Job) -> str | None:
    proc = _git(["rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch_name(job.id)}"], cwd=cache,
                what=f"repo {job.repo}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


# --------------------------------------------------------------------------- metadata


def _meta_path(root: Path, job_id: str) -> Path:
    return root / ".state" / "worktrees" / f"{job_id}.json"


def _read_meta(root: Path, job_id: str) -> dict[str, Any] | None:
    path = _meta_path(root, job_id)
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable worktree record ({exc})") from exc
    if not isinstance(data, dict):
        raise StateError(f"{path}: worktree record is not a JSON object")
    return data


def _write_meta(root: Path, job_id: str, meta: dict[str, Any]) -> None:
    meta["updatedAt"] = time.time()
    write_json_atomic(ensure_dir(_meta_path(root, job_id).parent) / f"{job_id}.json", meta)


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
        _git(["worktree", "prune"], cwd=cache, what=f"repo {job.repo}: worktree prune")
        if (path / ".git").exists():
            _reset(path, base_sha, job)
        else:
            if path.exists():
                shutil.rmtree(path)  # a half-made worktree from a crash
            ensure_dir(path.parent)
            _git(["worktree", "add", "--quiet", "-B", branch_name(job.id), str(path), base_sha], cwd=cache,
                 what=f"repo {job.repo}: worktree add for job {job.id}")
    _write_meta(root, job.id, {
        "jobId": job.id, "repo": job.repo, "cache": str(cache), "path": str(path), "branch": branch_name(job.id),
        "baseSha": base_sha, "remoteShaAtStart": lease_sha, "pushedSha": None, "hookDone": False,
        "finished": None, "preparedAt": time.time(),
    })
    log.info("worktree ready", extra={"job_id": job.id, "repo": job.repo, "base": base_sha})
    return path


def _reset(path: Path, base_sha: str, job: Job) -> None:
    what = f"repo {job.repo}: reset worktree of job {job.id}"
    _git(["checkout", "--quiet", "--force", "-B", branch_name(job.id), base_sha], cwd=path, what=what)
    _git(["reset", "--quiet", "--hard", base_sha], cwd=path, what=what)
    _git(["clean", "-ffdxq"], cwd=path, what=what)


def reset_worktree(root: Path, job: Job) -> Path:
    """Put an existing worktree back to the clean base it started from (a re-run of an attempt)."""
    meta = _read_meta(root.resolve(), job.id)
    if meta is None:
        raise NotFoundWorktree(f"job {job.id}: no worktree to reset")
    path = Path(meta["path"])
    _reset(path, str(meta["baseSha"]), job)
    meta.update(pushedSha=None, hookDone=False, finished=None)
    _write_meta(root.resolve(), job.id, meta)
    return path


# --------------------------------------------------------------------------- ship


def _trailers(path: Path, rev: str, what: str) -> dict[str, str]:
    text = _out(["log", "-1", "--format=%(trailers:only,unfold)", rev], cwd=path, what=what)
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _identity_args(path: Path, factory_id: str) -> list[str]:
    """Use the operator's git identity when configured; else a clear agent-queue one."""
    args = []
    if _git(["config", "--get", "user.name"], cwd=path, what="git config", check=False).returncode != 0:
        args += ["-c", f"user.name={FALLBACK_NAME} ({factory_id})"]
    if _git(["config", "--get", "user.email"], cwd=path, what="git config", check=False).returncode != 0:
        args += ["-c", f"user.email={FALLBACK_EMAIL}"]
    return args


def commit_message(job: Job, factory_id: str, epoch: int | None) -> str:
    title = (job.prompt or " ".join(job.command) or "").strip().splitlines()
    summary = title[0][:60] if title else ""
    head = f"agent-queue: job {job.id}" + (f": {summary}" if summary else "")
    return (
        f"{head}\n\n"
        f"{TRAILER_JOB}: {job.id}\n{TRAILER_FACTORY}: {factory_id}\n"
        f"{TRAILER_EPOCH}: {epoch if epoch is not None else 'offline'}\n"
    )


def _commit_pending(path: Path, job: Job, factory_id: str, epoch: int | None) -> str:
    """Commit what the agent left (or mark a clean HEAD) with the job's trailers; returns HEAD."""
    what = f"repo {job.repo}: commit job {job.id}"
    _git(["add", "-A"], cwd=path, what=what)
    dirty = _git(["diff", "--cached", "--quiet"], cwd=path, what=what, check=False).returncode != 0
    mine = _trailers(path, "HEAD", what)
    same = mine.get(TRAILER_JOB) == job.id and mine.get(TRAILER_EPOCH) == str(epoch if epoch is not None else "offline")
    if dirty or not same:
        args = [*_identity_args(path, factory_id), "commit", "--quiet", "--no-verify", "--allow-empty", "-F", "-"]
        proc = _git(args, cwd=path, what=what, stdin=commit_message(job, factory_id, epoch), check=False)
        if proc.returncode != 0:
            raise GitError(f"{what}: git commit failed ({(proc.stderr.strip() or proc.stdout.strip())[-200:]})")
    return _out(["rev-parse", "HEAD"], cwd=path, what=what)


def _ls_remote(path: Path, job: Job) -> str | None:
    ref = f"refs/heads/{branch_name(job.id)}"
    text = _out(["ls-remote", "origin", ref], cwd=path, what=f"repo {job.repo}: ls-remote")
    for line in text.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return sha
    return None


def ship_worktree(
    root: Path,
    job: Job,
    workdir: Path,
    *,
    factory_id: str,
    epoch: int | None,
    hook_env: Mapping[str, str] | None = None,
) -> ShipResult:
    """Commit, push ``aq/<id>`` fenced by ``--force-with-lease``, then run ``job.ship`` once.

    Call only after the verify gate passed (and, in fleet mode, after the
    coordinator accepted the report). Idempotent: a second call finds the
    commit on the remote, pushes nothing and does not re-run a hook that
    completed. A push rejected by the lease (another attempt shipped this
    branch since ours started) raises ``GitFenced`` (code ``fenced``) and
    leaves the remote untouched.
    """
    root = root.resolve()
    meta = _read_meta(root, job.id)
    if meta is None:
        raise NotFoundWorktree(f"job {job.id}: no worktree record; was it prepared by prepare_worktree?")
    branch = branch_name(job.id)
    sha = _commit_pending(workdir, job, factory_id, epoch)
    remote = _ls_remote(workdir, job)
    pushed = False
    if remote != sha:
        if remote is not None and _is_own_commit(workdir, job, remote, epoch):
            sha = remote  # an earlier ship of this same attempt already landed (e.g. before a crash)
        else:
            expected = meta.get("pushedSha") or meta.get("remoteShaAtStart") or ""
            _push(workdir, job, sha, expected)
            pushed = True
    meta.update(pushedSha=sha, finished=meta.get("finished") or "shipped", shippedAt=time.time())
    _write_meta(root, job.id, meta)
    hook_ran = False
    if job.ship and not meta.get("hookDone"):
        _run_hook(job, workdir, sha, branch, hook_env, root / "logs" / f"{job.id}.log")
        meta["hookDone"] = True
        _write_meta(root, job.id, meta)
        hook_ran = True
    log.info("shipped", extra={"job_id": job.id, "branch": branch, "sha": sha, "pushed": pushed, "epoch": epoch})
    return ShipResult(pushed=pushed, sha=sha, branch=branch, hook_ran=hook_ran)


def _is_own_commit(path: Path, job: Job, sha: str, epoch: int | None) -> bool:
    proc = _git(["fetch", "--quiet", "origin", f"refs/heads/{branch_name(job.id)}"], cwd=path,
                what=f"repo {job.repo}: fetch", check=False)
    if proc.returncode != 0:
        return False
    t = _trailers(path, sha, f"repo {job.repo}")
    return t.get(TRAILER_JOB) == job.id and t.get(TRAILER_EPOCH) == str(epoch if epoch is not None else "offline")


def _push(path: Path, job: Job, sha: str, expected: str) -> None:
    ref = f"refs/heads/{branch_name(job.id)}"
    proc = _git(["push", "--porcelain", f"--force-with-lease={ref}:{expected}", "origin", f"{sha}:{ref}"],
                cwd=path, what=f"repo {job.repo}: push {branch_name(job.id)}", check=False)
    if proc.returncode == 0:
        return
    text = proc.stdout + proc.stderr
    if "stale info" in text or "[rejected]" in text or "fetch first" in text:
        raise GitFenced(
            f"repo {job.repo}: push of {branch_name(job.id)} refused: the remote branch changed since this "
            "attempt started (a newer attempt shipped it); nothing was overwritten"
        )
    lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    raise GitError(f"repo {job.repo}: push {branch_name(job.id)} failed ({lines[-1] if lines else 'no output'})")


class _NoAbort:
    """A hook is never aborted from here: it runs to completion or to HOOK_TIMEOUT_S."""

    def __init__(self) -> None:
        self.wake = threading.Event()

    def abort_reason(self) -> str | None:
        return None

    def next_deadline(self) -> float | None:
        return None


def _run_hook(job: Job, workdir: Path, sha: str, branch: str, env: Mapping[str, str] | None,
              log_path: Path) -> None:
    """The ship hook through ``process.run``: own process group (killed whole on timeout), output in the job log."""
    from agent_queue import process

    values = {"{job_id}": job.id, "{branch}": branch, "{sha}": sha, "{workdir}": str(workdir)}
    argv = []
    for item in job.ship:
        for k, v in values.items():
            item = item.replace(k, v)
        argv.append(item)
    hook_env = {k: v for k, v in (env or {"PATH": os.environ.get("PATH", "")}).items() if not k.startswith("AQ_")}
    ensure_dir(log_path.parent)
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write(f"=== ship hook: {' '.join(argv)[:300]}\n")
    res = process.run(tuple(argv), cwd=workdir, env=hook_env, log_path=log_path, timeout_s=HOOK_TIMEOUT_S,
                      watch=_NoAbort())
    if res.error is not None or res.timed_out:
        raise GitError(f"job {job.id}: ship hook {argv[0]} did not run to completion "
                       f"({res.error or f'timed out after {HOOK_TIMEOUT_S:g}s'})")
    if res.exit_code != 0:
        raise GitError(f"job {job.id}: ship hook {argv[0]} exited {res.exit_code} (output: {log_path})")


# --------------------------------------------------------------------------- cleanup


def mark_finished(root: Path, job_id: str, outcome: str) -> None:
    """Record that the job reached a terminal state here (``shipped``/``quarantined``): prune by age only."""
    root = root.resolve()
    meta = _read_meta(root, job_id)
    if meta is not None:
        meta["finished"] = outcome
        _write_meta(root, job_id, meta)


def _remove(root: Path, meta: dict[str, Any]) -> None:
    job_id = str(meta["jobId"])
    cache, path = Path(meta["cache"]), Path(meta["path"])
    repo = str(meta.get("repo"))
    if cache.exists():
        with _repo_lock(cache, repo):
            _git(["worktree", "remove", "--force", str(path)], cwd=cache, what=f"repo {repo}: remove worktree",
                 check=False)
            _git(["worktree", "prune"], cwd=cache, what=f"repo {repo}: worktree prune", check=False)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    _meta_path(root, job_id).unlink(missing_ok=True)


def _all_meta(root: Path) -> list[dict[str, Any]]:
    folder = root / ".state" / "worktrees"
    out = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            meta = _read_meta(root, p.stem)
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


"""Shipping a repo job's worktree: commit with the job's trailers, fenced push of ``aq/<id>``, the ship hook.

Fencing reaches git: the push is ``--force-with-lease`` against the remote
SHA this attempt saw (or that it pushed last), so a stale worker can never
overwrite a newer attempt's branch; and the ship commit carries trailers
(``Agent-Queue-Job``/``-Factory``/``-Epoch``) so a re-ship recognises its own
commit already on the remote and pushes nothing. What was pushed and whether
the hook ran is kept in the worktree record (``gitrepo``), which makes
shipping idempotent across crashes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_queue.fsutil import ensure_dir
from agent_queue.gitcmd import GitError, GitFenced, NotFoundWorktree, branch_name, git, git_out
from agent_queue.gitrepo import read_meta, write_meta
from agent_queue.jobs import Job
from agent_queue.logpump import DEFAULT_LOG_CAP

log = logging.getLogger(__name__)

HOOK_TIMEOUT_S = 600.0
TRAILER_JOB = "Agent-Queue-Job"
TRAILER_FACTORY = "Agent-Queue-Factory"
TRAILER_EPOCH = "Agent-Queue-Epoch"
FALLBACK_NAME = "agent-queue"
FALLBACK_EMAIL = "agent-queue@localhost"


@dataclass(frozen=True)
class ShipResult:
    """``pushed`` is False when the remote already had this exact commit (a re-ship)."""

    pushed: bool
    sha: str
    branch: str
    hook_ran: bool = False


def _trailers(path: Path, rev: str, what: str) -> dict[str, str]:
    text = git_out(["log", "-1", "--format=%(trailers:only,unfold)", rev], cwd=path, what=what)
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _identity_args(path: Path, factory_id: str) -> list[str]:
    """Use the operator's git identity when configured; else a clear agent-queue one."""
    args = []
    if git(["config", "--get", "user.name"], cwd=path, what="git config", check=False).returncode != 0:
        args += ["-c", f"user.name={FALLBACK_NAME} ({factory_id})"]
    if git(["config", "--get", "user.email"], cwd=path, what="git config", check=False).returncode != 0:
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


def record_verified(root: Path, job: Job, path: Path) -> str:
    """Record what the verify gate saw: the worktree's content as a tree object (``add -A``), and its HEAD.

    Called once every process of the attempt has ended. Every later ship of this
    attempt (a resumed one after a crash, the ship hook's) commits exactly this
    tree, so nothing written into the worktree after verify can ship. Returns the tree.
    """
    root = root.resolve()
    meta = read_meta(root, job.id)
    if meta is None:
        raise NotFoundWorktree(f"job {job.id}: no worktree record; was it prepared by prepare_worktree?")
    what = f"repo {job.repo}: record what verify saw in job {job.id}"
    meta.update(verifiedHead=git_out(["rev-parse", "HEAD"], cwd=path, what=what), verifiedTree=_stage_all(path, what))
    write_meta(root, job.id, meta)
    return str(meta["verifiedTree"])


def _stage_all(path: Path, what: str) -> str:
    git(["add", "-A"], cwd=path, what=what)
    return git_out(["write-tree"], cwd=path, what=what)


def _commit_pending(path: Path, job: Job, factory_id: str, epoch: int | None, meta: Mapping[str, Any]) -> str:
    """The ship commit with the job's trailers: what verify saw (``record_verified``), else what the agent left.

    An earlier ship of this same attempt (trailers and tree match) is reused, so a re-ship commits nothing.
    """
    what = f"repo {job.repo}: commit job {job.id}"
    now_tree = _stage_all(path, what)
    head = git_out(["rev-parse", "HEAD"], cwd=path, what=what)
    tree, parent = str(meta.get("verifiedTree") or now_tree), str(meta.get("verifiedHead") or head)
    if now_tree != tree:
        log.warning("the worktree changed after the verify gate; shipping what verify saw",
                    extra={"job_id": job.id, "verifiedTree": tree, "worktreeTree": now_tree})
    mine = _trailers(path, "HEAD", what)
    same = mine.get(TRAILER_JOB) == job.id and mine.get(TRAILER_EPOCH) == str(epoch if epoch is not None else "offline")
    if same and git_out(["rev-parse", "HEAD^{tree}"], cwd=path, what=what) == tree:
        return head
    args = [*_identity_args(path, factory_id), "commit-tree", tree, "-p", parent, "-F", "-"]
    proc = git(args, cwd=path, what=what, stdin=commit_message(job, factory_id, epoch), check=False)
    if proc.returncode != 0:
        raise GitError(f"{what}: git commit-tree failed ({(proc.stderr.strip() or proc.stdout.strip())[-200:]})")
    sha = proc.stdout.strip()
    git(["update-ref", "-m", "agent-queue: ship commit", "HEAD", sha], cwd=path, what=what)
    return sha


def _ls_remote(path: Path, job: Job) -> str | None:
    ref = f"refs/heads/{branch_name(job.id)}"
    text = git_out(["ls-remote", "origin", ref], cwd=path, what=f"repo {job.repo}: ls-remote")
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
    log_cap: int = DEFAULT_LOG_CAP,
) -> ShipResult:
    """Commit, push ``aq/<id>`` fenced by ``--force-with-lease``, then run ``job.ship`` once.

    Call only after the verify gate passed (and, in fleet mode, after the
    coordinator accepted the report); what the gate saw (``record_verified``)
    is exactly what ships. Idempotent: a second call finds the commit on the
    remote, pushes nothing and does not re-run a hook that completed. A remote
    branch that moved since the attempt started is pushed on top of only when it
    holds this attempt's own work (the agent pushed it itself); else
    ``GitFenced`` (code ``fenced``) is raised and the remote is left untouched.
    """
    root = root.resolve()
    meta = read_meta(root, job.id)
    if meta is None:
        raise NotFoundWorktree(f"job {job.id}: no worktree record; was it prepared by prepare_worktree?")
    branch = branch_name(job.id)
    sha = _commit_pending(workdir, job, factory_id, epoch, meta)
    remote = _ls_remote(workdir, job)
    pushed = False
    if remote != sha:
        if remote is not None and _is_own_commit(workdir, job, remote, sha, epoch):
            sha = remote  # an earlier ship of this same attempt already landed (e.g. before a crash)
        else:
            _push(workdir, job, sha, _lease(workdir, job, meta, remote, sha))
            pushed = True
    meta.update(pushedSha=sha, finished=meta.get("finished") or "shipped", shippedAt=time.time())
    write_meta(root, job.id, meta)
    hook_ran = False
    if job.ship and not meta.get("hookDone"):
        _run_hook(job, workdir, sha, branch, hook_env, root / "logs" / f"{job.id}.log", log_cap)
        meta["hookDone"] = True
        write_meta(root, job.id, meta)
        hook_ran = True
    log.info("shipped", extra={"job_id": job.id, "branch": branch, "sha": sha, "pushed": pushed, "epoch": epoch})
    return ShipResult(pushed=pushed, sha=sha, branch=branch, hook_ran=hook_ran)


def _fetch_branch(path: Path, job: Job) -> bool:
    """Bring the remote ``aq/<id>`` commit into the cache, so it can be read and compared."""
    proc = git(["fetch", "--quiet", "origin", f"refs/heads/{branch_name(job.id)}"], cwd=path,
               what=f"repo {job.repo}: fetch", check=False)
    return proc.returncode == 0


def _is_own_commit(path: Path, job: Job, remote: str, sha: str, epoch: int | None) -> bool:
    """The remote commit is this attempt's ship commit: its trailers and the very tree we ship."""
    if not _fetch_branch(path, job):
        return False
    t = _trailers(path, remote, f"repo {job.repo}")
    return (t.get(TRAILER_JOB) == job.id and t.get(TRAILER_EPOCH) == str(epoch if epoch is not None else "offline")
            and _tree(path, job, remote) == _tree(path, job, sha))


def _tree(path: Path, job: Job, rev: str) -> str:
    return git_out(["rev-parse", f"{rev}^{{tree}}"], cwd=path, what=f"repo {job.repo}: read {rev[:12]}")


def _lease(path: Path, job: Job, meta: Mapping[str, Any], remote: str | None, sha: str) -> str:
    """The remote value the push may replace (``--force-with-lease``); GitFenced when it may replace none.

    The branch as this attempt found it (or as it last pushed it) may be replaced; no branch at all
    may be created. A branch moved since then may be replaced only by a commit that contains it
    (a fast-forward: the agent pushed its own work, e.g. ``git push origin HEAD:aq/<id>``), so
    nothing on the remote is lost. Anything else (another attempt's ship commit, a human's push,
    an agent's push of work it then dropped) is not this attempt's work and is never overwritten.
    """
    expected = str(meta.get("pushedSha") or meta.get("remoteShaAtStart") or "")
    if remote is None or remote == expected:
        return "" if remote is None else expected
    branch = branch_name(job.id)
    if _fetch_branch(path, job) and _is_ancestor(path, remote, sha):
        log.warning("remote branch %s holds this attempt's own work (pushed by the agent): shipping on top of it",
                    branch, extra={"job_id": job.id, "remote": remote, "sha": sha})
        return remote
    raise GitFenced(f"repo {job.repo}: remote branch {branch} moved to {remote[:12]}, not this attempt's work"
                    f"{_origin(path, job, remote)}; nothing was overwritten")


def _is_ancestor(path: Path, ancestor: str, rev: str) -> bool:
    return git(["merge-base", "--is-ancestor", ancestor, rev], cwd=path, what="git merge-base",
               check=False).returncode == 0


def _origin(path: Path, job: Job, sha: str) -> str:
    """Who made a foreign commit, when its trailers say (another attempt of this job)."""
    proc = git(["cat-file", "-e", f"{sha}^{{commit}}"], cwd=path, what=f"repo {job.repo}", check=False)
    if proc.returncode != 0:
        return ""
    t = _trailers(path, sha, f"repo {job.repo}")
    if t.get(TRAILER_JOB) != job.id:
        return ""
    return f" (the ship commit of epoch {t.get(TRAILER_EPOCH)} from factory {t.get(TRAILER_FACTORY)})"


def _push(path: Path, job: Job, sha: str, expected: str) -> None:
    ref = f"refs/heads/{branch_name(job.id)}"
    proc = git(["push", "--porcelain", f"--force-with-lease={ref}:{expected}", "origin", f"{sha}:{ref}"],
               cwd=path, what=f"repo {job.repo}: push {branch_name(job.id)}", check=False)
    if proc.returncode == 0:
        return
    text = proc.stdout + proc.stderr
    if "stale info" in text or "[rejected]" in text or "fetch first" in text:
        raise GitFenced(f"repo {job.repo}: push of {branch_name(job.id)} refused: the remote branch moved while "
                        "this push was under way; nothing was overwritten")
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
              log_path: Path, log_cap: int) -> None:
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
                      watch=_NoAbort(), log_cap=log_cap)
    if res.error is not None or res.timed_out:
        raise GitError(f"job {job.id}: ship hook {argv[0]} did not run to completion "
                       f"({res.error or f'timed out after {HOOK_TIMEOUT_S:g}s'})")
    if res.exit_code != 0:
        raise GitError(f"job {job.id}: ship hook {argv[0]} exited {res.exit_code} (output: {log_path})")

"""What a planner may not change: a repository's state before and after it ran, and what differs, in words.

A planning agent reads the repo and answers with a plan; it may not change
the repo. Both planning paths check it the same way: ``agent-queue plan``
around its throwaway worktree, and the runner around a planning job (a
composite's ``<id>.plan-<n>``, locally and in the fleet). A local work tree is
compared by HEAD, every ref, its status and its diff; a remote (a URL) by
its refs (``git ls-remote``), which is all a planner could change there.
The differences name the change, so the refusal says what happened.

Left out: agent-queue's own job branches (``refs/heads/aq/*``), which other
jobs push to the same repo while a planner runs; a planning job's own branch
is never pushed (its plan ships in its answer, not as content).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent_queue.gitcmd import git, git_out
from agent_queue.gitrepo import repo_url

SHOWN = 5  # paths or refs a refusal names; the rest are counted
JOB_BRANCHES = "refs/heads/aq/"

Snapshot = dict[str, str]


def snapshot(repo: str | Path) -> Snapshot:
    """The state of ``repo`` a planner must leave as it was (a local git work tree, or a URL / bare repo)."""
    what = f"plan: repo {repo}"
    target = repo_url(str(repo))  # a local path made absolute, the way a job's repo is cloned
    path = Path(target)
    if not path.is_dir() or git_out(["rev-parse", "--is-bare-repository"], cwd=path, what=what) == "true":
        return _remote_refs(target, what)
    diff = git(["diff", "HEAD", "--binary"], cwd=path, what=what).stdout
    out = {f"ref {name}": sha for sha, _, name in
           (line.partition(" ") for line in git_out(["for-each-ref", "--format=%(objectname) %(refname)"],
                                                    cwd=path, what=what).splitlines())
           if not name.startswith(JOB_BRANCHES)}
    out.update(HEAD=git_out(["rev-parse", "HEAD"], cwd=path, what=what),
               status=git_out(["status", "--porcelain=v1", "--untracked-files=all"], cwd=path, what=what),
               diff=hashlib.sha256(diff.encode("utf-8", "surrogateescape")).hexdigest())
    return out


def _remote_refs(repo: str, what: str) -> Snapshot:
    text = git_out(["ls-remote", "--", repo], what=what)
    return {f"ref {name}": sha for sha, _, name in (line.partition("\t") for line in text.splitlines())
            if name and not name.startswith(JOB_BRANCHES)}


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """What changed from ``before`` to ``after``, one phrase per kind of change (empty: nothing)."""
    out = []
    if before.get("HEAD") != after.get("HEAD"):
        out.append(f"HEAD moved from {str(before.get('HEAD'))[:12]} to {str(after.get('HEAD'))[:12]}")
    refs = sorted({k for k in (*before, *after) if k.startswith("ref ") and before.get(k) != after.get(k)})
    if refs:
        named = [f"{k[4:]} {'added' if k not in before else 'deleted' if k not in after else 'moved'}"
                 for k in refs[:SHOWN]]
        out.append("refs changed: " + ", ".join(named) + _more(len(refs)))
    if before.get("status") != after.get("status"):
        old = set((before.get("status") or "").splitlines())
        lines = [line for line in (after.get("status") or "").splitlines() if line not in old]
        lines += [f"(clean again) {line}" for line in sorted(old - set((after.get("status") or "").splitlines()))]
        out.append("working tree: " + ", ".join(" ".join(line.split()) for line in lines[:SHOWN]) + _more(len(lines)))
    elif before.get("diff") != after.get("diff"):
        out.append("working tree: the changes against HEAD differ")
    return out


def _more(n: int) -> str:
    return f" and {n - SHOWN} more" if n > SHOWN else ""

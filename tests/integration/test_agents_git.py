"""Repo jobs against a local bare repository standing in for the remote."""

from __future__ import annotations

import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "fakes"))
from agent_helpers import fake_adapter, git, make_remote, remote_branch, run_invocation  # noqa: E402

from agent_queue import gitcmd, gitrepo, gitship  # noqa: E402
from agent_queue.errors import BadInput  # noqa: E402
from agent_queue.invocation import prepare_invocation  # noqa: E402
from agent_queue.jobs import Job  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No operator git config leaks in (identity, hooks, signing): the fallback identity is used."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path)


def repo_job(remote: Path, job_id: str = "j1", **kw: object) -> Job:
    return Job.from_dict({"id": job_id, "tool": "claude", "prompt": f"change it [[write:{job_id}.txt]]",
                          "repo": str(remote), **kw})


def run_agent(root: Path, job: Job, workdir: Path) -> None:
    inv = prepare_invocation(fake_adapter("claude"), job, workdir=workdir, root=root, run_dir=root,
                             base_env={"PATH": "/usr/bin:/bin"})
    code, out = run_invocation(inv)
    assert code == 0, out


def test_branch_arrives_with_the_change_and_trailers_and_reship_is_a_noop(tmp_path: Path, remote: Path) -> None:
    root = tmp_path / "root"
    job = repo_job(remote)
    wt = gitrepo.prepare_worktree(root, job)
    assert wt == (root / "work" / "j1").resolve()
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=wt) == "aq/j1"
    run_agent(root, job, wt)
    first = gitship.ship_worktree(root, job, wt, factory_id="mac-1", epoch=3)
    assert first.pushed and first.branch == "aq/j1"
    assert remote_branch(remote, "aq/j1") == first.sha
    assert git("show", f"{first.sha}:j1.txt", cwd=remote) == "edited by fake claude"
    msg = git("log", "-1", "--format=%B", first.sha, cwd=remote)
    assert "Agent-Queue-Job: j1" in msg and "Agent-Queue-Factory: mac-1" in msg and "Agent-Queue-Epoch: 3" in msg
    again = gitship.ship_worktree(root, job, wt, factory_id="mac-1", epoch=3)
    assert not again.pushed and again.sha == first.sha
    assert git("rev-list", "--count", "aq/j1", cwd=remote) == "2"  # initial + one ship commit


def test_failing_verify_leaves_nothing_pushed(tmp_path: Path, remote: Path) -> None:
    root = tmp_path / "root"
    job = repo_job(remote, verify=["false"])
    wt = gitrepo.prepare_worktree(root, job)
    run_agent(root, job, wt)
    # The runner runs verify, sees it fail and never calls ship_worktree: nothing may have left the host.
    assert remote_branch(remote, "aq/j1") is None


def test_two_jobs_on_one_repo_at_once_get_separate_worktrees(tmp_path: Path, remote: Path) -> None:
    root = tmp_path / "root"
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def one(job_id: str) -> None:
        try:
            job = repo_job(remote, job_id)
            wt = gitrepo.prepare_worktree(root, job)
            run_agent(root, job, wt)
            results[job_id] = gitship.ship_worktree(root, job, wt, factory_id="f", epoch=1).sha
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(f"c{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(list((root / "repos").glob("*.git"))) == 1  # one shared cache
    for job_id, sha in results.items():
        assert remote_branch(remote, f"aq/{job_id}") == sha
        assert git("ls-tree", "--name-only", sha, cwd=remote).split() == ["README.md", f"{job_id}.txt"]


def test_stale_epoch_cannot_overwrite_a_newer_attempts_branch(tmp_path: Path, remote: Path) -> None:
    job = repo_job(remote)
    stale_root, new_root = tmp_path / "factory-a", tmp_path / "factory-b"
    stale_wt = gitrepo.prepare_worktree(stale_root, job)  # epoch 1 starts, then stops renewing
    new_wt = gitrepo.prepare_worktree(new_root, job)  # epoch 2 after the reclaim
    run_agent(stale_root, job, stale_wt)
    run_agent(new_root, job, new_wt)
    newer = gitship.ship_worktree(new_root, job, new_wt, factory_id="b", epoch=2)
    with pytest.raises(gitcmd.GitFenced, match="aq/j1"):
        gitship.ship_worktree(stale_root, job, stale_wt, factory_id="a", epoch=1)
    assert remote_branch(remote, "aq/j1") == newer.sha


def test_cache_is_fetched_not_recloned_and_sees_new_commits(tmp_path: Path, remote: Path) -> None:
    root = tmp_path / "root"
    gitrepo.prepare_worktree(root, repo_job(remote, "a1"))
    cache = gitrepo.cache_path(root, str(remote))
    marker = cache / "aq-marker"
    marker.write_text("same cache")
    seed = tmp_path / "seed"
    (seed / "NEW.md").write_text("new\n")
    git("add", "NEW.md", cwd=seed)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "second", cwd=seed)
    git("push", "-q", str(remote), "main", cwd=seed)
    wt = gitrepo.prepare_worktree(root, repo_job(remote, "a2"))
    assert marker.exists() and (wt / "NEW.md").exists()


def test_base_selects_the_start_point(tmp_path: Path, remote: Path) -> None:
    seed = tmp_path / "seed"
    git("checkout", "-qb", "feature", cwd=seed)
    (seed / "F.md").write_text("f\n")
    git("add", "F.md", cwd=seed)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "feature", cwd=seed)
    git("push", "-q", str(remote), "feature", cwd=seed)
    root = tmp_path / "root"
    assert (gitrepo.prepare_worktree(root, repo_job(remote, "b1", base="feature")) / "F.md").exists()
    assert not (gitrepo.prepare_worktree(root, repo_job(remote, "b2")) / "F.md").exists()
    with pytest.raises(gitcmd.GitError, match="nope"):
        gitrepo.prepare_worktree(root, repo_job(remote, "b3", base="nope"))


def test_rerun_resets_the_worktree_to_a_clean_base(tmp_path: Path, remote: Path) -> None:
    root = tmp_path / "root"
    job = repo_job(remote)
    wt = gitrepo.prepare_worktree(root, job)
    (wt / "junk.txt").write_text("left over")
    (wt / "README.md").write_text("scribbled")
    git("add", "README.md", cwd=wt)
    assert gitrepo.prepare_worktree(root, job) == wt
    assert not (wt / "junk.txt").exists() and (wt / "README.md").read_text() == "hello\n"
    assert git("status", "--porcelain", cwd=wt) == ""


def test_ship_hook_runs_once_with_placeholders(tmp_path: Path, remote: Path) -> None:
    root = tmp_path / "root"
    log = tmp_path / "hook.log"
    script = f"import sys; open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
    job = repo_job(remote, ship=[sys.executable, "-c", script, "{job_id}", "{branch}"])
    wt = gitrepo.prepare_worktree(root, job)
    run_agent(root, job, wt)
    assert gitship.ship_worktree(root, job, wt, factory_id="f", epoch=None).hook_ran
    assert not gitship.ship_worktree(root, job, wt, factory_id="f", epoch=None).hook_ran
    assert log.read_text() == "j1 aq/j1\n"


def test_prune_and_orphans_respect_live_leases_and_keep_branches(tmp_path: Path, remote: Path) -> None:
    root = tmp_path / "root"
    done, live, orphan = repo_job(remote, "done"), repo_job(remote, "live"), repo_job(remote, "orph")
    paths = {j.id: gitrepo.prepare_worktree(root, j) for j in (done, live, orphan)}
    run_agent(root, done, paths["done"])
    gitship.ship_worktree(root, done, paths["done"], factory_id="f", epoch=1)
    gitrepo.mark_finished(root, "live", "quarantined")
    assert gitrepo.clean_orphans(root, running_ids={"live"}) == ["orph"]
    assert not paths["orph"].exists() and paths["done"].exists()
    far = 10**10
    assert gitrepo.prune_worktrees(root, 7, live_ids={"live"}, now=far) == ["done"]
    assert not paths["done"].exists() and paths["live"].exists()
    assert remote_branch(remote, "aq/done") is not None
    cache = gitrepo.cache_path(root, str(remote))
    assert "aq/done" in git("branch", "--list", "aq/*", cwd=cache)
    assert gitrepo.prune_worktrees(root, 7, live_ids=set(), now=0) == []  # not old enough


def test_bad_repo_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="must not start with '-'"):
        gitrepo.prepare_worktree(tmp_path, Job.from_dict({"id": "x", "command": ["true"], "repo": "--upload-pack=x"}))
    with pytest.raises(gitcmd.GitError, match="repo .*missing.*clone"):
        gitrepo.prepare_worktree(tmp_path, Job.from_dict({"id": "x", "command": ["true"],
                                                          "repo": str(tmp_path / "missing")}))


def test_the_ship_commits_what_verify_saw_not_what_changed_after(tmp_path: Path, remote: Path) -> None:
    """Issue 16: whatever writes into the worktree after the verify gate (a stray process) never ships."""
    root = tmp_path / "root"
    job = repo_job(remote, ship=["true"])
    wt = gitrepo.prepare_worktree(root, job)
    run_agent(root, job, wt)
    verified = gitship.record_verified(root, job, wt)
    (wt / "evil.txt").write_text("written after verify\n")
    (wt / "j1.txt").write_text("changed after verify\n")
    first = gitship.ship_worktree(root, replace(job, ship=()), wt, factory_id="f", epoch=1)
    assert git("rev-parse", f"{first.sha}^{{tree}}", cwd=remote) == verified
    assert git("ls-tree", "--name-only", first.sha, cwd=remote).split() == ["README.md", "j1.txt"]
    assert git("show", f"{first.sha}:j1.txt", cwd=remote) == "edited by fake claude"
    hook = gitship.ship_worktree(root, job, wt, factory_id="f", epoch=1)  # the hook's pass: still nothing new
    assert hook.sha == first.sha and not hook.pushed and hook.hook_ran
    assert remote_branch(remote, "aq/j1") == first.sha

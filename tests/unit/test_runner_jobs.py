"""The runner in-process on tmp roots, with real processes: ship, verify, retry, timeout, quarantine."""

from __future__ import annotations

import json
from pathlib import Path

from core_support import drain, make_settings, result, shell_job

from agent_queue.inbox import LocalQueue
from agent_queue.jobs import Job
from tests.procutil import alive


def enqueue(root: Path, job: Job) -> None:
    LocalQueue(root).init().enqueue(job)


def test_ship_after_verify_then_ship_hook(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "r")
    enqueue(s.root, shell_job("a", "sh", "-c", "echo made > out.txt; echo tool-says-hi",
                              verify=["test", "-f", "out.txt"],
                              ship=["sh", "-c", "test -d ../../shipped/a && echo hook-ran > hook.txt"]))
    assert drain(s) == 1
    res = result(s.root, "shipped", "a")
    assert res["attempts"] == 1 and res["history"][0]["verifyExitCode"] == 0
    assert res["shipHook"]["exitCode"] == 0
    assert (s.root / "work" / "a" / "hook.txt").read_text() == "hook-ran\n"  # ran after the move
    log = (s.root / "logs" / "a.log").read_text()
    assert "attempt 1 of 3" in log and "tool-says-hi" in log and "verify:" in log and "ship hook:" in log


def test_verify_failure_retries_then_quarantines(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "r")
    enqueue(s.root, shell_job("v", "sh", "-c", "echo run >> ../count", verify=["false"],
                              budget={"maxAttempts": 2}))
    drain(s)
    res = result(s.root, "quarantine", "v")
    assert res["attempts"] == 2
    assert "verify gate: exited with status 1 (attempt 2 of 2)" in res["reason"]
    assert (s.root / "work" / "count").read_text() == "run\nrun\n"


def test_profile_max_attempts_and_tool_failure(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "r", config="[profiles.once]\nmax_attempts = 1\n")
    enqueue(s.root, shell_job("f", "sh", "-c", "exit 3", profile="once"))
    drain(s)
    assert "tool: exited with status 3 (attempt 1 of 1)" in result(s.root, "quarantine", "f")["reason"]


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "r")
    pidfile = tmp_path / "grandchild.pid"
    enqueue(s.root, shell_job("t", "sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait",
                              budget={"timeoutS": 0.5, "maxAttempts": 1}))
    drain(s)
    assert "timed out after 0.5s" in result(s.root, "quarantine", "t")["reason"]
    grandchild = int(pidfile.read_text())
    assert not alive(grandchild)


def test_missing_program_quarantines_naming_it_and_daemon_continues(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "r", config='[tools.ghost]\nargv = ["no-such-agent-cli", "{prompt}"]\n')
    enqueue(s.root, Job.from_dict({"id": "g", "tool": "ghost", "prompt": "hi", "priority": 1}))
    enqueue(s.root, shell_job("after", "true"))
    assert drain(s) == 2
    assert "no-such-agent-cli" in result(s.root, "quarantine", "g")["reason"]
    assert result(s.root, "quarantine", "g")["attempts"] == 1
    assert (s.root / "shipped" / "after").is_dir()


def test_unknown_tool_dropped_in_inbox_is_quarantined(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "r")
    LocalQueue(s.root).init()
    (s.root / "inbox" / "x.json").write_text(json.dumps({"id": "x", "tool": "robot", "prompt": "p"}))
    drain(s)
    assert "unknown tool 'robot'" in result(s.root, "quarantine", "x")["reason"]


def test_big_non_ascii_prompt_via_stdin_and_clean_env(tmp_path: Path) -> None:
    config = ('[tools.catter]\nargv = ["sh", "-c", "cat > got.txt; env > env.txt", "{job_id}"]\n'
              'prompt_via = "stdin"\n')
    s = make_settings(tmp_path / "r", config=config, env={"AQ_OTHER": "x", "SECRET_SAUCE": "y"})
    prompt = "réparer le bogue ✓ 修复 " * 40_000  # > 1 MB of UTF-8
    assert len(prompt.encode()) > 1_000_000
    enqueue(s.root, Job.from_dict({"id": "p", "tool": "catter", "prompt": prompt, "env": {"JOB_VAR": "j"}}))
    drain(s)
    work = s.root / "work" / "p"
    assert (work / "got.txt").read_text(encoding="utf-8") == prompt
    env = (work / "env.txt").read_text()
    assert "tok-secret-123" not in env and "AQ_" not in env and "SECRET_SAUCE" not in env
    assert "JOB_VAR=j" in env and "PATH=" in env


def test_crashed_attempt_counts_towards_max(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "r")
    q = LocalQueue(s.root).init()
    q.enqueue(shell_job("c", "true", budget={"maxAttempts": 1}))
    q.take("c")  # the daemon "crashed" with c in running/
    drain(s)
    res = result(s.root, "quarantine", "c")
    assert "attempts exhausted" in res["reason"]
    assert [h["outcome"] for h in res["history"]] == ["crashed", "rejected"]


def test_idle_drain_returns_zero(tmp_path: Path) -> None:
    assert drain(make_settings(tmp_path / "r")) == 0


def test_once_and_max_jobs_bound_the_loop(tmp_path: Path) -> None:
    from agent_queue.local_source import LocalSource
    from agent_queue.runner import Runner, RunOptions

    s = make_settings(tmp_path / "r")
    q = LocalQueue(s.root).init()
    for i in range(3):
        q.enqueue(shell_job(f"m{i}", "true"))
    assert Runner(s, LocalSource(q)).work(RunOptions(once=True)) == 1
    assert Runner(s, LocalSource(q)).work(RunOptions(max_jobs=1, drain=True)) == 1
    assert q.counts()["inbox"] == 1


def test_an_unexpected_error_neither_kills_the_daemon_nor_loses_the_job(tmp_path: Path, monkeypatch) -> None:
    """A bug while preparing a job: the attempt counts, the job comes back and ships.

    (A full disk is not the job's failure: see tests/unit/test_disk_full.py.)"""
    from agent_queue import workspace

    real, calls = workspace.prepare, []

    def flaky(root: Path, job: Job) -> Path:
        calls.append(job.id)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        return real(root, job)

    monkeypatch.setattr(workspace, "prepare", flaky)
    s = make_settings(tmp_path / "r")
    enqueue(s.root, shell_job("d", "true"))
    drain(s)
    res = result(s.root, "shipped", "d")
    assert res["attempts"] == 2 and calls == ["d", "d"]
    assert "internal error: OSError" in res["history"][0]["reason"]


def test_a_job_that_always_hits_an_unexpected_error_is_quarantined_not_looped(tmp_path: Path, monkeypatch) -> None:
    from agent_queue import workspace

    def broken(root: Path, job: Job) -> Path:
        raise RuntimeError("bug")

    monkeypatch.setattr(workspace, "prepare", broken)
    s = make_settings(tmp_path / "r")
    enqueue(s.root, shell_job("b", "true", budget={"maxAttempts": 2}))
    drain(s)
    res = result(s.root, "quarantine", "b")
    assert res["attempts"] == 2 and "internal error: RuntimeError: bug" in res["reason"]


def test_allowed_repos_refuses_a_repo_outside_the_list(tmp_path: Path) -> None:
    s = make_settings(tmp_path / "r", config=f'allowed_repos = ["{tmp_path}/allowed"]\n')
    enqueue(s.root, shell_job("out", "true", repo=f"{tmp_path}/allowed/../secret/x.git"))
    drain(s)
    reason = result(s.root, "quarantine", "out")["reason"]
    assert "is not in allowed_repos of factory test-1" in reason


def test_repo_allowed_matches_whole_segments_and_normalises_paths() -> None:
    from agent_queue.workspace import repo_allowed

    allowed = ("/srv/git", "https://github.com/acme")
    assert repo_allowed("/srv/git/app.git", allowed) and repo_allowed("/srv/git", allowed)
    assert not repo_allowed("/srv/gitx/app.git", allowed)
    assert not repo_allowed("/srv/git/../../etc/app.git", allowed)
    assert repo_allowed("https://github.com/acme/app.git", allowed)
    assert not repo_allowed("https://github.com/acme-evil/app.git", allowed)
    assert repo_allowed("/anything", ())

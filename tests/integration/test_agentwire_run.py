"""Real agent runs through `agent-queue run --drain` in subprocesses, the fake agent on PATH as claude/codex.

A local bare repository stands in for the remote; the daemon runs with
AQ_FLEET_TOKEN set, so every test also shows it never reaches a tool.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_support import aq, clean_env

from agent_queue import gitship
from agent_queue.jobs import Job
from agent_queue.timeutil import parse_rfc3339, to_rfc3339
from tests.fakes.agent_helpers import FAKE_AGENT, git, make_remote, remote_branch

TOKEN = "tok-secret-agentwire-42"


def fake_bin(folder: Path, *flavors: str) -> Path:
    """``folder/<flavor>`` scripts that run the fake agent like the real CLI (``--version`` answers too)."""
    folder.mkdir(parents=True, exist_ok=True)
    for flavor in flavors:
        script = folder / flavor
        script.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = "--version" ]; then echo "{flavor} 9.9.9-fake"; exit 0; fi\n'
            f'exec "{sys.executable}" "{FAKE_AGENT}" {flavor} "$@"\n'
        )
        script.chmod(0o755)
    return folder


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    """The daemon's env: fakes first on PATH, the fleet token set, no operator git config."""
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = fake_bin(tmp_path / "bin", "claude", "codex")
    return clean_env(PATH=f"{bin_dir}:{clean_env()['PATH']}", HOME=str(home), GIT_CONFIG_NOSYSTEM="1",
                     AQ_FLEET_TOKEN=TOKEN)


def enqueue(root: Path, env: dict[str, str], spec: dict[str, Any]) -> None:
    out = aq(root, "enqueue", "-", stdin=json.dumps(spec), env=env)
    assert out.returncode == 0, out.stderr


def drain(root: Path, env: dict[str, str]) -> str:
    out = aq(root, "run", "--drain", env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert TOKEN not in out.stderr
    return out.stderr


def result(root: Path, state: str, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / state / job_id / "result.json").read_text())
    return data


def test_repo_job_pushes_the_agents_change_and_a_second_ship_is_a_no_op(tmp_path: Path,
                                                                        env: dict[str, str]) -> None:
    root, remote = tmp_path / "r", make_remote(tmp_path)
    hooks = tmp_path / "hooks.txt"
    spec = {"id": "fix-1", "tool": "claude", "prompt": "Fix the typo", "repo": str(remote),
            "verify": ["test", "-f", "AGENT_CHANGE.txt"],
            "ship": ["sh", "-c", f"echo {{branch}} {{sha}} >> {hooks}"]}
    enqueue(root, env, spec)
    drain(root, env)
    res = result(root, "shipped", "fix-1")
    last = res["history"][-1]
    sha = remote_branch(remote, "aq/fix-1")
    assert sha is not None and last["sha"] == sha and last["pushed"] is True and last["branch"] == "aq/fix-1"
    assert git("show", f"{sha}:AGENT_CHANGE.txt", cwd=remote) == "edited by fake claude"
    assert "Agent-Queue-Job: fix-1" in git("log", "-1", "--format=%B", sha, cwd=remote)
    assert (last["costUsd"], last["tokensIn"], last["tokensOut"], last["turns"], last["sessionId"]) == (
        0.05, 120, 50, 3, "sess-claude-1")
    transcript = json.loads(Path(last["transcript"]).read_text())
    assert transcript["fake_saw_aq_env"] == []  # AQ_FLEET_TOKEN (and every AQ_*) never reached the tool
    assert hooks.read_text() == f"aq/fix-1 {sha}\n" and res["shipHook"]["ok"] is True
    for path in (root / "shipped" / "fix-1" / "result.json", root / "logs" / "fix-1.log"):
        assert TOKEN not in path.read_text()
    # Shipping the same job again pushes nothing and does not re-run the completed hook.
    job = Job.from_dict(spec)
    again = gitship.ship_worktree(root, job, root / "work" / "fix-1", factory_id="x", epoch=None)
    assert (again.pushed, again.sha, again.hook_ran) == (False, sha, False)
    assert remote_branch(remote, "aq/fix-1") == sha and hooks.read_text().count("\n") == 1


def test_a_redelivered_job_runs_again_but_pushes_nothing_new(tmp_path: Path, env: dict[str, str]) -> None:
    root, remote = tmp_path / "r", make_remote(tmp_path)
    enqueue(root, env, {"id": "again", "tool": "codex", "prompt": "add a file", "repo": str(remote)})
    drain(root, env)
    sha = remote_branch(remote, "aq/again")
    # As if the daemon crashed after the push, before the job reached shipped/.
    (root / "shipped" / "again").rename(root / "inbox" / "again")
    drain(root, env)
    last = result(root, "shipped", "again")["history"][-1]
    assert last["pushed"] is False and last["sha"] == sha and remote_branch(remote, "aq/again") == sha


def test_failing_verify_pushes_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    root, remote = tmp_path / "r", make_remote(tmp_path)
    enqueue(root, env, {"id": "bad", "tool": "claude", "prompt": "break it", "repo": str(remote),
                        "verify": ["false"], "budget": {"maxAttempts": 2}})
    drain(root, env)
    res = result(root, "quarantine", "bad")
    assert res["attempts"] == 2 and "verify gate" in res["reason"]
    assert remote_branch(remote, "aq/bad") is None
    meta = json.loads((root / ".state" / "worktrees" / "bad.json").read_text())
    assert meta["finished"] == "quarantined" and meta["pushedSha"] is None


def test_two_jobs_on_one_repo_get_separate_worktrees_and_both_ship(tmp_path: Path, env: dict[str, str]) -> None:
    root, remote = tmp_path / "r", make_remote(tmp_path)
    for name in ("a", "b"):
        enqueue(root, env, {"id": f"job-{name}", "tool": "codex", "prompt": f"[[write:{name}.txt]]",
                            "repo": str(remote), "verify": ["test", "-f", f"{name}.txt"]})
    drain(root, env)
    for name, other in (("a", "b"), ("b", "a")):
        sha = remote_branch(remote, f"aq/job-{name}")
        assert sha is not None
        files = git("ls-tree", "--name-only", sha, cwd=remote).split()
        assert f"{name}.txt" in files and f"{other}.txt" not in files
    assert (root / "work" / "job-a" / "a.txt").exists() and not (root / "work" / "job-a" / "b.txt").exists()


def test_rate_limited_attempt_is_put_back_with_not_before_and_no_attempt_counted(tmp_path: Path,
                                                                                 env: dict[str, str]) -> None:
    root = tmp_path / "r"
    enqueue(root, env, {"id": "limited", "tool": "codex", "prompt": "work [[ratelimit]]"})
    drain(root, env)
    res = result(root, "inbox", "limited")
    assert res["attempts"] == 0 and res["history"][-1]["outcome"] == "rate_limited"
    wait_s = parse_rfc3339(res["notBefore"]) - parse_rfc3339(res["history"][-1]["endedAt"])
    assert 2 * 3600 < wait_s <= 2 * 3600 + 5 * 60 + 5  # codex said "try again in 2 hours 5 minutes"
    drain(root, env)  # not before notBefore: the job is skipped
    assert len(result(root, "inbox", "limited")["history"]) == 1
    path = root / "inbox" / "limited" / "result.json"
    path.write_text(json.dumps({**res, "notBefore": to_rfc3339(0)}))
    drain(root, env)  # due now: taken again (and limited again), still no attempt counted
    res = result(root, "inbox", "limited")
    assert len(res["history"]) == 2 and res["attempts"] == 0


def test_over_budget_quarantines_with_the_reason(tmp_path: Path, env: dict[str, str]) -> None:
    root = tmp_path / "r"
    enqueue(root, env, {"id": "pricey", "tool": "claude", "prompt": "spend [[cost=2.5]]",
                        "budget": {"costUsd": 1.0}})
    drain(root, env)
    res = result(root, "quarantine", "pricey")
    assert res["reason"].startswith("over budget: the attempt cost $2.5000, budget.costUsd is $1.0000")
    assert res["history"][-1]["costUsd"] == 2.5 and res["attempts"] == 1


def test_expired_login_quarantines_and_doctor_reports_it(tmp_path: Path, env: dict[str, str]) -> None:
    root = tmp_path / "r"
    enqueue(root, env, {"id": "auth", "tool": "claude", "prompt": "hi [[auth]]"})
    drain(root, env)
    assert "login expired" in result(root, "quarantine", "auth")["reason"]
    out = aq(root, "doctor", env=env)
    assert out.returncode == 0  # claude is not needed by any waiting job nor configured: a warning
    assert "login claude" in out.stdout and "warn" in out.stdout


def test_big_prompt_reaches_the_agent_through_stdin(tmp_path: Path, env: dict[str, str]) -> None:
    root = tmp_path / "r"
    prompt = "réparer ✓ " * 100_000  # > 1 MB of UTF-8
    enqueue(root, env, {"id": "big", "tool": "claude", "prompt": prompt})
    drain(root, env)
    last = result(root, "shipped", "big")["history"][-1]
    assert json.loads(Path(last["transcript"]).read_text())["fake_prompt_len"] == len(prompt.encode())


def test_unreachable_repo_fails_attempts_then_quarantines(tmp_path: Path, env: dict[str, str]) -> None:
    root = tmp_path / "r"
    enqueue(root, env, {"id": "norepo", "tool": "codex", "prompt": "x", "repo": str(tmp_path / "missing.git"),
                        "budget": {"maxAttempts": 2}})
    drain(root, env)
    res = result(root, "quarantine", "norepo")
    assert res["attempts"] == 2 and res["reason"].startswith("workspace: repo ") and "clone" in res["reason"]

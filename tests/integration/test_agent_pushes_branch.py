"""An agent that pushes ``aq/<id>`` itself (issue 16, item 1): real daemons, a bare remote on disk.

Coding agents run ``git push origin HEAD:refs/heads/aq/<id>``. The branch then no
longer matches the lease the daemon's ``--force-with-lease`` push expects. It used to
wedge the factory: in fleet mode the job was parked, the report replayed (200) and the
push retried ~36 times a second forever (the ship hook never ran, the next job never
started); offline the job was quarantined as "a newer attempt shipped it".

Now: a remote branch that the ship commit contains (the agent pushed its own work) is
shipped on top of; any other moved branch is never overwritten, and the job ends at
once with the true reason (offline: quarantined; fleet, where the coordinator already
accepted the ship: shipped with ``pushPending``). Either way the next job runs.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import aq, clean_env, wait_for
from fleet_support import Daemons, coord_enqueue, coord_job, daemons, fleet_env, local_records, result_of

from tests.fakes.agent_helpers import git, make_remote, remote_branch

VENV_BIN = Path(sys.executable).parent
AGENT = "-c user.name=agent -c user.email=agent@example.invalid"


def own_push(job_id: str) -> list[str]:
    """The agent commits its work and pushes the branch itself."""
    return ["sh", "-c", f"echo work > agent.txt && git add -A && git {AGENT} commit -qm 'agent work' && "
                        f"git push -q origin HEAD:refs/heads/aq/{job_id}"]


def foreign_push(job_id: str) -> list[str]:
    """The agent pushes a commit its worktree does not hold (then leaves other work): not its work."""
    return ["sh", "-c", f"sha=$(echo other | git {AGENT} commit-tree HEAD^{{tree}} -p HEAD) && "
                        f"git push -q origin $sha:refs/heads/aq/{job_id} && echo mine > mine.txt"]


def repo_spec(job_id: str, remote: Path, command: list[str], hook_log: Path, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "repo": str(remote), "command": command, "verify": ["true"],
            "ship": ["sh", "-c", f"echo {{branch}} {{sha}} >> {shlex.quote(str(hook_log))}"], **extra}


@pytest.fixture()
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path)


@pytest.fixture()
def ds() -> Iterator[Daemons]:
    with daemons() as d:
        yield d


def host_env(tmp_path: Path) -> dict[str, str]:
    """No operator git config: the daemon's fallback identity signs the ship commit."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}


def parents(remote: Path, sha: str) -> list[str]:
    return git("log", "-1", "--format=%P", sha, cwd=remote).split()


def run_fleet(tmp_path: Path, ds: Daemons, *specs: dict[str, Any]) -> tuple[Path, Path]:
    """Enqueue ``specs`` at an embedded coordinator, run one fleet daemon until all left it; (root, state)."""
    state, root = tmp_path / "coord", tmp_path / "root"
    for spec in specs:
        coord_enqueue(state, spec)
    env = fleet_env(api_cmd=f"coordinator-stub --state {shlex.quote(str(state))} call", **host_env(tmp_path))
    daemon = ds.start(root, env)
    ids = sorted(spec["id"] for spec in specs)
    wait_for(lambda: sorted(local_records(root, "shipped") + local_records(root, "quarantine")) == ids
             or daemon.poll() is not None, "every job to leave the factory", 60)
    assert daemon.poll() is None, daemon.communicate()
    return root, state


def last_attempt(path: Path) -> dict[str, Any]:
    record: dict[str, Any] = result_of(path)["history"][-1]
    return record


def reports(state: Path, job_id: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["op"] == "report" and e.get("jobId") == job_id]


def test_fleet_agent_pushed_its_own_branch_ships_on_top_and_the_next_job_runs(tmp_path: Path, remote: Path,
                                                                            ds: Daemons) -> None:
    hook_log = tmp_path / "hook.log"
    root, state = run_fleet(tmp_path, ds, repo_spec("own", remote, own_push("own"), hook_log, priority=10),
                            {"id": "next", "command": ["true"]})
    assert local_records(root, "shipped") == ["next", "own"]
    assert coord_job(state, "own")["meta"]["state"] == "shipped"
    shipped = last_attempt(root / "shipped" / "own")
    head = remote_branch(remote, "aq/own")
    assert head == shipped["sha"] and not shipped.get("pushPending")
    # The trailer commit sits on top of the agent's own pushed commit, which holds its work.
    agent_commit = parents(remote, head)[0]
    assert git("log", "-1", "--format=%s", agent_commit, cwd=remote) == "agent work"
    assert "Agent-Queue-Job: own" in git("log", "-1", "--format=%B", head, cwd=remote)
    assert git("show", f"{head}:agent.txt", cwd=remote) == "work"
    assert hook_log.read_text().split() == ["aq/own", head]  # the ship hook ran, once
    assert len(reports(state, "own")) == 1  # one report(shipped): no park / replay loop


def test_fleet_branch_moved_to_foreign_work_is_not_overwritten_and_the_job_ends(tmp_path: Path, remote: Path,
                                                                              ds: Daemons) -> None:
    hook_log = tmp_path / "hook.log"
    root, state = run_fleet(tmp_path, ds, repo_spec("alien", remote, foreign_push("alien"), hook_log, priority=10),
                            {"id": "next", "command": ["true"]})
    assert local_records(root, "shipped") == ["alien", "next"]  # the coordinator accepted it: it cannot unship
    foreign = remote_branch(remote, "aq/alien")
    assert git("log", "-1", "--format=%s", foreign, cwd=remote) == "other"  # untouched
    shipped = last_attempt(root / "shipped" / "alien")
    assert shipped["pushPending"] is True
    assert f"remote branch aq/alien moved to {foreign[:12]}, not this attempt's work" in shipped["pushError"]
    assert "newer attempt" not in shipped["pushError"]
    assert not hook_log.exists()  # no branch of ours on the remote: no PR hook
    assert len(reports(state, "alien")) == 1


def offline(tmp_path: Path, *specs: dict[str, Any]) -> Path:
    root = tmp_path / "root"
    env = clean_env(**host_env(tmp_path))
    for spec in specs:
        out = aq(root, "enqueue", "-", stdin=json.dumps(spec), env=env)
        assert out.returncode == 0, out.stderr
    out = aq(root, "run", "--drain", env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return root


def test_offline_agent_pushed_its_own_branch_ships(tmp_path: Path, remote: Path) -> None:
    hook_log = tmp_path / "hook.log"
    root = offline(tmp_path, repo_spec("own", remote, own_push("own"), hook_log))
    shipped = last_attempt(root / "shipped" / "own")
    head = remote_branch(remote, "aq/own")
    assert head == shipped["sha"]
    assert git("log", "-1", "--format=%s", parents(remote, head)[0], cwd=remote) == "agent work"
    assert hook_log.read_text().split() == ["aq/own", head]


def test_offline_foreign_branch_quarantines_with_the_true_reason(tmp_path: Path, remote: Path) -> None:
    root = offline(tmp_path, repo_spec("alien", remote, foreign_push("alien"), tmp_path / "hook.log"),
                   {"id": "next", "command": ["true"]})
    foreign = remote_branch(remote, "aq/alien")
    reason = result_of(root / "quarantine" / "alien")["reason"]
    assert f"remote branch aq/alien moved to {foreign[:12]}, not this attempt's work" in reason
    assert "newer attempt" not in reason
    assert git("log", "-1", "--format=%s", foreign, cwd=remote) == "other"
    assert local_records(root, "shipped") == ["next"]

"""A planning job may read its repo, never change it; and planning runs count against the composite's budget.

Both run through the real CLI and a real daemon: the local queue and the fleet (the command seam).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cli_support import aq, status, wait_for
from fleet_support import coord_job, daemons, fleet_env
from planner_support import answer, configure
from test_planner_cli import git, make_repo

from tests.stubutil import seam_command


def rollup_in(where: str, root: Path, state: Path, env: dict[str, str] | None) -> dict[str, Any]:
    if where == "local":
        (roll,) = status(root)["composites"]
        return dict(roll)
    return dict(coord_job(state, "epic")["rollup"])


def run_until_ended(where: str, root: Path, state: Path, env: dict[str, str] | None) -> dict[str, Any]:
    """A real daemon works the queue (local: drained; fleet: until the epic's rollup has ended)."""
    if where == "local":
        assert aq(root, "run", "--drain", timeout=60).returncode == 0
    else:
        with daemons() as ds:
            ds.start(root, env or {}, factory="f1")
            wait_for(lambda: rollup_in(where, root, state, env)["state"] in ("shipped", "quarantined", "planned"),
                     "the epic to end", deadline_s=60)
    return rollup_in(where, root, state, env)


@pytest.mark.parametrize("where", ["local", "fleet"])
def test_a_planning_job_that_changed_the_repo_is_refused_naming_the_change(tmp_path: Path, where: str) -> None:
    root, script, state, repo = tmp_path / "root", tmp_path / "planner", tmp_path / "stub", make_repo(tmp_path / "r")
    env = fleet_env(api_cmd=seam_command(state)) if where == "fleet" else None
    fleet = ["--fleet"] if where == "fleet" else []
    plan = answer([{"id": "a", "command": ["true"]}], write="SCRATCH.txt")  # in its own checkout: allowed
    configure(root, script, [{**plan, "touch": str(repo / "STRAY.txt")}])
    spec = {"id": "epic", "kind": "composite", "repo": str(repo),
            "plan": {"tool": "planner", "prompt": "Split", "maxTries": 1}}
    assert aq(root, "enqueue", *fleet, "-", stdin=json.dumps(spec), env=env).returncode == 0
    roll = run_until_ended(where, root, state, env)
    assert roll["state"] == "quarantined", roll
    assert roll["reason"] == (f"planning job epic.plan-1 quarantined: planning: the planner changed the repo {repo} "
                              "(working tree: ?? STRAY.txt); a planner may read the repo, never change it")
    assert "a" not in [c["id"] for c in roll["children"]]  # nothing of its plan runs


@pytest.mark.parametrize("where", ["local", "fleet"])
def test_a_planning_job_reads_the_repo_and_pushes_nothing(tmp_path: Path, where: str) -> None:
    root, script, state, repo = tmp_path / "root", tmp_path / "planner", tmp_path / "stub", make_repo(tmp_path / "r")
    env = fleet_env(api_cmd=seam_command(state)) if where == "fleet" else None
    fleet = ["--fleet"] if where == "fleet" else []
    configure(root, script, [answer([{"id": "a", "command": ["true"]}], write="SCRATCH.txt")])
    spec = {"id": "epic", "kind": "composite", "repo": str(repo), "plan": {"tool": "planner", "prompt": "Split"}}
    assert aq(root, "enqueue", *fleet, "-", stdin=json.dumps(spec), env=env).returncode == 0
    roll = run_until_ended(where, root, state, env)
    assert roll["state"] == "shipped", roll
    branches = git("for-each-ref", "--format=%(refname)", "refs/heads", cwd=repo).split()
    assert "refs/heads/aq/epic.a" in branches and "refs/heads/aq/epic.plan-1" not in branches
    assert git("status", "--porcelain", cwd=repo) == ""


@pytest.mark.parametrize("where", ["local", "fleet"])
def test_a_planning_run_over_the_budget_stops_the_composite_saying_so(tmp_path: Path, where: str) -> None:
    root, script, state, log = tmp_path / "root", tmp_path / "planner", tmp_path / "stub", tmp_path / "runs.log"
    env = fleet_env(api_cmd=seam_command(state)) if where == "fleet" else None
    fleet = ["--fleet"] if where == "fleet" else []
    configure(root, script, [answer([{"id": "a", "command": ["sh", "-c", f"echo a >> {log}"]}])])
    # The fake planner reports $0.01 per run: over this epic's whole budget before any child ran.
    spec = {"id": "epic", "kind": "composite", "budget": {"costUsd": 0.005},
            "plan": {"tool": "planner", "prompt": "Split"}}
    assert aq(root, "enqueue", *fleet, "-", stdin=json.dumps(spec), env=env).returncode == 0
    roll = run_until_ended(where, root, state, env)
    assert roll["state"] == "quarantined", roll
    assert roll["budget"]["planSpent"]["costUsd"] == 0.01
    assert roll["reason"].startswith("over budget: children cost $0.0100, budget.costUsd is $0.0050")
    assert re.search(r" \(planning runs: [0-9.]+s, \$0\.0100\)$", roll["reason"]), roll["reason"]
    assert not log.exists()  # the planned child never started

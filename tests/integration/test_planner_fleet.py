"""A planned epic in the fleet: `plan --enqueue --yes --fleet`, then two real daemons ship it together."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import aq, wait_for
from fleet_support import coord_job, daemons, fleet_env
from planner_support import answer, configure

from tests.stubutil import seam_command


def meet(name: str, other: str, tmp: Path) -> dict[str, object]:
    """A child that marks itself started, then waits (at most 30s) for ``other`` to start too.

    Both can only finish if they run at the same time: on two factories, since a
    daemon runs one job at a time.
    """
    script = (f"touch {tmp / name}.started; i=0; while [ ! -e {tmp / other}.started ] && [ $i -lt 300 ]; "
              f"do sleep 0.1; i=$((i+1)); done; test -e {tmp / other}.started")
    return {"id": name, "tool": "shell", "command": ["sh", "-c", script], "budget": {"maxAttempts": 1}}


def test_a_planned_epic_runs_to_shipped_on_two_factories(tmp_path: Path) -> None:
    state, script = tmp_path / "stub", tmp_path / "planner"
    roots = [tmp_path / "f1", tmp_path / "f2"]
    env = fleet_env(api_cmd=seam_command(state))
    final = {"id": "join", "tool": "shell", "command": ["sh", "-c", f"echo joined > {tmp_path / 'joined'}"],
             "dependsOn": ["left", "right"]}
    for root in roots:
        configure(root, script, [answer([meet("left", "right", tmp_path), meet("right", "left", tmp_path), final])])
    out = tmp_path / "epic.json"
    res = aq(roots[0], "plan", "--tool", "planner", "--id", "epic", "--out", str(out), "--enqueue", "--yes",
             "--fleet", "Two halves, then join", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "epic"
    assert coord_job(state, "epic")["rollup"]["state"] == "queued"

    with daemons() as ds:
        for i, root in enumerate(roots, 1):
            ds.start(root, env, factory=f"f{i}")
        wait_for(lambda: coord_job(state, "epic")["rollup"]["state"] in ("shipped", "quarantined"),
                 "the epic to finish", deadline_s=90)
    roll = coord_job(state, "epic")["rollup"]
    assert roll["state"] == "shipped", roll
    assert (tmp_path / "joined").read_text() == "joined\n"
    shipped_by = {cid: root.name for root in roots for cid in ("epic.left", "epic.right")
                  if (root / "shipped" / cid).is_dir()}
    assert sorted(shipped_by) == ["epic.left", "epic.right"]
    assert sorted(shipped_by.values()) == ["f1", "f2"]


def test_a_planned_composite_in_the_fleet_plans_waits_for_approve_fleet_then_ships(tmp_path: Path) -> None:
    state, script, log = tmp_path / "stub", tmp_path / "planner", tmp_path / "runs.log"
    roots = [tmp_path / "f1", tmp_path / "f2"]
    env = fleet_env(api_cmd=seam_command(state))
    over = {"id": "a", "tool": "shell", "command": ["sh", "-c", f"echo a >> {log}"], "budget": {"timeoutS": 900}}
    good = [{"id": "a", "tool": "shell", "command": ["sh", "-c", f"echo a >> {log}"]},
            {"id": "b", "tool": "shell", "command": ["sh", "-c", f"echo b >> {log}"], "dependsOn": ["a"]}]
    for root in roots:
        configure(root, script, [answer([over]), answer(good)])
    spec = {"id": "epic", "kind": "composite", "budget": {"timeoutS": 600},
            "plan": {"tool": "planner", "prompt": "Split the work", "approve": True}}
    assert aq(roots[0], "enqueue", "--fleet", "-", stdin=json.dumps(spec), env=env).stdout.strip() == "epic"
    assert aq(roots[0], "approve", "epic", "--fleet", env=env).returncode == 2  # nothing planned yet

    with daemons() as ds:
        for i, root in enumerate(roots, 1):
            ds.start(root, env, factory=f"f{i}")
        wait_for(lambda: coord_job(state, "epic")["rollup"]["state"] == "planned", "the plan", deadline_s=60)
        roll = coord_job(state, "epic")["rollup"]
        assert roll["plan"] == {"state": "planned", "tries": 2, "refused": 1, "children": ["epic.a", "epic.b"],
                                "dag": [{"id": "epic.a", "dependsOn": [], "state": "planned"},
                                        {"id": "epic.b", "dependsOn": ["epic.a"], "state": "planned"}]}
        assert not log.exists()  # nothing runs before approval
        text = aq(roots[0], "fleet-status", env=env).stdout
        assert "composite: epic planned (shipped 2)" in text
        tree = "approve with: agent-queue approve epic --fleet\n    - epic.a [planned]\n      - epic.b [planned]"
        assert tree in text

        res = aq(roots[1], "approve", "epic", "--fleet", env=env)
        assert res.returncode == 0 and res.stdout.strip() == "epic: approved, queued epic.a, epic.b", res.stderr
        wait_for(lambda: coord_job(state, "epic")["rollup"]["state"] == "shipped", "the epic to ship", deadline_s=60)
    assert log.read_text().split() == ["a", "b"]
    # Try 1 asked for more than the epic's budget: refused, and try 2 was told why.
    prompt2 = (script / "prompt-2.txt").read_text()
    assert "child 'epic.a' budget.timeoutS 900 exceeds the parent's budget.timeoutS 600" in prompt2
    assert coord_job(state, "epic")["rollup"]["budget"]["spentS"] > 0

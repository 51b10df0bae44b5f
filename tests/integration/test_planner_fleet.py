"""A planned epic in the fleet: `plan --enqueue --yes --fleet`, then two real daemons ship it together."""

from __future__ import annotations

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

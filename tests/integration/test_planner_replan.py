"""`agent-queue replan` on the local queue: shipped children kept with their history, the rest re-planned."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import aq, status
from planner_support import answer, configure, prompt_of, runs, shell


def test_replan_keeps_the_shipped_children_and_their_history(tmp_path: Path) -> None:
    root, script, log = tmp_path / "root", tmp_path / "planner", tmp_path / "runs.log"
    first = answer([shell("a", log), {**shell("b", log), "command": ["sh", "-c", f"echo b >> {log}; exit 3"],
                                      "dependsOn": ["a"], "budget": {"maxAttempts": 1}},
                    shell("c", log, dependsOn=["b"])])
    redefines_a = answer([shell("a", log), shell("b2", log, dependsOn=["a"])])
    good = answer([shell("b2", log, dependsOn=["a"]), shell("c", log, dependsOn=["b2"])])
    configure(root, script, [first, redefines_a, good])
    res = aq(root, "plan", "--tool", "planner", "--id", "epic", "--out", str(tmp_path / "epic.json"),
             "--enqueue", "--yes", "Build it")
    assert res.returncode == 0, res.stderr
    assert aq(root, "replan", "epic", "--tool", "planner", "--yes").returncode == 2  # nothing failed yet: refused
    assert aq(root, "run", "--drain", timeout=60).returncode == 0
    (roll,) = status(root)["composites"]
    assert roll["state"] == "quarantined" and log.read_text().split() == ["a", "b"]
    a_record = (root / "shipped" / "epic.a" / "result.json").read_text()

    assert aq(root, "replan", "epic", "--tool", "planner").returncode == 2  # no terminal, no --yes
    assert runs(script) == 1
    res = aq(root, "replan", "epic", "--tool", "planner", "--prompt", "b cannot work; use b2", "--yes")
    assert res.returncode == 0, res.stderr
    assert "already shipped: it is kept as it is" in res.stderr  # try 1 redefined a: refused, retried
    assert res.stdout.strip().splitlines()[-1] == "epic: re-planned, queued epic.b2, epic.c"
    seen = prompt_of(script, 2)
    assert "epic.a: SHIPPED (kept)" in seen and "Note for this re-plan: b cannot work; use b2" in seen
    assert "epic.b: FAILED after 1 attempt(s): tool: exited with status 3" in seen
    assert "epic.c: did not run (waiting)" in seen

    (roll,) = status(root)["composites"]
    assert [c["id"] for c in roll["children"]] == ["epic.a", "epic.b2", "epic.c"]
    assert roll["children"][0]["state"] == "shipped" and roll["state"] == "queued"
    assert roll["budget"]["costUsd"] == 0.02  # the re-plan's two planner runs count against the budget
    # The replaced children left the queue with their history (nothing deleted).
    replaced_b = json.loads((root / "replaced" / "epic.b.r1" / "result.json").read_text())
    assert replaced_b["attempts"] == 1 and "replaced by re-plan 1 of epic" in replaced_b["reason"]
    assert (root / "replaced" / "epic.c.r1").is_dir()

    assert aq(root, "run", "--drain", timeout=60).returncode == 0
    (roll,) = status(root)["composites"]
    assert roll["state"] == "shipped"
    assert log.read_text().split() == ["a", "b", "b2", "c"]  # a never ran again
    assert (root / "shipped" / "epic.a" / "result.json").read_text() == a_record


def test_a_composite_planned_in_the_queue_is_re_planned_keeping_its_planning_run(tmp_path: Path) -> None:
    root, script, log = tmp_path / "root", tmp_path / "planner", tmp_path / "runs.log"
    failing = {**shell("b", log), "command": ["sh", "-c", f"echo b >> {log}; exit 3"], "budget": {"maxAttempts": 1}}
    configure(root, script, [answer([shell("a", log), failing]), answer([shell("b2", log)])])
    spec = {"id": "epic", "kind": "composite", "plan": {"tool": "planner", "prompt": "Split the work"}}
    assert aq(root, "enqueue", "-", stdin=json.dumps(spec)).returncode == 0
    assert aq(root, "run", "--drain", timeout=60).returncode == 0
    (roll,) = status(root)["composites"]
    assert roll["state"] == "quarantined" and roll["reason"] == "child epic.b quarantined"

    res = aq(root, "replan", "epic", "--yes")  # the composite's own planner (tool planner) by default
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "epic: re-planned, queued epic.b2"
    assert "epic.plan-1" not in prompt_of(script, 2)  # a planning run is kept, not news
    assert aq(root, "run", "--drain", timeout=60).returncode == 0
    (roll,) = status(root)["composites"]
    assert roll["state"] == "shipped" and log.read_text().split() == ["a", "b", "b2"]
    assert [c["id"] for c in roll["children"]] == ["epic.plan-1", "epic.a", "epic.b2"]
    assert [(n["id"], n["state"]) for n in roll["plan"]["dag"]] == [("epic.a", "shipped"), ("epic.b2", "shipped")]

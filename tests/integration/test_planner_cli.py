"""`agent-queue plan` through the real CLI, with a fake planning agent run as a real process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cli_support import aq, status
from planner_support import answer, configure, prompt_of, runs, shell


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True).stdout


def make_repo(path: Path) -> Path:
    path.mkdir()
    git("init", "-q", "-b", "main", cwd=path)
    (path / "README.md").write_text("hello\n")
    git("add", "README.md", cwd=path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "initial", cwd=path)
    return path


def test_cyclic_then_over_budget_plans_are_refused_with_the_reason_and_retried(tmp_path: Path) -> None:
    root, script, log, out = tmp_path / "root", tmp_path / "planner", tmp_path / "runs.log", tmp_path / "epic.json"
    cyclic = answer([shell("a", log, dependsOn=["b"]), shell("b", log, dependsOn=["a"])])
    costly = answer([shell("a", log, budget={"timeoutS": 80}), shell("b", log, budget={"timeoutS": 70})])
    good = answer([shell("a", log, phase=1, budget={"timeoutS": 40}),
                   shell("b", log, dependsOn=["a"], phase=2), shell("c", log, dependsOn=["a"], phase=2),
                   shell("d", log, dependsOn=["b", "c"], phase=3)])
    configure(root, script, [cyclic, costly, good])

    res = aq(root, "plan", "--tool", "planner", "--id", "epic", "--budget-timeout", "100", "--out", str(out),
             "Add OAuth login to the web app")
    assert res.returncode == 0, res.stderr
    assert runs(script) == 3
    assert "try 1 refused:\n  - plan: dependency cycle epic.a -> epic.b -> epic.a" in res.stderr
    assert ("try 2 refused:\n  - plan: the children's budget.timeoutS add up to 150, over the parent's "
            "budget.timeoutS 100") in res.stderr
    # Each refusal is fed back to the agent in the next try's prompt, with the epic.
    assert "dependency cycle epic.a -> epic.b -> epic.a" in prompt_of(script, 2)
    assert "add up to 150" in prompt_of(script, 3) and "Add OAuth login to the web app" in prompt_of(script, 3)

    spec = json.loads(out.read_text())
    assert spec["id"] == "epic" and spec["kind"] == "composite" and spec["budget"] == {"timeoutS": 100}
    assert spec["prompt"] == "Add OAuth login to the web app"
    assert [c["id"] for c in spec["children"]] == ["epic.a", "epic.b", "epic.c", "epic.d"]
    assert spec["children"][3]["dependsOn"] == ["epic.b", "epic.c"]
    # The tree: children under their dependencies, phases shown.
    lines = res.stdout.splitlines()
    assert lines[0] == "epic: 4 children (budget: timeoutS 100)"
    assert lines[1].startswith("  - epic.a [phase 1] shell: sh -c echo a")
    assert lines[2].startswith("    - epic.b [phase 2] shell:") and lines[3].startswith("    - epic.c [phase 2]")
    assert lines[4].startswith("      - epic.d [phase 3] (also after epic.b) shell:")
    drawing = (tmp_path / "epic.mmd").read_text()
    assert drawing.startswith("flowchart TD\n") and 'subgraph phase2["phase 2"]' in drawing
    assert drawing.count(" --> ") == 4

    # The written spec is what `enqueue FILE` takes; it runs to shipped in dependency order.
    assert aq(root, "enqueue", str(out)).stdout.strip() == "epic"
    assert aq(root, "run", "--drain", timeout=60).returncode == 0
    (roll,) = status(root)["composites"]
    assert roll["state"] == "shipped"
    order = log.read_text().split()
    assert order[0] == "a" and order[-1] == "d" and sorted(order) == ["a", "b", "c", "d"]


def test_a_planner_that_never_plans_well_exits_1_with_the_last_problems_and_writes_nothing(tmp_path: Path) -> None:
    root, script, out = tmp_path / "root", tmp_path / "planner", tmp_path / "epic.json"
    configure(root, script, [{"text": "I think we should talk about it first."},
                             answer([{"id": "x", "tool": "nosuchtool", "prompt": "p"}])])
    res = aq(root, "plan", "--tool", "planner", "--max-tries", "2", "--out", str(out), "epic")
    assert res.returncode == 1
    assert "the answer holds no JSON object" in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("agent-queue: plan: no valid plan after 2 tries; the last was refused: ")
    assert "unknown tool 'nosuchtool'" in last
    assert not out.exists() and not out.with_suffix(".mmd").exists()
    assert runs(script) == 2


def test_bad_input_exits_2_before_the_planner_runs(tmp_path: Path) -> None:
    root, script = tmp_path / "root", tmp_path / "planner"
    configure(root, script, [answer([{"id": "a", "command": ["true"]}])])
    for args, message in (
        (("plan", "--tool", "planner"), "give the epic as PROMPT"),
        (("plan", "--tool", "nope", "epic"), "unknown tool 'nope'"),
        (("plan", "--tool", "planner", "--repo", str(tmp_path), "epic"), "not a git work tree"),
        (("plan", "--tool", "planner", "--max-tries", "0", "epic"), "--max-tries"),
        (("plan", "--tool", "planner", "--enqueue", "epic"), "no terminal to ask for approval; pass --yes"),
    ):
        res = aq(root, *args, stdin="")
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)
    assert runs(script) == 0
    assert list(tmp_path.glob("*.json")) == []


def test_nothing_is_enqueued_without_approval(tmp_path: Path) -> None:
    root, script, log, out = tmp_path / "root", tmp_path / "planner", tmp_path / "runs.log", tmp_path / "e.json"
    configure(root, script, [answer([shell("a", log)])])
    res = aq(root, "plan", "--tool", "planner", "--id", "e", "--out", str(out), "--enqueue", "epic", stdin="y\n")
    assert res.returncode == 2 and not out.exists()  # not a terminal: a "y" on a pipe is not a person's approval
    assert status(root)["counts"]["inbox"] == 0
    res = aq(root, "plan", "--tool", "planner", "--id", "e", "--out", str(out), "--enqueue", "--yes", "epic")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "e"
    assert status(root)["counts"]["inbox"] == 1


def test_the_planner_reads_a_throwaway_worktree_and_may_not_change_the_repo(tmp_path: Path) -> None:
    root, script, repo = tmp_path / "root", tmp_path / "planner", make_repo(tmp_path / "repo")
    out = tmp_path / "e.json"
    configure(root, script, [answer([{"id": "a", "tool": "planner", "prompt": "do a"}], write="SCRATCH.txt")])
    res = aq(root, "plan", "--tool", "planner", "--id", "e", "--repo", str(repo), "--out", str(out), "epic")
    assert res.returncode == 0, res.stderr
    ran_in = Path((script / "cwd-1.txt").read_text())
    assert ran_in != repo and not ran_in.exists()  # a worktree, removed after
    assert git("status", "--porcelain", cwd=repo) == "" and len(git("worktree", "list", cwd=repo).splitlines()) == 1
    assert json.loads(out.read_text())["children"][0]["repo"] == str(repo)

    configure(root, script, [answer([{"id": "a", "command": ["true"]}], touch=str(repo / "README.md"))])
    (script / "count").unlink()
    res = aq(root, "plan", "--tool", "planner", "--id", "e2", "--repo", str(repo), "--out", str(tmp_path / "x.json"),
             "epic")
    assert res.returncode == 1 and "the planner changed the repository" in res.stderr
    assert "(working tree: M README.md)" in res.stderr  # the refusal names the change
    assert not (tmp_path / "x.json").exists()


def test_a_hand_written_composite_obeys_the_same_budget_rule_locally_and_in_the_fleet(tmp_path: Path) -> None:
    from fleet_support import fleet_env

    from tests.stubutil import seam_command

    root, state = tmp_path / "root", tmp_path / "stub"
    spec = {"id": "e", "kind": "composite", "budget": {"costUsd": 1.0},
            "children": [{"id": "a", "command": ["true"], "budget": {"costUsd": 0.75}},
                         {"id": "b", "command": ["true"], "budget": {"costUsd": 0.5}}]}
    for args, env in ((("enqueue", "-"), None), (("enqueue", "--fleet", "-"), fleet_env(api_cmd=seam_command(state)))):
        res = aq(root, *args, stdin=json.dumps(spec), env=env)
        assert res.returncode == 2, res.stderr
        assert "job e: the children's budget.costUsd add up to 1.25, over the parent's budget.costUsd 1" in res.stderr
    assert status(root)["counts"]["inbox"] == 0 and not (state / "state.json").exists()


def test_a_composite_with_a_plan_is_planned_in_the_queue_and_waits_for_approval(tmp_path: Path) -> None:
    root, script, log = tmp_path / "root", tmp_path / "planner", tmp_path / "runs.log"
    cyclic = answer([shell("a", log, dependsOn=["b"]), shell("b", log, dependsOn=["a"])])
    good = answer([shell("a", log), shell("b", log, dependsOn=["a"])])
    configure(root, script, [cyclic, good])
    spec = {"id": "epic", "kind": "composite", "budget": {"costUsd": 5},
            "plan": {"tool": "planner", "prompt": "Split the work", "approve": True}}
    assert aq(root, "enqueue", "-", stdin=json.dumps(spec)).stdout.strip() == "epic"
    assert aq(root, "approve", "epic").returncode == 2  # nothing planned yet
    assert aq(root, "run", "--drain", timeout=60).returncode == 0

    # Try 1 was cyclic: refused, and try 2 (a second planning job) got the reason in its prompt.
    assert runs(script) == 2 and "dependency cycle epic.a -> epic.b -> epic.a" in prompt_of(script, 2)
    (roll,) = status(root)["composites"]
    assert roll["state"] == "planned" and not log.exists()  # nothing ran before approval
    dag = [{"id": "epic.a", "dependsOn": [], "state": "planned"},
           {"id": "epic.b", "dependsOn": ["epic.a"], "state": "planned"}]
    assert roll["plan"] == {"state": "planned", "tries": 2, "refused": 1, "children": ["epic.a", "epic.b"],
                            "dag": dag}
    assert [c["id"] for c in roll["children"]] == ["epic.plan-1", "epic.plan-2"]
    assert roll["budget"]["costUsd"] == 0.02  # the planning runs count against the budget
    assert roll["budget"]["planSpent"]["costUsd"] == 0.02
    text = aq(root, "status").stdout
    assert "composite: epic planned (shipped 2)" in text
    assert ("  plan: planned (try 2, 1 refused): epic.a, epic.b; approve with: agent-queue approve epic\n"
            "    - epic.a [planned]\n"
            "      - epic.b [planned]\n") in text  # the planned DAG, as a tree

    res = aq(root, "approve", "epic")
    assert res.returncode == 0 and res.stdout.strip() == "epic: approved, queued epic.a, epic.b"
    assert aq(root, "approve", "epic").returncode == 2  # approved once only
    assert aq(root, "run", "--drain", timeout=60).returncode == 0
    (roll,) = status(root)["composites"]
    assert roll["state"] == "shipped" and log.read_text().split() == ["a", "b"]
    assert [(n["id"], n["state"]) for n in roll["plan"]["dag"]] == [("epic.a", "shipped"), ("epic.b", "shipped")]
    assert "    - epic.a [shipped]\n      - epic.b [shipped]" in aq(root, "status").stdout


def test_a_planning_job_that_never_plans_well_quarantines_the_composite(tmp_path: Path) -> None:
    root, script = tmp_path / "root", tmp_path / "planner"
    configure(root, script, [{"text": "no plan here"}])
    spec = {"id": "epic", "kind": "composite", "plan": {"tool": "planner", "prompt": "Split", "maxTries": 2}}
    bad = {**spec, "plan": {"tool": "nosuch", "prompt": "x"}}
    res = aq(root, "enqueue", "-", stdin=json.dumps(bad))
    assert res.returncode == 2 and "unknown tool 'nosuch'" in res.stderr
    assert aq(root, "enqueue", "-", stdin=json.dumps(spec)).returncode == 0
    assert aq(root, "run", "--drain", timeout=60).returncode == 0
    (roll,) = status(root)["composites"]
    assert roll["state"] == "quarantined" and runs(script) == 2
    assert roll["reason"].startswith("no valid plan after 2 tries: the answer holds no JSON object")

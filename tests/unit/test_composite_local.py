"""Composite jobs in the local queue: real daemons (drain) running real shell children, state read back from disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from core_support import drain, make_settings, result

from agent_queue import composite_queue, service
from agent_queue.errors import Conflict, InvalidJob
from agent_queue.inbox import LocalQueue
from agent_queue.jobs import Job
from agent_queue.settings import Settings
from agent_queue.timeutil import parse_rfc3339


def child(cid: str, runs: Path, *, fail_unless: Path | None = None, **spec: Any) -> dict[str, Any]:
    """A child that appends its id to ``runs`` (one line per execution); fails while ``fail_unless`` is absent."""
    script = 'echo "$1" >> "$2"'
    if fail_unless is not None:
        script += f' && test -e "{fail_unless}"'
    return {"id": cid, "command": ["sh", "-c", script, "sh", cid, str(runs)], **spec}


def comp(*children: dict[str, Any], cid: str = "epic", **spec: Any) -> dict[str, Any]:
    return {"id": cid, "kind": "composite", "children": list(children), **spec}


def executions(runs: Path) -> list[str]:
    return runs.read_text().split() if runs.exists() else []


def rollup(settings: Settings, parent_id: str = "epic") -> dict[str, Any]:
    (found,) = [r for r in service.status(settings)["composites"] if r["id"] == parent_id]
    return found


def children_states(roll: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["state"] for c in roll["children"]}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "root")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs.txt"


@pytest.mark.parametrize(("children", "message"), [
    ([{"id": "a", "command": ["true"], "dependsOn": ["b"]}, {"id": "b", "command": ["true"], "dependsOn": ["a"]}],
     "dependency cycle a -> b -> a"),
    ([{"id": "a", "command": ["true"], "dependsOn": ["ghost"]}], "unknown id 'ghost'"),
    ([{"id": "a", "command": ["true"]}, {"id": "a", "command": ["true"]}], "duplicate child id 'a'"),
])
def test_bad_graph_is_refused_and_nothing_is_written(settings: Settings, children: list[dict[str, Any]],
                                                     message: str) -> None:
    with pytest.raises(InvalidJob, match=message):
        service.enqueue(settings, comp(*children), "spec.json")
    queue = LocalQueue(settings.root).init()
    assert not (settings.root / "composite").exists()
    assert all(n == 0 for n in queue.counts().values())


def test_children_run_only_after_their_dependencies_shipped(settings: Settings, runs: Path) -> None:
    # Diamond a -> (b, c) -> d; d and b have the higher priority, so only the gate keeps the order.
    spec = comp(child("a", runs), child("b", runs, dependsOn=["a"], priority=5),
                child("c", runs, dependsOn=["a"]), child("d", runs, dependsOn=["b", "c"], priority=9))
    assert service.enqueue(settings, spec, "spec") == "epic"
    parent = json.loads((settings.root / "composite" / "epic" / "parent.json").read_text())
    assert parent["childIds"] == ["a", "b", "c", "d"] and "children" not in parent["spec"]  # one record each
    assert result(settings.root, "inbox", "b")["jobId"] == "b"
    assert drain(settings) == 4
    order = executions(runs)
    assert order[0] == "a" and order[-1] == "d" and sorted(order) == ["a", "b", "c", "d"]
    for cid, deps in {"b": ["a"], "c": ["a"], "d": ["b", "c"]}.items():
        started = parse_rfc3339(result(settings.root, "shipped", cid)["history"][-1]["startedAt"])
        for dep in deps:
            assert started >= parse_rfc3339(result(settings.root, "shipped", dep)["history"][-1]["endedAt"])
    roll = rollup(settings)
    assert roll["state"] == "shipped" and roll["counts"]["shipped"] == 4
    spec_b = json.loads((settings.root / "shipped" / "b" / "job.json").read_text())
    assert spec_b["parentId"] == "epic"


def test_quarantined_dependency_blocks_dependents_and_the_parent(settings: Settings, runs: Path,
                                                                 tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    spec = comp(child("a", runs, fail_unless=flag, budget={"maxAttempts": 1}),
                child("b", runs, dependsOn=["a"]), child("c", runs, dependsOn=["b"]), child("d", runs))
    service.enqueue(settings, spec, "spec")
    drain(settings)
    assert sorted(executions(runs)) == ["a", "d"]  # b and c never started
    roll = rollup(settings)
    assert children_states(roll) == {"a": "quarantined", "b": "blocked", "c": "blocked", "d": "shipped"}
    assert roll["state"] == "quarantined" and "a" in roll["reason"]
    assert LocalQueue(settings.root).find("b").value == "inbox"  # blocked children stay queued


def test_budget_stop_quarantines_the_parent_and_starts_no_further_child(settings: Settings, runs: Path) -> None:
    spec = comp(child("a", runs), child("b", runs, dependsOn=["a"]), budget={"timeoutS": 0.001})
    service.enqueue(settings, spec, "spec")
    drain(settings)
    assert executions(runs) == ["a"]
    roll = rollup(settings)
    assert roll["state"] == "quarantined" and roll["reason"].startswith("over budget: children ran")
    assert children_states(roll) == {"a": "shipped", "b": "blocked"}
    assert roll["budget"]["spentS"] > 0.001 and roll["budget"]["limit"] == {"timeoutS": 0.001}


def test_phase_gate_holds_later_phase_until_every_earlier_child_shipped(settings: Settings, runs: Path,
                                                                        tmp_path: Path) -> None:
    spec = comp(child("p0a", runs, phase=0), child("p0b", runs, phase=0),
                child("p1", runs, phase=1, priority=100), child("p2", runs, phase=2, priority=200))
    service.enqueue(settings, spec, "spec")
    drain(settings)
    assert executions(runs)[2:] == ["p1", "p2"]

    blocked = comp(child("q0", runs, phase=0, fail_unless=tmp_path / "never", budget={"maxAttempts": 1}),
                   child("q1", runs, phase=1), cid="epic2")
    service.enqueue(settings, blocked, "spec")
    drain(settings)
    assert "q1" not in executions(runs)
    assert children_states(rollup(settings, "epic2")) == {"q0": "quarantined", "q1": "blocked"}


def test_parent_verify_runs_once_after_all_children_and_gates_the_parent(settings: Settings, runs: Path,
                                                                         tmp_path: Path) -> None:
    verify_runs = tmp_path / "verify.txt"
    ok = tmp_path / "ok"
    verify = ["sh", "-c", f'echo v >> "{verify_runs}" && test -e "{ok}"']
    spec = comp(child("a", runs), child("b", runs, dependsOn=["a"]), verify=verify, budget={"maxAttempts": 1})
    service.enqueue(settings, spec, "spec")
    drain(settings)
    roll = rollup(settings)
    assert roll["state"] == "quarantined" and roll["verify"] == "failed" and "verify gate" in roll["reason"]
    assert executions(verify_runs) == ["v"] and executions(runs) == ["a", "b"]

    ok.touch()
    service.requeue(settings, "epic")  # no child is quarantined: only the failed verify runs again
    drain(settings)
    roll = rollup(settings)
    assert roll["state"] == "shipped" and roll["verify"] == "passed"
    assert executions(verify_runs) == ["v", "v"] and executions(runs) == ["a", "b"]


def b_fails_until(flag: Path, runs: Path) -> dict[str, Any]:
    """a; b, which fails (one attempt) until ``flag`` exists; c, which depends on b."""
    return comp(child("a", runs), child("b", runs, fail_unless=flag, budget={"maxAttempts": 1}),
                child("c", runs, dependsOn=["b"]))


def test_same_composite_again_reruns_only_what_did_not_ship(settings: Settings, runs: Path, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    spec = b_fails_until(flag, runs)
    service.enqueue(settings, spec, "spec")
    drain(settings)
    assert children_states(rollup(settings)) == {"a": "shipped", "b": "quarantined", "c": "blocked"}
    assert rollup(settings)["state"] == "quarantined"

    flag.touch()
    queue = LocalQueue(settings.root).init()
    assert composite_queue.enqueue(queue, Job.from_dict(spec), lambda j: None) == ["b"]
    drain(settings)
    assert rollup(settings)["state"] == "shipped"
    assert sorted(executions(runs)) == ["a", "b", "b", "c"]  # a shipped once and was not re-run

    with pytest.raises(Conflict, match="different spec"):
        service.enqueue(settings, {**spec, "priority": 3}, "spec")


def test_requeue_parent_reruns_only_quarantined_children(settings: Settings, runs: Path, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    spec = b_fails_until(flag, runs)
    service.enqueue(settings, spec, "spec")
    drain(settings)
    flag.touch()
    service.requeue(settings, "epic")
    assert rollup(settings)["state"] == "queued"
    drain(settings)
    assert rollup(settings)["state"] == "shipped"
    assert sorted(executions(runs)) == ["a", "b", "b", "c"]


def test_crash_between_parent_and_children_is_healed_by_enqueueing_again(settings: Settings, runs: Path) -> None:
    spec = comp(child("a", runs), child("b", runs, dependsOn=["a"]))
    service.enqueue(settings, spec, "spec")
    queue = LocalQueue(settings.root)
    (queue.root / "inbox" / "b").rename(queue.root / ".state" / "lost-b")  # as if the crash came before b
    assert rollup(settings)["counts"]["queued"] == 2  # a missing child counts as not shipped, never as done
    service.enqueue(settings, spec, "spec")
    drain(settings)
    assert rollup(settings)["state"] == "shipped" and executions(runs) == ["a", "b"]


def test_composite_dropped_into_inbox_is_quarantined_not_run(settings: Settings, runs: Path) -> None:
    queue = LocalQueue(settings.root).init()
    (queue.root / "inbox" / "epic.json").write_text(json.dumps(comp(child("a", runs))))
    drain(settings)
    assert executions(runs) == []
    assert "agent-queue enqueue FILE" in result(settings.root, "quarantine", "epic")["reason"]

"""The local re-plan swap (composite_queue.replan): the rules it holds and its crash safety."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from core_support import drain, make_settings

from agent_queue import composite_queue, service
from agent_queue.errors import Conflict, InvalidJob
from agent_queue.inbox import LocalQueue, State
from agent_queue.jobs import Job


def sh(cid: str, code: int = 0, **spec: Any) -> dict[str, Any]:
    return {"id": cid, "command": ["sh", "-c", f"exit {code}"], "budget": {"maxAttempts": 1}, **spec}


def failed_epic(tmp_path: Path) -> tuple[LocalQueue, composite_queue.Parent, Any]:
    settings = make_settings(tmp_path / "root")
    service.enqueue(settings, {"id": "epic", "kind": "composite", "prompt": "p", "budget": {"timeoutS": 100},
                               "children": [sh("a"), sh("b", 1, dependsOn=["a"]), sh("c", dependsOn=["b"])]}, "t")
    drain(settings)
    queue = service.queue_for(settings)
    parent = composite_queue.load(queue, "epic")
    assert parent is not None
    return queue, parent, settings


def new_plan(*children: dict[str, Any]) -> Job:
    return Job.from_dict({"id": "epic", "kind": "composite", "prompt": "p", "budget": {"timeoutS": 100},
                          "children": list(children)})


def kept_a(queue: LocalQueue) -> dict[str, Any]:
    return queue.get("a").job.to_dict()


def test_a_replan_must_keep_shipped_children_unchanged_and_obey_the_graph_and_budget(tmp_path: Path) -> None:
    queue, parent, _ = failed_epic(tmp_path)
    with pytest.raises(Conflict, match="shipped child a must be kept unchanged"):
        composite_queue.replan(queue, parent, new_plan(sh("b2")), lambda j: None)
    with pytest.raises(Conflict, match="shipped child a must be kept unchanged"):
        composite_queue.replan(queue, parent, new_plan({**kept_a(queue), "priority": 5}), lambda j: None)
    with pytest.raises(InvalidJob, match="dependency cycle"):
        composite_queue.replan(queue, parent, new_plan(kept_a(queue), sh("x", dependsOn=["y"]),
                                                       sh("y", dependsOn=["x"])), lambda j: None)
    with pytest.raises(InvalidJob, match="over the parent's budget.timeoutS 100"):
        composite_queue.replan(queue, parent, new_plan(kept_a(queue), sh("x", budget={"timeoutS": 101})),
                               lambda j: None)
    assert not (parent.path / composite_queue.REPLAN_FILE).exists()
    assert queue.find("b") is State.QUARANTINE  # nothing changed


def test_a_replan_interrupted_by_a_crash_is_completed_at_the_next_daemon_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue, parent, settings = failed_epic(tmp_path)
    real = LocalQueue.enqueue

    def crash(self: LocalQueue, job: Job) -> Any:
        raise OSError("power cut")

    monkeypatch.setattr(LocalQueue, "enqueue", crash)
    with pytest.raises(OSError):
        composite_queue.replan(queue, parent, new_plan(kept_a(queue), sh("b2", dependsOn=["a"])), lambda j: None)
    monkeypatch.setattr(LocalQueue, "enqueue", real)
    assert queue.find("b") is None and queue.find("b2") is None  # b retired, b2 not yet written
    drain(settings)  # the daemon's start-up recovery finishes the re-plan, then runs b2
    assert not (parent.path / composite_queue.REPLAN_FILE).exists()
    roll = composite_queue.rollup(queue, composite_queue.load(queue, "epic"))  # type: ignore[arg-type]
    assert roll["state"] == "shipped" and [c["id"] for c in roll["children"]] == ["a", "b2"]
    plans = composite_queue.load(queue, "epic").result["plans"]  # type: ignore[union-attr]
    assert [p["round"] for p in plans] == [1] and plans[0]["replaced"] == ["b", "c"]
    assert plans[0]["spentS"] > 0  # b's run still counts against the budget

"""The coordinator's re-plan (``POST /jobs/{id}/replan``, ``composite_rules.replan``) on the file store and
PostgreSQL: shipped children kept with their history, the unshipped ones replaced, the rules and one
transaction. The CLI, a real ``serve`` and two daemons are in tests/integration/test_planner_replan_fleet.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_queue.errors import Conflict, InvalidJob
from coordinator_stub.core import Coordinator
from coordinator_stub.stores.file import JsonStore


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def coord(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    if request.param == "file":
        yield Coordinator(JsonStore(tmp_path / "coord"), lambda: 1_000_000.0, lease_ttl_s=30)
        return
    from tests.pgutil import inspect_store

    store = inspect_store(request.getfixturevalue("pg_url"))
    yield Coordinator(store, lambda: 1_000_000.0, lease_ttl_s=30)
    store.close()


def sh(cid: str, **kw: Any) -> dict[str, Any]:
    return {"id": cid, "command": ["true"], **kw}


def run_one(coord: Coordinator, outcome: str, **detail: Any) -> str:
    view = coord.claim("f1", ())
    assert view is not None
    coord.report(view["job"]["id"], "f1", view["lease"]["leaseEpoch"], outcome, detail)
    return str(view["job"]["id"])


def kept(coord: Coordinator, cid: str) -> dict[str, Any]:
    spec: dict[str, Any] = coord.get_job(cid)["job"]
    return spec


def test_replan_keeps_shipped_children_replaces_the_rest_in_one_transaction(coord: Coordinator) -> None:
    coord.enqueue({"id": "epic", "kind": "composite", "budget": {"timeoutS": 100}, "children": [
        sh("a"), sh("b", dependsOn=["a"], budget={"maxAttempts": 1}), sh("c", dependsOn=["b"]), sh("d")]})
    assert run_one(coord, "shipped", durationS=2.0) == "a"
    with pytest.raises(Conflict, match="no child is quarantined"):
        coord.replan("epic", {"children": [kept(coord, "a"), sh("b2")]})
    assert run_one(coord, "quarantined", durationS=3.0) == "b"
    a_before, b_before = coord.get_job("a"), coord.get_job("b")
    before = coord.get_job("epic")

    refused = [  # each refused as a whole: nothing of it is kept
        (Conflict, "shipped child a must be kept unchanged", [sh("b2")]),
        (Conflict, "shipped child a must be kept unchanged", [{**kept(coord, "a"), "priority": 5}, sh("b2")]),
        (InvalidJob, "dependency cycle", [kept(coord, "a"), sh("x", dependsOn=["y"]), sh("y", dependsOn=["x"])]),
        (InvalidJob, "over the parent's budget", [kept(coord, "a"), sh("x", budget={"timeoutS": 60}),
                                                  sh("y", budget={"timeoutS": 60})]),
    ]
    for exc, text, children in refused:
        with pytest.raises(exc, match=text):
            coord.replan("epic", {"children": children})
        assert coord.get_job("epic") == before

    new = [kept(coord, "a"), sh("b2", dependsOn=["a"]), sh("c", dependsOn=["b2"])]
    got = coord.replan("epic", {"id": "epic", "children": new}, (1.5, 0.25))
    assert got["queued"] == ["b2", "c"]
    roll = got["rollup"]
    assert [(c["id"], c["state"]) for c in roll["children"]] == [("a", "shipped"), ("b2", "queued"), ("c", "queued")]
    assert roll["state"] == "queued"
    # What the replaced children and the planner spent stays in the parent's budget.
    assert roll["budget"]["spentS"] == 2.0 + 3.0 + 1.5 and roll["budget"]["costUsd"] == 0.25
    assert coord.get_job("a") == a_before  # shipped: untouched, with its history
    assert coord.get_job("b") == b_before  # replaced but kept: quarantined, with its history
    d = coord.get_job("d")
    assert d["meta"]["state"] == "cancelled" and d["meta"]["reason"] == "replaced by re-plan 1 of epic"
    assert coord.get_job("c")["meta"]["attempts"] == 0

    with pytest.raises(Conflict, match="no child is quarantined"):  # a repeat: nothing failed any more
        coord.replan("epic", {"children": new})
    assert [run_one(coord, "shipped") for _ in range(2)] == ["b2", "c"]
    assert coord.claim("f1", ()) is None  # d was retired: never handed out
    assert coord.get_job("epic")["rollup"]["state"] == "shipped"


def test_a_reused_id_of_a_quarantined_child_runs_again_with_its_old_version_kept(coord: Coordinator) -> None:
    coord.enqueue({"id": "ep", "kind": "composite", "children": [sh("a", budget={"maxAttempts": 1})]})
    assert run_one(coord, "quarantined") == "a"
    with pytest.raises(Conflict, match="child id 'ep' already used"):
        coord.replan("ep", {"children": [sh("ep")]})
    got = coord.replan("ep", {"children": [sh("a", command=["echo", "again"])]})
    assert got["queued"] == ["a"] and got["rollup"]["state"] == "queued"
    view = coord.get_job("a")
    assert view["job"]["command"] == ["echo", "again"] and view["meta"]["state"] == "queued"
    assert run_one(coord, "shipped") == "a"
    assert coord.get_job("ep")["rollup"]["state"] == "shipped"


def test_a_leaf_or_a_running_child_is_refused(coord: Coordinator) -> None:
    coord.enqueue({"id": "ep", "kind": "composite", "children": [sh("p", budget={"maxAttempts": 1}), sh("q")]})
    assert run_one(coord, "quarantined") == "p"
    held = coord.claim("f1", ())
    assert held is not None and held["job"]["id"] == "q"
    with pytest.raises(Conflict, match="child q is running; re-plan once it has finished"):
        coord.replan("ep", {"children": [sh("p2")]})
    coord.enqueue(sh("leaf"))
    with pytest.raises(Conflict, match="only a composite job is re-planned"):
        coord.replan("leaf", {"children": [sh("x")]})


def test_a_composite_planned_by_an_agent_keeps_its_planning_run_and_draws_the_new_plan(coord: Coordinator) -> None:
    coord.enqueue({"id": "ep", "kind": "composite", "budget": {"costUsd": 1},
                   "plan": {"tool": "planner", "prompt": "Split", "tools": ["shell"]}})
    plan = '```json\n{"children": [{"id": "a", "command": ["false"], "budget": {"maxAttempts": 1}}]}\n```'
    assert run_one(coord, "shipped", answer=plan, costUsd=0.25) == "ep.plan-1"
    assert run_one(coord, "quarantined") == "ep.a"
    roll = coord.get_job("ep")["rollup"]
    assert roll["plan"]["dag"] == [{"id": "ep.a", "dependsOn": [], "state": "quarantined"}]
    got = coord.replan("ep", {"children": [kept(coord, "ep.plan-1"), sh("ep.b")]})
    assert got["queued"] == ["ep.b"]
    roll = got["rollup"]
    assert roll["plan"]["dag"] == [{"id": "ep.b", "dependsOn": [], "state": "queued"}]
    assert roll["budget"]["planSpent"] == {"spentS": 0.0, "costUsd": 0.25}
    assert run_one(coord, "shipped") == "ep.b"
    assert coord.get_job("ep")["rollup"]["state"] == "shipped"

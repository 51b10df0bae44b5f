"""Coordinator side of composite jobs: the parent's verify as a leasable record, re-runs, requeue, history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_queue.errors import Conflict, Fenced, NotLeased
from coordinator_stub.core import Coordinator
from coordinator_stub.stores.file import JsonStore
from tests.stubutil import seam_answer as seam


def leaf(cid: str, **kw: Any) -> dict[str, Any]:
    return {"id": cid, "command": ["true"], **kw}


EPIC = {"id": "epic", "kind": "composite", "verify": ["make", "check"], "budget": {"maxAttempts": 2},
        "children": [leaf("a"), leaf("b", dependsOn=["a"], budget={"maxAttempts": 1}), leaf("c", dependsOn=["b"])]}


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


def ship_next(coord: Coordinator, expect: str, outcome: str = "shipped") -> dict[str, Any]:
    view = coord.claim("f1", ())
    assert view is not None and view["job"]["id"] == expect, view
    return coord.report(expect, "f1", view["lease"]["leaseEpoch"], outcome, {"reason": f"{outcome} by test"})


def rollup(coord: Coordinator) -> dict[str, Any]:
    roll: dict[str, Any] = coord.get_job("epic")["rollup"]
    return roll


def test_parent_verify_is_claimable_once_after_every_child_shipped_and_gates_the_rollup(contract_store: Any) -> None:
    coord = Coordinator(contract_store, Clock(), lease_ttl_s=30)
    coord.enqueue(EPIC)
    ship_next(coord, "a")
    ship_next(coord, "b")
    assert rollup(coord)["verify"] == "pending"  # c still queued: the verify is not claimable yet
    ship_next(coord, "c")
    assert rollup(coord)["state"] == "queued" and rollup(coord)["verify"] == "pending"
    view = coord.claim("f1", ())
    assert view is not None
    assert view["job"] == {"id": "epic", "kind": "leaf", "tool": "shell", "profile": "default",
                           "command": ["make", "check"], "budget": {"maxAttempts": 2}}
    assert view["meta"]["verifyOf"] == "epic" and view["lease"]["leaseEpoch"] == 1
    assert rollup(coord)["state"] == "running" and rollup(coord)["verify"] == "running"
    assert coord.claim("f2", ()) is None  # claimable once: no second holder
    coord.renew("epic", "f1", 1)
    with pytest.raises(Fenced):
        coord.report("epic", "f2", 1, "shipped")
    first = coord.report("epic", "f1", 1, "shipped")
    assert coord.report("epic", "f1", 1, "shipped") == first  # an exact replay gets the same answer
    assert rollup(coord)["state"] == "shipped" and rollup(coord)["verify"] == "passed"
    assert coord.get_job("epic")["meta"]["state"] == "shipped"
    assert coord.claim("f1", ()) is None
    with pytest.raises(NotLeased):
        coord.renew("epic", "f1", 1)


def test_failed_verify_quarantines_the_parent_and_requeue_runs_it_again_with_fencing(tmp_path: Path) -> None:
    store = JsonStore(tmp_path / "stub")
    coord = Coordinator(store, Clock(), lease_ttl_s=30)
    coord.enqueue({**EPIC, "budget": {"maxAttempts": 1}})
    for cid in "abc":
        ship_next(coord, cid)
    ship_next(coord, "epic", "quarantined")
    roll = rollup(coord)
    assert roll["state"] == "quarantined" and roll["verify"] == "failed"
    assert roll["reason"] == "the parent's verify gate failed: quarantined by test"
    history = sorted(p.name for p in Path(store.files.history_dir).iterdir())
    assert history == ["epic.1.json"]  # the parent's first version is kept, not overwritten
    store.checkpoint()  # the current version's file is written at a checkpoint
    assert json.loads((Path(store.files.archive_dir) / "epic.json").read_text())["verify"]["state"] == "failed"

    answer = coord.requeue("epic")
    assert answer["requeued"] == ["epic"] and answer["rollup"]["verify"] == "pending"
    view = coord.claim("f2", ())
    assert view is not None and view["meta"]["verifyOf"] == "epic"
    assert view["lease"]["leaseEpoch"] == 2  # epochs continue across rounds
    with pytest.raises(Fenced):
        coord.report("epic", "f1", 1, "shipped")  # a zombie of round 1 never ships round 2
    coord.report("epic", "f2", 2, "shipped")
    assert rollup(coord)["state"] == "shipped"
    assert sorted(p.name for p in Path(store.files.history_dir).iterdir()) == ["epic.1.json", "epic.2.json"]


def test_same_composite_again_requeues_only_quarantined_children_and_keeps_their_history(tmp_path: Path) -> None:
    store = JsonStore(tmp_path / "stub")
    coord = Coordinator(store, Clock(), lease_ttl_s=30)
    spec = {**EPIC, "verify": None}
    spec.pop("verify")
    coord.enqueue(spec)
    ship_next(coord, "a")
    ship_next(coord, "b", "quarantined")
    store.checkpoint()
    assert (Path(store.files.archive_dir) / "b.json").exists()
    roll = rollup(coord)
    assert roll["state"] == "quarantined" and [c["state"] for c in roll["children"]] == [
        "shipped", "quarantined", "blocked"]
    assert coord.status()["counts"]["quarantined"] == 1

    created, view = coord.enqueue(spec)
    assert not created and view["rollup"]["state"] == "queued"
    b = coord.get_job("b")
    assert b["meta"]["state"] == "queued" and b["meta"]["attempts"] == 0 and b["meta"]["leaseEpoch"] == 1
    store.checkpoint()
    assert not (Path(store.files.archive_dir) / "b.json").exists()  # b is live again; its old version is history
    assert json.loads((Path(store.files.history_dir) / "b.1.json").read_text())["state"] == "quarantined"
    assert coord.status()["counts"]["quarantined"] == 0
    events = [json.loads(x) for x in Path(store.events_path).read_text().splitlines()]
    assert events[-1]["op"] == "enqueue" and events[-1]["requeued"] == ["b"]

    ship_next(coord, "b")  # epoch 2; a, already shipped, is never offered again
    ship_next(coord, "c")
    assert rollup(coord)["state"] == "shipped"
    store.checkpoint()
    assert json.loads((Path(store.files.archive_dir) / "b.json").read_text())["leaseEpoch"] == 2
    assert coord.enqueue(spec)[1]["rollup"]["state"] == "shipped"  # nothing left to re-run
    assert coord.claim("f1", ()) is None


def test_requeue_of_a_job_that_is_not_quarantined_is_refused(contract_store: Any) -> None:
    coord = Coordinator(contract_store, Clock(), lease_ttl_s=30)
    coord.enqueue(leaf("solo"))
    with pytest.raises(Conflict, match="only a quarantined job or a composite"):
        coord.requeue("solo")
    ship_next(coord, "solo", "quarantined")
    assert coord.requeue("solo")["requeued"] == ["solo"]
    assert coord.get_job("solo")["meta"]["state"] == "queued"


def test_requeue_over_the_seam_reruns_a_quarantined_child_and_unblocks_its_dependents(tmp_path: Path) -> None:
    state = tmp_path / "stub"
    coord = Coordinator(JsonStore(state), Clock(), lease_ttl_s=30)
    coord.enqueue({**EPIC, "verify": ["true"]})
    ship_next(coord, "a")
    ship_next(coord, "b", "quarantined")
    status, body = seam(state, "POST", "/v1/fleet/jobs/epic/requeue")
    assert status == 200 and body["requeued"] == ["b"]
    assert [c["state"] for c in body["rollup"]["children"]] == ["shipped", "queued", "queued"]
    status, claimed = seam(state, "POST", "/v1/fleet/claim", {"factoryId": "f1", "capabilities": []})
    assert status == 200 and claimed["job"]["id"] == "b"
    status, body = seam(state, "POST", "/v1/fleet/jobs/a/requeue")
    assert status == 409 and body["error"]["code"] == "conflict"
    status, listed = seam(state, "GET", "/v1/fleet/jobs?state=composite")
    assert status == 200 and [v["rollup"]["state"] for v in listed["jobs"]] == ["running"]

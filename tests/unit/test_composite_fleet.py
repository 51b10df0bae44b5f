"""Composite rules shared by both queues (pure rollup), and the coordinator side: two factories, the seam, budget."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from agent_queue import composite
from agent_queue.errors import InvalidJob
from coordinator_stub.core import Coordinator
from coordinator_stub.stores.file import JsonStore
from tests.stubutil import seam_answer as seam


def fam(**states: str | tuple[str, list[str]] | tuple[str, list[str], int]) -> dict[str, dict[str, Any]]:
    """id=state, or id=(state, dependsOn), or id=(state, dependsOn, phase)."""
    out = {}
    for cid, val in states.items():
        st, deps, phase = (val, [], None) if isinstance(val, str) else (*val, None)[:3]
        out[cid] = composite.member(cid, str(st), {"dependsOn": deps, "phase": phase}, spent_s=1.0)
    return out


@pytest.mark.parametrize(("family", "kw", "state"), [
    (fam(a="queued", b=("queued", ["a"])), {}, "queued"),
    (fam(a="leased", b=("queued", ["a"])), {}, "running"),
    (fam(a="quarantined", b=("queued", ["a"]), c="queued"), {}, "blocked"),
    (fam(a="quarantined", b=("queued", ["a"]), c=("queued", ["b"])), {}, "quarantined"),
    (fam(a="shipped", b="shipped"), {}, "shipped"),
    (fam(a="shipped", b="shipped"), {"verify": "pending"}, "queued"),
    (fam(a="shipped", b="shipped"), {"verify": "running"}, "running"),
    (fam(a="shipped", b="shipped"), {"verify": "failed"}, "quarantined"),
    (fam(a="shipped", b="shipped"), {"verify": "passed"}, "shipped"),
    (fam(a="shipped", b="queued"), {"budget": {"timeoutS": 1.5}}, "quarantined"),
    (fam(a="shipped", b="queued"), {"budget": {"timeoutS": 5}}, "queued"),
    (fam(a=("quarantined", [], 0), b=("queued", [], 1), c="queued"), {}, "blocked"),
])
def test_rollup_state_rules(family: dict[str, Any], kw: dict[str, Any], state: str) -> None:
    assert composite.rollup(family, **kw)["state"] == state


def test_blocked_propagates_through_dependencies_and_phases_in_any_order() -> None:
    family = fam(d=("queued", ["c"]), c=("queued", [], 1), b=("queued", ["a"], 0), a="quarantined")
    assert composite.statuses(family) == {"d": "blocked", "c": "blocked", "b": "blocked", "a": "quarantined"}
    assert composite.statuses(fam(a="shipped", b="queued"), stopped=True) == {"a": "shipped", "b": "blocked"}


def test_blocker_names_what_a_child_waits_for() -> None:
    family = fam(a="running", b=("queued", ["a"]), p=("queued", [], 1), q=("shipped", [], 0))
    assert composite.blocker(family["b"], family) == "waiting for a"
    assert composite.blocker(family["p"], family) is None
    family["q"]["state"] = "queued"
    assert composite.blocker(family["p"], family) == "phase 1 waits for phase 0 (q)"


def test_budget_stop_counts_cost_too() -> None:
    family = fam(a="shipped")
    family["a"]["costUsd"] = 2.5
    reason = composite.budget_stop({"costUsd": 2.0}, family)
    assert reason == "over budget: children cost $2.5000, budget.costUsd is $2.0000"
    assert composite.budget_stop({"costUsd": 3.0, "maxAttempts": 2}, family) is None


# ---------------------------------------------------------------- coordinator side


def spec_of(cid: str, **kw: Any) -> dict[str, Any]:
    return {"id": cid, "command": ["true"], **kw}


DIAMOND = {"id": "epic", "kind": "composite", "children": [
    spec_of("a"), spec_of("b", dependsOn=["a"], priority=5), spec_of("c", dependsOn=["a"]),
    spec_of("d", dependsOn=["b", "c"], priority=9), spec_of("e", phase=1), spec_of("f", phase=0)]}


def test_two_factories_never_start_a_child_before_its_dependencies_shipped(tmp_path: Path) -> None:
    coord = Coordinator(JsonStore(tmp_path / "state"), _monotonic_clock(), lease_ttl_s=30)
    coord.enqueue(DIAMOND)
    errors: list[BaseException] = []

    def factory(name: str) -> None:
        try:
            idle = 0
            while idle < 200 and coord.get_job("epic")["rollup"]["state"] != "shipped":
                view = coord.claim(name, ())
                if view is None:
                    idle += 1
                    continue
                coord.report(view["job"]["id"], name, view["lease"]["leaseEpoch"], "shipped")
        except BaseException as exc:  # noqa: BLE001 - surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=factory, args=(f"f{i}",)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    events = [json.loads(line) for line in (tmp_path / "state" / "events.jsonl").read_text().splitlines()]
    claimed = {e["jobId"]: e["ts"] for e in events if e["op"] == "claim" and e.get("status") == 200}
    shipped = {e["jobId"]: e["ts"] for e in events if e["op"] == "report" and e.get("outcome") == "shipped"}
    assert set(shipped) == set("abcdef")
    for cid, deps in {"b": "a", "c": "a", "d": "bc", "e": "f"}.items():
        for dep in deps:
            assert claimed[cid] >= shipped[dep], f"{cid} claimed before {dep} shipped"
    assert {e["factoryId"] for e in events if e["op"] == "claim" and e.get("jobId")} <= {"f1", "f2"}


def _monotonic_clock() -> Any:
    """Strictly increasing time shared by both threads, so event order is timestamp order."""
    lock, t = threading.Lock(), [1_000_000.0]

    def clock() -> float:
        with lock:
            t[0] += 0.001
            return t[0]

    return clock


def test_coordinator_budget_stop_from_reported_durations(contract_store: Any) -> None:
    coord = Coordinator(contract_store, lambda: 1_000_000.0, lease_ttl_s=30)
    coord.enqueue({"id": "epic", "kind": "composite", "budget": {"timeoutS": 10},
                   "children": [spec_of("a"), spec_of("b")]})
    view = coord.claim("f1", ())
    assert view is not None
    coord.report(view["job"]["id"], "f1", view["lease"]["leaseEpoch"], "shipped", {"durationS": 11.0})
    assert coord.claim("f1", ()) is None  # over budget: no further child starts
    roll = coord.get_job("epic")["rollup"]
    assert roll["state"] == "quarantined" and roll["reason"].startswith("over budget")
    assert roll["budget"]["spentS"] == 11.0


def test_coordinator_parent_verify_is_pending_not_skipped(contract_store: Any) -> None:
    coord = Coordinator(contract_store, lambda: 1_000_000.0, lease_ttl_s=30)
    coord.enqueue({"id": "epic", "kind": "composite", "verify": ["true"], "children": [spec_of("a")]})
    view = coord.claim("f1", ())
    assert view is not None
    coord.report("a", "f1", view["lease"]["leaseEpoch"], "shipped")
    roll = coord.get_job("epic")["rollup"]
    assert roll["state"] == "queued" and roll["verify"] == "pending"


def test_seam_refuses_a_cycle_and_serves_the_rollup(tmp_path: Path) -> None:
    state = tmp_path / "stub"
    cyc = {"id": "bad", "kind": "composite", "children": [spec_of("x", dependsOn=["y"]), spec_of("y", dependsOn=["x"])]}
    status, body = seam(state, "POST", "/v1/fleet/jobs", cyc)
    assert status == 422 and "dependency cycle x -> y -> x" in body["error"]["message"]
    assert seam(state, "POST", "/v1/fleet/jobs", DIAMOND)[0] == 201
    status, first = seam(state, "POST", "/v1/fleet/claim", {"factoryId": "f1", "capabilities": []})
    assert status == 200 and first["job"]["id"] in ("a", "f")  # only roots are claimable
    status, got = seam(state, "GET", "/v1/fleet/jobs/epic")
    assert got["rollup"]["state"] == "running" and got["rollup"]["counts"]["running"] == 1


def test_validate_graph_refuses_a_dependency_on_a_later_phase() -> None:
    from agent_queue.jobs import Job

    children = [Job.from_dict(spec_of("a", phase=0, dependsOn=["b"])), Job.from_dict(spec_of("b", phase=1))]
    with pytest.raises(InvalidJob, match="later phase"):
        composite.validate_graph(children)


def test_a_crash_after_archiving_the_parent_is_repaired_by_the_same_enqueue(tmp_path: Path) -> None:
    """Parent archived, its children never written (a crash leftover of the store before its journal,
    which wrote the archive file before the hot document): enqueueing it again creates them."""
    import shutil

    spec = {"id": "epic", "kind": "composite", "children": [
        {"id": "a", "command": ["true"]}, {"id": "b", "command": ["true"], "dependsOn": ["a"]}]}
    Coordinator(JsonStore(tmp_path / "first"), clock=lambda: 1000.0).enqueue(spec)
    JsonStore(tmp_path / "first").checkpoint()  # writes archive/epic.json
    coord = Coordinator(JsonStore(tmp_path / "st"), clock=lambda: 1000.0)
    assert coord.claim("f0", ()) is None  # a store in use (its snapshot exists), with an empty queue
    shutil.copy(tmp_path / "first" / "archive" / "epic.json", tmp_path / "st" / "archive" / "epic.json")
    assert coord.list_jobs("queued") == []
    created, _ = coord.enqueue(spec)
    assert created is False
    assert sorted(v["job"]["id"] for v in coord.list_jobs("queued")) == ["a", "b"]
    assert coord.get_job("epic")["rollup"]["state"] == "queued"

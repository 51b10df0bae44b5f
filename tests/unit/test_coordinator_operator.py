"""Issue 17 in the coordinator core (memory store, fake clock): cancel, lease history, rounds,
factory liveness, stranded jobs and paged listing. The CLI and daemon side is in
tests/integration/test_operator_fleet.py."""

from __future__ import annotations

from typing import Any

import pytest

from agent_queue.errors import Conflict, Fenced, NotLeased
from coordinator_stub.core import SEEN_GRANULARITY_S, Coordinator, liveness
from coordinator_stub.stores.file import JsonStore

TTL = 10.0


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def job(job_id: str, **spec: Any) -> dict[str, Any]:
    return {"id": job_id, "command": ["true"], **spec}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def coord(clock: Clock, contract_store: Any) -> Coordinator:
    """The operator's operations (cancel, factory liveness) run on each contract store: memory and PostgreSQL."""
    return Coordinator(contract_store, clock, lease_ttl_s=TTL)


def test_cancel_a_queued_job(coord: Coordinator) -> None:
    coord.enqueue(job("a"))
    out = coord.cancel("a")
    assert out["cancelled"] == ["a"] and out["meta"]["state"] == "cancelled"
    assert coord.claim("f1", ()) is None  # never handed out
    assert coord.status()["counts"]["cancelled"] == 1
    assert coord.cancel("a")["cancelled"] == []  # a repeat changes nothing
    assert coord.status()["counts"]["cancelled"] == 1
    assert [v["job"]["id"] for v in coord.list_jobs("cancelled")] == ["a"]


def test_cancel_a_leased_job_fences_its_holder_with_not_leased(coord: Coordinator) -> None:
    coord.enqueue(job("a"))
    view = coord.claim("f1", ())
    assert view is not None and view["lease"]["leaseEpoch"] == 1
    coord.cancel("a")
    for call in (lambda: coord.renew("a", "f1", 1), lambda: coord.report("a", "f1", 1, "shipped"),
                 lambda: coord.release("a", "f1", 1, "x")):
        with pytest.raises(NotLeased, match="cancelled, it has no lease"):
            call()
    got = coord.get_job("a")
    assert got["meta"]["state"] == "cancelled" and got["lease"] is None
    assert got["meta"]["lastFactoryId"] == "f1"
    (lease,) = got["meta"]["leases"]
    assert (lease["leaseEpoch"], lease["factoryId"], lease["end"]) == (1, "f1", "cancel")
    assert "epoch 1 of f1 ended" in got["meta"]["reason"]
    assert coord.status()["counts"] == {"queued": 0, "leased": 0, "shipped": 0, "quarantined": 0, "cancelled": 1}


def test_a_shipped_or_quarantined_job_cannot_be_cancelled(coord: Coordinator) -> None:
    for job_id, outcome in (("s", "shipped"), ("q", "quarantined")):
        coord.enqueue(job(job_id))
        coord.claim("f1", ())
        coord.report(job_id, "f1", 1, outcome)
        with pytest.raises(Conflict, match=outcome):
            coord.cancel(job_id)


def test_cancel_a_composite_cancels_unshipped_children_and_its_verify_gate(coord: Coordinator) -> None:
    coord.enqueue({"id": "epic", "kind": "composite", "verify": ["true"], "children": [
        job("a"), job("b", dependsOn=["a"]), job("c", dependsOn=["b"])]})
    coord.claim("f1", ())
    coord.report("a", "f1", 1, "shipped")
    assert coord.claim("f2", ())["job"]["id"] == "b"  # type: ignore[index]
    out = coord.cancel("epic")
    assert out["cancelled"] == ["b", "c", "epic"]
    assert out["rollup"]["state"] == "cancelled" and out["rollup"]["verify"] == "cancelled"
    assert out["rollup"]["counts"] == {"queued": 0, "running": 0, "blocked": 0, "shipped": 1, "quarantined": 0,
                                       "cancelled": 2}
    with pytest.raises(NotLeased):
        coord.renew("b", "f2", 1)
    assert coord.claim("f1", ()) is None
    assert coord.cancel("epic")["cancelled"] == []  # a repeat
    assert coord.requeue("epic")["requeued"] == []  # a re-run never revives a cancelled child


def test_cancel_a_composite_whose_verify_runs_fences_the_verify_holder(coord: Coordinator) -> None:
    coord.enqueue({"id": "epic", "kind": "composite", "verify": ["true"], "children": [job("a")]})
    coord.claim("f1", ())
    coord.report("a", "f1", 1, "shipped")
    gate = coord.claim("f2", ())
    assert gate is not None and gate["meta"]["verifyOf"] == "epic"
    assert coord.cancel("epic")["cancelled"] == ["epic"]
    with pytest.raises(Fenced):
        coord.report("epic", "f2", gate["lease"]["leaseEpoch"], "shipped")
    assert coord.get_job("epic")["rollup"]["state"] == "cancelled"


def test_a_composite_with_nothing_left_is_a_conflict(coord: Coordinator) -> None:
    coord.enqueue({"id": "done", "kind": "composite", "children": [job("x")]})
    coord.claim("f1", ())
    coord.report("x", "f1", 1, "shipped")
    with pytest.raises(Conflict, match="nothing left to cancel"):
        coord.cancel("done")


def test_lease_history_and_round(coord: Coordinator, clock: Clock) -> None:
    coord.enqueue(job("a", budget={"maxAttempts": 2}))
    coord.claim("f1", ())
    coord.release("a", "f1", 1, "tool failed")
    clock.t += TTL + 1
    coord.claim("f2", ())
    clock.t += TTL + 1  # f2 goes silent: the reaper ends its lease and spends the last attempt
    meta = coord.get_job("a")["meta"]
    assert meta["state"] == "quarantined"
    assert [(x["leaseEpoch"], x["factoryId"], x["end"]) for x in meta["leases"]] == [(1, "f1", "release"),
                                                                                      (2, "f2", "reap")]
    assert meta["leases"][0]["reason"] == "tool failed"
    assert "round" not in meta
    coord.requeue("a")
    view = coord.claim("f3", ())
    assert view is not None and view["meta"]["round"] == 2  # the claim tells the factory
    coord.report("a", "f3", 3, "shipped")
    assert coord.get_job("a")["meta"]["leases"][-1]["end"] == "report shipped"


def test_liveness_rule() -> None:
    g = SEEN_GRANULARITY_S
    assert liveness(0, 60) == "live" and liveness(60 + g, 60) == "live"
    assert liveness(60 + g + 0.1, 60) == "stale" and liveness(180 + g, 60) == "stale"
    assert liveness(180 + g + 0.1, 60) == "offline"


def test_status_marks_factories_and_flags_stranded_jobs(coord: Coordinator, clock: Clock) -> None:
    coord.enqueue(job("gpu-job", requires=["gpu"]))
    coord.enqueue(job("plain"))
    coord.enqueue(job("needs-tool"))
    coord.claim("old", ["gpu"], exclude=["needs-tool"])  # takes gpu-job? no: priority/order -> gpu-job
    coord.report("gpu-job", "old", 1, "shipped")
    coord.enqueue(job("gpu-2", requires=["gpu"]))
    clock.t += 3 * TTL + SEEN_GRANULARITY_S + 1  # "old" (the only gpu factory) is offline now
    assert coord.claim("cpu", [], exclude=["needs-tool"])["job"]["id"] == "plain"  # type: ignore[index]
    st = coord.status()
    marks = {f["factoryId"]: f["liveness"] for f in st["factories"]}
    assert marks == {"cpu": "live", "old": "offline"}
    cpu = next(f for f in st["factories"] if f["factoryId"] == "cpu")
    assert cpu["capabilities"] == [] and cpu["cannotRun"] == ["needs-tool"]
    why = {s["jobId"]: s["why"] for s in st["stranded"]}
    assert set(why) == {"gpu-2", "needs-tool"} and st["strandedTotal"] == 2
    assert "requires gpu" in why["gpu-2"] and "cannot run it" in why["needs-tool"]
    clock.t += 3 * TTL + SEEN_GRANULARITY_S + 1  # nobody live at all
    assert {s["why"] for s in coord.status()["stranded"]} == {"no factory seen within the lease TTL"}


def test_list_page_gives_the_most_recent_and_the_total(coord: Coordinator) -> None:
    for i in range(7):
        coord.enqueue(job(f"j{i}"))
    coord.claim("f1", ())
    coord.report("j0", "f1", 1, "shipped")
    page = coord.list_page(None, 3)
    assert [v["job"]["id"] for v in page["jobs"]] == ["j4", "j5", "j6"] and page["total"] == 7
    assert coord.list_page("queued", 2)["total"] == 6
    assert coord.list_page(None, 0) == {"jobs": [], "total": 7}
    assert len(coord.list_page()["jobs"]) == 7


def test_cancel_and_history_survive_a_file_store_reload(tmp_path: Any, clock: Clock) -> None:
    first = Coordinator(JsonStore(tmp_path / "s"), clock, lease_ttl_s=TTL)
    first.enqueue(job("a"))
    first.claim("f1", ["x"])
    first.cancel("a")
    again = Coordinator(JsonStore(tmp_path / "s"), clock, lease_ttl_s=TTL)
    got = again.get_job("a")["meta"]
    assert got["state"] == "cancelled" and got["leases"][0]["end"] == "cancel"
    assert again.status()["factories"][0]["capabilities"] == ["x"]
    with pytest.raises(NotLeased):
        again.renew("a", "f1", 1)

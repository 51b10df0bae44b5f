"""Coordinator rules with a fake clock, on the in-memory store and on PostgreSQL: every rule of docs/fleet-api.md."""

from __future__ import annotations

from typing import Any

import pytest

from agent_queue.errors import BadInput, Conflict, Fenced, InvalidJob, NotFound, NotLeased
from agent_queue.jobs import DEFAULT_MAX_ATTEMPTS, Lease
from agent_queue.timeutil import to_rfc3339
from coordinator_stub.core import Coordinator, InvalidReport
from coordinator_stub.stores.memory import MemoryStore

TTL = 10.0


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(contract_store: MemoryStore) -> MemoryStore:
    """Each test runs on both stores (tests/conftest.py): the same assertions for MemoryStore and PgStore."""
    return contract_store


@pytest.fixture
def coord(store: MemoryStore, clock: Clock) -> Coordinator:
    return Coordinator(store, clock, TTL)


def job(job_id: str, **kw: Any) -> dict[str, Any]:
    return {"id": job_id, "command": ["true"], **kw}


def claim_id(coord: Coordinator, factory: str = "f1", caps: tuple[str, ...] = ()) -> str | None:
    view = coord.claim(factory, caps)
    return None if view is None else str(view["job"]["id"])


def test_enqueue_is_idempotent_and_conflicts_on_different_spec(coord: Coordinator) -> None:
    assert coord.enqueue(job("a"))[0] is True
    assert coord.enqueue(job("a"))[0] is False
    with pytest.raises(Conflict):
        coord.enqueue(job("a", priority=3))
    with pytest.raises(InvalidJob):
        coord.enqueue({"id": "../x", "command": ["true"]})


def test_claim_order_priority_then_fifo_and_requires(coord: Coordinator) -> None:
    coord.enqueue(job("low"))
    coord.enqueue(job("mac", priority=9, requires=["macos"]))
    coord.enqueue(job("high", priority=5))
    coord.enqueue(job("high2", priority=5))
    assert claim_id(coord) == "high"
    assert claim_id(coord) == "high2"
    assert claim_id(coord, caps=("macos",)) == "mac"
    assert claim_id(coord) == "low"
    assert coord.claim("f1", ()) is None


def test_not_before_defers_a_job(coord: Coordinator, clock: Clock) -> None:
    coord.enqueue(job("later", notBefore=to_rfc3339(clock.t + 30)))
    assert coord.claim("f1", ()) is None
    clock.advance(30)
    assert claim_id(coord) == "later"


def test_epoch_bumps_on_each_claim_and_stale_epoch_is_fenced(coord: Coordinator, clock: Clock,
                                                             store: MemoryStore) -> None:
    coord.enqueue(job("a"))
    first = coord.claim("f1", ())
    assert first is not None and first["lease"]["leaseEpoch"] == 1
    clock.advance(TTL)  # expired: reclaimable
    second = coord.claim("f2", ())
    assert second is not None and second["lease"]["leaseEpoch"] == 2
    before = store.hot
    for call in (
        lambda: coord.renew("a", "f1", 1),
        lambda: coord.release("a", "f1", 1, "x"),
        lambda: coord.report("a", "f1", 1, "shipped"),
        lambda: coord.report("a", "f2", 1, "shipped"),  # right factory, stale epoch
        lambda: coord.report("a", "f1", 2, "shipped"),  # right epoch, wrong factory
    ):
        with pytest.raises(Fenced) as info:
            call()
        assert info.value.code == "fenced"
        assert store.hot == before  # fencing changes nothing
    assert [e["code"] for e in store.events if e.get("status") == 409] == ["fenced"] * 5
    assert coord.report("a", "f2", 2, "shipped")["meta"]["state"] == "shipped"


def test_not_leased_for_queued_job_and_not_found(coord: Coordinator) -> None:
    coord.enqueue(job("a"))
    with pytest.raises(NotLeased) as info:
        coord.renew("a", "f1", 0)
    assert info.value.code == "not_leased"
    with pytest.raises(NotFound):
        coord.renew("nope", "f1", 1)


def test_renew_extends_and_keeps_the_job(coord: Coordinator, clock: Clock) -> None:
    coord.enqueue(job("a"))
    coord.claim("f1", ())
    for _ in range(5):
        clock.advance(TTL * 0.8)
        coord.renew("a", "f1", 1)
    assert coord.claim("f2", ()) is None
    clock.advance(TTL)
    assert claim_id(coord, "f2") == "a"


def test_reaper_reclaims_and_counts_attempts_until_quarantine(coord: Coordinator, clock: Clock) -> None:
    coord.enqueue(job("a", budget={"maxAttempts": 2}))
    coord.claim("f1", ())
    clock.advance(TTL)
    assert coord.reap() == [{"jobId": "a", "factoryId": "f1", "leaseEpoch": 1}]
    coord.claim("f1", ())
    clock.advance(TTL)
    coord.reap()
    view = coord.get_job("a")
    assert view["meta"]["state"] == "quarantined"
    assert "attempts exhausted (2/2)" in view["meta"]["reason"]


def test_release_retry_count_attempt_and_not_before(coord: Coordinator, clock: Clock) -> None:
    coord.enqueue(job("a"))
    for epoch in range(1, 6):  # countAttempt false never spends the budget
        coord.claim("f1", ())
        out = coord.release("a", "f1", epoch, "shutdown", count_attempt=False)
        assert out["meta"]["state"] == "queued" and out["meta"]["attempts"] == 0
    coord.claim("f1", ())
    out = coord.release("a", "f1", 6, "rate limit", not_before=clock.t + 60)
    assert out["meta"]["attempts"] == 1 and "notBefore" in out["meta"]
    assert coord.claim("f1", ()) is None
    clock.advance(60)
    assert claim_id(coord) == "a"
    assert coord.release("a", "f1", 7, "broken", retry=False)["meta"]["state"] == "quarantined"


def test_default_max_attempts_quarantines(coord: Coordinator) -> None:
    coord.enqueue(job("a"))
    for epoch in range(1, DEFAULT_MAX_ATTEMPTS + 1):
        coord.claim("f1", ())
        state = coord.release("a", "f1", epoch, "failed")["meta"]["state"]
    assert state == "quarantined"


def test_exact_replays_answer_the_same_and_others_are_fenced(coord: Coordinator) -> None:
    coord.enqueue(job("a"))
    coord.claim("f1", ())
    first = coord.report("a", "f1", 1, "shipped", {"sha": "abc"})
    assert coord.report("a", "f1", 1, "shipped", {"sha": "abc"}) == first
    with pytest.raises(NotLeased):
        coord.report("a", "f1", 1, "quarantined")
    coord.enqueue(job("b"))
    coord.claim("f1", ())
    rel = coord.release("b", "f1", 1, "x")
    assert coord.release("b", "f1", 1, "x") == rel


def test_request_id_returns_the_same_lease(coord: Coordinator, clock: Clock) -> None:
    coord.enqueue(job("a"))
    coord.enqueue(job("b"))
    one = coord.claim("f1", (), request_id="r1")
    again = coord.claim("f1", (), request_id="r1")
    assert one is not None and again is not None
    assert again["lease"] == one["lease"]
    other = coord.claim("f2", (), request_id="r1")  # another factory: its own claim
    assert other is not None and other["job"]["id"] == "b"


def test_dry_run_changes_nothing(coord: Coordinator, store: MemoryStore) -> None:
    coord.enqueue(job("a"))
    before = store.hot
    view = coord.claim("f1-shadow", (), dry_run=True)
    assert view is not None and view["dryRun"] is True and view["lease"] is None
    assert store.hot == before
    assert store.events[-1]["op"] == "claim" and store.events[-1]["dryRun"] is True


def test_events_record_every_operation(coord: Coordinator, store: MemoryStore, clock: Clock) -> None:
    coord.enqueue(job("a"))
    coord.claim("f1", ())
    coord.renew("a", "f1", 1)
    clock.advance(TTL)
    coord.reap()
    ops = [(e["op"], e["status"]) for e in store.events]
    assert ops == [("enqueue", 201), ("claim", 200), ("renew", 200), ("reclaim", 200), ("reap", 200)]
    claim = store.events[1]
    assert {"time", "ts", "jobId", "factoryId", "leaseEpoch", "expiresAt"} <= set(claim)


def test_status_shows_counts_leases_and_factories(coord: Coordinator, clock: Clock) -> None:
    coord.enqueue(job("a"))
    coord.enqueue(job("b"))
    coord.claim("f1", ())
    clock.advance(2)
    st = coord.status()
    assert st["counts"] == {"queued": 1, "leased": 1, "shipped": 0, "quarantined": 0, "cancelled": 0}
    assert st["leases"][0]["timeLeftS"] == pytest.approx(TTL - 2)
    assert st["factories"][0]["factoryId"] == "f1"


def test_lease_wire_matches_the_shared_lease_type(coord: Coordinator) -> None:
    coord.enqueue(job("a"))
    view = coord.claim("f1", ())
    assert view is not None
    assert Lease.from_dict(view["lease"]).to_dict() == view["lease"]


def test_shadow_report_needs_shadow_true(coord: Coordinator, store: MemoryStore) -> None:
    with pytest.raises(InvalidReport):
        coord.shadow_report({"factoryId": "f1-shadow", "verdict": "AGREE"})
    coord.shadow_report({"factoryId": "f1-shadow", "shadow": True, "verdict": "AGREE", "localJobId": "a"})
    assert store.shadow_reports[0]["verdict"] == "AGREE"


def test_list_jobs_by_state(coord: Coordinator) -> None:
    coord.enqueue(job("a"))
    coord.enqueue(job("b"))
    coord.claim("f1", ())
    coord.report("a", "f1", 1, "shipped")
    assert [v["job"]["id"] for v in coord.list_jobs("shipped")] == ["a"]
    assert [v["job"]["id"] for v in coord.list_jobs("queued")] == ["b"]
    assert [v["job"]["id"] for v in coord.list_jobs()] == ["a", "b"]
    with pytest.raises(BadInput):
        coord.list_jobs("bogus")


# ---------------------------------------------------------------- composite


def composite(*children: dict[str, Any]) -> dict[str, Any]:
    return {"id": "epic", "kind": "composite", "children": list(children)}


def test_composite_dependencies_and_rollup(coord: Coordinator) -> None:
    coord.enqueue(composite(job("c1"), job("c2", dependsOn=["c1"]), job("c3", dependsOn=["c2"])))
    assert coord.get_job("epic")["rollup"]["state"] == "queued"
    assert claim_id(coord) == "c1"
    assert coord.claim("f1", ()) is None  # c2 waits for c1, the parent is never claimable
    assert coord.get_job("epic")["rollup"]["counts"]["running"] == 1
    coord.report("c1", "f1", 1, "shipped")
    assert claim_id(coord) == "c2"
    coord.report("c2", "f1", 1, "quarantined")
    rollup = coord.get_job("epic")["rollup"]
    assert rollup["counts"] == {"queued": 0, "running": 0, "blocked": 1, "shipped": 1, "quarantined": 1, "cancelled": 0}
    assert rollup["state"] == "quarantined"
    assert coord.claim("f1", ()) is None  # a quarantined dependency blocks its dependents


def test_composite_phases_gate_claims(coord: Coordinator) -> None:
    coord.enqueue(composite(job("p0a", phase=0), job("p0b", phase=0), job("p1", phase=1, priority=9)))
    assert claim_id(coord) == "p0a"
    assert claim_id(coord) == "p0b"
    coord.report("p0a", "f1", 1, "shipped")
    assert coord.claim("f1", ()) is None
    coord.report("p0b", "f1", 1, "shipped")
    assert claim_id(coord) == "p1"


@pytest.mark.parametrize(
    ("children", "needle"),
    [
        ([job("x", dependsOn=["y"]), job("y", dependsOn=["x"])], "cycle x -> y -> x"),
        ([job("x", dependsOn=["ghost"])], "unknown id 'ghost'"),
        ([job("x"), job("x")], "duplicate child id 'x'"),
    ],
)
def test_composite_graph_errors_name_the_problem(coord: Coordinator, children: list[dict[str, Any]],
                                                 needle: str) -> None:
    with pytest.raises(InvalidJob) as info:
        coord.enqueue(composite(*children))
    assert needle in info.value.message
    assert coord.list_jobs() == []  # nothing half-created


def test_exclude_skips_jobs_for_that_caller_only(coord: Coordinator) -> None:
    coord.enqueue(job("hi", priority=5))
    coord.enqueue(job("lo"))
    view = coord.claim("f1", [], exclude=["hi"])
    assert view is not None and view["job"]["id"] == "lo"
    assert coord.claim("f1", [], exclude=["hi"]) is None  # nothing else for f1
    other = coord.claim("f2", [])
    assert other is not None and other["job"]["id"] == "hi"


def test_exclude_over_the_api_is_validated() -> None:
    from coordinator_stub.api import handle

    c = Coordinator(MemoryStore(), clock=lambda: 1000.0)
    c.enqueue(job("a"))
    status, body = handle(c, "POST", "/v1/fleet/claim", b'{"factoryId": "f1", "exclude": ["a"]}')
    assert status == 204 and body is None
    status, body = handle(c, "POST", "/v1/fleet/claim", b'{"factoryId": "f1", "exclude": "a"}')
    assert status == 400 and body is not None and "exclude" in body["error"]["message"]

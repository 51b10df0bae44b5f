"""FleetClaim's endings against a scripted fake client: ship only after a definite 200, never twice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent_queue.errors import CoordinatorError, Fenced, NotLeased, TransportError
from agent_queue.fleet import source as fleet_source
from agent_queue.fleet.heartbeat import Heartbeat
from agent_queue.fleet.source import FleetClaim
from agent_queue.inbox import LocalQueue, State
from agent_queue.jobs import Job, Lease


class FakeClient:
    """report()/release() answer from a script: an exception to raise, or None for a 200."""

    def __init__(self, *script: Exception | None) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _answer(self, op: str, **kw: Any) -> dict[str, Any]:
        self.calls.append((op, kw))
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        return {"job": {}}

    def report(self, lease: Lease, outcome: str, detail: Any = None) -> dict[str, Any]:
        return self._answer("report", epoch=lease.epoch, outcome=outcome)

    def release(self, lease: Lease, reason: str, retry: bool = True, count_attempt: bool = True,
                not_before: float | None = None) -> dict[str, Any]:
        return self._answer("release", epoch=lease.epoch, count_attempt=count_attempt, not_before=not_before)

    def renew(self, lease: Lease, *, deadline_s: float | None = None) -> Lease:
        return lease


def make_claim(tmp_path: Path, client: FakeClient) -> FleetClaim:
    queue = LocalQueue(tmp_path / "root").init()
    lease = Lease("j1", "f1", 3, time.time() + 60, 1.0)
    entry = queue.materialize(Job.from_dict({"id": "j1", "command": ["true"]}), {"leaseEpoch": 3})
    heartbeat = Heartbeat(client, lease, lambda reason: None)  # type: ignore[arg-type]
    return FleetClaim(queue, entry, client, heartbeat)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def fast_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_source.time, "sleep", lambda s: None)


def test_a_lost_report_answer_is_replayed_until_the_coordinator_confirms(tmp_path: Path) -> None:
    client = FakeClient(TransportError("read timed out"), CoordinatorError("boom", 503), None)
    claim = make_claim(tmp_path, client)
    claim.approve_ship({"attempt": 1})  # no exception: the ship may go ahead
    assert [c[0] for c in client.calls] == ["report"] * 3
    assert {c[1]["epoch"] for c in client.calls} == {3}


def test_a_replayed_report_refused_with_409_never_ships(tmp_path: Path) -> None:
    client = FakeClient(TransportError("connection reset"), NotLeased("the job is queued"))
    claim = make_claim(tmp_path, client)
    with pytest.raises(Fenced, match="queued"):
        claim.approve_ship({"attempt": 1})


def test_a_report_never_answered_within_the_window_is_fenced_and_marked(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_source, "REPORT_CONFIRM_S", 0.0)
    clock = iter(range(0, 10_000, 10))  # every look at the clock is 10 s later
    monkeypatch.setattr(fleet_source.time, "monotonic", lambda: float(next(clock)))
    client = FakeClient(*[TransportError("down")] * 50)
    claim = make_claim(tmp_path, client)
    with pytest.raises(Fenced, match="not confirmed"):
        claim.approve_ship({"attempt": 1})
    assert claim.queue.get("j1").result["reportUnconfirmed"] is True
    assert claim.queue.get("j1").state is State.RUNNING


def test_defer_releases_without_counting_an_attempt_and_with_not_before(tmp_path: Path) -> None:
    client = FakeClient(None)
    claim = make_claim(tmp_path, client)
    claim.defer({"attempt": 1, "reason": "usage limit"}, not_before=1_900_000_000.0)
    assert client.calls == [("release", {"epoch": 3, "count_attempt": False, "not_before": 1_900_000_000.0})]
    assert (claim.queue.root / "released" / "j1.3").is_dir()


def test_give_back_refused_with_409_is_recorded_as_fenced(tmp_path: Path) -> None:
    client = FakeClient(Fenced("held by f2"))
    claim = make_claim(tmp_path, client)
    claim.give_back("shutdown")
    assert (claim.queue.root / "fenced" / "j1.3").is_dir()
    assert not (claim.queue.root / "running" / "j1").exists()

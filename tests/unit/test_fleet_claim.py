"""FleetClaim and FleetSource against a scripted fake client: ship only after a definite 200, never twice."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent_queue.errors import Fenced, NotLeased, ReportPending, TransportError
from agent_queue.fleet.claim import FleetClaim
from agent_queue.fleet.heartbeat import Heartbeat
from agent_queue.fleet.source import FleetSource
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

    def claim_job(self, dry_run: bool = False, factory_id: str | None = None, exclude: Any = ()) -> None:
        self.calls.append(("claim", {}))
        return None


def make_claim(tmp_path: Path, client: FakeClient, on_pending: Any = None) -> FleetClaim:
    queue = LocalQueue(tmp_path / "root").init()
    lease = Lease("j1", "f1", 3, time.time() + 60, 1.0)
    entry = queue.materialize(Job.from_dict({"id": "j1", "command": ["true"]}), {"leaseEpoch": 3})
    heartbeat = Heartbeat(client, lease, lambda reason: None)  # type: ignore[arg-type]
    return FleetClaim(queue, entry, client, heartbeat, on_pending)  # type: ignore[arg-type]


def test_a_definite_200_approves_the_ship_and_leaves_a_replay_marker(tmp_path: Path) -> None:
    client = FakeClient(None)
    claim = make_claim(tmp_path, client)
    claim.approve_ship({"attempt": 1, "exitCode": 0})
    assert client.calls == [("report", {"epoch": 3, "outcome": "shipped"})]
    sent = claim.queue.get("j1").result["reportSent"]  # written BEFORE the report left
    assert sent == {"epoch": 3, "record": {"attempt": 1, "exitCode": 0}}


def test_a_409_never_ships(tmp_path: Path) -> None:
    claim = make_claim(tmp_path, FakeClient(NotLeased("the job is queued")))
    with pytest.raises(Fenced, match="queued"):
        claim.approve_ship({"attempt": 1})


def test_an_unanswered_report_leaves_the_job_pending_in_running(tmp_path: Path) -> None:
    pending: list[str] = []
    client = FakeClient(TransportError("read timed out"))
    claim = make_claim(tmp_path, client, on_pending=pending.append)
    with pytest.raises(ReportPending):
        claim.approve_ship({"attempt": 1})
    assert pending == ["j1"]
    assert claim.queue.get("j1").state is State.RUNNING


def settle(tmp_path: Path, *script: Exception | None) -> tuple[FleetSource, FakeClient, LocalQueue]:
    """A job left in running/ after an unanswered report; a FleetSource settles it with ``script``."""
    claim = make_claim(tmp_path, FakeClient(TransportError("down")))
    with pytest.raises(ReportPending):
        claim.approve_ship({"attempt": 1, "exitCode": 0})
    (claim.queue.root / "running" / "j1" / "lease.json").write_text(json.dumps(claim.lease.to_dict()))
    client = FakeClient(*script)
    source = FleetSource(claim.queue, client)  # type: ignore[arg-type]
    source.recover()
    return source, client, claim.queue


def test_replayed_report_accepted_resumes_the_ship_without_rerunning_the_tool(tmp_path: Path) -> None:
    source, client, queue = settle(tmp_path, None, None)
    claim = source.next_claim()
    assert claim is not None and claim.resume_record == {"attempt": 1, "exitCode": 0}
    claim.approve_ship(claim.resume_record)  # the recovery's replay got the 200: not asked again
    claim.shipped({**claim.resume_record, "outcome": "shipped"})
    assert queue.get("j1").state is State.SHIPPED
    assert [c[0] for c in client.calls] == ["report"]


def test_replayed_report_refused_is_fenced_and_never_shipped(tmp_path: Path) -> None:
    source, client, queue = settle(tmp_path, Fenced("lease expired; held by f2"))
    assert (queue.root / "fenced" / "j1.3").is_dir() and not (queue.root / "running" / "j1").exists()
    assert "ship refused" in json.loads((queue.root / "fenced" / "j1.3" / "result.json").read_text())["reason"]
    assert source.next_claim() is None and client.calls[-1][0] == "claim"


def test_replay_while_the_coordinator_is_still_down_keeps_the_job_and_takes_no_new_work(tmp_path: Path) -> None:
    source, client, queue = settle(tmp_path, TransportError("down"), TransportError("still down"))
    with pytest.raises(TransportError, match="waiting in running"):
        source.next_claim()
    assert queue.get("j1").state is State.RUNNING


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

"""FleetClient over an in-memory scripted transport: retry policy, error mapping, parsing.

No processes and no sleeping: the policy's clock and sleep are fakes, so the
backoff schedule and deadlines are asserted exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from agent_queue.errors import (
    BadInput,
    Conflict,
    CoordinatorError,
    Fenced,
    InvalidJob,
    NotFound,
    NotLeased,
    TransportError,
)
from agent_queue.fleet.client import FleetClient, RetryPolicy, is_retryable
from agent_queue.fleet.wire import Response
from agent_queue.jobs import Lease
from agent_queue.timeutil import parse_rfc3339, to_rfc3339

T0 = 1_700_000_000.0


def job_body(job_id: str = "j1", **kw: Any) -> dict[str, Any]:
    return {"id": job_id, "command": ["true"], **kw}


def lease_body(job_id: str = "j1", factory: str = "f1", epoch: int = 1, expires: float = T0 + 60) -> dict[str, Any]:
    return {"jobId": job_id, "factoryId": factory, "leaseEpoch": epoch, "expiresAt": to_rfc3339(expires), "ttlS": 60}


def err(status: int, code: str, message: str = "nope") -> Response:
    return Response(status, {"error": {"code": code, "message": message}})


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class ScriptedTransport:
    """Answers from a list: a Response, or an exception to raise."""

    def __init__(self, *answers: Response | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str, dict[str, Any] | None, float | None]] = []

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> Response:
        # Deep copy: the client must not rely on the transport keeping its dict.
        self.calls.append((method, path, json.loads(json.dumps(body)) if body is not None else None, timeout_s))
        answer = self.answers.pop(0) if self.answers else Response(500, None)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        pass


def make(*answers: Response | Exception, **policy: Any) -> tuple[FleetClient, ScriptedTransport, FakeTime]:
    t = FakeTime()
    transport = ScriptedTransport(*answers)
    pol = RetryPolicy(sleep=t.sleep, clock=t.clock, rand=lambda: 0.0, **policy)
    return FleetClient(transport, "f1", ["linux", "gpu"], pol, now=lambda: T0), transport, t


LEASE = Lease("j1", "f1", 3, T0 + 60, 60.0)


def test_backoff_doubles_then_caps_and_stops_at_max_attempts() -> None:
    client, transport, t = make(max_attempts=6, base_delay_s=1.0, max_delay_s=4.0, deadline_s=1000)
    with pytest.raises(CoordinatorError) as exc:
        client.status()
    assert exc.value.http_status == 500
    assert len(transport.calls) == 6
    # rand() == 0 -> the lower edge of the jitter band: half the capped delay.
    assert t.sleeps == [0.5, 1.0, 2.0, 2.0, 2.0]


def test_jitter_stays_within_half_to_full_delay() -> None:
    for r in (0.0, 0.5, 0.999):
        pol = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0, rand=lambda r=r: r)
        for attempt in range(1, 8):
            cap = min(8.0, 2.0 ** (attempt - 1))
            assert cap * 0.5 <= pol.delay(attempt) < cap


def test_overall_deadline_bounds_attempts_and_caps_each_timeout() -> None:
    client, transport, t = make(max_attempts=100, base_delay_s=1.0, max_delay_s=1.0, deadline_s=3.0)
    transport.answers = [TransportError("down")] * 100
    with pytest.raises(TransportError):
        client.status()
    assert t.now < 3.0
    assert 2 <= len(transport.calls) < 100
    timeouts = [c[3] for c in transport.calls]
    assert timeouts[0] == pytest.approx(3.0)
    assert all(b is not None and a is not None and b < a for a, b in zip(timeouts, timeouts[1:], strict=False))


def test_per_call_deadline_is_shorter_than_policy() -> None:
    client, transport, t = make(max_attempts=100, deadline_s=60.0, base_delay_s=0.4, max_delay_s=0.4)
    transport.answers = [TransportError("down")] * 100
    with pytest.raises(TransportError):
        client.renew(LEASE, deadline_s=1.0)
    assert t.now < 1.0
    assert transport.calls[0][3] == pytest.approx(1.0)


def test_transport_error_then_success_is_retried() -> None:
    client, transport, _ = make(TransportError("reset"), Response(503, None), Response(200, {"counts": {}}))
    assert client.status() == {"counts": {}}
    assert len(transport.calls) == 3


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (err(409, "fenced"), Fenced),
        (err(409, "not_leased"), NotLeased),
        (err(409, "something_new"), Fenced),
        (err(404, "not_found"), NotFound),
        (err(422, "invalid_job"), InvalidJob),
        (err(400, "bad_input"), CoordinatorError),
        (err(403, "forbidden"), CoordinatorError),
        (Response(401, None), CoordinatorError),
    ],
)
def test_4xx_is_mapped_and_never_retried(answer: Response, error: type[Exception]) -> None:
    client, transport, _ = make(answer, Response(200, {"lease": lease_body(epoch=3)}))
    with pytest.raises(error) as exc:
        client.renew(LEASE)
    assert type(exc.value) is error
    assert len(transport.calls) == 1
    assert not is_retryable(exc.value)


def test_unauthorized_message_points_at_the_token_setting() -> None:
    client, _, _ = make(err(401, "unauthorized", "bad token"))
    with pytest.raises(CoordinatorError, match="unauthorized: check AQ_FLEET_TOKEN") as exc:
        client.status()
    assert exc.value.http_status == 401


def test_enqueue_conflict_and_local_validation() -> None:
    client, transport, _ = make(err(409, "conflict", "same id, different spec"))
    with pytest.raises(Conflict, match="same id, different spec"):
        client.enqueue(job_body())
    with pytest.raises(InvalidJob, match="enqueue.id"):
        client.enqueue({"id": "../etc", "command": ["true"]})
    assert len(transport.calls) == 1


def test_enqueue_returns_job_and_sends_spec_unchanged() -> None:
    spec = job_body(futureField=1)
    client, transport, _ = make(Response(201, {"job": {**spec, "state": "queued"}}))
    assert client.enqueue(spec)["state"] == "queued"
    assert transport.calls[0][:3] == ("POST", "/v1/fleet/jobs", spec)


def test_claim_returns_typed_job_and_lease() -> None:
    client, transport, _ = make(Response(200, {"job": job_body(priority=4), "lease": lease_body()}))
    claimed = client.claim()
    assert claimed is not None
    job, lease = claimed
    assert job.id == "j1" and job.priority == 4
    assert lease == Lease("j1", "f1", 1, parse_rfc3339(lease_body()["expiresAt"]), 60.0)
    method, path, body, _ = transport.calls[0]
    assert (method, path) == ("POST", "/v1/fleet/claim")
    assert body is not None
    assert body["factoryId"] == "f1" and body["capabilities"] == ["linux", "gpu"] and body["dryRun"] is False
    assert isinstance(body["requestId"], str) and len(body["requestId"]) >= 16


@pytest.mark.parametrize(("meta", "attempts"), [({"attempts": 2}, 2), (None, 0), ({"attempts": "x"}, 0)])
def test_claim_job_carries_the_counted_attempts_from_the_answer(meta: Any, attempts: int) -> None:
    client, transport, _ = make(Response(200, {"job": job_body(), "lease": lease_body(), "meta": meta}))
    got = client.claim_job()
    assert got is not None and got.job.id == "j1" and got.lease is not None and got.attempts == attempts
    assert len(transport.calls) == 1  # the claim answer is enough: no get_job round trip


def test_claim_204_is_none() -> None:
    client, _, _ = make(Response(204, None))
    assert client.claim() is None


def test_claim_retries_keep_request_id_and_new_claim_gets_new_one() -> None:
    client, transport, _ = make(
        TransportError("lost"),
        Response(502, None),
        Response(200, {"job": job_body()}),  # malformed: no lease -> retried too
        Response(200, {"job": job_body(), "lease": lease_body()}),
        Response(204, None),
    )
    assert client.claim() is not None
    assert client.claim() is None
    ids = [c[2]["requestId"] for c in transport.calls if c[2]]
    assert len(ids) == 5
    assert len(set(ids[:4])) == 1
    assert ids[4] != ids[0]


@pytest.mark.parametrize(
    "body",
    [
        {"lease": lease_body()},
        {"job": "j1", "lease": lease_body()},
        {"job": job_body(), "lease": {"jobId": "j1"}},
        {"job": job_body(), "lease": lease_body(job_id="other")},
        {"job": job_body(), "lease": lease_body(factory="someone-else")},
        None,
    ],
)
def test_malformed_claim_success_is_transport_error(body: dict[str, Any] | None) -> None:
    client, transport, _ = make(*[Response(200, body)] * 3, max_attempts=3)
    with pytest.raises(TransportError):
        client.claim()
    assert len(transport.calls) == 3


def test_dry_run_claim_releases_a_real_lease_without_counting_an_attempt() -> None:
    client, transport, _ = make(
        Response(200, {"job": job_body(), "lease": lease_body(factory="f1-shadow")}),
        Response(200, {"job": {"id": "j1", "state": "queued"}}),
    )
    claimed = client.claim(dry_run=True, factory_id="f1-shadow")
    assert claimed is not None and claimed[0].id == "j1" and claimed[1] is None
    assert transport.calls[0][2]["dryRun"] is True  # type: ignore[index]
    method, path, body, _ = transport.calls[1]
    assert (method, path) == ("POST", "/v1/fleet/jobs/j1/release")
    assert body == {"factoryId": "f1-shadow", "leaseEpoch": 1, "reason": "dry-run claim returned a real lease",
                    "retry": True, "countAttempt": False}


def test_dry_run_claim_without_lease() -> None:
    client, transport, _ = make(Response(200, {"job": job_body(), "lease": None, "dryRun": True}))
    assert client.claim(dry_run=True) is not None
    assert len(transport.calls) == 1


def test_claimed_invalid_job_is_quarantined_not_bounced() -> None:
    client, transport, _ = make(
        Response(200, {"job": {"id": "j1", "tool": "shell"}, "lease": lease_body()}),
        Response(200, {"job": {"id": "j1", "state": "quarantined"}}),
    )
    with pytest.raises(InvalidJob, match="command"):
        client.claim()
    body = transport.calls[1][2]
    assert body is not None and body["retry"] is False and body["reason"].startswith("invalid job spec")


def test_renew_returns_new_expiry_and_rejects_foreign_lease() -> None:
    client, transport, _ = make(Response(200, {"lease": lease_body(epoch=3, expires=T0 + 120)}))
    assert client.renew(LEASE).expires_at == pytest.approx(T0 + 120)
    assert transport.calls[0][:3] == ("POST", "/v1/fleet/jobs/j1/renew", {"factoryId": "f1", "leaseEpoch": 3})
    client, _, _ = make(*[Response(200, {"lease": lease_body(epoch=4)})] * 2, max_attempts=2)
    with pytest.raises(TransportError, match="another lease"):
        client.renew(LEASE)


def test_release_body_carries_extensions_only_when_used() -> None:
    ok = Response(200, {"job": {"id": "j1"}})
    client, transport, _ = make(ok, ok)
    client.release(LEASE, "verify failed")
    client.release(LEASE, "rate limited", retry=True, count_attempt=False, not_before=T0 + 30)
    assert transport.calls[0][2] == {"factoryId": "f1", "leaseEpoch": 3, "reason": "verify failed", "retry": True}
    second = transport.calls[1][2]
    assert second is not None and second["countAttempt"] is False
    assert parse_rfc3339(second["notBefore"]) == pytest.approx(T0 + 30)


def test_report_validates_outcome_and_is_retried_as_exact_replay() -> None:
    client, transport, _ = make(TransportError("lost answer"), Response(200, {"job": {"id": "j1", "state": "shipped"}}))
    with pytest.raises(BadInput):
        client.report(LEASE, "done", {})
    assert transport.calls == []
    assert client.report(LEASE, "shipped", {"sha": "abc"})["state"] == "shipped"
    assert transport.calls[0][2] == transport.calls[1][2] == {
        "factoryId": "f1", "leaseEpoch": 3, "outcome": "shipped", "detail": {"sha": "abc"}}


def test_job_ids_never_become_paths() -> None:
    client, transport, _ = make()
    with pytest.raises(InvalidJob):
        client.get_job("../../v1/fleet/reap")
    with pytest.raises(BadInput):
        client.list_jobs("queued&x=1")
    assert transport.calls == []


def test_list_get_reap_status() -> None:
    client, transport, _ = make(
        Response(200, {"jobs": [{"id": "a"}]}),
        Response(200, {"job": {"id": "a"}, "lease": None}),
        Response(200, {"reclaimed": [{"jobId": "a", "factoryId": "f2", "leaseEpoch": 2}]}),
        Response(200, {"jobs": "not a list"}),
    )
    assert client.list_jobs("queued") == [{"id": "a"}]
    assert client.get_job("a")["job"]["id"] == "a"
    assert client.reap()[0]["jobId"] == "a"
    assert [c[:2] for c in transport.calls] == [
        ("GET", "/v1/fleet/jobs?state=queued"), ("GET", "/v1/fleet/jobs/a"), ("POST", "/v1/fleet/reap")]
    client.retry = RetryPolicy(max_attempts=1)
    with pytest.raises(TransportError):
        client.list_jobs()


def test_shadow_report_is_one_best_effort_attempt() -> None:
    client, transport, _ = make(TransportError("down"), Response(202, None))
    assert client.shadow_report("AGREE", "a", "a", "f1-shadow") is None
    assert len(transport.calls) == 1
    client.shadow_report("COORD_EMPTY", "a", None, "f1-shadow")
    body = transport.calls[1][2]
    assert body == {"factoryId": "f1-shadow", "shadow": True, "verdict": "COORD_EMPTY", "localJobId": "a",
                    "coordJobId": None, "at": to_rfc3339(T0)}


def test_healthz() -> None:
    client, transport, _ = make(Response(200, {"ok": True}), Response(200, {"ok": False}), TransportError("x"))
    assert client.healthz() is True
    assert client.healthz() is False
    assert client.healthz() is False
    assert len(transport.calls) == 3

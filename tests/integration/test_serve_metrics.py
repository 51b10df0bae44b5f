"""``/metrics`` of a real ``serve``, parsed by Prometheus' own text-format parser, checked against what happened.

The test makes a known history (claims, a renew, a report, a release, a lease
left to expire and reclaimed, the zombie's late report refused with 409, an
operation through the command seam on the same state) and reads each counter,
gauge and histogram back; then the tokens: a metrics token scrapes and does
nothing else, a read token reads and cannot write.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.stubutil import RunningStub, running_stub, seam_answer

TOKEN, READ, METRICS = "metrics-fleet-token", "metrics-read-token", "metrics-only-token"
TTL_S = 1.0


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[RunningStub]:
    with running_stub(tmp_path / "coord", token=TOKEN, lease_ttl_s=TTL_S,
                      extra_env={"AQ_READ_TOKEN": READ, "AQ_METRICS_TOKEN": METRICS}) as s:
        yield s


def scrape(stub: RunningStub, token: str = METRICS) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = requests.get(stub.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_happened(stub: RunningStub) -> None:
    h = requests.Session()
    h.headers.update(stub.headers())
    api = stub.url + "/v1/fleet"
    for i in range(4):
        assert h.post(api + "/jobs", json={"id": f"m{i}", "command": ["true"]}, timeout=30).status_code == 201
    assert h.post(api + "/jobs", json={"id": "m0", "command": ["true"]}, timeout=30).status_code == 200

    def claim(factory: str) -> dict[str, int | str]:
        r = h.post(api + "/claim", json={"factoryId": factory}, timeout=30)
        assert r.status_code == 200, r.text
        lease: dict[str, int | str] = r.json()["lease"]
        return lease

    a = claim("f1")  # m0: renewed, then shipped
    assert h.post(api + f"/jobs/{a['jobId']}/renew", json={"factoryId": "f1", "leaseEpoch": a["leaseEpoch"]},
                  timeout=30).status_code == 200
    assert h.post(api + f"/jobs/{a['jobId']}/report", timeout=30,
                  json={"factoryId": "f1", "leaseEpoch": a["leaseEpoch"], "outcome": "shipped"}).status_code == 200
    b = claim("f1")  # m1: released back to the queue
    assert h.post(api + f"/jobs/{b['jobId']}/release", timeout=30,
                  json={"factoryId": "f1", "leaseEpoch": b["leaseEpoch"], "reason": "x"}).status_code == 200
    z = claim("zombie")  # m1 again, left to expire
    time.sleep(TTL_S + 0.2)
    reaped = h.post(api + "/reap", json={}, timeout=30).json()["reclaimed"]
    assert [r["jobId"] for r in reaped] == [z["jobId"]]
    late = h.post(api + f"/jobs/{z['jobId']}/report", timeout=30,
                  json={"factoryId": "zombie", "leaseEpoch": z["leaseEpoch"], "outcome": "shipped"})
    assert late.status_code == 409 and late.json()["error"]["code"] == "not_leased"
    status, _ = seam_answer(stub.state_dir, "POST", "/v1/fleet/claim", {"factoryId": "seam-f"})  # another process
    assert status == 200
    live = claim("f2")  # stays leased: a live lease at scrape time

    m = scrape(stub)
    assert value(m, "aq_operations_total", op="enqueue", outcome="created") == 4
    assert value(m, "aq_operations_total", op="enqueue", outcome="exists") == 1
    assert value(m, "aq_operations_total", op="claim", outcome="leased") == 5  # 4 over HTTP, 1 through the seam
    assert value(m, "aq_operations_total", op="renew", outcome="ok") == 1
    assert value(m, "aq_operations_total", op="report", outcome="shipped") == 1
    assert value(m, "aq_operations_total", op="report", outcome="not_leased") == 1
    assert value(m, "aq_operations_total", op="release", outcome="queued") == 1
    assert value(m, "aq_operations_total", op="reclaim", outcome="queued") == 1
    assert value(m, "aq_conflicts_total", op="report", code="not_leased") == 1
    assert value(m, "aq_lease_age_seconds_count", end="report") == 1
    assert value(m, "aq_lease_age_seconds_count", end="release") == 1
    assert value(m, "aq_lease_age_seconds_count", end="reclaim") == 1
    assert value(m, "aq_lease_age_seconds_sum", end="reclaim") >= TTL_S
    assert value(m, "aq_reclaim_delay_seconds_count") == 1
    assert value(m, "aq_jobs", state="shipped") == 1
    assert value(m, "aq_jobs", state="leased") == 2  # f2's and the seam's
    assert value(m, "aq_jobs", state="queued") == 1
    assert value(m, "aq_leases") == 2
    assert value(m, "aq_factory_leases", factory="f2") == 1
    assert value(m, "aq_lease_ttl_seconds") == TTL_S
    seen = value(m, "aq_factory_last_seen_timestamp_seconds", factory="f2")
    assert abs(seen - time.time()) < 3600 and live["jobId"]
    assert value(m, "aq_http_request_duration_seconds_count", route="fleet.claim", status="200") == 4
    assert value(m, "aq_http_request_duration_seconds_count", route="fleet.report", status="409") == 1
    assert value(m, "aq_store_operation_duration_seconds_count", op="claim") == 4  # the seam's is not serve's
    assert value(m, "aq_store_operation_duration_seconds_count", op="tidy") >= 10


def test_metrics_need_the_metrics_or_read_scope(stub: RunningStub) -> None:
    r = requests.get(stub.url + "/metrics", timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = requests.get(stub.url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert r.status_code == 401
    for token in (TOKEN, READ, METRICS):
        assert scrape(stub, token)
    as_metrics = {"Authorization": f"Bearer {METRICS}"}
    r = requests.get(stub.url + "/v1/fleet/status", headers=as_metrics, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    as_read = {"Authorization": f"Bearer {READ}"}
    assert requests.get(stub.url + "/v1/fleet/status", headers=as_read, timeout=30).status_code == 200
    r = requests.post(stub.url + "/v1/fleet/claim", json={"factoryId": "r"}, headers=as_read, timeout=30)
    assert r.status_code == 403
    r = requests.post(stub.url + "/v1/fleet/jobs", json={"id": "r", "command": ["true"]}, headers=as_read, timeout=30)
    assert r.status_code == 403
    assert requests.get(stub.url + "/v1/fleet/jobs/r", headers=stub.headers(), timeout=30).status_code == 404


def test_open_connections_are_counted(stub: RunningStub) -> None:
    """``aq_http_connections``: each open keep-alive connection, until it closes (the scrape's own included)."""
    import socket

    def settles_at(wanted: float) -> float:
        """The count, scraped until it reads ``wanted`` (connections are taken and dropped asynchronously)."""
        deadline = time.monotonic() + 30
        seen = value(scrape(stub), "aq_http_connections")
        while seen != wanted and time.monotonic() < deadline:
            time.sleep(0.01)
            seen = value(scrape(stub), "aq_http_connections")
        return seen

    host, port = stub.url.removeprefix("http://").rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=30) for _ in range(3)]
    try:
        assert settles_at(4) == 4  # three idle ones and the scrape's
    finally:
        for sock in idle:
            sock.close()
    assert settles_at(1) == 1

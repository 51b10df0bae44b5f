"""The composite parts of the fleet API over real HTTP, every response validated against docs/openapi.yaml."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from test_stub_http import check

from tests.stubutil import RunningStub, running_stub


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[RunningStub, requests.Session]]:
    with running_stub(tmp_path / "coord", token="t0ken", lease_ttl_s=30) as stub, requests.Session() as http:
        http.headers.update(stub.headers())
        yield stub, http


def test_verify_record_requeue_and_rollup_match_the_documented_shapes(
        api: tuple[RunningStub, requests.Session]) -> None:
    stub, http = api
    base = stub.url + "/v1/fleet"
    comp = {"id": "ep", "kind": "composite", "verify": ["true"],
            "children": [{"id": "k1", "command": ["true"], "budget": {"maxAttempts": 1}}]}
    check(http.post(base + "/jobs", json=comp), 201)

    def claim_and_report(job_id: str, outcome: str) -> dict[str, Any]:
        got = check(http.post(base + "/claim", json={"factoryId": "m1"}), 200)
        assert got["job"]["id"] == job_id
        rep = {"factoryId": "m1", "leaseEpoch": got["lease"]["leaseEpoch"], "outcome": outcome}
        check(http.post(base + f"/jobs/{job_id}/report", json=rep), 200)
        result: dict[str, Any] = got
        return result

    claim_and_report("k1", "quarantined")
    body = check(http.post(base + "/jobs/ep/requeue"), 200)
    assert body["requeued"] == ["k1"] and body["rollup"]["state"] == "queued"
    claim_and_report("k1", "shipped")
    got = claim_and_report("ep", "shipped")
    assert got["meta"]["verifyOf"] == "ep" and got["job"]["command"] == ["true"]
    roll = check(http.get(base + "/jobs/ep"), 200)["rollup"]
    assert roll["state"] == "shipped" and roll["verify"] == "passed"
    assert check(http.post(base + "/jobs/k1/requeue"), 409)["error"]["code"] == "conflict"
    check(http.post(base + "/jobs/nope/requeue"), 404)
    listed = check(http.get(base + "/jobs", params={"state": "composite"}), 200)["jobs"]
    assert [v["rollup"]["state"] for v in listed] == ["shipped"]

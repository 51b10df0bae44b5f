"""Issue 17's coordinator endpoints over real HTTP, each answer validated against docs/openapi.yaml:
cancel (and the holder's 409 not_leased), the paged list, status with liveness and stranded jobs,
and the lease history of a job view."""

from __future__ import annotations

from pathlib import Path

import requests
from test_stub_http import check, url

from tests.stubutil import running_stub


def test_cancel_paging_status_and_history_over_http(tmp_path: Path) -> None:
    with running_stub(tmp_path / "coord", token="tok", lease_ttl_s=30) as stub, requests.Session() as http:
        http.headers.update(stub.headers())
        for i in range(3):
            check(http.post(url(stub, "/jobs"), json={"id": f"p{i}", "command": ["true"]}), 201)
        check(http.post(url(stub, "/jobs"), json={"id": "gpu", "command": ["true"], "requires": ["gpu"]}), 201)
        lease = check(http.post(url(stub, "/claim"), json={"factoryId": "m1", "capabilities": ["linux"]}),
                      200)["lease"]
        assert lease["jobId"] == "p0"

        out = check(http.post(url(stub, "/jobs/p0/cancel"), json={}), 200)
        assert out["cancelled"] == ["p0"] and out["meta"]["state"] == "cancelled"
        fenced = check(http.post(url(stub, "/jobs/p0/renew"), json={"factoryId": "m1", "leaseEpoch": 1}), 409)
        assert fenced["error"]["code"] == "not_leased"
        assert check(http.post(url(stub, "/jobs/p0/cancel"), json={}), 200)["cancelled"] == []
        check(http.post(url(stub, "/jobs/nope/cancel"), json={}), 404)

        view = check(http.get(url(stub, "/jobs/p0")), 200)
        assert [(x["leaseEpoch"], x["factoryId"], x["end"]) for x in view["meta"]["leases"]] == [(1, "m1", "cancel")]

        page = check(http.get(url(stub, "/jobs"), params={"limit": "2"}), 200)
        assert [v["job"]["id"] for v in page["jobs"]] == ["p2", "gpu"] and page["total"] == 4
        assert check(http.get(url(stub, "/jobs"), params={"state": "cancelled"}), 200)["total"] == 1
        check(http.get(url(stub, "/jobs"), params={"limit": "-1"}), 400)

        st = check(http.get(url(stub, "/status")), 200)
        assert st["counts"]["cancelled"] == 1
        (m1,) = st["factories"]
        assert (m1["factoryId"], m1["liveness"], m1["capabilities"]) == ("m1", "live", ["linux"])
        assert [s["jobId"] for s in st["stranded"]] == ["gpu"]

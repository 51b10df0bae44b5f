"""The dashboard's server side over real HTTP: login and its cookie, CSRF on logout, the pages' JSON, 10k jobs.

The browser itself is driven in test_dashboard_browser.py; here each rule is
checked at the HTTP level, where a broken header or flag shows directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.stubutil import RunningStub, running_stub, seam_answer

TOKEN, READ = "dash-fleet-token", "dash-read-token"


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStub]:
    with running_stub(tmp_path_factory.mktemp("dash") / "coord", token=TOKEN, lease_ttl_s=1,
                      extra_env={"AQ_READ_TOKEN": READ}) as s:
        yield s


def login(stub: RunningStub, token: str) -> requests.Response:
    return requests.post(stub.url + "/ui/login", json={"token": token}, timeout=30,
                         headers={"Origin": stub.url}, allow_redirects=False)


def session(stub: RunningStub, token: str = READ) -> requests.Session:
    r = login(stub, token)
    assert r.status_code == 200, r.text
    h = requests.Session()
    h.cookies.update(r.cookies)
    return h


def test_login_sets_a_strict_http_only_cookie_and_nothing_in_the_url(stub: RunningStub) -> None:
    r = requests.get(stub.url + "/", allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    page = requests.get(stub.url + "/login", timeout=30)
    assert page.status_code == 200 and "<form" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    r = login(stub, READ)
    assert r.status_code == 200 and r.json() == {"scopes": ["metrics", "read"]}
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("aq_session=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert READ not in cookie and READ not in r.text
    h = requests.Session()
    h.cookies.update(r.cookies)
    index = h.get(stub.url + "/", allow_redirects=False, timeout=30)
    assert index.status_code == 200 and '<main id="view">' in index.text
    assert index.headers["cache-control"] == "no-store"
    assert h.get(stub.url + "/ui/api/session", timeout=30).json()["scopes"] == ["metrics", "read"]


def test_login_refusals(stub: RunningStub) -> None:
    for body in ({"token": "wrong"}, {"token": ""}, {}, [], "x"):
        r = requests.post(stub.url + "/ui/login", json=body, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert "set-cookie" not in r.headers
    r = requests.post(stub.url + "/ui/login", json={"token": READ}, headers={"Origin": "http://evil.example"},
                      timeout=30)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    assert requests.get(stub.url + "/ui/api/fleet", timeout=30).status_code == 401
    assert requests.get(stub.url + "/ui/api/fleet", cookies={"aq_session": "forged"}, timeout=30).status_code == 401


def test_a_session_reads_the_dashboard_but_never_the_fleet_api(stub: RunningStub) -> None:
    h = session(stub, TOKEN)  # even a session of the shared token: cookies are not credentials there
    assert h.get(stub.url + "/ui/api/fleet", timeout=30).status_code == 200
    assert h.get(stub.url + "/v1/fleet/status", timeout=30).status_code == 401
    r = h.post(stub.url + "/v1/fleet/jobs", json={"id": "via-cookie", "command": ["true"]}, timeout=30)
    assert r.status_code == 401
    assert h.get(stub.url + "/metrics", timeout=30).status_code == 200


def test_logout_needs_the_csrf_token(stub: RunningStub) -> None:
    h = session(stub)
    csrf = h.get(stub.url + "/ui/api/session", timeout=30).json()["csrf"]
    assert csrf
    assert h.post(stub.url + "/ui/logout", timeout=30).status_code == 403
    assert h.post(stub.url + "/ui/logout", headers={"X-CSRF-Token": csrf + "x"}, timeout=30).status_code == 403
    assert h.post(stub.url + "/ui/logout", headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
                  timeout=30).status_code == 403
    r = h.post(stub.url + "/ui/logout", headers={"X-CSRF-Token": csrf, "Origin": stub.url}, timeout=30)
    assert r.status_code == 204 and 'aq_session=""' in r.headers["set-cookie"]
    assert h.get(stub.url + "/ui/api/fleet", timeout=30).status_code == 401  # the session is gone server-side


def test_the_pages_json_tells_a_job_s_story(stub: RunningStub) -> None:
    api, auth = stub.url + "/v1/fleet", stub.headers()
    spec = {"id": "story", "command": ["true"], "env": {"DEPLOY_KEY": "s3cr3t-value"},
            "repo": "https://user:hunter2@git.example/r.git", "extra_token": "abc123"}
    assert requests.post(api + "/jobs", json=spec, headers=auth, timeout=30).status_code == 201
    z = requests.post(api + "/claim", json={"factoryId": "zombie", "capabilities": ["gpu", "linux"]}, headers=auth,
                      timeout=30).json()["lease"]
    time.sleep(1.2)  # past the 1 s lease
    f = requests.post(api + "/claim", json={"factoryId": "f1"}, headers=auth, timeout=30).json()["lease"]
    assert (f["jobId"], f["leaseEpoch"]) == ("story", 2)
    late = requests.post(api + "/jobs/story/report", headers=auth, timeout=30,
                         json={"factoryId": "zombie", "leaseEpoch": z["leaseEpoch"], "outcome": "shipped"})
    assert late.status_code == 409 and late.json()["error"]["code"] == "fenced"
    requests.post(api + "/jobs/story/report", headers=auth, timeout=30,
                  json={"factoryId": "f1", "leaseEpoch": 2, "outcome": "shipped"}).raise_for_status()

    h = session(stub)
    page = h.get(stub.url + "/ui/api/jobs/story", timeout=30).json()
    text = json.dumps(page)
    assert "s3cr3t-value" not in text and "hunter2" not in text and "abc123" not in text
    assert page["view"]["job"]["env"] == {"DEPLOY_KEY": "<redacted>"}
    epochs = {lease["epoch"]: lease for lease in page["leases"]}
    assert epochs[1]["factoryId"] == "zombie" and epochs[1]["end"]["op"] == "reclaim"
    assert [r["code"] for r in epochs[1]["refused"]] == ["fenced"]
    assert epochs[2]["factoryId"] == "f1" and epochs[2]["end"]["result"] == "shipped"
    assert len(page["story"]) == 1 and "reclaimed" in page["story"][0] and "held by f1" in page["story"][0]
    fleet = h.get(stub.url + "/ui/api/fleet", timeout=30).json()
    zombie = next(x for x in fleet["factories"] if x["factoryId"] == "zombie")
    assert zombie["capabilities"] == ["gpu", "linux"]
    events = h.get(stub.url + "/ui/api/events", params={"status": "409"}, timeout=30).json()["events"]
    assert [(e["op"], e["jobId"], e["code"]) for e in events] == [("report", "story", "fenced")]
    assert h.get(stub.url + "/ui/api/jobs/nope", timeout=30).json()["error"]["code"] == "not_found"


def test_ten_thousand_jobs_come_a_page_at_a_time(tmp_path: Path) -> None:
    state = tmp_path / "coord"
    for k in range(10):  # ten composites of 999 children: 10,000 jobs in ten operations
        children = [{"id": f"c-{n:05d}", "command": ["true"], "priority": n % 7} for n in range(k * 999, k * 999 + 999)]
        status, _ = seam_answer(state, "POST", "/v1/fleet/jobs", {"id": f"big-{k}", "kind": "composite",
                                                                  "children": children})
        assert status == 201
    with running_stub(state, token=TOKEN) as stub:
        for _ in range(3):
            lease = requests.post(stub.url + "/v1/fleet/claim", json={"factoryId": "f1"}, headers=stub.headers(),
                                  timeout=30).json()["lease"]
        h = session(stub, TOKEN)
        first = h.get(stub.url + "/ui/api/jobs", timeout=60).json()
        assert first["total"] == 10000 and first["pages"] == 200 and len(first["rows"]) == 50
        assert first["counts"]["queued"] == 9987 and first["counts"]["leased"] == 3
        assert first["counts"]["composite"] == 10
        assert len(json.dumps(first)) < 100_000  # one page, not the queue
        last = h.get(stub.url + "/ui/api/jobs", params={"page": 999}, timeout=60).json()
        assert last["page"] == 200 and [r["id"] for r in last["rows"]][-1] == "c-09989"
        leased = h.get(stub.url + "/ui/api/jobs", params={"state": "leased"}, timeout=60).json()
        assert leased["total"] == 3 and lease["jobId"] in {r["id"] for r in leased["rows"]}
        found = h.get(stub.url + "/ui/api/jobs", params={"q": "c-0424"}, timeout=60).json()
        assert [r["id"] for r in found["rows"]] == [f"c-0424{i}" for i in range(10)]
        mine = h.get(stub.url + "/ui/api/jobs", params={"factory": "f1"}, timeout=60).json()
        assert mine["total"] == 3
        big = h.get(stub.url + "/ui/api/composites", timeout=60).json()
        assert big["total"] == 10 and {r["children"] for r in big["rows"]} == {999}

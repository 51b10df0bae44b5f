"""Enrolled tokens at the dashboard and /metrics of a real `serve` (issue #19), and the refusals they leave.

Tokens come from real ``coordinator-stub factory|token`` commands on the
serve's own state directory, made while it runs. No shared token is configured.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.test_serve_dashboard import login, session
from tests.integration.test_serve_enrolment import stub_cli
from tests.stubutil import RunningStub, running_stub


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStub]:
    state = tmp_path_factory.mktemp("doors") / "coord"
    stub_cli(state, "factory", "add", "f0")  # enrolled before serve starts: it is never open
    with running_stub(state, token=None, lease_ttl_s=30) as s:
        yield s


@pytest.fixture(scope="module")
def tokens(stub: RunningStub) -> dict[str, str]:
    made = {scope: stub_cli(stub.state_dir, "token", "add", "--scope", scope, "--name", f"n-{scope}")
            for scope in ("read", "admin", "submit", "metrics")}
    made["factory"] = stub_cli(stub.state_dir, "factory", "add", "f1")
    return made


def events(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]


def tid(token: str) -> str:
    return token.split("_")[1]


def get(stub: RunningStub, path: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(stub.url + path, headers=headers, timeout=30, allow_redirects=False)


def test_read_and_admin_tokens_log_in_to_the_dashboard(stub: RunningStub, tokens: dict[str, str]) -> None:
    for scope in ("read", "admin"):
        s = session(stub, tokens[scope])
        assert s.get(stub.url + "/ui/api/fleet", timeout=30).status_code == 200
        page = s.get(stub.url + "/", timeout=30, allow_redirects=False)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]


@pytest.mark.parametrize("scope", ["factory", "submit", "metrics"])
def test_other_enrolled_tokens_are_refused_at_login_with_403_and_no_session(
        stub: RunningStub, tokens: dict[str, str], scope: str) -> None:
    r = login(stub, tokens[scope])
    assert r.status_code == 403, r.text
    assert f"a {scope} token cannot log in to the dashboard" in r.json()["error"]["message"]
    assert "set-cookie" not in r.headers and not r.cookies
    refused = [e for e in events(stub.state_dir) if e["op"] == "refused" and e["tokenId"] == tid(tokens[scope])]
    assert refused and refused[-1]["status"] == 403
    assert all(tokens[scope] not in json.dumps(e) for e in events(stub.state_dir))


def test_an_unknown_enrolled_token_gets_401_at_login(stub: RunningStub, tokens: dict[str, str]) -> None:
    forged = f"aqt_{tid(tokens['read'])}_not-the-secret"
    assert login(stub, forged).status_code == 401


def test_metrics_takes_metrics_read_and_admin_tokens(stub: RunningStub, tokens: dict[str, str]) -> None:
    for scope in ("metrics", "read", "admin"):
        r = get(stub, "/metrics", tokens[scope])
        assert r.status_code == 200 and "aq_operations_total" in r.text, (scope, r.text[:200])
    for scope in ("factory", "submit"):
        assert get(stub, "/metrics", tokens[scope]).status_code == 403, scope
    assert get(stub, "/metrics", None).status_code == 401


def test_a_metrics_token_may_only_scrape(stub: RunningStub, tokens: dict[str, str]) -> None:
    for path in ("/v1/fleet/status", "/v1/fleet/jobs", "/ui/api/fleet"):
        r = get(stub, path, tokens["metrics"])
        assert r.status_code == 403, (path, r.text)
    r = requests.post(stub.url + "/v1/fleet/jobs", json={"id": "m", "command": ["true"]},
                      headers={"Authorization": f"Bearer {tokens['metrics']}"}, timeout=30)
    assert r.status_code == 403


def test_revoking_its_token_ends_a_dashboard_session_at_its_next_request(stub: RunningStub) -> None:
    token = stub_cli(stub.state_dir, "token", "add", "--scope", "read", "--name", "leaving")
    s = session(stub, token)
    assert s.get(stub.url + "/ui/api/fleet", timeout=30).status_code == 200
    stub_cli(stub.state_dir, "token", "revoke", tid(token))
    assert s.get(stub.url + "/ui/api/fleet", timeout=30).status_code == 401
    page = s.get(stub.url + "/", timeout=30, allow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert login(stub, token).status_code == 401
    refused = [e for e in events(stub.state_dir) if e["op"] == "refused" and e["tokenId"] == tid(token)]
    assert refused and refused[0]["status"] == 401


def test_hammering_with_a_bad_token_writes_a_bounded_number_of_refusals(stub: RunningStub) -> None:
    """At most 10 refusal events per (token id, status) per 60 s window; a window that rolls during the
    run adds at most 10 more and says how many it dropped (no timing assumed)."""
    bad = "aqf_0123456789ab_wrong"
    with requests.Session() as h:
        for _ in range(40):
            assert h.get(stub.url + "/v1/fleet/status", headers={"Authorization": f"Bearer {bad}"},
                         timeout=30).status_code == 401
    evs = events(stub.state_dir)
    written = [e for e in evs if e["op"] == "refused" and e["tokenId"] == "0123456789ab"]
    rolled = [e for e in evs if e["op"] == "refusals_suppressed"]
    assert 10 <= len(written) <= 10 * (1 + len(rolled)), len(written)
    assert all(bad not in json.dumps(e) for e in evs)

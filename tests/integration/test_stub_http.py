"""HTTP against a real `coordinator-stub serve` on 127.0.0.1; every response validated against docs/openapi.yaml."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from jsonschema import Draft202012Validator

from tests.stubutil import STUB_ARGV, RunningStub, running_stub, stub_env

OPENAPI = yaml.safe_load((Path(__file__).parents[2] / "docs" / "openapi.yaml").read_text())
TOKEN = "s3cret-token"


def _template(path: str) -> str:
    for tmpl in OPENAPI["paths"]:
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", tmpl), path):
            return str(tmpl)
    raise AssertionError(f"{path} is not in docs/openapi.yaml")


def check(resp: requests.Response, status: int) -> Any:
    """Assert the status and validate the body against the documented schema of that response."""
    assert resp.status_code == status, resp.text
    method = resp.request.method.lower()  # type: ignore[union-attr]
    path = requests.utils.urlparse(resp.request.url).path  # type: ignore[arg-type]
    op = OPENAPI["paths"][_template(path)][method]
    spec = op["responses"][str(status)]
    pointer = f"/paths/{_template(path).replace('/', '~1')}/{method}/responses/{status}"
    if "$ref" in spec:
        pointer = spec["$ref"][1:]
        spec = OPENAPI["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
    if "content" not in spec:
        assert resp.content == b""
        return None
    body = resp.json()
    schema = {**OPENAPI, "$ref": f"#{pointer}/content/application~1json/schema"}
    Draft202012Validator(schema).validate(body)
    return body


@pytest.fixture(scope="module", params=["dir", pytest.param("postgres", marks=pytest.mark.postgres)])
def stub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStub]:
    """``serve`` on a state directory, then on PostgreSQL: the same answers, validated against the same schema."""
    state: Any = tmp_path_factory.mktemp("http") / "coord"
    if request.param == "postgres":
        from tests.pgutil import reset

        state = request.getfixturevalue("pg_database")
        reset(state)
    with running_stub(state, token=TOKEN, lease_ttl_s=30) as s:
        yield s


@pytest.fixture
def http(stub: RunningStub) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.headers.update(stub.headers())
        yield s


def url(stub: RunningStub, path: str) -> str:
    return stub.url + "/v1/fleet" + path


def test_every_endpoint(stub: RunningStub, http: requests.Session) -> None:
    spec = {"id": "h1", "command": ["true"], "requires": ["linux"]}
    check(http.post(url(stub, "/jobs"), json=spec), 201)
    check(http.post(url(stub, "/jobs"), json=spec), 200)
    check(http.post(url(stub, "/jobs"), json={**spec, "priority": 1}), 409)
    check(http.get(url(stub, "/jobs"), params={"state": "queued"}), 200)
    assert check(http.post(url(stub, "/claim"), json={"factoryId": "m1"}), 204) is None  # lacks "linux"
    dry = check(http.post(url(stub, "/claim"), json={"factoryId": "m1-shadow", "capabilities": ["linux"],
                                                     "dryRun": True}), 200)
    assert dry["dryRun"] is True
    got = check(http.post(url(stub, "/claim"), json={"factoryId": "m1", "capabilities": ["linux"],
                                                     "requestId": "r1"}), 200)
    epoch = got["lease"]["leaseEpoch"]
    check(http.get(url(stub, "/jobs/h1")), 200)
    check(http.post(url(stub, "/jobs/h1/renew"), json={"factoryId": "m1", "leaseEpoch": epoch}), 200)
    assert check(http.post(url(stub, "/jobs/h1/renew"), json={"factoryId": "zz", "leaseEpoch": epoch}),
                 409)["error"]["code"] == "fenced"
    check(http.post(url(stub, "/jobs/h1/release"), json={"factoryId": "m1", "leaseEpoch": epoch, "reason": "x"}), 200)
    assert check(http.post(url(stub, "/jobs/h1/report"),
                           json={"factoryId": "m1", "leaseEpoch": epoch, "outcome": "shipped"}),
                 409)["error"]["code"] == "not_leased"
    got = check(http.post(url(stub, "/claim"), json={"factoryId": "m1", "capabilities": ["linux"]}), 200)
    rep = {"factoryId": "m1", "leaseEpoch": got["lease"]["leaseEpoch"], "outcome": "shipped", "detail": {"sha": "1"}}
    check(http.post(url(stub, "/jobs/h1/report"), json=rep), 200)
    check(http.post(url(stub, "/jobs/h1/report"), json=rep), 200)  # exact replay
    check(http.post(url(stub, "/reap"), json={}), 200)
    check(http.post(url(stub, "/shadow-reports"), json={"factoryId": "m1-shadow", "shadow": True, "verdict": "AGREE",
                                                       "localJobId": "h1", "coordJobId": "h1", "at": "x"}), 202)
    check(http.post(url(stub, "/shadow-reports"), json={"factoryId": "m1-shadow", "verdict": "AGREE"}), 422)
    st = check(http.get(url(stub, "/status")), 200)
    assert st["counts"]["shipped"] >= 1
    check(http.get(url(stub, "/jobs/nope")), 404)


def test_composite_over_http(stub: RunningStub, http: requests.Session) -> None:
    comp = {"id": "epic1", "kind": "composite", "children": [
        {"id": "e1", "command": ["true"]}, {"id": "e2", "command": ["true"], "dependsOn": ["e1"]}]}
    check(http.post(url(stub, "/jobs"), json=comp), 201)
    body = check(http.get(url(stub, "/jobs/epic1")), 200)
    assert body["rollup"]["counts"]["queued"] == 2
    bad = {"id": "epic2", "kind": "composite", "children": [
        {"id": "x1", "command": ["true"], "dependsOn": ["x2"]}, {"id": "x2", "command": ["true"], "dependsOn": ["x1"]}]}
    assert "cycle" in check(http.post(url(stub, "/jobs"), json=bad), 422)["error"]["message"]


def test_auth_and_protocol_errors(stub: RunningStub) -> None:
    s = url(stub, "/status")
    check(requests.get(s), 401)
    check(requests.get(s, headers={"Authorization": "Bearer wrong"}), 401)
    check(requests.get(url(stub, "/healthz")), 200)  # no token needed
    auth = stub.headers()
    check(requests.post(url(stub, "/claim"), data=b"{not json", headers=auth), 400)
    check(requests.post(url(stub, "/jobs"), data=b"x" * (1024 * 1024 + 1), headers=auth), 413)
    r = requests.get(stub.url + "/v1/fleet/nowhere", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = requests.get(url(stub, "/claim"), headers=auth)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert TOKEN not in "\n".join(stub.stderr_lines)


def test_keep_alive_serves_many_requests_on_one_connection(stub: RunningStub, http: requests.Session) -> None:
    for _ in range(50):
        check(http.get(url(stub, "/status")), 200)


def test_refuses_non_loopback_without_token(tmp_path: Path) -> None:
    proc = subprocess.run([*STUB_ARGV, "--state", str(tmp_path / "c"), "serve", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, env=stub_env(), stdin=subprocess.DEVNULL, timeout=30)
    assert proc.returncode == 2
    assert b"AQ_FLEET_TOKEN" in proc.stderr


def test_sigterm_stops_cleanly_with_an_idle_keep_alive_connection(tmp_path: Path) -> None:
    with running_stub(tmp_path / "c", token=None) as s:
        host, port = s.url.rsplit("/", 1)[1].split(":")
        conn = socket.create_connection((host, int(port)))  # idle keep-alive client must not block shutdown
        conn.sendall(b"GET /v1/fleet/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")
        assert s.stop() == 0
        conn.close()


def test_a_stopped_server_leaves_its_state_folded_with_every_archive_file(tmp_path: Path) -> None:
    state = tmp_path / "c"
    with running_stub(state, token=None) as s, requests.Session() as h:
        for i in range(3):
            check(h.post(url(s, "/jobs"), json={"id": f"j{i}", "command": ["true"]}), 201)
        for _ in range(3):
            lease = check(h.post(url(s, "/claim"), json={"factoryId": "f1"}), 200)["lease"]
            check(h.post(url(s, f"/jobs/{lease['jobId']}/report"),
                         json={"factoryId": "f1", "leaseEpoch": lease["leaseEpoch"], "outcome": "shipped"}), 200)
        assert (state / "journal.jsonl").stat().st_size > 0  # while serving: the journal holds them
        assert s.stop() == 0
    assert sorted(p.name for p in (state / "archive").glob("*.json")) == ["j0.json", "j1.json", "j2.json"]
    assert (state / "journal.jsonl").stat().st_size == 0
    assert not list((state / "jobs").iterdir())


def test_the_server_writes_a_finished_jobs_files_after_answering_without_another_request(tmp_path: Path) -> None:
    state = tmp_path / "c"
    with running_stub(state, token=None) as s, requests.Session() as h:
        check(h.post(url(s, "/jobs"), json={"id": "j0", "command": ["true"]}), 201)
        lease = check(h.post(url(s, "/claim"), json={"factoryId": "f1"}), 200)["lease"]
        check(h.post(url(s, "/jobs/j0/report"),
                     json={"factoryId": "f1", "leaseEpoch": lease["leaseEpoch"], "outcome": "shipped"}), 200)
        deadline = time.monotonic() + 10
        archived, spec = state / "archive" / "j0.json", state / "jobs" / "j0.json"
        while (not archived.exists() or spec.exists()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert json.loads(archived.read_text())["state"] == "shipped"
        assert not spec.exists()  # the spec is inside the archived record now
        assert (state / "journal.jsonl").stat().st_size > 0  # no checkpoint: the journal still holds the line

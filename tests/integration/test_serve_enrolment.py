"""Enrolled credentials against a real `serve` (issue #19): scopes, factory binding, revocation, rotation.

Tokens are made by real ``coordinator-stub factory|token`` commands on the same
state (a directory, then PostgreSQL) while ``serve`` runs; every answer is
validated against docs/openapi.yaml.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.integration.test_stub_http import check
from tests.stubutil import STUB_ARGV, RunningStub, running_stub, stub_env

SHARED = "shared-s3cret"


@pytest.fixture(params=["dir", pytest.param("postgres", marks=pytest.mark.postgres)])
def state(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if request.param == "postgres":
        from tests.pgutil import reset

        url = request.getfixturevalue("pg_database")
        reset(url)
        return url
    return tmp_path_factory.mktemp("enrol") / "coord"


def stub_cli(state: Any, *args: str) -> str:
    """A real coordinator-stub command on ``state``; its stdout (it must succeed)."""
    done = subprocess.run([*STUB_ARGV, "--state", str(state), *args], env=stub_env(), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def stub(state: Any) -> Iterator[RunningStub]:
    stub_cli(state, "factory", "add", "f0")  # enrolled before serve starts: no shared token needed
    with running_stub(state, token=None, lease_ttl_s=30) as s:
        yield s


def call(stub: RunningStub, method: str, path: str, token: str | None, body: Any = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, stub.url + "/v1/fleet" + path, json=body, headers=headers, timeout=30)


def meta(stub: RunningStub, token: str, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = check(call(stub, "GET", f"/jobs/{job_id}", token), 200)
    return dict(body["meta"])


def test_scopes_and_a_factory_acting_as_another(stub: RunningStub, state: Any) -> None:
    f1 = stub_cli(state, "factory", "add", "f1")
    submit = stub_cli(state, "token", "add", "--scope", "submit", "--name", "ci")
    read = stub_cli(state, "token", "add", "--scope", "read", "--name", "me")
    admin = stub_cli(state, "token", "add", "--scope", "admin", "--name", "root")
    check(call(stub, "GET", "/status", None), 401)  # enrolment closes the server: no open mode
    check(call(stub, "GET", "/status", f1[:-2] + "xx"), 401)
    check(call(stub, "POST", "/jobs", f1, {"id": "a", "command": ["true"]}), 403)  # a factory cannot enqueue
    check(call(stub, "POST", "/jobs", read, {"id": "a", "command": ["true"]}), 403)
    check(call(stub, "POST", "/jobs", submit, {"id": "a", "command": ["true"]}), 201)
    check(call(stub, "POST", "/claim", submit, {"factoryId": "f1"}), 403)  # submit cannot claim
    check(call(stub, "GET", "/status", read), 200)
    refused = check(call(stub, "POST", "/claim", f1, {"factoryId": "f0"}), 403)
    assert "'f0'" in refused["error"]["message"] and "'f1'" in refused["error"]["message"]
    assert meta(stub, read, "a")["state"] == "queued"  # nothing changed
    check(call(stub, "POST", "/jobs/a/cancel", f1, {}), 403)  # cancel is admin's
    replan = {"spec": {"children": [{"id": "x", "command": ["true"]}]}}
    check(call(stub, "POST", "/jobs/a/replan", submit, replan), 403)  # so is a re-plan
    got = check(call(stub, "POST", "/claim", f1, {"factoryId": "f1"}), 200)
    epoch = got["lease"]["leaseEpoch"]
    check(call(stub, "POST", "/jobs/a/renew", f1, {"factoryId": "f0", "leaseEpoch": epoch}), 403)
    check(call(stub, "POST", "/jobs/a/report", f1, {"factoryId": "f1", "leaseEpoch": epoch, "outcome": "shipped"}),
          200)
    check(call(stub, "POST", "/jobs", admin, {"id": "b", "command": ["true"]}), 201)
    check(call(stub, "POST", "/jobs/b/cancel", admin, {}), 200)
    assert "only a composite job" in check(call(stub, "POST", "/jobs/a/replan", admin, replan), 409)["error"]["message"]
    if not isinstance(state, str):  # the directory's event log: refusals by token id, never a token
        log = (state / "events.jsonl").read_text()
        f1_id = f1.split("_")[1]
        assert '"op":"refused"' in log.replace(" ", "") and f1_id in log
        assert all(t not in log for t in (f1, submit, read, admin))


def test_revoked_factory_gets_401_and_its_lease_is_fenced(stub: RunningStub, state: Any) -> None:
    f1 = stub_cli(state, "factory", "add", "f1")
    f2 = stub_cli(state, "factory", "add", "f2")
    admin = stub_cli(state, "token", "add", "--scope", "admin", "--name", "root")
    check(call(stub, "POST", "/jobs", admin, {"id": "z", "command": ["true"]}), 201)
    epoch = check(call(stub, "POST", "/claim", f1, {"factoryId": "f1"}), 200)["lease"]["leaseEpoch"]
    assert "fenced z" in stub_cli(state, "factory", "revoke", "f1")
    late = {"factoryId": "f1", "leaseEpoch": epoch, "outcome": "shipped"}
    check(call(stub, "POST", "/jobs/z/report", f1, late), 401)
    assert check(call(stub, "POST", "/jobs/z/report", admin, late), 409)["error"]["code"] == "not_leased"
    assert meta(stub, admin, "z")["attempts"] == 0
    again = check(call(stub, "POST", "/claim", f2, {"factoryId": "f2"}), 200)
    assert again["lease"]["leaseEpoch"] > epoch
    check(call(stub, "POST", "/jobs/z/report", f2,
               {"factoryId": "f2", "leaseEpoch": again["lease"]["leaseEpoch"], "outcome": "shipped"}), 200)
    assert meta(stub, admin, "z")["state"] == "shipped"


def test_rotation_and_capabilities(stub: RunningStub, state: Any) -> None:
    old = stub_cli(state, "factory", "add", "f1", "--capability", "linux")
    new = stub_cli(state, "factory", "rotate", "f1")
    admin = stub_cli(state, "token", "add", "--scope", "admin", "--name", "root")
    check(call(stub, "POST", "/jobs", admin, {"id": "g", "command": ["true"], "requires": ["gpu"]}), 201)
    check(call(stub, "POST", "/jobs", admin, {"id": "l", "command": ["true"], "requires": ["linux"]}), 201)
    check(call(stub, "GET", "/status", old), 200)
    stub_cli(state, "token", "revoke", old.split("_")[1])
    check(call(stub, "GET", "/status", old), 401)
    got = check(call(stub, "POST", "/claim", new, {"factoryId": "f1", "capabilities": ["gpu", "linux"]}), 200)
    assert got["job"]["id"] == "l"  # the claim is capped to the enrolled capabilities: never the gpu job
    check(call(stub, "POST", "/claim", new, {"factoryId": "f1", "capabilities": ["gpu", "linux"]}), 204)


def test_shared_token_keeps_working_beside_enrolment(state: Any) -> None:
    f1 = stub_cli(state, "factory", "add", "f1")
    with running_stub(state, token=SHARED) as stub:
        check(call(stub, "POST", "/jobs", SHARED, {"id": "s", "command": ["true"]}), 201)
        check(call(stub, "POST", "/jobs", f1, {"id": "t", "command": ["true"]}), 403)
        check(call(stub, "POST", "/claim", f1, {"factoryId": "f1"}), 200)


def test_enrolment_lets_serve_listen_beyond_loopback_and_closes_it(state: Any) -> None:
    f1 = stub_cli(state, "factory", "add", "f1")
    with running_stub(state, token=None, host="0.0.0.0") as stub:  # noqa: S104 (the point of the test)
        check(call(stub, "GET", "/status", None), 401)
        check(call(stub, "GET", "/status", f1), 200)

"""Fuzz every endpoint of docs/openapi.yaml against a real ``coordinator-stub serve``.

Strategies are derived from the OpenAPI document itself (each operation's
request-body properties get hostile values of every JSON type, plus
fully random JSON and raw garbage bytes), and the path id comes from known
ids, random text and path-like strings. For every request: never a 5xx, an
error body always has the documented shape, and a 4xx answer changes no
state (state.json and the archive are byte-identical before and after). At
the end the server is still up.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stubutil import RunningStub, running_stub

REPO = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())
TOKEN = "fuzz-token-0123456789"
EXAMPLES = 40


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref:
        node: Any = SPEC
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        return _resolve(node)
    if "allOf" in schema:
        props: dict[str, Any] = {}
        for sub in schema["allOf"]:
            props.update(_resolve(sub).get("properties", {}))
        return {"type": "object", "properties": props}
    return schema


def _operations() -> list[tuple[str, str, list[str]]]:
    ops = []
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post"):
                continue
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            names = sorted(_resolve(body).get("properties", {})) if body else []
            ops.append((method.upper(), path, names))
    return ops


OPERATIONS = _operations()

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=30),
    st.sampled_from(["", "../etc/passwd", "/abs", "a" * 5000, "\x00\x1b[31m", "f1", "held", "-1", "1e309",
                     "2024-01-01T00:00:00Z", "shipped", "quarantined", "AGREE"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
path_ids = st.one_of(
    st.sampled_from(["held", "queued-1", "shipped-1", "nope", "..", ".", "%2e%2e", "a/b", "A" * 200, "-x"]),
    st.text(max_size=20).map(lambda s: quote(s, safe="")),
)


def _body_for(names: list[str]) -> st.SearchStrategy[bytes]:
    shaped = st.fixed_dictionaries({}, optional={n: json_values for n in names}) if names else st.just({})
    near_valid = st.fixed_dictionaries(
        {"factoryId": st.sampled_from(["f1", "f2", "x" * 200, ""]),
         "leaseEpoch": st.sampled_from([0, 1, 2, -1, 1.5, "1", True, 2**63])},
        optional={"outcome": st.sampled_from(["shipped", "quarantined", "x"]), "retry": json_values,
                  "reason": json_values, "detail": json_values})
    return st.one_of(
        shaped.map(lambda d: json.dumps(d).encode()),
        near_valid.map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.just(b"[" * 5000 + b"]" * 5000),  # deep nesting
        st.just(b'{"a": ' * 3000 + b"1" + b"}" * 3000),
    )


def _fingerprint(state: Path) -> str:
    h = hashlib.sha256()
    for path in sorted([state / "state.json", state / "journal.jsonl", *sorted((state / "archive").glob("*.json"))]):
        if path.exists():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStub]:
    state = tmp_path_factory.mktemp("fuzz") / "coord"
    with running_stub(state, token=TOKEN, lease_ttl_s=3600) as s:
        h = s.headers()
        for job_id in ("held", "queued-1", "shipped-1"):
            r = requests.post(s.url + "/v1/fleet/jobs", json={"id": job_id, "tool": "shell", "command": ["true"]},
                              headers=h, timeout=10)
            assert r.status_code == 201
        lease = requests.post(s.url + "/v1/fleet/claim", json={"factoryId": "f1"}, headers=h, timeout=10).json()
        assert lease["job"]["id"] == "held"
        yield s
        assert s.proc.poll() is None, "the server died during fuzzing"
        assert requests.get(s.url + "/v1/fleet/healthz", timeout=10).json()["ok"] is True


def _check(stub: RunningStub, method: str, url: str, body: bytes | None, auth: bool = True) -> int:
    # The store thread runs in order: once a read is answered, the tidy the last request left for after its
    # answer (a checkpoint, archive files) is done, and cannot change the files under this comparison.
    requests.get(stub.url + "/v1/fleet/status", headers=stub.headers(), timeout=30)
    before = _fingerprint(stub.state_dir)
    headers = {**(stub.headers() if auth else {}), "Content-Type": "application/json"}
    resp = requests.request(method, url, data=body, headers=headers, timeout=30)
    assert resp.status_code < 500, f"{method} {url} -> {resp.status_code}: {resp.text[:300]}"
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert isinstance(err["code"], str) and err["code"] and isinstance(err["message"], str) and err["message"]
        assert TOKEN not in resp.text
        assert _fingerprint(stub.state_dir) == before, f"{method} {url} -> {resp.status_code} changed state"
    return resp.status_code


@pytest.mark.parametrize(("method", "template", "names"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_fuzz_endpoint(stub: RunningStub, method: str, template: str, names: list[str]) -> None:
    seen: set[int] = set()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(job_id=path_ids, body=_body_for(names), state=st.one_of(st.none(), st.text(max_size=12)))
    def run(job_id: str, body: bytes, state: str | None) -> None:
        path = template.replace("{id}", job_id)
        if state is not None and method == "GET":
            path += "?state=" + quote(state, safe="")
        seen.add(_check(stub, method, stub.url + path, body if method == "POST" else None))

    run()
    assert seen, "no request was answered"


@pytest.mark.parametrize(("method", "template", "names"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_no_token_changes_nothing(stub: RunningStub, method: str, template: str, names: list[str]) -> None:
    url = stub.url + template.replace("{id}", "held")
    body = json.dumps({"factoryId": "f1", "leaseEpoch": 1, "outcome": "shipped"}).encode()
    status = _check(stub, method, url, body if method == "POST" else None, auth=False)
    assert status == (200 if template.endswith("/healthz") else 401)


def _raw(stub: RunningStub, data: bytes) -> bytes:
    host, port = stub.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("request_bytes", [
    b"POST /v1/fleet/claim HTTP/1.1\r\nAuthorization: Bearer %s\r\nContent-Length: -5\r\n\r\n",
    b"POST /v1/fleet/claim HTTP/1.1\r\nAuthorization: Bearer %s\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/fleet/claim HTTP/1.1\r\nAuthorization: Bearer %s\r\nContent-Length: 99999999999\r\n\r\n{",
    b"POST /v1/fleet/claim HTTP/1.1\r\nAuthorization: Bearer %s\r\nContent-Length: 100\r\n\r\n{\"factoryId\"",
    b"GARBAGE\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"POST /v1/fleet/claim HTTP/1.1\r\nAuthorization: Bearer wrong%s\r\nContent-Length: 2\r\n\r\n{}",
], ids=["negative-length", "text-length", "huge-length", "truncated-body", "garbage-line", "long-line", "bad-token"])
def test_malformed_http_never_crashes_or_changes_state(stub: RunningStub, request_bytes: bytes) -> None:
    before = _fingerprint(stub.state_dir)
    data = request_bytes.replace(b"%s", TOKEN.encode()) if b"%s" in request_bytes else request_bytes
    answer = _raw(stub, data)
    assert not answer.startswith(b"HTTP/1.1 5") and not answer.startswith(b"HTTP/1.0 5"), answer[:200]
    assert _fingerprint(stub.state_dir) == before
    assert requests.get(stub.url + "/v1/fleet/healthz", timeout=10).status_code == 200

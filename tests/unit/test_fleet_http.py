"""HttpTransport + FleetClient against a real fake coordinator process on 127.0.0.1.

tests/fakes/fake_http.py serves scripted answers on a free port and records
each request (headers included), so the bearer header, keep-alive, retries
on 5xx / dropped connections and the absence of retries on 4xx are observed
on the wire. The token must appear nowhere but in that header.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_queue.errors import AQError, ConfigError, CoordinatorError, Fenced, TransportError
from agent_queue.fleet.client import FleetClient, RetryPolicy
from agent_queue.fleet.http_transport import HttpTransport
from agent_queue.fleet.transport import make_transport
from agent_queue.jobs import Lease

FAKE_HTTP = Path(__file__).resolve().parents[1] / "fakes" / "fake_http.py"
SECRET = "tok-0a1b2c3d4e5f-SECRET"
LEASE = Lease("j1", "f1", 2, 2_000_000_000.0, 60.0)


class FakeCoordinator:
    def __init__(self, tmp: Path) -> None:
        self.script_path = tmp / "script.json"
        self.log_path = tmp / "requests.jsonl"
        self.script()
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE_HTTP), str(self.script_path), str(self.log_path)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        port = self.proc.stdout.readline().strip()  # the server prints its port once it is listening
        if not port:
            self.stop()
            raise RuntimeError("fake coordinator did not start")
        self.url = f"http://127.0.0.1:{port}"

    def script(self, *steps: dict[str, Any]) -> None:
        self.script_path.write_text(json.dumps(list(steps)), encoding="utf-8")

    def requests(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def client(self, read_timeout_s: float = 5.0, **policy: Any) -> FleetClient:
        transport = HttpTransport(self.url, SECRET, connect_timeout_s=2.0, read_timeout_s=read_timeout_s)
        return FleetClient(transport, "f1", ["linux"], RetryPolicy(sleep=lambda s: None, **policy))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[FakeCoordinator]:
    server = FakeCoordinator(tmp_path)
    try:
        yield server
    finally:
        server.stop()


OK_STATUS = {"status": 200, "body": {"counts": {"queued": 2}, "leases": [], "factories": []}}


def test_bearer_header_json_body_and_keep_alive(coord: FakeCoordinator) -> None:
    coord.script(OK_STATUS, {"status": 200, "body": {"lease": LEASE.to_dict()}})
    client = coord.client()
    assert client.status()["counts"] == {"queued": 2}
    assert client.renew(LEASE).epoch == 2
    first, second = coord.requests()
    assert first["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert (second["method"], second["path"]) == ("POST", "/v1/fleet/jobs/j1/renew")
    assert second["headers"]["Content-Type"] == "application/json"
    assert json.loads(second["body"]) == {"factoryId": "f1", "leaseEpoch": 2}
    assert first["client_port"] == second["client_port"]  # one kept-alive connection


def test_5xx_is_retried_then_succeeds(coord: FakeCoordinator) -> None:
    coord.script({"status": 503, "body": {"error": {"code": "busy", "message": "try later"}}},
                 {"status": 502, "raw": "<html>bad gateway</html>"}, OK_STATUS)
    assert coord.client().status()["counts"] == {"queued": 2}
    assert len(coord.requests()) == 3


def test_4xx_is_not_retried(coord: FakeCoordinator) -> None:
    coord.script({"status": 400, "body": {"error": {"code": "bad_input", "message": "no"}}},
                 {"status": 409, "body": {"error": {"code": "fenced", "message": "epoch 3 is current"}}}, OK_STATUS)
    client = coord.client()
    with pytest.raises(CoordinatorError) as exc:
        client.status()
    assert exc.value.http_status == 400
    with pytest.raises(Fenced, match="epoch 3 is current"):
        client.release(LEASE, "verify failed")
    assert len(coord.requests()) == 2


def test_dropped_connection_is_retried(coord: FakeCoordinator) -> None:
    coord.script({"drop": True}, {"drop": True}, OK_STATUS)
    assert coord.client().status()["counts"] == {"queued": 2}
    assert len(coord.requests()) == 3


def test_read_timeout_and_garbage_success_are_transport_errors(coord: FakeCoordinator) -> None:
    coord.script({"sleep": 3, "status": 200, "body": {"ok": True}})
    with pytest.raises(TransportError, match="Timeout"):
        coord.client(read_timeout_s=0.3, max_attempts=1).status()
    coord.script({"status": 200, "raw": "<html>proxy login</html>"})
    with pytest.raises(TransportError, match="not a JSON object"):
        coord.client(max_attempts=1).status()


def test_token_absent_from_logs_reprs_and_errors(coord: FakeCoordinator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # includes urllib3's connection logs
    coord.script({"status": 401, "body": {"error": {"code": "unauthorized", "message": "bad token"}}},
                 {"drop": True}, {"status": 500, "raw": "oops"})
    client = coord.client(max_attempts=2)
    errors: list[AQError] = []
    for call in (client.status, client.status):
        with pytest.raises(AQError) as exc:
            call()
        errors.append(exc.value)
    assert "unauthorized: check AQ_FLEET_TOKEN" in str(errors[0])
    # Nothing listens here: a connection error, whose text includes the URL.
    dead = FleetClient(HttpTransport(f"http://127.0.0.1:{free_port()}", SECRET, 1.0, 1.0), "f1", [],
                       RetryPolicy(max_attempts=1))
    with pytest.raises(TransportError) as refused:
        dead.status()
    errors.append(refused.value)
    assert not dead.healthz()
    texts = [caplog.text, repr(client), repr(client.transport), repr(dead.transport)]
    texts += [f"{e!s} {e!r} {e.message}" for e in errors]
    for text in texts:
        assert SECRET not in text
    assert "DEBUG" in caplog.text  # the check above looked at real debug output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_make_transport_http_rules() -> None:
    assert isinstance(make_transport(None, "http://127.0.0.1:8080", None, 5.0), HttpTransport)
    assert isinstance(make_transport("", "http://localhost:8080/", None, 5.0), HttpTransport)
    remote = make_transport(None, "https://coord.example:8443", SECRET, 5.0)
    assert isinstance(remote, HttpTransport) and SECRET not in repr(remote)
    with pytest.raises(ConfigError, match="AQ_FLEET_TOKEN is required"):
        make_transport(None, "https://coord.example", None, 5.0)
    with pytest.raises(ConfigError, match="no credentials in the URL") as exc:
        make_transport(None, f"https://user:{SECRET}@coord.example", SECRET, 5.0)
    assert SECRET not in str(exc.value)
    with pytest.raises(ConfigError, match="not an http"):
        make_transport(None, "ftp://coord.example", SECRET, 5.0)


def test_plain_http_to_remote_host_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent_queue.fleet.http_transport")
    make_transport(None, "http://10.1.2.3:8080", SECRET, 5.0)
    assert "unencrypted" in caplog.text and SECRET not in caplog.text


def test_sessions_of_finished_threads_are_closed_not_kept_one_per_job() -> None:
    """Each job's heartbeat thread gets its own keep-alive session; when it is gone, so is its session."""
    import threading

    from agent_queue.fleet.http_transport import HttpTransport

    transport = HttpTransport("http://127.0.0.1:9", None, 1.0, 1.0)
    for _ in range(5):  # five jobs, each with its own heartbeat thread
        t = threading.Thread(target=transport._session)
        t.start()
        t.join()
    transport._session()  # the main thread's session sweeps the finished ones
    assert list(transport._sessions) == [threading.current_thread()]
    transport.close()
    assert transport._sessions == {}

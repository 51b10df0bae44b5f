"""The command seam (AQ_FLEET_API_CMD) against a real child process: tests/fakes/fake_seam.py.

Covers the request shape (argv, stdin), status mapping, every transport
failure (non-zero exit, garbage, timeout with a process group to kill) and
that the token never reaches the child.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent_queue.errors import ConfigError, Fenced, InvalidJob, NotFound, NotLeased, TransportError
from agent_queue.fleet.client import FleetClient, RetryPolicy
from agent_queue.fleet.command_transport import CommandTransport
from agent_queue.fleet.transport import make_transport
from agent_queue.jobs import Lease
from agent_queue.timeutil import to_rfc3339

FAKE_SEAM = Path(__file__).resolve().parents[1] / "fakes" / "fake_seam.py"
SECRET = "tok-9f8e7d6c5b4a-SECRET"
LEASE = Lease("j1", "f1", 2, time.time() + 60, 60.0)


class Seam:
    def __init__(self, tmp: Path) -> None:
        self.script_path = tmp / "script.json"
        self.log_path = tmp / "calls.jsonl"
        self.env = {"PATH": "/usr/bin:/bin", "FAKE_SCRIPT": str(self.script_path), "FAKE_LOG": str(self.log_path),
                    "AQ_FLEET_TOKEN": SECRET}

    def script(self, *steps: dict[str, Any]) -> None:
        self.script_path.write_text(json.dumps(list(steps)), encoding="utf-8")

    def calls(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def transport(self, timeout_s: float = 10.0) -> CommandTransport:
        return CommandTransport([sys.executable, str(FAKE_SEAM)], timeout_s, env=self.env)

    def client(self, **policy: Any) -> FleetClient:
        pol = RetryPolicy(sleep=lambda s: None, **policy)
        return FleetClient(self.transport(), "f1", ["linux"], pol)


@pytest.fixture
def seam(tmp_path: Path) -> Seam:
    return Seam(tmp_path)


def claim_answer(epoch: int = 1) -> dict[str, Any]:
    lease = {"jobId": "j1", "factoryId": "f1", "leaseEpoch": epoch, "expiresAt": to_rfc3339(time.time() + 60),
             "ttlS": 60}
    return {"status": 200, "body": {"job": {"id": "j1", "command": ["true"]}, "lease": lease}}


def test_request_shape_post_with_body(seam: Seam) -> None:
    seam.script(claim_answer())
    claimed = seam.client().claim()
    assert claimed is not None and claimed[1] is not None and claimed[1].epoch == 1
    (call,) = seam.calls()
    assert call["argv"] == ["POST", "/v1/fleet/claim"]
    sent = json.loads(call["stdin"])
    assert sent["factoryId"] == "f1" and sent["capabilities"] == ["linux"] and sent["dryRun"] is False
    assert sent["requestId"]


def test_request_shape_get_has_query_and_empty_stdin(seam: Seam) -> None:
    seam.script({"status": 200, "body": {"jobs": []}})
    assert seam.client().list_jobs("leased") == []
    (call,) = seam.calls()
    assert call["argv"] == ["GET", "/v1/fleet/jobs?state=leased"]
    assert call["stdin"] == ""


def test_status_mapping_through_the_seam(seam: Seam) -> None:
    def error(status: int, code: str) -> dict[str, Any]:
        return {"status": status, "body": {"error": {"code": code, "message": f"{code} here"}}}

    seam.script({"status": 204, "body": None}, error(409, "fenced"), error(409, "not_leased"),
                error(404, "not_found"), error(422, "invalid_job"),
                {"status": 200, "body": {"job": {"id": "j1", "state": "queued"}}})
    client = seam.client()
    assert client.claim() is None
    with pytest.raises(Fenced, match="fenced here") as fenced:
        client.renew(LEASE)
    assert type(fenced.value) is Fenced
    with pytest.raises(NotLeased):
        client.report(LEASE, "shipped", {})
    with pytest.raises(NotFound):
        client.get_job("j1")
    with pytest.raises(InvalidJob):
        client.enqueue({"id": "j1", "command": ["true"]})
    assert client.release(LEASE, "bye")["state"] == "queued"
    assert len(seam.calls()) == 6  # one call each: 4xx are never retried


@pytest.mark.parametrize(
    "failure",
    [
        {"exit": 3, "stderr": "coordinator state locked"},
        {"raw": "this is not json"},
        {"raw": '{"status": 200, "body": {}} {"second": "object"}'},
        {"raw": '["status", 200]'},
        {"raw": '{"status": "200", "body": {}}'},
        {"raw": '{"status": 200, "body": [1, 2]}'},
        {"status": 503, "body": {"error": {"code": "unavailable", "message": "busy"}}},
    ],
)
def test_failures_are_retried_then_succeed(seam: Seam, failure: dict[str, Any]) -> None:
    seam.script(failure, {"status": 200, "body": {"counts": {"queued": 1}}})
    assert seam.client().status() == {"counts": {"queued": 1}}
    assert len(seam.calls()) == 2


def test_non_zero_exit_is_transport_error_with_stderr(seam: Seam) -> None:
    seam.script({"exit": 7, "stderr": "lock timeout on state dir"})
    with pytest.raises(TransportError, match="exited 7: lock timeout on state dir"):
        seam.transport().request("GET", "/v1/fleet/status")


def test_timeout_kills_the_whole_process_group(seam: Seam) -> None:
    seam.script({"sleep": 60, "grandchild": True})
    with pytest.raises(TransportError, match="no answer within"):
        seam.transport(timeout_s=2.0).request("GET", "/v1/fleet/status")
    grandchild = next(c["grandchild"] for c in seam.calls() if "grandchild" in c)
    assert wait_until_gone(grandchild), "the seam's child outlived the timeout"


def wait_until_gone(pid: int, deadline_s: float = 10.0) -> bool:
    """Dead or a zombie (its reaper is init, not us): either way no longer running."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
        if not out or out.startswith("Z"):
            return True
        time.sleep(0.05)
    return False


def test_claim_retries_reuse_the_request_id(seam: Seam) -> None:
    seam.script({"exit": 1}, {"raw": "garbage"}, claim_answer(), claim_answer(epoch=2))
    client = seam.client()
    first = client.claim()
    second = client.claim()
    assert first is not None and second is not None
    ids = [json.loads(c["stdin"])["requestId"] for c in seam.calls()]
    assert ids[0] == ids[1] == ids[2]
    assert ids[3] != ids[0]


def test_token_never_reaches_the_child(seam: Seam, monkeypatch: pytest.MonkeyPatch) -> None:
    seam.script({"status": 200, "body": {"ok": True}}, {"status": 200, "body": {"ok": True}})
    assert seam.client().healthz()
    # Default env: this process's environment at construction, minus the token.
    for key, value in seam.env.items():
        monkeypatch.setenv(key, value)
    assert FleetClient(CommandTransport([sys.executable, str(FAKE_SEAM)], 10.0), "f1", []).healthz()
    calls = seam.calls()
    assert len(calls) == 2
    for call in calls:
        assert "AQ_FLEET_TOKEN" not in call["env"]
        assert call["env"]["FAKE_SCRIPT"] == str(seam.script_path)  # the rest of the env is passed on
    assert SECRET not in seam.log_path.read_text(encoding="utf-8")


def test_missing_program_is_transport_error(tmp_path: Path) -> None:
    transport = CommandTransport([str(tmp_path / "no-such-seam")], 5.0, env={})
    with pytest.raises(TransportError, match="cannot start"):
        transport.request("GET", "/v1/fleet/healthz")


def test_make_transport_seam_precedence_and_config_errors(tmp_path: Path) -> None:
    cmd = f"{sys.executable} '{FAKE_SEAM}' --state '{tmp_path / 'a dir'}' call"
    transport = make_transport(cmd, "https://coord.example", SECRET, 5.0)
    assert isinstance(transport, CommandTransport)
    assert transport.argv_prefix == [sys.executable, str(FAKE_SEAM), "--state", str(tmp_path / "a dir"), "call"]
    assert SECRET not in repr(transport)
    with pytest.raises(ConfigError, match="not found"):
        make_transport("no-such-program-xyz call", None, None, 5.0)
    with pytest.raises(ConfigError, match="split"):
        make_transport("seam 'unbalanced", None, None, 5.0)
    with pytest.raises(ConfigError, match="fleet mode needs AQ_FLEET_API_CMD or AQ_FLEET_API"):
        make_transport("  ", "", None, 5.0)


def test_seam_users_never_import_requests(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from agent_queue.fleet.transport import make_transport\n"
        "import agent_queue.fleet.client, agent_queue.fleet.heartbeat\n"
        f"make_transport({sys.executable!r}, None, None, 5.0)\n"
        "print('requests' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "False"

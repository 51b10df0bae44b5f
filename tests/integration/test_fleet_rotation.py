"""Rotation without a restart (issue #19): a real daemon reading AQ_FLEET_TOKEN_FILE, a real `serve`.

``factory rotate``, the new token written into the daemon's token file, then
``token revoke`` of the old token's id: the daemon's next request gets 401 with
the old token, it re-reads the file and retries once with the new one, and the
next job ships. The token appears in none of the daemon's output.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.cli_support import wait_for
from tests.integration.fleet_support import Daemons, daemons, fleet_env
from tests.integration.test_fleet_enrolment import job_state
from tests.integration.test_serve_enrolment import stub_cli
from tests.stubutil import running_stub


@pytest.fixture()
def ds() -> Iterator[Daemons]:
    with daemons() as d:
        yield d


def write_token(path: Path, token: str) -> None:
    """Atomically, as an operator's ``install`` or a secret manager would: never a half-written token."""
    part = path.with_suffix(".part")
    part.write_text(token + "\n")
    part.chmod(0o600)
    os.replace(part, path)


def test_rotation_through_the_token_file_keeps_a_running_daemon_shipping(tmp_path: Path, ds: Daemons) -> None:
    state, token_file = tmp_path / "coord", tmp_path / "fleet-token"
    old = stub_cli(state, "factory", "add", "f1")
    admin = stub_cli(state, "token", "add", "--scope", "admin", "--name", "root")
    write_token(token_file, old)
    with running_stub(state, token=None, lease_ttl_s=5) as stub:
        auth = {"Authorization": f"Bearer {admin}"}
        daemon = ds.start(tmp_path / "r1", fleet_env(api=stub.url, AQ_FLEET_TOKEN_FILE=str(token_file)), factory="f1")

        def ship(job_id: str) -> None:
            resp = requests.post(stub.url + "/v1/fleet/jobs", json={"id": job_id, "command": ["true"]},
                                 headers=auth, timeout=30)
            assert resp.status_code == 201, resp.text
            wait_for(lambda: job_state(stub.url, admin, job_id)["state"] == "shipped", f"{job_id} shipped")

        ship("before")
        new = stub_cli(state, "factory", "rotate", "f1")
        write_token(token_file, new)
        stub_cli(state, "token", "revoke", old.split("_")[1])
        ship("after")
        events = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
        refused = [e for e in events if e["op"] == "refused"]
        assert refused and {e["tokenId"] for e in refused} == {old.split("_")[1]}  # the old token met a 401
        assert all(e["status"] == 401 for e in refused)
        os.killpg(daemon.pid, signal.SIGTERM)
        out, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert "re-read from" in err and str(token_file) in err
    for token in (old, new, old.split("_", 2)[2], new.split("_", 2)[2]):  # the secret may hold "_" itself
        assert token not in out + err

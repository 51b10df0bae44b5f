"""Real daemons with enrolled factory tokens against a real `serve` (issue #19): revocation and rotation."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.cli_support import aq, wait_for
from tests.integration.fleet_support import Daemons, daemons, fleet_env
from tests.integration.test_serve_enrolment import stub_cli
from tests.stubutil import running_stub


@pytest.fixture()
def ds() -> Iterator[Daemons]:
    with daemons() as d:
        yield d


def job_state(url: str, token: str, job_id: str) -> dict[str, Any]:
    resp = requests.get(f"{url}/v1/fleet/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    meta: dict[str, Any] = resp.json()["meta"]
    return meta


def test_a_revoked_factory_is_fenced_and_its_job_ships_once_elsewhere(tmp_path: Path, ds: Daemons) -> None:
    state, marker, started = tmp_path / "coord", tmp_path / "shipped.txt", tmp_path / "started"
    f1 = stub_cli(state, "factory", "add", "f1")
    f2 = stub_cli(state, "factory", "add", "f2")
    admin = stub_cli(state, "token", "add", "--scope", "admin", "--name", "root")
    first_run_hangs = f"if [ -e {shlex.quote(str(started))} ]; then true; else touch {shlex.quote(str(started))}; " \
                      "sleep 60; fi"
    spec = {"id": "j", "command": ["sh", "-c", first_run_hangs],
            "ship": ["sh", "-c", f"echo j >> {shlex.quote(str(marker))}"]}
    with running_stub(state, token=None, lease_ttl_s=3) as stub:
        resp = requests.post(stub.url + "/v1/fleet/jobs", json=spec, headers={"Authorization": f"Bearer {admin}"},
                             timeout=30)
        assert resp.status_code == 201, resp.text
        ds.start(tmp_path / "r1", fleet_env(api=stub.url, token=f1), factory="f1")
        wait_for(started.exists, "f1 to start the job")
        epoch = job_state(stub.url, admin, "j")["leaseEpoch"]
        assert "fenced j" in stub_cli(state, "factory", "revoke", "f1")
        assert job_state(stub.url, admin, "j")["state"] == "queued"
        d2 = aq(tmp_path / "r2", "--factory-id", "f2", "run", "--drain", "--poll", "0.1",
                env=fleet_env(api=stub.url, token=f2), timeout=120)
        assert d2.returncode == 0, d2.stderr
        meta = job_state(stub.url, admin, "j")
        assert meta["state"] == "shipped" and meta["leaseEpoch"] > epoch and meta["attempts"] <= 1
        f1_id = f1.split("_")[1]
        wait_for(lambda: (401, f1_id) in _refusals(state),
                 "f1's daemon to meet its 401 (an event under its token id)")
    assert f1 not in (state / "events.jsonl").read_text()
    assert marker.read_text().splitlines() == ["j"]  # shipped exactly once, by f2
    assert not (tmp_path / "r1" / "shipped" / "j").exists()


def _refusals(state: Path) -> list[tuple[int, str]]:
    """(status, tokenId) of each refusal in the coordinator's event log so far."""
    events = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
    return [(ev["status"], ev["tokenId"]) for ev in events if ev.get("op") == "refused"]


def test_rotation_keeps_a_running_daemon_working(tmp_path: Path, ds: Daemons) -> None:
    state = tmp_path / "coord"
    old = stub_cli(state, "factory", "add", "f1")
    admin = stub_cli(state, "token", "add", "--scope", "admin", "--name", "root")
    with running_stub(state, token=None, lease_ttl_s=5) as stub:
        auth = {"Authorization": f"Bearer {admin}"}
        ds.start(tmp_path / "r1", fleet_env(api=stub.url, token=old), factory="f1")
        for job_id in ("a", "b"):
            resp = requests.post(stub.url + "/v1/fleet/jobs", json={"id": job_id, "command": ["true"]},
                                 headers=auth, timeout=30)
            assert resp.status_code == 201, resp.text
            wait_for(lambda j=job_id: job_state(stub.url, admin, j)["state"] == "shipped", f"{job_id} shipped")
            if job_id == "a":
                new = stub_cli(state, "factory", "rotate", "f1")
        listed = stub_cli(state, "factory", "list")
        assert old.split("_")[1] in listed and new.split("_")[1] in listed

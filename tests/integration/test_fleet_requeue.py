"""Issue 17.1: a fleet job's local leftovers never strand it (real daemons, real coordinator-stub seam).

A plain ``requeue`` of a job that came from the coordinator is refused (it would move the local copy
into inbox/, which route mode never reads); ``requeue --fleet`` re-runs it. A claim whose id collides
with a local leftover sets the leftover aside under rerun/ once and runs the claim: one claim, one
epoch, never a claim-release loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli_support import aq
from fleet_support import coord_enqueue, coord_job, fleet_env, local_records, result_of

from tests.stubutil import seam_command


def claims_of(state: Path, job_id: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["op"] == "claim" and e.get("jobId") == job_id and not e.get("dryRun")]


def test_plain_requeue_of_a_fleet_job_is_refused_and_requeue_fleet_runs_it(tmp_path: Path) -> None:
    state, root, marker = tmp_path / "coord", tmp_path / "r", tmp_path / "may-pass"
    env = fleet_env(api_cmd=seam_command(state, lease_ttl_s=5))
    coord_enqueue(state, {"id": "r1", "command": ["test", "-f", str(marker)], "budget": {"maxAttempts": 1}})
    first = aq(root, "--factory-id", "f1", "run", "--drain", env=env)
    assert first.returncode == 0, first.stderr
    assert coord_job(state, "r1")["meta"]["state"] == "quarantined"
    assert local_records(root, "quarantine") == ["r1"]

    plain = aq(root, "requeue", "r1", env=env)
    assert plain.returncode == 2, plain.stdout + plain.stderr
    assert "--fleet" in plain.stderr and len(plain.stderr.strip().splitlines()) == 1
    assert local_records(root, "quarantine") == ["r1"] and local_records(root, "inbox") == []  # nothing moved

    marker.touch()
    fleet = aq(root, "requeue", "r1", "--fleet", env=env)
    assert fleet.returncode == 0, fleet.stderr
    again = aq(root, "--factory-id", "f1", "run", "--drain", env=env)
    assert again.returncode == 0, again.stderr
    assert coord_job(state, "r1")["meta"]["state"] == "shipped"
    assert local_records(root, "shipped") == ["r1"]
    assert local_records(root, "rerun") == ["r1.1"]  # the earlier quarantined run is kept
    log = aq(root, "logs", "r1", env=env).stdout
    assert "attempt 1 of 1 (round 1, epoch 1)" in log and "attempt 1 of 1 (round 2, epoch 2)" in log
    assert "exited with status 1" in (result_of(root / "rerun" / "r1.1")["reason"] or "")


def test_a_claim_colliding_with_a_local_inbox_copy_is_settled_once(tmp_path: Path) -> None:
    state, root = tmp_path / "coord", tmp_path / "r"
    env = fleet_env(api_cmd=seam_command(state, lease_ttl_s=5))
    coord_enqueue(state, {"id": "c1", "command": ["sh", "-c", "echo from-the-coordinator"]})
    local = aq(root, "enqueue", "--id", "c1", "--", "sh", "-c", "echo local-copy", env=env)
    assert local.returncode == 0, local.stderr
    assert local_records(root, "inbox") == ["c1"]  # route mode never reads it

    run = aq(root, "--factory-id", "f1", "run", "--drain", env=env)
    assert run.returncode == 0, run.stderr
    assert "cannot hold the job locally" not in run.stderr
    assert "local leftover set aside" in run.stderr
    got = coord_job(state, "c1")["meta"]
    assert got["state"] == "shipped" and got["leaseEpoch"] == 1  # one claim, one epoch: no loop
    assert [c["status"] for c in claims_of(state, "c1")] == [200]
    assert local_records(root, "shipped") == ["c1"] and local_records(root, "inbox") == []
    kept = root / "rerun" / "c1.1"
    assert json.loads((kept / "job.json").read_text())["command"] == ["sh", "-c", "echo local-copy"]

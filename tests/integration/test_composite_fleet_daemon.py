"""Composite jobs in fleet mode end to end: `enqueue --fleet`, a real `run --fleet` daemon, re-run, requeue --fleet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli_support import aq
from fleet_support import coord_job, fleet_env

from tests.stubutil import seam_command


def sh(log: Path, name: str, gate: Path | None = None) -> list[str]:
    """A command that records one execution of ``name`` and then succeeds only when ``gate`` exists."""
    script = f"echo {name} >> {log}" + (f"; test -f {gate}" if gate is not None else "")
    return ["sh", "-c", script]


def runs(log: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in log.read_text().split() if log.exists() else []:
        out[name] = out.get(name, 0) + 1
    return out


def events(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]


def test_fleet_composite_runs_in_order_verifies_once_reruns_only_what_failed(tmp_path: Path) -> None:
    state, root, log = tmp_path / "stub", tmp_path / "root", tmp_path / "runs.log"
    ok, verify_ok = tmp_path / "b-ok", tmp_path / "verify-ok"
    env = fleet_env(api_cmd=seam_command(state))

    cycle = {"id": "bad", "kind": "composite", "children": [
        {"id": "x", "command": ["true"], "dependsOn": ["y"]}, {"id": "y", "command": ["true"], "dependsOn": ["x"]}]}
    out = aq(root, "enqueue", "--fleet", "-", stdin=json.dumps(cycle), env=env)
    assert out.returncode == 2 and "dependency cycle x -> y -> x" in out.stderr
    assert not (state / "state.json").exists()  # refused before anything was sent

    epic = {"id": "epic", "kind": "composite", "verify": sh(log, "verify", verify_ok), "budget": {"maxAttempts": 1},
            "children": [{"id": "a", "command": sh(log, "a")},
                         {"id": "b", "command": sh(log, "b", ok), "dependsOn": ["a"], "budget": {"maxAttempts": 1}},
                         {"id": "c", "command": sh(log, "c"), "dependsOn": ["a"]}]}
    assert aq(root, "enqueue", "--fleet", "-", stdin=json.dumps(epic), env=env).stdout.strip() == "epic"

    # 1: b fails, so the parent is quarantined and its verify never runs.
    assert aq(root, "run", "--drain", "--poll", "0.1", env=env, timeout=60).returncode == 0
    assert runs(log) == {"a": 1, "b": 1, "c": 1}
    assert coord_job(state, "epic")["rollup"]["state"] == "quarantined"
    text = aq(root, "fleet-status", env=env).stdout
    assert "composite: epic quarantined (shipped 2, quarantined 1, verify pending): child b quarantined" in text

    # 2: the same composite again re-runs only b; then the verify runs once and fails.
    ok.touch()
    assert aq(root, "enqueue", "--fleet", "-", stdin=json.dumps(epic), env=env).returncode == 0
    assert aq(root, "run", "--drain", "--poll", "0.1", env=env, timeout=60).returncode == 0
    assert runs(log) == {"a": 1, "b": 2, "c": 1, "verify": 1}
    roll = coord_job(state, "epic")["rollup"]
    assert roll["state"] == "quarantined" and roll["verify"] == "failed"
    assert (root / "rerun" / "b.1").is_dir()  # this factory's record of b's first run is kept

    # 3: `requeue epic --fleet` re-runs only the failed verify, which now passes.
    verify_ok.touch()
    out = aq(root, "requeue", "epic", "--fleet", env=env)
    assert out.returncode == 0 and out.stdout.strip() == "epic: requeued epic"
    assert aq(root, "run", "--drain", "--poll", "0.1", env=env, timeout=60).returncode == 0
    assert runs(log) == {"a": 1, "b": 2, "c": 1, "verify": 2}
    report = json.loads(aq(root, "fleet-status", "--json", env=env).stdout)
    (comp,) = report["composites"]
    assert comp["id"] == "epic" and comp["state"] == "shipped" and comp["verify"] == "passed"

    # Order, from the coordinator's own event log: nothing was claimed before what it waits for shipped.
    evs = events(state)
    claims = [(e["jobId"], e["ts"]) for e in evs if e["op"] == "claim" and e.get("status") == 200]
    shipped = {e["jobId"]: e["ts"] for e in evs if e["op"] == "report" and e.get("outcome") == "shipped"}
    for job_id, at in claims:
        waits = {"b": ["a"], "c": ["a"], "epic": ["a", "b", "c"]}.get(job_id, [])
        assert all(dep in shipped and shipped[dep] <= at for dep in waits), (job_id, at, shipped)
    assert [j for j, _ in claims].count("a") == 1 and [j for j, _ in claims].count("epic") == 2

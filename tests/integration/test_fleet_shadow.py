"""Fleet flags and shadow mode through real daemons, a real coordinator-stub and a recording seam.

The recording seam (tests/fakes/recording_seam.py) logs every request a
daemon makes, so these tests can prove what reached the coordinator:
nothing at all with AQ_FLEET=0, only dry-run claims with ROUTE=0.
"""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import aq
from fleet_support import coord_enqueue, coord_job, fleet_env, recorded, recording_command

SHADOW = {"AQ_FLEET_ROUTE": "0", "AQ_FLEET_SHADOW": "1"}


def claims(log: Path) -> list[dict[str, object]]:
    return [c["body"] for c in recorded(log) if c["path"] == "/v1/fleet/claim"]


def test_shadow_verdicts_through_a_real_daemon(tmp_path: Path) -> None:
    root, s1, s2, log = tmp_path / "r", tmp_path / "c1", tmp_path / "c2", tmp_path / "calls.jsonl"
    for jid, prio in (("a", "2"), ("b", "1")):
        assert aq(root, "enqueue", "--id", jid, "--priority", prio, "--", "true").returncode == 0
    coord_enqueue(s1, {"id": "a", "command": ["true"]})
    env = fleet_env(api_cmd=recording_command(s1, log), **SHADOW)
    run = aq(root, "--factory-id", "f1", "run", "--drain", env=env)  # a: AGREE, b: DIVERGE, then LOCAL_EMPTY
    assert run.returncode == 0, run.stderr
    assert "fleetFlags=fleet=1 route=0 shadow=1" in run.stderr
    assert aq(root, "status", "--json").returncode == 0
    # The coordinator saw only dry-run claims as <factory>-shadow: its job is untouched.
    bodies = claims(log)
    assert bodies and all(b["dryRun"] is True and b["factoryId"] == "f1-shadow" for b in bodies)
    meta = coord_job(s1, "a")["meta"]
    assert (meta["state"], meta["attempts"], meta["leaseEpoch"]) == ("queued", 0, 0)
    assert any(c["path"] == "/v1/fleet/shadow-reports" for c in recorded(log))

    # A second coordinator whose only job needs a capability we lack: COORD_EMPTY, and IDLE logged on request.
    assert aq(root, "enqueue", "--id", "d", "--", "true").returncode == 0
    coord_enqueue(s2, {"id": "g", "command": ["true"], "requires": ["gpu"]})
    env2 = fleet_env(api_cmd=recording_command(s2, tmp_path / "calls2.jsonl"), **SHADOW)
    run = aq(root, "--factory-id", "f1", "run", "--drain", "--shadow-log-idle", env=env2)
    assert run.returncode == 0, run.stderr

    report = aq(root, "fleet-shadow-report", "--json")
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert summary["counts"] == {"AGREE": 1, "DIVERGE": 1, "COORD_EMPTY": 1, "LOCAL_EMPTY": 1}
    assert summary["idle"] >= 1
    text = aq(root, "fleet-shadow-report", "--since", "1h")
    assert text.returncode == 0 and "DIVERGE" in text.stdout and "local=b coord=a" in text.stdout
    assert sorted(p.name for p in (root / "shipped").iterdir()) == ["a", "b", "d"]

    status = json.loads(aq(root, "status", "--json", env=env).stdout)["settings"]
    assert (status["fleet"], status["fleetRoute"], status["fleetShadow"], status["fleetMode"]) == (
        True, False, True, "shadow")
    fleet_status = aq(root, "fleet-status", "--json", env=env)
    assert fleet_status.returncode == 0, fleet_status.stderr
    assert json.loads(fleet_status.stdout)["flags"]["shadow"] is True


def test_dry_run_ignoring_coordinator_gets_its_lease_released(tmp_path: Path) -> None:
    root, state, log = tmp_path / "r", tmp_path / "c", tmp_path / "calls.jsonl"
    assert aq(root, "enqueue", "--id", "x", "--", "true").returncode == 0
    coord_enqueue(state, {"id": "x", "command": ["true"]})
    env = fleet_env(api_cmd=recording_command(state, log, ignore_dry_run=True), **SHADOW)
    run = aq(root, "--factory-id", "f1", "run", "--drain", env=env)
    assert run.returncode == 0, run.stderr
    releases = [c for c in recorded(log) if c["path"] == "/v1/fleet/jobs/x/release"]
    assert releases and releases[0]["body"]["countAttempt"] is False
    view = coord_job(state, "x")
    assert view["lease"] is None and (view["meta"]["state"], view["meta"]["attempts"]) == ("queued", 0)
    assert (root / "shipped" / "x").is_dir()  # the local decision stood


def test_route_off_without_shadow_and_fleet_off_make_no_real_claims(tmp_path: Path) -> None:
    root, state = tmp_path / "r", tmp_path / "c"
    coord_enqueue(state, {"id": "remote", "command": ["true"]})
    # ROUTE=0, SHADOW=0: the local inbox only, not one coordinator call.
    log_local = tmp_path / "local.jsonl"
    assert aq(root, "enqueue", "--id", "l1", "--", "true").returncode == 0
    env = fleet_env(api_cmd=recording_command(state, log_local), AQ_FLEET_ROUTE="0")
    run = aq(root, "run", "--drain", env=env)
    assert run.returncode == 0, run.stderr
    assert recorded(log_local) == [] and (root / "shipped" / "l1").is_dir()
    # AQ_FLEET=0 with everything else set: zero calls of any kind, and the shadow warning once.
    log_off = tmp_path / "off.jsonl"
    for jid in ("o1", "o2", "o3"):
        assert aq(root, "enqueue", "--id", jid, "--", "true").returncode == 0
    env = fleet_env(api_cmd=recording_command(state, log_off), AQ_FLEET="0", AQ_FLEET_SHADOW="1")
    run = aq(root, "run", "--drain", env=env)
    assert run.returncode == 0, run.stderr
    assert recorded(log_off) == []
    assert run.stderr.count("shadow mode is off") == 1
    assert coord_job(state, "remote")["meta"]["state"] == "queued"


def test_route_and_shadow_both_on_warns_exactly_once(tmp_path: Path) -> None:
    root, state, log = tmp_path / "r", tmp_path / "c", tmp_path / "calls.jsonl"
    for jid in ("r1", "r2", "r3", "r4"):
        coord_enqueue(state, {"id": jid, "command": ["true"]})
    env = fleet_env(api_cmd=recording_command(state, log), AQ_FLEET_SHADOW="1")
    run = aq(root, "--factory-id", "f1", "run", "--drain", env=env)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("route wins") == 1
    assert sorted(p.name for p in (root / "shipped").iterdir()) == ["r1", "r2", "r3", "r4"]
    assert all(b["dryRun"] is False for b in claims(log))  # route wins: no shadow queries
    status = aq(root, "fleet-status", env=env)
    assert status.returncode == 0 and "fleet=1 route=1 shadow=0" in status.stdout
    assert "route wins" in status.stdout

"""Issue 17 in fleet mode, through the real CLI with real daemons and a real coordinator-stub (seam and HTTP):
cancel --fleet fences the holder (renew 409 not_leased, tool stopped, nothing shipped), a composite's
children, jobs/show --fleet with the lease history, fleet-status liveness and stranded jobs, doctor's
authenticated read, a coordinator's 413 as bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import aq, start, wait_for
from fleet_support import (
    Daemons,
    coord_enqueue,
    coord_job,
    daemons,
    fleet_env,
    local_records,
    result_of,
)

from tests.procutil import alive
from tests.stubutil import running_stub, seam_command


@pytest.fixture()
def ds() -> Iterator[Daemons]:
    with daemons() as d:
        yield d


def events(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]


def test_cancel_fleet_fences_the_running_holder_and_nothing_ships(tmp_path: Path, ds: Daemons) -> None:
    state, root, marker, pidfile = tmp_path / "coord", tmp_path / "r", tmp_path / "shipped", tmp_path / "pid"
    env = fleet_env(api_cmd=seam_command(state, lease_ttl_s=1.5))
    coord_enqueue(state, {"id": "j1", "command": ["sh", "-c", f"echo started; echo $$ > {pidfile}; exec sleep 60"],
                          "ship": ["touch", str(marker)]})
    daemon = ds.start(root, env)
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the tool to start")
    tool = int(pidfile.read_text())
    follower = start(root, "logs", "j1", "--follow", env=env)
    try:
        out = aq(root, "cancel", "j1", "--fleet", env=env)
        assert out.returncode == 0 and out.stdout.strip() == "j1: cancelled j1", out.stderr
        wait_for(lambda: local_records(root, "fenced") == ["j1.1"], "the holder's copy fenced", 30)
        assert not alive(tool)  # its heartbeat's renew got 409 and stopped the tool group
        logged, _ = follower.communicate(timeout=20)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 1 and "started" in logged
    assert re.search(r"outcome: fenced: .*cancelled", logged.strip().splitlines()[-1]), logged
    assert not marker.exists()  # nothing shipped
    got = coord_job(state, "j1")["meta"]
    assert got["state"] == "cancelled" and got["leases"][-1]["end"] == "cancel"
    refused = [e for e in events(state) if e["op"] in ("renew", "report", "release") and e.get("jobId") == "j1"
               and e["status"] == 409]
    assert refused and {e["code"] for e in refused} == {"not_leased"}
    assert "cancelled" in (result_of(root / "fenced" / "j1.1")["reason"] or "")
    assert aq(root, "logs", "j1", env=env).stdout.startswith("=== ")  # a fenced job's log is found
    assert daemon.poll() is None  # the daemon lives on
    again = aq(root, "cancel", "j1", "--fleet", env=env)
    assert again.returncode == 0 and "already cancelled" in again.stdout


def test_jobs_show_and_a_composite_cancel_over_http(tmp_path: Path, ds: Daemons) -> None:
    state, root = tmp_path / "coord", tmp_path / "r"
    with running_stub(state, token="t0k-very-secret", lease_ttl_s=5) as stub:
        env = fleet_env(api=stub.url, token="t0k-very-secret")
        for i in range(3):
            assert aq(root, "enqueue", "--fleet", "--id", f"leaf{i}", "--", "true", env=env).returncode == 0
        epic = {"id": "epic", "kind": "composite", "children": [
            {"id": "a", "command": ["true"], "env": {"SECRET": "s3"}},
            {"id": "b", "command": ["true"], "dependsOn": ["a"], "requires": ["never"]}]}
        assert aq(root, "enqueue", "--fleet", "-", stdin=json.dumps(epic), env=env).returncode == 0
        run = aq(root, "--factory-id", "f1", "run", "--drain", env=env)
        assert run.returncode == 0, run.stderr

        listing = aq(root, "jobs", "--fleet", "--limit", "3", env=env)
        assert listing.returncode == 0, listing.stderr
        rows = [line.split() for line in listing.stdout.splitlines()]
        assert rows[0] == ["id", "state", "tool", "attempts", "age", "factory", "reason"]
        assert [r[0] for r in rows[1:]] == ["b", "a", "epic"]  # newest first
        assert rows[2][:2] == ["a", "shipped"] and rows[2][5] == "f1"
        assert "of 6 jobs" in listing.stderr

        shown = json.loads(aq(root, "show", "a", "--fleet", "--json", env=env).stdout)
        assert shown["state"] == "shipped" and shown["spec"]["env"] == {"SECRET": "<redacted>"}
        (lease,) = shown["leases"]
        assert (lease["leaseEpoch"], lease["factoryId"], lease["end"]) == (1, "f1", "report shipped")
        assert [h["outcome"] for h in shown["history"]] == ["shipped"]  # this host's own record of it
        text = aq(root, "show", "a", "--fleet", env=env).stdout
        assert "lease history:" in text and "t0k-very-secret" not in text and "s3" not in text

        out = aq(root, "cancel", "epic", "--fleet", env=env)
        assert out.returncode == 0 and out.stdout.strip() == "epic: cancelled b", out.stderr
        assert coord_job(state, "epic")["rollup"]["state"] == "cancelled"
        cancelled = json.loads(aq(root, "jobs", "--fleet", "--state", "cancelled", "--json", env=env).stdout)
        assert [j["id"] for j in cancelled["jobs"]] == ["b"]
        done = aq(root, "cancel", "leaf0", "--fleet", env=env)
        assert done.returncode == 2 and "shipped" in done.stderr


def test_fleet_status_marks_factories_and_flags_stranded_jobs(tmp_path: Path, ds: Daemons) -> None:
    state, root = tmp_path / "coord", tmp_path / "r"
    env = fleet_env(api_cmd=seam_command(state, lease_ttl_s=5))
    coord_enqueue(state, {"id": "busy", "command": ["sleep", "60"]})
    coord_enqueue(state, {"id": "gpu-only", "command": ["true"], "requires": ["gpu"]})
    ds.start(root, env, factory="worker-1")
    wait_for(lambda: coord_job(state, "busy")["lease"], "worker-1 to take the job")
    out = aq(root, "--factory-id", "operator-laptop", "fleet-status", env=env)
    assert out.returncode == 0, out.stderr
    assert "operator-laptop" not in out.stdout  # the header does not pretend the operator is a factory
    assert re.search(r"factory: worker-1 live busy \(last seen \d+s ago\): holds busy \(epoch 1, \d+s left\)",
                     out.stdout), out.stdout
    assert "stranded: gpu-only: requires gpu: no live factory has it" in out.stdout
    report = json.loads(aq(root, "fleet-status", "--json", env=env).stdout)
    (worker,) = report["factories"]
    assert worker["liveness"] == "live" and [h["jobId"] for h in worker["holds"]] == ["busy"]


def test_status_mode_is_the_running_daemons_own(tmp_path: Path, ds: Daemons) -> None:
    state, root = tmp_path / "coord", tmp_path / "r"
    daemon = ds.start(root, fleet_env(api_cmd=seam_command(state), AQ_LOG_FORMAT="json"))
    assert daemon.stderr is not None
    started: dict[str, Any] = {}
    while started.get("msg") != "daemon started":
        line = daemon.stderr.readline()
        assert line, "the daemon ended before its start line"
        started = json.loads(line) if line.startswith("{") else {}
    shown = aq(root, "status").stdout  # this shell has no fleet settings: the daemon's mode is shown anyway
    assert f"mode: {started['fleetMode']} ({started['fleetFlags']})" in shown
    assert started["fleetMode"] == "route"


def test_doctor_fails_a_wrong_token(tmp_path: Path) -> None:
    root = tmp_path / "r"
    with running_stub(tmp_path / "coord", token="right-token") as stub:
        wrong = aq(root, "doctor", env=fleet_env(api=stub.url, token="wrong-token"))
        assert wrong.returncode == 1
        line = next(ln for ln in wrong.stdout.splitlines() if " coordinator " in f" {ln} ")
        assert line.startswith("FAIL") and "unauthorized" in line
        assert "wrong-token" not in wrong.stdout + wrong.stderr
        right = aq(root, "doctor", env=fleet_env(api=stub.url, token="right-token"))
        line = next(ln for ln in right.stdout.splitlines() if " coordinator " in f" {ln} ")
        assert line.startswith("ok") and "authenticated read ok" in line


def test_a_job_too_large_for_the_coordinator_is_bad_input(tmp_path: Path) -> None:
    root, spec = tmp_path / "r", tmp_path / "big.json"
    spec.write_text(json.dumps({"id": "big", "tool": "claude", "prompt": "p" * (2 * 1024 * 1024)}))
    with running_stub(tmp_path / "coord", token="tok") as stub:
        over_http = aq(root, "enqueue", "--fleet", str(spec), env=fleet_env(api=stub.url, token="tok"))
    over_seam = aq(root, "enqueue", "--fleet", str(spec), env=fleet_env(api_cmd=seam_command(tmp_path / "c2")))
    for out in (over_http, over_seam):
        assert out.returncode == 2, out.stderr
        assert "too large (HTTP 413)" in out.stderr and out.stderr.count("\n") == 1


def test_the_clients_retries_back_off(tmp_path: Path) -> None:
    """No timed assertion: the delays the client asked for (logged with -v) grow by attempt, with jitter."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: every connection is refused
    out = aq(tmp_path / "r", "-v", "fleet-status", env=fleet_env(api=f"http://127.0.0.1:{port}"), timeout=60)
    assert out.returncode == 1
    waits = [(int(n), float(s)) for n, s in re.findall(r"attempt (\d+) failed .*?; retrying in ([\d.]+)s", out.stderr)]
    assert [n for n, _ in waits] == [1, 2, 3, 4, 5], out.stderr
    for n, wait in waits:
        cap = min(5.0, 0.25 * 2 ** (n - 1))
        assert cap * 0.5 - 0.01 <= wait <= cap + 0.01, (n, wait)  # attempt n waits 0.5-1 x its capped delay
    assert waits[-1][1] > waits[0][1] * 4
    assert "failed after 6 attempt(s)" in out.stderr

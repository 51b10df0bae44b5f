"""Fleet route mode with real daemons and a real coordinator-stub (command seam and HTTP).

Each test drives `agent-queue run` as a subprocess: the coordinator decides
every ending, a lost lease kills the tool and ships nothing, and the daemon
survives a coordinator outage, a crash and a SIGTERM without losing or
double-shipping a job.
"""

from __future__ import annotations

import json
import shlex
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import aq, wait_for
from fleet_support import (
    Daemons,
    coord,
    coord_enqueue,
    coord_job,
    daemons,
    fleet_env,
    local_records,
    recorded,
    recording_command,
    result_of,
    steal_script,
)

from tests.procutil import alive
from tests.stubutil import running_stub, seam_command


@pytest.fixture()
def ds() -> Iterator[Daemons]:
    with daemons() as d:
        yield d


def job(job_id: str, command: str, marker: Path, **extra: Any) -> dict[str, Any]:
    """A shell job whose ship hook appends one line to ``marker`` (so double ships are visible)."""
    return {"id": job_id, "command": ["sh", "-c", command],
            "ship": ["sh", "-c", f"echo {job_id} >> {shlex.quote(str(marker))}"], **extra}


def shipped_lines(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def meta(state: Path, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = coord_job(state, job_id)["meta"]
    return data


def test_job_ships_through_the_seam(tmp_path: Path) -> None:
    state, root, marker = tmp_path / "coord", tmp_path / "r", tmp_path / "shipped.txt"
    env = fleet_env(api_cmd=seam_command(state, lease_ttl_s=5))
    coord_enqueue(state, job("j1", "echo hi > out.txt", marker, verify=["test", "-s", "out.txt"]))
    run = aq(root, "--factory-id", "f1", "run", "--drain", env=env)
    assert run.returncode == 0, run.stderr
    assert "coordinator accepted report(shipped)" in run.stderr
    assert meta(state, "j1")["state"] == "shipped"
    assert shipped_lines(marker) == ["j1"]
    local = root / "shipped" / "j1"
    assert (local / "lease.json").is_file() and (local / "job.json").is_file()
    assert result_of(local)["leaseEpoch"] == 1


def test_job_ships_over_http_and_fleet_status_shows_it(tmp_path: Path) -> None:
    state, root = tmp_path / "coord", tmp_path / "r"
    with running_stub(state, token="s3cret-token", lease_ttl_s=5) as stub:
        env = fleet_env(api=stub.url, token="s3cret-token")
        enq = aq(root, "enqueue", "--fleet", "--id", "h1", "--", "true", env=env)
        assert enq.returncode == 0 and enq.stdout.strip() == "h1", enq.stderr
        assert not (root / "inbox" / "h1").exists()  # it went to the coordinator, not the local inbox
        run = aq(root, "--factory-id", "f1", "run", "--drain", env=env)
        assert run.returncode == 0, run.stderr
        assert "s3cret-token" not in run.stderr
        st = aq(root, "fleet-status", "--json", env=env)
        assert st.returncode == 0, st.stderr
        report = json.loads(st.stdout)
        assert report["counts"]["shipped"] == 1
        assert report["flags"] == {"fleet": True, "route": True, "shadow": False, "warnings": []}
        assert "s3cret-token" not in st.stdout
    assert (root / "shipped" / "h1").is_dir()


def test_renew_409_kills_the_tool_and_nothing_ships(tmp_path: Path, ds: Daemons) -> None:
    state, root, marker, pidfile = tmp_path / "coord", tmp_path / "r", tmp_path / "m", tmp_path / "pid"
    steal = steal_script(state, "j2", "f1", 1, "f2")
    coord_enqueue(state, job("j2", f"echo $$ > {pidfile}; {steal}; sleep 30", marker))
    daemon = ds.start(root, fleet_env(api_cmd=seam_command(state, lease_ttl_s=3)))
    wait_for(lambda: local_records(root, "fenced") == ["j2.1"], "the job fenced locally")
    tool_pid = int(pidfile.read_text())
    assert not alive(tool_pid)  # killed well before its 30 s sleep ended
    assert shipped_lines(marker) == []
    assert "fenced" in (result_of(root / "fenced" / "j2.1")["reason"] or "")
    lease = coord_job(state, "j2")["lease"]
    assert (lease["factoryId"], lease["leaseEpoch"]) == ("f2", 2)  # the thief keeps it
    assert daemon.poll() is None  # the daemon lives on


def test_report_409_ships_nothing(tmp_path: Path) -> None:
    state, root, marker = tmp_path / "coord", tmp_path / "r", tmp_path / "m"
    # The verify gate hands the lease to f2 after the tool passed: report(shipped) must be refused.
    coord_enqueue(state, job("j3", "true", marker, verify=["sh", "-c", steal_script(state, "j3", "f1", 1, "f2")]))
    run = aq(root, "--factory-id", "f1", "run", "--drain", env=fleet_env(api_cmd=seam_command(state, 30)))
    assert run.returncode == 0, run.stderr
    assert "fenced: not shipped" in run.stderr
    assert local_records(root, "fenced") == ["j3.1"] and local_records(root, "shipped") == []
    assert shipped_lines(marker) == []
    assert coord_job(state, "j3")["lease"]["factoryId"] == "f2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_coordinator_down_and_back_nothing_lost_nothing_double_shipped(tmp_path: Path, ds: Daemons) -> None:
    state, root, marker = tmp_path / "coord", tmp_path / "r", tmp_path / "m"
    port = _free_port()
    args = ("--port", str(port))  # the later --port wins: same port after the restart
    for jid in ("d1", "d2"):
        coord_enqueue(state, job(jid, "sleep 1", marker, budget={"maxAttempts": 5}))
    with running_stub(state, token="tok", lease_ttl_s=3, extra_args=args) as stub:
        daemon = ds.start(root, fleet_env(api=stub.url, token="tok"))
        wait_for(lambda: local_records(root, "running"), "a job running")
    # Coordinator gone for twice the lease TTL (the outage itself is the point: a deadline, not a check):
    # the running job finishes but cannot ship (its report is unanswered), and the daemon stays up.
    down_until = time.monotonic() + 6
    wait_for(lambda: time.monotonic() > down_until, "the outage to last", deadline_s=10)
    assert daemon.poll() is None
    assert shipped_lines(marker) == [] and local_records(root, "shipped") == []
    with running_stub(state, token="tok", lease_ttl_s=3, extra_args=args):
        wait_for(lambda: all(meta(state, j)["state"] == "shipped" for j in ("d1", "d2")), "both jobs shipped",
                 deadline_s=60)
        assert daemon.poll() is None
    assert sorted(shipped_lines(marker)) == ["d1", "d2"]  # each exactly once
    # The replayed report of the attempt whose lease expired during the outage got a 409: fenced, not shipped.
    [fenced] = local_records(root, "fenced")
    assert "ship refused" in result_of(root / "fenced" / fenced)["reason"]
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0


def test_crash_recovery_releases_a_valid_lease_and_never_reruns_the_local_copy(tmp_path: Path, ds: Daemons) -> None:
    state, root, marker, flag = tmp_path / "coord", tmp_path / "r", tmp_path / "m", tmp_path / "flag"
    # First run: create the flag and hang; any later run: succeed at once.
    coord_enqueue(state, job("c1", f"[ -e {flag} ] && exit 0; touch {flag}; exec sleep 30", marker,
                             budget={"maxAttempts": 3}))
    env = fleet_env(api_cmd=seam_command(state, lease_ttl_s=6))
    first = ds.start(root, env)
    wait_for(lambda: flag.exists() and local_records(root, "running"), "the tool running")
    first.kill()  # SIGKILL: no chance to release anything
    first.wait(10)
    ds.stop_all()  # also kills the orphaned tool group
    run = aq(root, "--factory-id", "f1", "run", "--drain", env=env)
    assert run.returncode == 0, run.stderr
    assert "released to the coordinator" in run.stderr
    assert local_records(root, "released") == ["c1.1"]
    assert "daemon stopped" in result_of(root / "released" / "c1.1")["reason"]
    m = meta(state, "c1")
    assert (m["state"], m["attempts"], m["leaseEpoch"]) == ("shipped", 1, 2)  # counted, then a fresh claim
    assert shipped_lines(marker) == ["c1"]


def test_crash_recovery_records_a_lost_lease_as_fenced(tmp_path: Path, ds: Daemons) -> None:
    state, root, marker = tmp_path / "coord", tmp_path / "r", tmp_path / "m"
    coord_enqueue(state, job("c2", "exec sleep 30", marker))
    env = fleet_env(api_cmd=seam_command(state, lease_ttl_s=2))
    first = ds.start(root, env)
    wait_for(lambda: local_records(root, "running"), "the tool running")
    first.kill()
    first.wait(10)
    ds.stop_all()

    def claimed_by_f2() -> bool:  # once f1's lease expired, the reaper hands the job to f2
        status, body = coord(state, "POST", "/v1/fleet/claim", {"factoryId": "f2", "capabilities": []})
        return status == 200 and bool(body["lease"]["leaseEpoch"] == 2)

    wait_for(claimed_by_f2, "f2 holding the job", deadline_s=30)
    run = aq(root, "--factory-id", "f1", "run", "--drain", env=env)
    assert run.returncode == 0, run.stderr
    assert local_records(root, "fenced") == ["c2.1"] and local_records(root, "running") == [], run.stderr
    assert shipped_lines(marker) == []
    assert coord_job(state, "c2")["lease"]["factoryId"] == "f2"


def test_sigterm_gives_the_job_back_without_counting_an_attempt(tmp_path: Path, ds: Daemons) -> None:
    state, root, marker = tmp_path / "coord", tmp_path / "r", tmp_path / "m"
    coord_enqueue(state, job("t1", "exec sleep 30", marker))
    daemon = ds.start(root, fleet_env(api_cmd=seam_command(state, lease_ttl_s=6)), "--grace", "0")
    wait_for(lambda: local_records(root, "running"), "the tool running")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0
    m = meta(state, "t1")
    assert (m["state"], m["attempts"]) == ("queued", 0)
    assert local_records(root, "released") == ["t1.1"] and local_records(root, "running") == []
    assert shipped_lines(marker) == []


def test_report_applied_but_its_answers_lost_ships_exactly_once_after_the_replay(tmp_path: Path, ds: Daemons) -> None:
    """The coordinator took report(shipped) but 8 answers in a row are lost (more than the client's retries):
    the job waits in running/, the replay gets the same 200, and the ship happens once, tool not re-run."""
    state, root, marker, log = tmp_path / "coord", tmp_path / "r", tmp_path / "m", tmp_path / "calls.jsonl"
    runs = tmp_path / "runs"
    coord_enqueue(state, job("lr", f"echo run >> {shlex.quote(str(runs))}", marker))
    env = fleet_env(api_cmd=recording_command(state, log, ttl=5), AQ_TEST_LOSE_REPORTS="8")
    ds.start(root, env)
    wait_for(lambda: shipped_lines(marker), "the ship hook", deadline_s=60)
    assert local_records(root, "shipped") == ["lr"]
    assert shipped_lines(marker) == ["lr"] and runs.read_text() == "run\n"
    assert meta(state, "lr")["state"] == "shipped"
    reports = [c for c in recorded(log) if c["path"].endswith("/report")]
    assert len(reports) >= 9 and {r["body"]["leaseEpoch"] for r in reports} == {1}
    assert result_of(root / "shipped" / "lr")["reportSent"]["epoch"] == 1


def test_a_job_this_factory_cannot_run_is_passed_on_to_one_that_can(tmp_path: Path, ds: Daemons) -> None:
    """f1 lacks the job's program: it releases the job (attempt counted), asks the coordinator to skip
    it (``exclude``) and takes other work; f2, which has the program, ships it. Nothing is quarantined."""
    state, marker = tmp_path / "coord", tmp_path / "m"
    tools = tmp_path / "f2-bin"
    tools.mkdir()
    (tools / "aq-only-on-f2").write_text("#!/bin/sh\necho ran >> \"$1\"\n")
    (tools / "aq-only-on-f2").chmod(0o755)
    runs = tmp_path / "runs"
    coord_enqueue(state, {**job("special", "true", marker, priority=5, budget={"maxAttempts": 3}),
                          "command": ["aq-only-on-f2", str(runs)]})
    coord_enqueue(state, job("plain", "true", marker))
    env = fleet_env(api_cmd=seam_command(state, lease_ttl_s=5))
    ds.start(tmp_path / "r1", env, factory="f1")
    wait_for(lambda: meta(state, "plain")["state"] == "shipped", "f1 to take the other job")
    assert meta(state, "special")["state"] == "queued"  # passed on once, then skipped by f1
    assert local_records(tmp_path / "r1", "released") == ["special.1"]
    assert "not found on PATH of factory f1" in result_of(tmp_path / "r1" / "released" / "special.1")["reason"]
    ds.start(tmp_path / "r2", {**env, "PATH": f"{tools}:{env['PATH']}"}, factory="f2")
    wait_for(lambda: (tmp_path / "r2" / "shipped" / "special").is_dir(), "f2 to ship it")
    assert runs.read_text() == "ran\n" and meta(state, "special")["state"] == "shipped"
    assert meta(state, "special")["attempts"] == 1

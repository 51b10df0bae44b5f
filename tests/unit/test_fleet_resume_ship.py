"""A daemon killed while its report(shipped) was under way: on restart the report is replayed, never released.

Regression (found by the chaos suite with real daemons): the seam call outlived
the SIGKILLed daemon and the coordinator recorded the job shipped; recovery then
released it, got 409 ("the job is shipped") and filed it under fenced/, so the
job was shipped at the coordinator but nowhere locally and its ship hook never ran.
"""

from __future__ import annotations

import time
from pathlib import Path

from core_support import make_settings, result
from test_fleet_claim import FakeClient

from agent_queue.errors import NotLeased
from agent_queue.fleet.records import LEASE_FILE
from agent_queue.fleet.source import FleetSource
from agent_queue.fsutil import write_json_atomic
from agent_queue.inbox import LocalQueue
from agent_queue.jobs import Job, Lease
from agent_queue.runner import Runner, RunOptions


class Client(FakeClient):
    class transport:  # noqa: N801 - the daemon closes its client's transport on exit
        @staticmethod
        def close() -> None:
            return None


def crashed_while_shipping(root: Path, tmp_path: Path) -> LocalQueue:
    """running/j1 as a daemon killed inside approve_ship leaves it (tool + verify passed, report sent)."""
    queue = LocalQueue(root).init()
    lease = Lease("j1", "test-1", 3, time.time() + 60, 2.0)
    marker = tmp_path / "ran"
    job = Job.from_dict({"id": "j1", "command": ["touch", str(marker)],
                         "ship": ["sh", "-c", f'echo shipped >> "{tmp_path / "hook"}"']})
    entry = queue.materialize(job, {"leaseEpoch": 3, "lease": lease.to_dict(), "pid": None})
    write_json_atomic(entry.path / LEASE_FILE, lease.to_dict())
    queue.update("j1", queue.get("j1").state, {"reportSent": {"epoch": 3, "record": {
        "attempt": 1, "outcome": "passed", "exitCode": 0, "reason": None}}})
    return queue


def restart(tmp_path: Path, client: Client) -> Path:
    root = tmp_path / "root"
    queue = crashed_while_shipping(root, tmp_path)
    Runner(make_settings(root), FleetSource(queue, client)).work(RunOptions(once=True))  # type: ignore[arg-type]
    return root


def test_the_report_is_replayed_and_the_job_ships_once_without_rerunning(tmp_path: Path) -> None:
    client = Client(None)  # the coordinator answers the exact replay with 200
    root = restart(tmp_path, client)
    assert [(op, kw["epoch"]) for op, kw in client.calls] == [("report", 3)]  # no release
    assert result(root, "shipped", "j1")["leaseEpoch"] == 3
    assert (tmp_path / "hook").read_text() == "shipped\n"
    assert not (tmp_path / "ran").exists()  # the tool is not run again


def test_a_replay_the_coordinator_refuses_ships_nothing(tmp_path: Path) -> None:
    client = Client(NotLeased("the job is queued"))  # the report never reached it; the lease is gone
    root = restart(tmp_path, client)
    assert (root / "fenced" / "j1.3").is_dir()
    assert not (root / "shipped" / "j1").exists()
    assert not (tmp_path / "hook").exists() and not (tmp_path / "ran").exists()


def test_a_failure_after_the_accepted_report_parks_the_job_never_files_it_fenced(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """Disk full while shipping an accepted job: no release (it would be refused: the job is shipped),
    no fenced/ record; the job waits in running/ with its marker, so the next settle resumes the ship."""
    from agent_queue import shiphooks

    root = tmp_path / "root"
    queue = crashed_while_shipping(root, tmp_path)
    client = Client(None, NotLeased("the job is shipped, it has no lease"))

    def disk_full(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shiphooks, "mark", disk_full)
    Runner(make_settings(root), FleetSource(queue, client)).work(RunOptions(once=True))  # type: ignore[arg-type]
    assert [op for op, _ in client.calls] == ["report"]  # the replay; never a release
    assert not (root / "fenced").exists()
    assert result(root, "running", "j1")["reportSent"]["epoch"] == 3


def test_a_ship_hook_cut_short_by_shutdown_keeps_its_marker_and_runs_again(tmp_path: Path) -> None:
    import json

    from agent_queue.control import Control

    root = tmp_path / "root"
    queue = crashed_while_shipping(root, tmp_path)
    job_json = root / "running" / "j1" / "job.json"
    spec = json.loads(job_json.read_text())
    spec["ship"] = ["sh", "-c", f'sleep 5; echo shipped >> "{tmp_path / "hook"}"']
    job_json.write_text(json.dumps(spec))
    control = Control(0.0)
    source = FleetSource(queue, Client(None))  # type: ignore[arg-type]
    runner = Runner(make_settings(root), source, control)
    source.recover()
    claim = source.next_claim()
    assert claim is not None
    control.request_stop()  # SIGTERM with no grace left: the hook is stopped at once
    runner.process(claim)
    assert result(root, "shipped", "j1")["leaseEpoch"] == 3 and not (tmp_path / "hook").exists()
    assert (root / ".state" / "ship-hooks" / "j1.json").exists()  # the next start runs it again


def failing_ship(monkeypatch) -> list[str]:
    """Every ship attempt raises (a bug, a broken worktree): what used to spin the daemon forever."""
    from agent_queue.shipping import Shipper

    tried: list[str] = []

    def boom(self: object, claim: object, *a: object) -> None:
        tried.append(claim.job.id)  # type: ignore[attr-defined]
        raise RuntimeError("ship step broken")

    monkeypatch.setattr(Shipper, "ship", boom)
    return tried


def test_an_accepted_ship_that_keeps_failing_is_resumed_a_bounded_number_of_times(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    from agent_queue.fleet import source as fleet_source

    monkeypatch.setattr(fleet_source, "PARK_BACKOFF_S", 0.0, raising=False)
    tried = failing_ship(monkeypatch)
    root = tmp_path / "root"
    queue = crashed_while_shipping(root, tmp_path)
    client = Client()  # every replay of report(shipped) is answered 200
    Runner(make_settings(root), FleetSource(queue, client)).work(  # type: ignore[arg-type]
        RunOptions(drain=True, max_jobs=50))
    assert len(tried) == 1 + getattr(fleet_source, "MAX_SHIP_RESUMES", -1)
    assert [op for op, _ in client.calls if op != "claim"] == ["report"] * len(tried)  # never a release
    shipped = result(root, "shipped", "j1")  # the coordinator counts it shipped; the error is kept
    assert "ship step broken" in shipped["shipError"] and not (root / "running" / "j1").exists()


def test_a_failed_accepted_ship_is_not_resumed_at_once(tmp_path: Path, monkeypatch) -> None:
    from agent_queue.fleet import source as fleet_source

    monkeypatch.setattr(fleet_source, "PARK_BACKOFF_S", 3600.0, raising=False)
    tried = failing_ship(monkeypatch)
    root = tmp_path / "root"
    queue = crashed_while_shipping(root, tmp_path)
    client = Client()
    source = FleetSource(queue, client)  # type: ignore[arg-type]
    Runner(make_settings(root), source).work(RunOptions(drain=True, max_jobs=50))
    assert tried == ["j1"] and [op for op, _ in client.calls] == ["report", "claim"]  # other work is asked for
    assert result(root, "running", "j1")["reportSent"]["epoch"] == 3  # waits for its turn, marker kept

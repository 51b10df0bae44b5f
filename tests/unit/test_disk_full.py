"""Disk full, injected (issue 16, item 3): ENOSPC in the log's write path and in state writes.

The real thing (a full tmpfs) is in tests/integration/test_output_flood.py; these run
everywhere and reach the branches a real disk rarely does (no room even for result.json).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from core_support import make_settings, result, shell_job
from test_fleet_claim import FakeClient
from test_process_tree import Watch

from agent_queue import diskfull, inbox, process
from agent_queue.errors import DiskFull, is_disk_full
from agent_queue.fleet.client import Claimed
from agent_queue.fleet.source import FleetSource
from agent_queue.gitcmd import GitError
from agent_queue.inbox import LocalQueue, State
from agent_queue.jobs import Lease
from agent_queue.local_source import LocalClaim, LocalSource
from agent_queue.runner import Runner, RunOptions

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def full_for(monkeypatch: pytest.MonkeyPatch, marker: bytes, flag: Path | None = None) -> list[int]:
    """os.write raises ENOSPC for data holding ``marker`` (the tool's output on its way to the log);
    with ``flag``, that file is removed at the first refusal (the flood stops, space comes back)."""
    real, refused = os.write, []

    def write(fd: int, data: Any) -> int:
        if marker in bytes(data):
            refused.append(fd)
            if flag is not None and flag.exists():
                flag.unlink()
            raise ENOSPC
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    return refused


def test_a_log_write_that_meets_a_full_disk_stops_the_child_and_gives_its_space_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"=== earlier attempt\n")
    refused = full_for(monkeypatch, b"FLOOD")
    started = time.monotonic()
    res = process.run(("sh", "-c", "echo calm; while :; do echo FLOOD; done"), cwd=tmp_path,
                      env={"PATH": os.environ["PATH"]}, log_path=log, timeout_s=120, watch=Watch())
    assert refused and res.disk_full is not None and "No space left on device" in res.disk_full
    assert not res.timed_out and time.monotonic() - started < 120  # stopped at once, not at its timeout
    text = log.read_bytes()
    assert text.startswith(b"=== earlier attempt\n") and b"FLOOD" not in text  # this run's output dropped
    assert b"output of this run dropped: disk full" in text


def test_disk_full_is_a_factory_condition_the_job_is_given_back_uncounted_and_runs_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(diskfull, "BASE_S", 0.01)
    settings = make_settings(tmp_path / "r")
    queue = LocalQueue(settings.root).init()
    flag = tmp_path / "flood"
    flag.touch()
    queue.enqueue(shell_job("j", "sh", "-c", f'[ -e "{flag}" ] && while :; do echo FLOOD; done; echo calm'))
    full_for(monkeypatch, b"FLOOD", flag)
    held: list[dict[str, Any]] = []
    real_hit = diskfull.DiskBackoff.hit

    def hit(self: diskfull.DiskBackoff, reason: str) -> None:
        real_hit(self, reason)
        held.append(json.loads((settings.root / ".state" / "daemon.json").read_text())["backoff"])
        held[-1]["inbox"] = (settings.root / "inbox" / "j").is_dir()

    monkeypatch.setattr(diskfull.DiskBackoff, "hit", hit)
    with caplog.at_level(logging.WARNING):
        Runner(settings, LocalSource(queue)).work(RunOptions(drain=True))
    shipped = result(settings.root, "shipped", "j")
    assert shipped["attempts"] == 1 and [h["outcome"] for h in shipped["history"]] == ["shipped"]
    assert len(held) == 1 and "disk full" in held[0]["reason"]  # status was told while it held
    assert "disk space is back" in caplog.text
    assert "backoff" not in json.loads((settings.root / ".state" / "daemon.json").read_text())


def test_no_room_even_for_result_json_still_puts_the_job_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = LocalQueue(tmp_path / "r").init()
    queue.enqueue(shell_job("j", "true"))
    claim = LocalClaim(queue, queue.take("j"))  # type: ignore[arg-type]
    claim.begin(1)

    def no_room(*a: object, **k: object) -> None:
        raise ENOSPC

    monkeypatch.setattr(inbox, "write_json_atomic", no_room)
    claim.give_back("disk full")
    assert queue.find("j") is State.INBOX
    assert json.loads((tmp_path / "r" / "inbox" / "j" / "result.json").read_text())["attempts"] == 0


def test_disk_full_is_recognised_through_wrapping_and_git_messages() -> None:
    wrapped = GitError("repo r: git fetch failed (fatal: write error: No space left on device)")
    try:
        try:
            raise ENOSPC
        except OSError as exc:
            raise RuntimeError("while saving") from exc
    except RuntimeError as outer:
        chained = outer
    assert is_disk_full(chained) and is_disk_full(wrapped) and is_disk_full(DiskFull("x"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied")) and not is_disk_full(GitError("other"))


class OneClaim(FakeClient):
    """Answers one claim with a lease, then none."""

    class transport:  # noqa: N801 - closed by the daemon on exit
        @staticmethod
        def close() -> None:
            return None

    def claim_job(self, dry_run: bool = False, factory_id: str | None = None, exclude: Any = ()) -> Any:
        self.calls.append(("claim", {}))
        if len([c for c in self.calls if c[0] == "claim"]) > 1:
            return None
        job = shell_job("fj", "true")
        return Claimed(job, Lease("fj", "test-1", 1, time.time() + 60, 30.0), 0)


def test_fleet_no_room_to_hold_a_claim_releases_it_uncounted_and_holds_the_factory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = LocalQueue(tmp_path / "r").init()
    monkeypatch.setattr(queue, "materialize", lambda *a, **k: (_ for _ in ()).throw(ENOSPC))
    client = OneClaim()
    with pytest.raises(DiskFull):
        FleetSource(queue, client).next_claim()  # type: ignore[arg-type]
    releases = [kw for op, kw in client.calls if op == "release"]
    assert releases == [{"epoch": 1, "count_attempt": False, "not_before": None}]

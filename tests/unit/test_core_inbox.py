"""LocalQueue: unique ids, order, loose files, requeue, crash recovery; nothing is ever lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from core_support import shell_job

from agent_queue.errors import Conflict, NotFound
from agent_queue.inbox import LocalQueue, State
from agent_queue.local_source import LocalSource


@pytest.fixture()
def queue(tmp_path: Path) -> LocalQueue:
    return LocalQueue(tmp_path / "root").init()


def test_layout_and_enqueue(queue: LocalQueue) -> None:
    entry = queue.enqueue(shell_job("a", "true"))
    for d in ("inbox", "running", "shipped", "quarantine", "work", "logs", ".state"):
        assert (queue.root / d).is_dir()
    assert json.loads((entry.path / "job.json").read_text())["command"] == ["true"]
    assert json.loads((entry.path / "result.json").read_text())["attempts"] == 0


def test_duplicate_id_refused_in_any_state(queue: LocalQueue) -> None:
    queue.enqueue(shell_job("a", "true"))
    queue.move("a", State.INBOX, State.SHIPPED, {})
    with pytest.raises(Conflict, match="shipped"):
        queue.enqueue(shell_job("a", "echo"))
    assert queue.counts() == {"inbox": 0, "running": 0, "shipped": 1, "quarantine": 0, "cancelled": 0}


def test_order_is_priority_then_oldest(queue: LocalQueue) -> None:
    for job_id, prio in (("old-low", 0), ("mid-high", 5), ("new-low", 0), ("new-high", 5)):
        queue.enqueue(shell_job(job_id, "true", priority=prio))
    assert [e.job.id for e in queue.pending()] == ["mid-high", "new-high", "old-low", "new-low"]


def test_loose_file_normalised_and_original_kept(queue: LocalQueue) -> None:
    (queue.root / "inbox" / "drop.json").write_text(json.dumps({"id": "dropped", "command": ["true"]}))
    assert queue.normalise_inbox() == ["dropped"]
    entry = queue.get("dropped")
    assert entry.state is State.INBOX
    assert (entry.path / "original.json").is_file()
    assert not (queue.root / "inbox" / "drop.json").exists()


@pytest.mark.parametrize(
    ("text", "reason"),
    [("{nope", "malformed JSON"), ('{"id": "a/b", "command": ["x"]}', "not a valid id"),
     ('{"id": "x"}', "command"), ('{"id": "x", "command": "ls"}', "must be a list")],
)
def test_bad_loose_file_quarantined_with_reason(queue: LocalQueue, text: str, reason: str) -> None:
    (queue.root / "inbox" / "bad.json").write_text(text)
    [qid] = queue.normalise_inbox()
    qdir = queue.root / "quarantine" / qid
    assert reason in json.loads((qdir / "result.json").read_text())["reason"]
    assert (qdir / "bad.json").read_text() == text  # the user's bytes are kept
    assert queue.pending() == []


def test_loose_duplicate_is_quarantined_not_merged(queue: LocalQueue) -> None:
    queue.enqueue(shell_job("dup", "true"))
    (queue.root / "inbox" / "dup2.json").write_text(json.dumps({"id": "dup", "command": ["false"]}))
    [qid] = queue.normalise_inbox()
    assert "already used" in json.loads((queue.root / "quarantine" / qid / "result.json").read_text())["reason"]
    assert queue.get("dup").job.command == ("true",)


def test_requeue_only_from_quarantine_and_resets_attempts(queue: LocalQueue) -> None:
    queue.enqueue(shell_job("q", "true"))
    with pytest.raises(Conflict, match="only a quarantined job"):
        queue.requeue("q")
    queue.move("q", State.INBOX, State.QUARANTINE, {"attempts": 3, "reason": "broken"})
    entry = queue.requeue("q")
    assert entry.state is State.INBOX and entry.attempts == 0 and entry.result["reason"] is None
    with pytest.raises(NotFound):
        queue.requeue("ghost")


def test_recover_moves_running_back_with_attempt_counted(queue: LocalQueue) -> None:
    queue.enqueue(shell_job("r", "true"))
    assert queue.take("r") is not None
    assert LocalSource(queue).recover() == ["r"]
    entry = queue.get("r")
    assert entry.state is State.INBOX and entry.attempts == 1
    assert entry.result["history"][-1]["outcome"] == "crashed"


def test_take_is_exclusive(queue: LocalQueue) -> None:
    queue.enqueue(shell_job("t", "true"))
    assert queue.take("t") is not None
    assert queue.take("t") is None


def test_unreadable_job_directory_in_inbox_is_quarantined_not_skipped(queue: LocalQueue) -> None:
    queue.enqueue(shell_job("good", "true"))
    broken = queue.root / "inbox" / "broken"
    broken.mkdir()
    (broken / "job.json").write_text("{not json")
    (broken / "result.json").write_text("{also bad")
    odd = queue.root / "inbox" / "odd name"
    odd.mkdir()
    (odd / "job.json").write_text(json.dumps({"id": "odd", "command": ["true"]}))
    other = queue.root / "inbox" / "dirname"
    other.mkdir()
    (other / "job.json").write_text(json.dumps({"id": "otherid", "command": ["true"]}))
    assert sorted(queue.normalise_inbox()) == ["bad-dir", "broken", "dirname"]
    mismatch = json.loads((queue.root / "quarantine" / "dirname" / "result.json").read_text())["reason"]
    assert "says id 'otherid'" in mismatch
    qdir = queue.root / "quarantine" / "broken"
    assert "unreadable job" in json.loads((qdir / "result.json").read_text())["reason"]
    assert (qdir / "job.json").read_text() == "{not json"  # the user's bytes are kept
    assert (qdir / "result.unreadable.json").read_text() == "{also bad"
    bad_dir = json.loads((queue.root / "quarantine" / "bad-dir" / "result.json").read_text())
    assert "not a valid job id" in bad_dir["reason"]
    assert [e.job.id for e in queue.pending()] == ["good"]

"""The audit-log tail behind the dashboard and the metrics: partial lines, history vs live, rotation, bounds."""

from __future__ import annotations

import json
import os
from pathlib import Path

from coordinator_stub.web.events import EventFeed, LogTail
from coordinator_stub.web.metrics import outcome


def line(**fields: object) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def test_a_tail_reads_only_complete_lines_and_each_once(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tail = LogTail(path, backfill_bytes=1 << 20)
    assert list(tail.read()) == []  # no file yet
    path.write_bytes(line(n=1) + b'{"n": 2')
    assert [(e["n"], live) for e, live in tail.read()] == [(1, True)]
    with path.open("ab") as f:
        f.write(b"}\n" + b"not json\n" + b"[1]\n" + line(n=3))
    assert [e["n"] for e, _ in tail.read()] == [2, 3]  # the torn line completed; garbage and non-objects skipped
    assert list(tail.read()) == []


def test_history_is_read_from_the_backfill_window_and_marked_not_live(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line(n=i, pad="x" * 20) for i in range(100)))
    tail = LogTail(path, backfill_bytes=300)
    history = [(e["n"], live) for e, live in tail.read()]
    assert history and all(not live for _, live in history)
    assert [n for n, _ in history] == list(range(100 - len(history), 100))  # the window's first partial line dropped
    with path.open("ab") as f:
        f.write(line(n=100))
    assert [(e["n"], live) for e, live in tail.read()] == [(100, True)]


def test_a_replaced_or_truncated_log_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line(n=1) + line(n=2))
    tail = LogTail(path, backfill_bytes=0)
    assert list(tail.read()) == []  # no backfill: all of it was history
    new = tmp_path / "new"
    new.write_bytes(line(n=7))
    os.replace(new, path)
    assert [e["n"] for e, _ in tail.read()] == [7]
    path.write_bytes(b"")
    assert list(tail.read()) == []
    path.write_bytes(line(n=8))
    assert [e["n"] for e, _ in tail.read()] == [8]


def test_the_feed_indexes_jobs_and_tells_listeners(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_bytes(line(op="enqueue", jobId="a", status=201))
    feed = EventFeed(tmp_path)
    heard: list[tuple[str, bool]] = []
    feed.listeners.append(lambda e, live: heard.append((e["op"], live)))
    feed.listeners.append(lambda e, live: 1 / 0)  # a broken listener is logged, the others still hear
    feed.poll()
    with (tmp_path / "events.jsonl").open("ab") as f:
        f.write(line(op="claim", jobId="a", status=200) + line(op="reap", status=200))
    (tmp_path / "shadow-reports.jsonl").write_bytes(line(verdict="AGREE"))
    feed.poll()
    assert heard == [("enqueue", False), ("claim", True), ("reap", True)]
    assert [e["op"] for e in feed.job_events("a")] == ["enqueue", "claim"]
    assert [e["seq"] for e in feed.recent_events()] == [1, 2, 3]
    assert feed.shadow_reports() == [{"verdict": "AGREE"}]


def test_outcome_labels() -> None:
    assert outcome({"op": "claim", "status": 200}) == "leased"
    assert outcome({"op": "claim", "status": 204}) == "empty"
    assert outcome({"op": "claim", "status": 200, "dryRun": True}) == "dry_run"
    assert outcome({"op": "report", "status": 409, "code": "fenced"}) == "fenced"
    assert outcome({"op": "report", "status": 200, "outcome": "quarantined"}) == "quarantined"
    assert outcome({"op": "report", "status": 200, "outcome": "shipped", "replay": True}) == "replay"
    assert outcome({"op": "reclaim", "status": 200, "state": "quarantined"}) == "quarantined"
    assert outcome({"op": "shadow_report", "status": 202, "verdict": "DIVERGE"}) == "diverge"
    assert outcome({"op": "enqueue", "status": 200}) == "exists"

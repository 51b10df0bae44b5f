"""JsonStore journal: one line per change, torn tails cut, corruption refused, checkpoints idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_queue.errors import StateError
from coordinator_stub.core import Coordinator
from coordinator_stub.stores import file as file_store
from coordinator_stub.stores import job_files
from coordinator_stub.stores.file import JsonStore
from tests.unit.test_store import coord_on, mode


def journal_lines(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "journal.jsonl").read_text().splitlines()]


def served(root: Path) -> tuple[JsonStore, Coordinator]:
    """A store as ``serve`` builds it (bookkeeping after the answer, in ``tidy``) and its coordinator."""
    store = JsonStore(root, tidy_later=True)
    return store, Coordinator(store, lambda: 100.0, 10.0)


def fill(c: Coordinator, n: int, prefix: str = "q") -> None:
    for i in range(n):
        c.enqueue({"id": f"{prefix}{i:04d}", "command": ["true"], "prompt": "x" * 200})


def test_an_operation_appends_one_line_whose_size_does_not_grow_with_the_queue(tmp_path: Path) -> None:
    sizes = []
    for queued in (10, 300):
        root = tmp_path / f"q{queued}"
        c = coord_on(root, [100.0])
        fill(c, queued)
        snapshot = (root / "state.json").read_bytes()
        before = len(journal_lines(root)) if (root / "journal.jsonl").exists() else 0
        view = c.claim("f1", ())
        assert view is not None
        lines = journal_lines(root)
        assert len(lines) == before + 1
        assert list(lines[-1]["set"]) == [view["job"]["id"]] and lines[-1]["del"] == []
        sizes.append(len(json.dumps(lines[-1])))
        assert (root / "state.json").read_bytes() == snapshot  # the snapshot is not rewritten per operation
        assert mode(root / "journal.jsonl") == 0o600
    assert abs(sizes[0] - sizes[1]) < 16  # only the digits of counters differ, not the queue's size


@pytest.mark.parametrize(("serving", "floor"), [(False, 16 * 1024), (True, 64 * 1024)])
def test_a_store_read_afresh_per_operation_checkpoints_at_a_quarter_of_serves_journal(
        tmp_path: Path, serving: bool, floor: int) -> None:
    """A seam call replays the whole journal; ``serve`` keeps it in memory, so it may grow four times as long."""
    root = tmp_path / "coord"
    store = JsonStore(root, tidy_later=serving)
    c = Coordinator(store, lambda: 100.0, 10.0)
    journal_path = root / "journal.jsonl"
    largest = 0
    for i in range(400):
        c.enqueue({"id": f"j{i}", "command": ["true"], "prompt": "x" * 200})
        store.tidy()
        size = journal_path.stat().st_size
        if size < largest:
            break  # folded into the snapshot
        largest = size
    else:
        pytest.fail("the journal was never folded into the snapshot")
    line = largest // i  # (the operation whose line passed the floor checkpointed at once)
    assert floor - line < largest <= floor


def test_the_journal_is_folded_into_the_snapshot_once_it_outgrows_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(file_store, "CHECKPOINT_MIN_BYTES", 4096)
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    fill(c, 40)
    for _ in range(40):
        view = c.claim("f1", ())
        assert view is not None
        c.report(view["job"]["id"], "f1", 1, "shipped")
    journal = (root / "journal.jsonl").stat().st_size
    assert journal <= max(4096, (root / "state.json").stat().st_size) + 4096  # folded, not growing without bound
    hot = json.loads((root / "state.json").read_text())
    assert hot["terminalCounts"]["shipped"] > 0  # the snapshot took the journal's changes
    assert JsonStore(root).read_hot()["terminalCounts"]["shipped"] == 40
    folded = len(list((root / "archive").glob("*.json")))
    assert 0 < folded <= 40  # the files of the jobs checkpoints folded (the last ones may still be in the journal)
    assert [j["meta"]["state"] for j in c.list_jobs()] == ["shipped"] * 40
    JsonStore(root).checkpoint()
    assert len(list((root / "archive").glob("*.json"))) == 40
    assert (root / "journal.jsonl").stat().st_size == 0


def test_a_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    fill(c, 2)
    good = (root / "journal.jsonl").read_bytes()
    with open(root / "journal.jsonl", "ab") as fh:
        fh.write(b'{"meta": {"seq": 99}, "set": {"q0000')  # a crash in the middle of an append
    assert c.get_job("q0001")["meta"]["state"] == "queued"  # readable: the torn line was never acknowledged
    c.enqueue({"id": "after", "command": ["true"]})
    data = (root / "journal.jsonl").read_bytes()
    assert data.startswith(good) and b'"seq": 99' not in data
    assert [j["job"]["id"] for j in c.list_jobs()] == ["q0000", "q0001", "after"]


def test_a_corrupt_whole_line_is_a_clear_error_and_nothing_is_reset(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    fill(c, 2)
    c.claim("f1", ())
    lines = (root / "journal.jsonl").read_text().splitlines()
    lines[0] = "{garbage"
    (root / "journal.jsonl").write_text("\n".join(lines) + "\n")
    before = (root / "journal.jsonl").read_bytes()
    with pytest.raises(StateError) as info:
        coord_on(root, [100.0]).status()
    assert "journal.jsonl" in info.value.message and "line 1" in info.value.message
    assert (root / "journal.jsonl").read_bytes() == before


def test_replaying_a_journal_over_the_snapshot_that_already_holds_it_changes_nothing(tmp_path: Path) -> None:
    """A crash after a checkpoint's new snapshot but before the journal was emptied."""
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    fill(c, 5)
    view = c.claim("f1", ())
    assert view is not None
    c.report(view["job"]["id"], "f1", 1, "shipped")
    c.claim("f2", ())
    journal = (root / "journal.jsonl").read_bytes()
    expected = JsonStore(root).read_hot()
    store = JsonStore(root)
    with store.transaction():
        pass
    loaded = store._read(store._key())
    store._checkpoint(loaded)  # fold, then put the journal back as if the truncate never happened
    assert (root / "journal.jsonl").read_bytes() == b""
    (root / "journal.jsonl").write_bytes(journal)
    assert JsonStore(root).read_hot() == expected
    assert coord_on(root, [100.0]).get_job(view["job"]["id"])["meta"]["state"] == "shipped"


def test_archive_files_wait_for_the_checkpoint_and_a_lost_one_is_rebuilt_from_the_journal(tmp_path: Path) -> None:
    """The journal holds a finished job until a checkpoint writes its file; a power cut mid-checkpoint may lose it."""
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    fill(c, 1)
    c.claim("f1", ())
    c.report("q0000", "f1", 1, "shipped", {"costUsd": 0.5})
    assert not (root / "archive" / "q0000.json").exists()
    assert (root / "jobs" / "q0000.json").exists()  # its spec file goes at the checkpoint too
    assert coord_on(root, [100.0]).get_job("q0000")["meta"]["state"] == "shipped"  # a fresh reader: the journal
    before = {name: (root / name).read_bytes() for name in ("state.json", "journal.jsonl")}
    JsonStore(root).checkpoint()
    assert json.loads((root / "archive" / "q0000.json").read_text())["detail"] == {"costUsd": 0.5}
    assert not (root / "jobs" / "q0000.json").exists()
    (root / "archive" / "q0000.json").unlink()  # a power cut before the checkpoint's sync lost the file...
    for name, data in before.items():  # ...and the journal was not emptied yet
        (root / name).write_bytes(data)
    assert coord_on(root, [100.0]).get_job("q0000")["meta"]["state"] == "shipped"
    JsonStore(root).checkpoint()
    assert json.loads((root / "archive" / "q0000.json").read_text())["detail"] == {"costUsd": 0.5}


def test_archive_files_are_written_in_batches_between_checkpoints(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(file_store, "MATERIALIZE_BATCH", 3)
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    fill(c, 5)
    journal_before = (root / "journal.jsonl").stat().st_size
    for i in range(5):
        view = c.claim("f1", ())
        assert view is not None
        c.report(view["job"]["id"], "f1", 1, "shipped")
        files = sorted(p.name for p in (root / "archive").glob("*.json"))
        assert files == ([] if i < 2 else ["q0000.json", "q0001.json", "q0002.json"])
    assert (root / "journal.jsonl").stat().st_size > journal_before  # no checkpoint: the batch is not one
    assert sorted(p.name for p in (root / "jobs").iterdir()) == ["q0003.json", "q0004.json"]
    (root / "archive" / "q0001.json").write_bytes(b"")  # torn by a power cut: never synced
    fresh = coord_on(root, [100.0])  # a process after the restart: its journal still holds q0001
    assert fresh.get_job("q0001")["meta"]["state"] == "shipped"
    JsonStore(root).checkpoint()  # rewrites what a process it did not see may have left torn
    assert json.loads((root / "archive" / "q0001.json").read_text())["state"] == "shipped"
    assert len(list((root / "archive").glob("*.json"))) == 5


def test_a_batch_written_file_of_a_job_run_again_is_removed_at_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(file_store, "MATERIALIZE_BATCH", 1)
    root = tmp_path / "coord"
    store = JsonStore(root)
    c = Coordinator(store, lambda: 100.0, 10.0)
    c.enqueue({"id": "a", "command": ["true"]})
    c.claim("f1", ())
    c.release("a", "f1", 1, reason="no", retry=False)  # quarantined: archived, and its file written at once
    assert json.loads((root / "archive" / "a.json").read_text())["state"] == "quarantined"
    c.requeue("a")  # live again: the file is now an old version
    assert c.get_job("a")["meta"]["state"] == "queued"
    store.checkpoint()
    assert not (root / "archive" / "a.json").exists()
    assert json.loads((root / "archive" / "history" / "a.1.json").read_text())["state"] == "quarantined"
    assert json.loads((root / "jobs" / "a.json").read_text())["id"] == "a"  # its spec is back for the re-run


def test_a_store_that_tidies_later_writes_a_finished_jobs_files_when_tidied(tmp_path: Path) -> None:
    """``serve``'s store: the journal line is the answer's commit; the files come with ``tidy()`` after it."""
    root = tmp_path / "coord"
    store, c = served(root)
    fill(c, 2)
    store.tidy()
    for job_id in ("q0000", "q0001"):
        view = c.claim("f1", ())
        assert view is not None and view["job"]["id"] == job_id
        c.report(job_id, "f1", 1, "shipped")
        assert not (root / "archive" / f"{job_id}.json").exists()  # not tidied yet: the journal holds it
        assert coord_on(root, [100.0]).get_job(job_id)["meta"]["state"] == "shipped"  # as any process reads
        store.tidy()
        assert json.loads((root / "archive" / f"{job_id}.json").read_text())["state"] == "shipped"
        assert not (root / "jobs" / f"{job_id}.json").exists()
    assert (root / "journal.jsonl").stat().st_size > 0  # no checkpoint for that


def test_a_state_read_afresh_rewrites_its_journals_files_a_few_per_tidy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(file_store, "TIDY_FILES", 2)
    root = tmp_path / "coord"
    store, c = served(root)
    fill(c, 3)
    for _ in range(3):
        view = c.claim("f1", ())
        assert view is not None
        c.report(view["job"]["id"], "f1", 1, "shipped")
        store.tidy()
    for p in (root / "archive").glob("*.json"):  # as if lost: never synced before a power cut
        p.unlink()
    coord_on(root, [100.0]).enqueue({"id": "other", "command": ["true"]})  # another process: files read afresh
    c.enqueue({"id": "mine", "command": ["true"]})
    store.tidy()
    assert sorted(p.name for p in (root / "archive").glob("*.json")) == ["q0000.json", "q0001.json"]
    c.get_job("q0002")  # a read leaves nothing to tidy
    store.tidy()
    assert len(list((root / "archive").glob("*.json"))) == 2
    c.enqueue({"id": "mine2", "command": ["true"]})
    store.tidy()
    assert sorted(p.name for p in (root / "archive").glob("*.json")) == ["q0000.json", "q0001.json", "q0002.json"]


def test_a_late_tidy_writes_no_file_when_another_process_wrote_since(tmp_path: Path) -> None:
    """Its memory may be stale: an archive file written from it could bring back a job that runs again."""
    root = tmp_path / "coord"
    store, serving = served(root)
    serving.enqueue({"id": "a", "command": ["true"]})
    store.tidy()
    serving.claim("f1", ())
    serving.report("a", "f1", 1, "quarantined")  # answered; its file waits for the tidy
    other = coord_on(root, [100.0])  # a seam call or the CLI
    assert other.requeue("a")["meta"]["state"] == "queued"
    store.tidy()  # too late: the journal changed since this store's line
    assert not (root / "archive" / "a.json").exists()
    assert coord_on(root, [100.0]).get_job("a")["meta"]["state"] == "queued"
    assert serving.get_job("a")["meta"]["state"] == "queued"  # it reads the files afresh
    view = serving.claim("f2", ())
    assert view is not None and view["job"]["id"] == "a"


def test_an_untidied_store_tidies_before_its_next_operation(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    store, c = served(root)
    fill(c, 2)
    view = c.claim("f1", ())
    assert view is not None
    c.report(view["job"]["id"], "f1", 1, "shipped")
    c.claim("f1", ())  # no tidy between: this operation does the last one's bookkeeping first
    assert (root / "archive" / "q0000.json").exists()
    store.checkpoint()
    assert (root / "journal.jsonl").stat().st_size == 0
    assert coord_on(root, [100.0]).get_job("q0001")["meta"]["state"] == "leased"


def test_an_explicit_checkpoint_keeps_a_torn_tail_aside(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    fill(c, 2)
    c.claim("f1", ())
    with open(root / "journal.jsonl", "ab") as fh:
        fh.write(b'{"meta": {"seq": 99}, "set": {"q0')  # a crash in the middle of an append
    JsonStore(root).checkpoint()
    assert (root / "journal.jsonl").stat().st_size == 0
    assert (root / "journal.torn").read_bytes() == b'{"meta": {"seq": 99}, "set": {"q0\n'
    assert coord_on(root, [100.0]).get_job("q0000")["meta"]["state"] == "leased"
    assert c.get_job("q0001")["meta"]["state"] == "queued"  # the long-lived store saw the files change


def test_a_long_lived_store_sees_what_another_process_wrote(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    server = coord_on(root, [100.0])  # keeps its state in memory between operations
    fill(server, 1)
    other = coord_on(root, [100.0])  # a seam call or the CLI on the same directory
    other.enqueue({"id": "from-cli", "command": ["true"]})
    assert [j["job"]["id"] for j in server.list_jobs()] == ["q0000", "from-cli"]
    view = server.claim("f1", ())
    assert view is not None and view["job"]["id"] == "q0000"
    assert other.get_job("q0000")["meta"]["state"] == "leased"


def test_a_failed_operation_leaves_nothing_behind_in_memory(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    store = JsonStore(root)
    c = Coordinator(store, lambda: 100.0, 10.0)
    fill(c, 1)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.hot["jobs"]["q0000"]["state"] = "leased"
        tx.touch()
        raise RuntimeError("the core failed half way")
    assert c.get_job("q0000")["meta"]["state"] == "queued"
    assert store.read_hot()["jobs"]["q0000"]["state"] == "queued"


def test_a_change_made_without_touch_is_not_kept_in_memory(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    store = JsonStore(root)
    c = Coordinator(store, lambda: 100.0, 10.0)
    fill(c, 1)
    with store.transaction() as tx:
        tx.hot["factories"]["ghost"] = 1.0  # not meant to be written (no touch)
    assert "ghost" not in json.dumps(c.status())


def test_the_self_check_catches_a_nested_change_the_journal_cannot_see(tmp_path: Path, monkeypatch) -> None:
    """Proof the suite-wide AQ_STUB_SELFCHECK can fail: an in-place nested edit is not journaled."""
    monkeypatch.setenv("AQ_STUB_SELFCHECK", "1")
    root = tmp_path / "coord"
    store = JsonStore(root)
    c = Coordinator(store, lambda: 100.0, 10.0)
    fill(c, 1)
    c.claim("f1", ())
    with pytest.raises(StateError) as info, store.transaction() as tx:
        tx.hot["jobs"]["q0000"]["lease"]["expiresAt"] = 999.0  # nested: HotRecord cannot see it
        tx.hot["seq"] += 1
        tx.touch()
    assert "self-check failed" in info.value.message


def test_a_requeued_job_keeps_its_spec_out_of_the_journal_and_a_replay_still_carries_it(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    big = "P" * 50_000
    c.enqueue({"id": "a", "command": ["true"], "prompt": big})
    c.claim("f1", ())
    first = c.release("a", "f1", 1, "later")
    assert big not in (root / "journal.jsonl").read_text()
    replay = coord_on(root, [100.0]).release("a", "f1", 1, "later")  # the first answer was lost in transit
    assert replay == first and replay["job"]["prompt"] == big


def test_a_short_journal_write_is_not_acknowledged_and_is_cut_later(tmp_path: Path, monkeypatch) -> None:
    """A full disk makes write(2) return a short count: the operation must fail, not pass as committed."""
    import errno
    import os

    from agent_queue import fsutil

    real_write = os.write

    root = tmp_path / "coord"
    server = coord_on(root, [100.0])
    fill(server, 2)
    calls = []

    def short_write(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "write", short_write)
    with pytest.raises(OSError):
        server.claim("f1", ())
    monkeypatch.undo()
    assert coord_on(root, [100.0]).get_job("q0000")["meta"]["state"] == "queued"  # a fresh reader
    assert server.get_job("q0000")["meta"]["state"] == "queued"  # the long-lived one agrees
    view = server.claim("f1", ())
    assert view is not None and view["job"]["id"] == "q0000"
    assert coord_on(root, [100.0]).get_job("q0000")["meta"]["state"] == "leased"  # the torn half was cut
    assert (root / "journal.torn").read_bytes().startswith(b'{"archive"')


def test_an_unreadable_whole_last_line_is_damage_not_a_torn_write(tmp_path: Path) -> None:
    """A line with its newline was written whole: unreadable now, it is damage, and nothing is cut or undone."""
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    fill(c, 1)
    with open(root / "journal.jsonl", "ab") as fh:
        fh.write(b'{"meta": \x00\x00\x00\x00 "set": {}}\n')
    before = (root / "journal.jsonl").read_bytes()
    for attempt in (lambda: coord_on(root, [100.0]).get_job("q0000"),
                    lambda: c.enqueue({"id": "next", "command": ["true"]})):
        with pytest.raises(StateError, match=r"journal.jsonl: line 2 of 2 is corrupt"):
            attempt()
    assert (root / "journal.jsonl").read_bytes() == before
    assert not (root / "journal.torn").exists()


def test_listing_survives_an_archive_file_torn_before_its_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    fill(c, 1)
    c.claim("f1", ())
    c.report("q0000", "f1", 1, "shipped")
    (root / "archive" / "q0000.json").write_bytes(b"")  # a power cut during a checkpoint, before its sync
    jobs = coord_on(root, [100.0]).list_jobs()
    assert [(j["job"]["id"], j["meta"]["state"]) for j in jobs] == [("q0000", "shipped")]


def test_a_failure_after_the_journal_line_still_answers_the_durable_operation(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    fill(c, 1)
    c.claim("f1", ())

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file_store, "CHECKPOINT_MIN_BYTES", 0)  # this report's commit checkpoints...
    monkeypatch.setattr(job_files, "write_bytes_atomic", no_space)  # ...and cannot write the archive file
    result = c.report("q0000", "f1", 1, "shipped")
    monkeypatch.undo()
    assert result["meta"]["state"] == "shipped"
    assert not (root / "archive" / "q0000.json").exists()
    assert journal_lines(root)[-1]["archive"]["q0000"]["state"] == "shipped"  # the journal was not emptied
    assert coord_on(root, [100.0]).get_job("q0000")["meta"]["state"] == "shipped"  # from the journal
    assert c.report("q0000", "f1", 1, "shipped")["meta"]["state"] == "shipped"  # a replay agrees


@pytest.mark.parametrize("store_kind", ["memory", "json"])
def test_requeue_of_a_job_the_same_call_just_quarantined_by_reaping(tmp_path: Path, store_kind: str) -> None:
    from coordinator_stub.stores.memory import MemoryStore

    now = [100.0]
    store = MemoryStore() if store_kind == "memory" else JsonStore(tmp_path / "coord")
    c = Coordinator(store, lambda: now[0], 10.0)
    c.enqueue({"id": "a", "command": ["true"], "budget": {"maxAttempts": 1}})
    c.claim("f1", ())
    now[0] += 60  # the lease expired; nobody reaped yet
    view = c.requeue("a")  # the reaper quarantines it in this same call, then the requeue revives it
    assert view["meta"]["state"] == "queued"
    assert c.get_job("a")["meta"]["state"] == "queued"


@pytest.mark.parametrize("kind", ["memory", "json"])
def test_a_caller_changing_an_answer_changes_nothing_stored(tmp_path: Path, kind: str) -> None:
    from coordinator_stub.stores.memory import MemoryStore

    store = MemoryStore() if kind == "memory" else JsonStore(tmp_path / "s")
    c = Coordinator(store, lambda: 100.0, 60.0)
    c.enqueue({"id": "a", "command": ["true"], "prompt": "hello"})
    view = c.claim("f1", ())
    assert view is not None
    view["job"]["prompt"] = "CHANGED"  # an in-process caller annotating its answer
    assert c.get_job("a")["job"]["prompt"] == "hello"
    c.report("a", "f1", 1, "shipped")
    if isinstance(store, JsonStore):
        store.checkpoint()
        assert json.loads((tmp_path / "s" / "archive" / "a.json").read_text())["spec"]["prompt"] == "hello"


def test_checkpoint_leaves_a_version_1_state_to_its_next_write(tmp_path: Path) -> None:
    """A version-1 state whose first migrating write was cut short: folding it would keep prompts in the snapshot."""
    from tests.unit.test_store import write_version_1_state

    root = tmp_path / "coord"
    spec = write_version_1_state(root)
    (root / "jobs").mkdir(mode=0o700)
    (root / "jobs" / "old.json").write_text(json.dumps(spec))  # the first write stores specs before its line
    (root / "journal.jsonl").write_bytes(b'{"meta":{"seq":2},"set":{"ne')  # ...and was cut short
    JsonStore(root).checkpoint()  # serve's stop
    assert json.loads((root / "state.json").read_text())["version"] == 1
    c = coord_on(root, [100.0])
    assert c.get_job("old")["job"]["prompt"] == "inline"
    c.enqueue({"id": "new", "command": ["true"]})
    assert "prompt" not in JsonStore(root).read_hot()["jobs"]["old"]["spec"]


def test_an_archive_file_that_cannot_be_read_is_an_error_not_absence(tmp_path: Path) -> None:
    """An unreadable file (here a symlink loop; also EACCES, EIO) must never make a finished job look new."""
    root = tmp_path / "s"
    c = coord_on(root, [100.0])
    c.enqueue({"id": "a", "command": ["true"]})
    c.claim("f1", ())
    c.report("a", "f1", 1, "shipped")
    JsonStore(root).checkpoint()  # archive/a.json written, the journal empty
    path = root / "archive" / "a.json"
    path.unlink()
    path.symlink_to(path)  # ELOOP: exists, cannot be opened
    with pytest.raises(StateError, match="archive/a.json"):
        coord_on(root, [100.0]).enqueue({"id": "a", "command": ["true"]})  # would run it a second time


def test_spec_files_of_jobs_run_again_survive_checkpoints_across_processes(tmp_path: Path) -> None:
    root = tmp_path / "s"
    now = [1_000_000.0]
    a, b = JsonStore(root), JsonStore(root)
    ca, cb = Coordinator(a, lambda: now[0], 60.0), Coordinator(b, lambda: now[0], 60.0)
    ca.enqueue({"id": "x", "command": ["true"], "prompt": "px", "budget": {"maxAttempts": 1}})
    ca.claim("f1", ())
    ca.report("x", "f1", 1, "quarantined")
    cb.requeue("x")  # hot again, its spec file written anew, while an earlier line still removes it
    a.checkpoint()
    assert (root / "jobs" / "x.json").exists()
    v = cb.claim("f1", ())
    assert v is not None and v["job"]["prompt"] == "px" and v["lease"]["leaseEpoch"] == 2
    ca.enqueue({"id": "p", "kind": "composite", "verify": ["make"], "budget": {"maxAttempts": 1},
                "children": [{"id": "p1", "command": ["true"]}]})
    ca.report("x", "f1", 2, "shipped")
    v = cb.claim("f1", ())
    assert v is not None and v["job"]["id"] == "p1"
    cb.report("p1", "f1", 1, "shipped")  # the parent's verify record "p" is queued (hot, same id as the parent)
    b.checkpoint()
    assert (root / "jobs" / "p.json").exists()
    v = ca.claim("f1", ())
    assert v is not None and v["job"]["id"] == "p" and v["job"]["command"] == ["make"]
    ca.report("p", "f1", v["lease"]["leaseEpoch"], "quarantined")  # the verify failed
    a.checkpoint()
    assert not (root / "jobs" / "p.json").exists()
    cb.requeue("p")  # verify again
    a.checkpoint()
    v2 = ca.claim("f1", ())
    assert v2 is not None and v2["job"]["id"] == "p" and v2["lease"]["leaseEpoch"] == v["lease"]["leaseEpoch"] + 1


def test_a_self_check_that_fails_after_the_answer_fails_every_later_operation(tmp_path: Path, monkeypatch) -> None:
    """``serve`` tidies after answering, so a failed self-check must reach a later answer, not only the log."""
    monkeypatch.setenv("AQ_STUB_SELFCHECK", "1")
    store, c = served(tmp_path / "coord")

    def broken(after: object) -> None:
        raise StateError("self-check failed: planted")
    monkeypatch.setattr(store, "_check_memory", broken)
    c.enqueue({"id": "a", "command": ["true"]})  # answered: its bookkeeping waits for the tidy
    with pytest.raises(StateError, match="planted"):
        store.tidy()
    for _ in range(2):
        with pytest.raises(StateError, match="planted"):
            c.get_job("a")


def test_a_tidy_reads_ahead_what_the_next_claim_looks_up(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    store, c = served(root)
    fill(c, 3)
    store.tidy()
    view = c.claim("f1", ())
    assert view is not None and view["job"]["id"] == "q0000"
    store.tidy()
    loaded = store._loaded
    assert loaded is not None
    assert loaded.specs["q0001"] == (root / "jobs" / "q0001.json").read_bytes()  # the next in claim order
    assert "q0001" in loaded.absent and "q0002" not in loaded.specs
    nxt = c.claim("f1", ())
    assert nxt is not None and nxt["job"]["prompt"] == "x" * 200  # answered from what was read ahead

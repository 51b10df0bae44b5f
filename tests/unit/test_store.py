"""JsonStore: private files, atomic state, terminal jobs archived out of the hot file, corrupt files refused."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock, Timeout

from agent_queue.errors import StateError
from coordinator_stub.core import Coordinator
from coordinator_stub.stores.claim_index import ClaimIndex
from coordinator_stub.stores.file import JsonStore
from coordinator_stub.stores.job_files import archive_name
from coordinator_stub.stores.locking import flock


def coord_on(root: Path, now: list[float]) -> Coordinator:
    return Coordinator(JsonStore(root), lambda: now[0], 10.0)


def test_a_kept_store_claims_and_reaps_from_its_index_after_each_commit(tmp_path: Path) -> None:
    """One store across operations, as serve keeps it: the claim index sees every commit's changes."""
    now = [100.0]
    c = coord_on(tmp_path / "coord", now)
    for job_id in ("a", "b", "c"):
        c.enqueue({"id": job_id, "command": ["true"]})
    first = c.claim("f1", ())
    assert first is not None and first["job"]["id"] == "a"
    now[0] += 11.0  # past the 10 s lease of "a", and the next operation is the reaper's
    assert [rec["jobId"] for rec in c.reap()] == ["a"]
    second = c.claim("f2", ())  # "a" again: queued once more, ahead of "b"
    assert second is not None and second["job"]["id"] == "a"
    third = c.claim("f3", ())  # not "a" a third time: the last claim's lease is in the index
    assert third is not None and third["job"]["id"] == "b"


def test_the_claim_index_applies_noted_changes_on_its_next_read() -> None:
    def rec(state: str, seq: int, lease: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"state": state, "seq": seq, "lease": lease}

    def key(r: dict[str, Any]) -> tuple[int]:
        return (r["seq"],)

    jobs = {"a": rec("queued", 1), "b": rec("queued", 2)}
    index = ClaimIndex(jobs)
    assert [job_id for _, job_id in index.ordered(jobs, key)] == ["a", "b"]
    jobs["a"] = rec("leased", 1, {"factoryId": "f1"})
    jobs["c"] = rec("queued", 0)
    index.update(["a", "c"])
    assert index.matches(jobs)  # (the self-check applies them to a copy)
    assert [job_id for _, job_id in index.ordered(jobs, key)] == ["c", "b"]
    jobs["a"] = rec("queued", 1)
    index.update(["a"])
    assert index.leased(jobs) == set()
    assert [job_id for _, job_id in index.ordered(jobs, key)] == ["c", "a", "b"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_permissions_and_layout(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    c.enqueue({"id": "a", "command": ["true"]})
    c.claim("f1", ())
    c.report("a", "f1", 1, "shipped")
    c.shadow_report({"factoryId": "f1-shadow", "shadow": True, "verdict": "AGREE"})
    JsonStore(root).checkpoint()  # archive files are written at a checkpoint
    assert mode(root) == 0o700 and mode(root / "archive") == 0o700
    for name in ("state.json", "events.jsonl", "shadow-reports.jsonl", "archive/a.json"):
        assert mode(root / name) == 0o600, name
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind


def test_terminal_jobs_leave_the_hot_file(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    for i in range(5):
        c.enqueue({"id": f"j{i}", "command": ["true"]})
    for i in range(5):
        view = c.claim("f1", ())
        assert view is not None
        c.report(view["job"]["id"], "f1", 1, "shipped" if i % 2 else "quarantined")
    hot = JsonStore(root).read_hot()
    assert hot["jobs"] == {}
    assert hot["terminalCounts"] == {"shipped": 2, "quarantined": 3}
    assert not list((root / "archive").glob("*.json"))  # still in the journal: files come with the checkpoint
    assert c.get_job("j3")["meta"]["state"] == "shipped"
    JsonStore(root).checkpoint()
    assert sorted(p.name for p in (root / "archive").iterdir()) == [f"j{i}.json" for i in range(5)]
    assert not list((root / "jobs").iterdir())  # their specs are inside the archived records now
    assert (root / "journal.jsonl").stat().st_size == 0
    assert c.get_job("j3")["meta"]["state"] == "shipped"  # found by id in the archive
    assert c.status()["counts"]["shipped"] == 2


def test_archive_names_never_collide_on_case_insensitive_disks() -> None:
    assert archive_name("Job") != archive_name("job")
    assert archive_name("../x") is None


def test_corrupt_state_is_a_clear_error_and_is_not_reset(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    coord_on(root, [1.0]).enqueue({"id": "a", "command": ["true"]})
    (root / "state.json").write_text("{not json")
    with pytest.raises(StateError) as info:
        coord_on(root, [1.0]).status()
    assert "state.json" in info.value.message
    assert (root / "state.json").read_text() == "{not json"


def test_a_crash_leftover_in_both_places_resolves_to_the_archive(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    now = [1.0]
    c = coord_on(root, now)
    c.enqueue({"id": "a", "command": ["true"]})
    c.claim("f1", ())
    before = {name: (root / name).read_bytes() for name in ("state.json", "journal.jsonl")}
    c.report("a", "f1", 1, "shipped")
    JsonStore(root).checkpoint()  # the archive file exists
    for name, data in before.items():  # as if an older version had crashed after the archive write
        (root / name).write_bytes(data)
    now[0] += 100  # lease expired: the reaper requeues the stale copy...
    assert c.claim("f2", ()) is None  # ...but the archive wins: it never runs again
    assert c.get_job("a")["meta"]["state"] == "shipped"


def test_seam_flock_and_filelock_exclude_each_other(tmp_path: Path) -> None:
    lock_path = tmp_path / ".lock"
    with flock(lock_path), pytest.raises(Timeout):
        FileLock(str(lock_path), timeout=0).acquire()
    with FileLock(str(lock_path)):
        pass  # free again once released


def test_specs_stay_out_of_the_hot_file(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    big = "p" * 100_000
    c.enqueue({"id": "a", "command": ["true"], "prompt": big, "priority": 3, "requires": ["gpu"]})
    c.enqueue({"id": "b", "command": ["true"], "prompt": "small"})
    hot_text = (root / "state.json").read_text() + (root / "journal.jsonl").read_text()
    assert big not in hot_text and "small" not in hot_text
    assert JsonStore(root).read_hot()["jobs"]["a"]["spec"] == {
        "id": "a", "kind": "leaf", "requires": ["gpu"], "priority": 3, "budget": {}, "parentId": None,
        "dependsOn": []}
    assert json.loads((root / "jobs" / "a.json").read_text())["prompt"] == big
    assert mode(root / "jobs") == 0o700 and mode(root / "jobs" / "a.json") == 0o600
    view = c.claim("f1", ["gpu"])  # the summary orders and filters; the answer carries the full spec
    assert view is not None and view["job"]["id"] == "a" and view["job"]["prompt"] == big
    assert c.get_job("b")["job"]["prompt"] == "small"
    c.report("a", "f1", 1, "shipped")
    assert not (root / "jobs" / "a.json").exists()  # the archive holds the whole record now
    assert json.loads((root / "archive" / "a.json").read_text())["spec"]["prompt"] == big
    assert c.get_job("a")["job"]["prompt"] == big
    assert [j["job"]["prompt"] for j in c.list_jobs()] == [big, "small"]


def test_a_spec_file_without_a_hot_record_is_harmless_and_replaced(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    c.enqueue({"id": "x", "command": ["true"]})
    (root / "jobs" / "a.json").write_text('{"id": "a", "prompt": "orphan of a crash before the hot write"}')
    assert [j["job"]["id"] for j in c.list_jobs()] == ["x"]
    c.enqueue({"id": "a", "command": ["true"], "prompt": "real"})
    assert c.get_job("a")["job"]["prompt"] == "real"


def test_a_hot_record_without_its_spec_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    c.enqueue({"id": "a", "command": ["true"]})
    (root / "jobs" / "a.json").unlink()
    with pytest.raises(StateError) as info:
        c.claim("f1", ())
    assert "a.json" in info.value.message and "missing" in info.value.message


def write_version_1_state(root: Path) -> dict[str, Any]:
    """A state directory as version 1 wrote it (full specs inline); returns job "old"'s spec."""
    root.mkdir(mode=0o700)
    rec = {"spec": {"id": "old", "kind": "leaf", "command": ["true"], "prompt": "inline", "requires": [],
                    "priority": 0, "budget": {}, "parentId": None, "dependsOn": []},
           "state": "queued", "seq": 1, "enqueuedAt": 1.0, "maxAttempts": 3, "attempts": 0, "leaseEpoch": 0,
           "lease": None, "notBefore": None, "digest": "d", "reason": None, "outcome": None, "detail": None,
           "finishedAt": None, "lastEnd": None}
    (root / "state.json").write_text(json.dumps({"version": 1, "seq": 1, "jobs": {"old": rec}, "factories": {},
                                                  "terminalCounts": {"shipped": 0, "quarantined": 0}}))
    spec: dict[str, Any] = rec["spec"]  # type: ignore[assignment]
    return spec


def test_a_version_1_state_file_is_migrated_on_the_next_write(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    write_version_1_state(root)
    c = coord_on(root, [100.0])
    assert c.get_job("old")["job"]["prompt"] == "inline"  # readable as it is
    c.enqueue({"id": "new", "command": ["true"]})  # any write moves the old spec out
    hot = JsonStore(root).read_hot()
    assert hot["version"] == 2 and "prompt" not in hot["jobs"]["old"]["spec"]
    assert "inline" not in (root / "journal.jsonl").read_text()
    view = c.claim("f1", ())
    assert view is not None and view["job"]["prompt"] == "inline"


def test_an_idle_poll_does_not_rewrite_the_state(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    now = [100.0]
    c = coord_on(root, now)
    assert c.claim("f1", ()) is None  # first sighting is written
    def files() -> list[tuple[int, bytes]]:
        return [((root / n).stat().st_mtime_ns, (root / n).read_bytes()) for n in ("state.json", "journal.jsonl")]

    written = files()
    now[0] += 5.0
    assert c.claim("f1", ()) is None
    assert files() == written
    now[0] += 6.0  # lastSeen now older than the granularity: refreshed
    assert c.claim("f1", ()) is None
    (seen,) = c.status()["factories"]
    assert (seen["factoryId"], seen["lastSeen"]) == ("f1", "1970-01-01T00:01:51.000Z")

"""JsonStore under damage and bad input: it stops with a clear error, never rolls back, never writes on bad input.

Damage to an acknowledged journal line or to the snapshot is caught by their
checksums (a torn tail, one without its newline, is still a crash's unacknowledged
write); a used store missing its snapshot refuses to start; ``journal.torn`` is
private and bounded; a command given bad input, or a state dir that is not
there, writes nothing. The CLI checks run the real ``coordinator-stub``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent_queue.errors import StateError
from coordinator_stub.core import Coordinator
from coordinator_stub.stores import journal
from coordinator_stub.stores.file import JsonStore
from tests.stubutil import STUB_ARGV
from tests.unit.test_store import coord_on, mode


def without_checksums(path: Path) -> None:
    """Rewrite ``path`` as the previous version wrote it: the same JSON lines, no checksum after them."""
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"".join(line.rstrip(b" \t") + b"\n" for line in lines))


def checksummed(line: bytes) -> bool:
    return len(line) > 32 and line.endswith(b"}" + line[-32:]) and not line[-32:].strip(b" \t")


def stub(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQ_")}
    res = subprocess.run([*STUB_ARGV, *args], input=stdin, capture_output=True, env=env, timeout=60, check=False)
    return subprocess.CompletedProcess(res.args, res.returncode, res.stdout.decode(), res.stderr.decode())


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (but the lock) and its bytes: what "nothing was written" compares."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def shipped_by_f1(root: Path) -> Coordinator:
    c = coord_on(root, [100.0])
    c.enqueue({"id": "a", "command": ["true"]})
    c.claim("f1", ())
    c.report("a", "f1", 1, "shipped")  # the journal's last line: acknowledged (fsync'd, newline-terminated)
    return c


# ---------------------------------------------------------------- 4: checksums on the journal and the snapshot


def test_zeroed_bytes_inside_the_last_journal_line_stop_the_store_instead_of_undoing_a_ship(tmp_path: Path) -> None:
    """The issue's repro: before, the line read as torn and was dropped, and the shipped job was leased again."""
    root = tmp_path / "coord"
    shipped_by_f1(root)
    path = root / "journal.jsonl"
    data = bytearray(path.read_bytes())
    last = data.rindex(b"\n", 0, len(data) - 1) + 1
    middle = (last + len(data)) // 2
    data[middle:middle + 16] = bytes(16)
    path.write_bytes(bytes(data))
    lines = data.count(b"\n")
    before = files_of(root)
    with pytest.raises(StateError) as info:
        coord_on(root, [100.0]).claim("f2", ())
    assert f"journal.jsonl: line {lines} of {lines}" in info.value.message
    res = stub("--state", str(root), "status")
    assert res.returncode == 1 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and f"journal.jsonl: line {lines} of {lines}" in res.stderr
    answer = json.loads(stub("--state", str(root), "call", "GET", "/v1/fleet/jobs/a").stdout)
    assert answer["status"] == 500 and answer["body"]["error"]["code"] == "state_error"
    assert files_of(root) == before  # nothing cut, reset or rolled back


def test_a_changed_snapshot_is_caught_by_its_checksum(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    for job_id in ("a", "b"):
        c.enqueue({"id": job_id, "command": ["true"], "priority": 1})
    JsonStore(root).checkpoint()
    path = root / "state.json"
    data = path.read_bytes()
    assert data.count(b'"priority":1') == 2
    path.write_bytes(data.replace(b'"priority":1', b'"priority":9', 1))  # still parses; claim order changed
    with pytest.raises(StateError, match="state.json: fails its checksum"):
        coord_on(root, [100.0]).claim("f1", ())
    assert path.read_bytes() == data.replace(b'"priority":1', b'"priority":9', 1)


def test_a_torn_tail_without_its_newline_is_still_a_crash_and_is_cut(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = shipped_by_f1(root)
    good = (root / "journal.jsonl").read_bytes()
    line = journal.encode_checked({"meta": {"seq": 9}, "set": {}, "del": [], "archive": {}})
    with open(root / "journal.jsonl", "ab") as fh:
        fh.write(line[: len(line) // 2])  # its write never finished, so it was never acknowledged
    assert coord_on(root, [100.0]).get_job("a")["meta"]["state"] == "shipped"
    c.enqueue({"id": "b", "command": ["true"]})
    assert (root / "journal.jsonl").read_bytes().startswith(good)
    assert (root / "journal.torn").read_bytes() == line[: len(line) // 2] + b"\n"


def test_a_state_dir_of_the_previous_version_without_checksums_still_loads(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    for job_id in ("a", "b", "c"):
        c.enqueue({"id": job_id, "command": ["true"]})
    JsonStore(root).checkpoint()
    c.claim("f1", ())
    c.report("a", "f1", 1, "shipped")
    for name in ("state.json", "journal.jsonl"):
        without_checksums(root / name)
        assert not any(checksummed(line) for line in (root / name).read_bytes().splitlines())
    old = coord_on(root, [100.0])
    assert [(j["job"]["id"], j["meta"]["state"]) for j in old.list_jobs()] == [
        ("a", "shipped"), ("b", "queued"), ("c", "queued")]
    old.claim("f1", ())  # appended with a checksum after the old lines
    lines = (root / "journal.jsonl").read_bytes().splitlines()
    assert checksummed(lines[-1]) and not checksummed(lines[0])
    assert coord_on(root, [100.0]).get_job("b")["meta"]["state"] == "leased"
    without_checksums(root / "journal.jsonl")  # a factory still on the previous version appends after them
    assert coord_on(root, [100.0]).get_job("b")["meta"]["state"] == "leased"
    JsonStore(root).checkpoint()
    assert checksummed((root / "state.json").read_bytes().rstrip(b"\n"))
    assert coord_on(root, [100.0]).get_job("b")["meta"]["state"] == "leased"


def _flip_a_checksum_bit(data: bytes) -> bytes:
    return data[:-3] + (b"\t" if data[-3:-2] == b" " else b" ") + data[-2:]


@pytest.mark.parametrize(("damage", "found"), [
    (lambda d: d.replace(b'"state":"shipped"', b'"state":"leased"'), "fails its checksum"),  # still valid JSON
    (_flip_a_checksum_bit, "fails its checksum"),
    (lambda d: d[:-9] + bytes(8) + b"\n", "is corrupt"),  # the checksum itself zeroed
], ids=["history-rewritten", "checksum-bit", "checksum-zeroed"])
def test_damage_the_last_lines_checksum_catches(tmp_path: Path, damage: Any, found: str) -> None:
    root = tmp_path / "coord"
    shipped_by_f1(root)
    path = root / "journal.jsonl"
    data = path.read_bytes()
    assert checksummed(data.splitlines()[-1]) and b'"state":"shipped"' in data.splitlines()[-1]
    path.write_bytes(damage(data))
    last = len(data.splitlines())
    with pytest.raises(StateError, match=rf"journal.jsonl: line {last} of {last} {found}"):
        coord_on(root, [100.0]).get_job("a")


# ---------------------------------------------------------------- 5: a used store without its snapshot


def test_a_used_store_missing_its_snapshot_refuses_to_start_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    for job_id in ("a", "b"):
        c.enqueue({"id": job_id, "command": ["true"], "prompt": job_id})
    JsonStore(root).checkpoint()  # the journal is empty now: the snapshot alone holds the queue
    (root / "state.json").unlink()
    before = files_of(root)
    res = stub("--state", str(root), "status")
    assert res.returncode == 1 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and "state.json: missing" in res.stderr
    assert "journal.jsonl" in res.stderr  # what shows the store was used
    spec = tmp_path / "other.json"
    spec.write_text(json.dumps({"id": "a", "command": ["false"], "prompt": "a different job"}))
    res = stub("--state", str(root), "enqueue", str(spec))
    assert res.returncode == 1 and "state.json: missing" in res.stderr
    answer = json.loads(stub("--state", str(root), "call", "POST", "/v1/fleet/claim",
                             stdin=json.dumps({"factoryId": "f1"}).encode()).stdout)
    assert answer["status"] == 500 and "state.json: missing" in answer["body"]["error"]["message"]
    assert files_of(root) == before


def test_serve_refuses_to_start_on_a_used_store_missing_its_snapshot(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    coord_on(root, [100.0]).enqueue({"id": "a", "command": ["true"]})
    (root / "state.json").unlink()
    res = stub("--state", str(root), "serve", "--port", "0")  # a server that started would never return
    assert res.returncode == 1 and "state.json: missing" in res.stderr and "listening" not in res.stderr


def test_job_files_alone_also_show_a_used_store(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = coord_on(root, [100.0])
    c.enqueue({"id": "a", "command": ["true"]})
    JsonStore(root).checkpoint()
    (root / "state.json").unlink()
    (root / "journal.jsonl").unlink()
    with pytest.raises(StateError, match=r"state.json: missing.*jobs/<id>.json"):
        coord_on(root, [100.0]).enqueue({"id": "a", "command": ["false"]})
    assert not (root / "state.json").exists()


def test_a_new_or_empty_directory_starts_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    res = stub("--state", str(empty), "status", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["counts"]["queued"] == 0
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"id": "a", "command": ["true"]}))
    for root in (empty, tmp_path / "new" / "coord"):
        res = stub("--state", str(root), "enqueue", str(spec))
        assert res.returncode == 0 and res.stdout == "enqueued a\n", res.stderr
        assert (root / "state.json").exists() and mode(root) == 0o700
        assert json.loads(stub("--state", str(root), "status", "--json").stdout)["counts"]["queued"] == 1


# ---------------------------------------------------------------- 7: journal.torn; nothing written on bad input


def torn_tail(root: Path, text: bytes) -> None:
    with open(root / "journal.jsonl", "ab") as fh:
        fh.write(text)


def test_journal_torn_is_private(tmp_path: Path) -> None:
    root = tmp_path / "coord"
    c = shipped_by_f1(root)
    torn_tail(root, b'{"meta":{"seq":9},"set":{"b')
    old_umask = os.umask(0o022)  # the usual one, under which a plain open() creates 0644
    try:
        c.enqueue({"id": "b", "command": ["true"]})
    finally:
        os.umask(old_umask)
    assert mode(root / "journal.torn") == 0o600


def test_journal_torn_stays_bounded_across_full_disk_episodes(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "TORN_MAX_BYTES", 300)
    root = tmp_path / "coord"
    c = shipped_by_f1(root)
    torn = root / "journal.torn"
    torn.write_bytes(b"x" * 250)
    torn.chmod(0o644)  # as an older version left it
    for n in range(6):  # each episode leaves one torn tail, cut by the next operation
        torn_tail(root, b'{"meta":{"seq":%d},"set":{"b' % n)
        c.enqueue({"id": f"b{n}", "command": ["true"]})
        assert torn.stat().st_size <= 300
    assert torn.read_bytes().startswith(b"x" * 250)  # what was kept stays
    assert mode(torn) == 0o600
    assert [j["job"]["id"] for j in coord_on(root, [100.0]).list_jobs()] == ["a", *(f"b{n}" for n in range(6))]


@pytest.mark.parametrize("spec", [
    {"id": "../escape", "command": ["true"]},
    {"id": "x", "command": "not a list"},
    {"id": "x", "command": ["true"], "dependsOn": ["nobody"]},  # refused inside the operation itself
    {"id": "p", "kind": "composite", "children": [{"id": "p", "command": ["true"]}]},
])
def test_enqueue_of_a_bad_spec_exits_2_and_writes_nothing(tmp_path: Path, spec: dict[str, object]) -> None:
    state = tmp_path / "new" / "coord"
    path = tmp_path / "job.json"
    path.write_text(json.dumps(spec))
    res = stub("--state", str(state), "enqueue", str(path))
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert not (tmp_path / "new").exists()
    res = stub("--state", str(state), "call", "POST", "/v1/fleet/jobs", stdin=json.dumps(spec).encode())
    assert res.returncode == 0 and json.loads(res.stdout)["status"] in (400, 409, 422)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["reap"]])
def test_a_command_on_a_missing_state_dir_says_so_exits_2_and_creates_nothing(tmp_path: Path,
                                                                               command: list[str]) -> None:
    state = tmp_path / "typo" / "coord"
    res = stub("--state", str(state), *command)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines() == [f"coordinator-stub: state dir {state}: no such directory "
                                       "(a coordinator's state is created by its first enqueue, call or serve)"]
    assert not (tmp_path / "typo").exists()


def test_a_seam_call_creates_the_state_only_when_it_writes(tmp_path: Path) -> None:
    state = tmp_path / "new" / "coord"
    answer = json.loads(stub("--state", str(state), "call", "GET", "/v1/fleet/status").stdout)
    assert answer["status"] == 200 and answer["body"]["counts"]["queued"] == 0
    assert not (tmp_path / "new").exists()
    answer = json.loads(stub("--state", str(state), "call", "POST", "/v1/fleet/claim",
                             stdin=json.dumps({"factoryId": "f1"}).encode()).stdout)
    assert answer["status"] == 204  # no job, but the factory's first sighting is state: written
    assert mode(state) == 0o700 and (state / "state.json").exists()
    status = json.loads(stub("--state", str(state), "call", "GET", "/v1/fleet/status").stdout)["body"]
    assert [f["factoryId"] for f in status["factories"]] == ["f1"]
    events = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
    assert [e["op"] for e in events] == ["claim"]  # one operation, logged once (its first run wrote nothing)


def test_a_file_where_the_state_dir_should_be_is_an_error(tmp_path: Path) -> None:
    state = tmp_path / "coord"
    state.write_text("not a directory")
    answer = json.loads(stub("--state", str(state), "call", "GET", "/v1/fleet/status").stdout)
    assert answer["status"] == 500 and "exists and is not a directory" in answer["body"]["error"]["message"]
    res = stub("--state", str(state), "status")
    assert res.returncode == 1 and "exists and is not a directory" in res.stderr
    assert state.read_text() == "not a directory"

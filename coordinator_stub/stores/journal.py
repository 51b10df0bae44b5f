"""The file store's hot document on disk: a snapshot (``state.json``) plus a write-ahead journal (``journal.jsonl``).

One journal line per committed operation, written with one ``write`` and one
fsync: the hot records it changed (``set``), the ids it removed (``del``), the
archive versions it wrote or superseded (``archive``; None: superseded, no
current version), and the small top-level fields (``meta``). Every part sets a
value (never increments), so replaying a line twice is harmless: a crash after
a checkpoint's new snapshot but before the journal was emptied replays to the
same state.

A line a crash cut short (no final newline) was never acknowledged: it is
ignored, and cut (a copy kept in ``journal.torn``) before the next append. Any
other unreadable line is a ``StateError`` and nothing is reset.
"""

from __future__ import annotations

import json
import os

from agent_queue.errors import StateError
from agent_queue.fsutil import write_bytes_atomic
from coordinator_stub.stores.base import STATE_VERSION, SpecSummary, warn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    Archived = dict[str, dict[str, Any] | None]
    Key = tuple[Any, Any]

_READABLE_VERSIONS = (1, 2)


def encode(obj: Any) -> bytes:
    """One compact JSON line: the encoding of every file the store writes.

    Compact, not fsutil's indented form: indent forces json's pure-Python encoder,
    3.5x slower, and the hot file is rewritten at every checkpoint (B3: 25 ms -> 7 ms at 1k queued).
    """
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def read_json_file(path: str | Path) -> Any:
    """Parse ``path``; FileNotFoundError passes through, anything unparseable is a StateError."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable or corrupt ({exc}); fix or move it away, it was not reset") from exc


def read_snapshot(path: Path) -> dict[str, Any] | None:
    """The snapshot's hot document (hot specs as ``SpecSummary``), or None when there is none."""
    try:
        hot = read_json_file(path)
    except FileNotFoundError:
        return None
    if (not isinstance(hot, dict) or not isinstance(hot.get("jobs"), dict)
            or hot.get("version") not in _READABLE_VERSIONS):
        raise StateError(f"{path}: not a coordinator state file (version {STATE_VERSION}); left untouched")
    if hot["version"] == STATE_VERSION:
        for rec in hot["jobs"].values():
            rec["spec"] = SpecSummary(rec["spec"])
    # Version 1 held full specs inline: they read as new records, so the next write moves them out
    # (``Tx.split_specs`` replaces each one's spec, which puts the record in the journal entry).
    return hot


def write_snapshot(path: Path, hot: dict[str, Any]) -> None:
    write_bytes_atomic(path, encode(hot))


def replay(path: Path, data: bytes, hot: dict[str, Any]) -> tuple[Archived, dict[str, None], int]:
    """Apply the journal ``data`` to ``hot``: (archive versions it holds, ids it removed, bytes of whole lines)."""
    archived: Archived = {}
    gone: dict[str, None] = {}
    good = data.rfind(b"\n") + 1  # beyond: a line whose write a crash cut short (never acknowledged)
    lines = data[:good].split(b"\n")[:-1]
    for n, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            apply(hot, archived, entry)
            gone.update(dict.fromkeys(entry["del"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if n == len(lines) and _unparseable(line):
                # The last line only: a power cut may persist a write's end but not all of its
                # middle. It was never acknowledged (its fsync did not return); cut at the next
                # append, with a copy kept in journal.torn.
                warn("%s: last line unreadable, treated as a write a crash cut short", path)
                good -= len(line) + 1
                break
            raise StateError(f"{path}: line {n} is corrupt ({exc}); fix or move it away, it was not reset") from exc
    return archived, gone, good


def apply(hot: dict[str, Any], archived: Archived, entry: dict[str, Any]) -> None:
    """Replay one journal entry. Every part sets a value, so replaying twice is harmless."""
    hot.update(entry["meta"])
    jobs = hot["jobs"]
    for job_id, rec in entry["set"].items():
        rec["spec"] = SpecSummary(rec["spec"])
        jobs[job_id] = rec
    for job_id in entry["del"]:
        jobs.pop(job_id, None)
    archived.update(entry["archive"])


def cut_torn_tail(path: Path, torn_path: Path, good: int) -> None:
    """Cut the journal back to its whole lines; the bytes beyond are appended to ``torn_path`` first."""
    with open(path, "rb") as fh:
        fh.seek(good)
        tail = fh.read()
    with open(torn_path, "ab") as fh:  # kept: never delete what someone may need
        fh.write(tail + b"\n")
    os.truncate(path, good)


def empty(path: Path) -> None:
    """Empty the journal durably (its lines are in the snapshot now)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def identity(path: Path) -> tuple[int, int, int] | None:
    """What changes whenever another process writes ``path`` (a rename gives a new inode)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def key_after(key: Key, journal: os.stat_result) -> Key:
    """The files' identity right after this process appended to the journal (the snapshot is unchanged:
    only a checkpoint replaces it)."""
    return key[0], (journal.st_ino, journal.st_size, journal.st_mtime_ns)


def _unparseable(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return True
    return False


"""The file store's hot document on disk: a snapshot (``state.json``) plus a write-ahead journal (``journal.jsonl``).

One journal line per committed operation, written with one ``write`` and one
fsync: the hot records it changed (``set``), the ids it removed (``del``), the
archive versions it wrote or superseded (``archive``; None: superseded, no
current version), and the small top-level fields (``meta``). Every part sets a
value (never increments), so replaying a line twice is harmless: a crash after
a checkpoint's new snapshot but before the journal was emptied replays to the
same state.

**Checksums.** Each journal line and the snapshot carry a CRC-32 of the JSON
object they hold, written after it as 32 spaces and tabs (one bit each, most
significant first: space 0, tab 1). JSON allows whitespace after a value, so
every reader, the previous version's included, still parses these files as
they are, and a writer of the previous version (a factory not yet upgraded,
sharing the directory) never carries a stale checksum forward: its lines
simply have none. That tells the two kinds of damage apart:

- a line without its final newline is a write a crash cut short: it was never
  acknowledged (its fsync did not return), so it is ignored, and cut (a copy
  kept in ``journal.torn``, at most ``TORN_MAX_BYTES``) before the next append;
- a whole line (newline included) that fails its checksum, or does not parse,
  is damage to an acknowledged operation: a ``StateError`` naming the file and
  line, and nothing is reset or rolled back. The same for the snapshot.

Limit: a power cut on a filesystem that can persist the end of an append but
not its middle (not ext4 in its default ``data=ordered`` mode) makes an
unacknowledged last line look damaged: the store then stops too, and the
operator decides (the line's operation was never answered).

Lines and snapshots without a checksum (the previous version's) are checked
only for parsing; the next checkpoint writes the snapshot with one.
"""

from __future__ import annotations

import os

from agent_queue import cjson
from agent_queue.errors import StateError
from agent_queue.fsutil import write_bytes_atomic
from coordinator_stub.stores.base import STATE_VERSION, SpecSummary, warn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Archived = dict[str, dict[str, Any] | None]
    Key = tuple[Any, Any]

_READABLE_VERSIONS = (1, 2)
_TO_BITS = bytes.maketrans(b" \t", b"01")
_FROM_BITS = str.maketrans("01", " \t")
TORN_MAX_BYTES = 1024 * 1024  # journal.torn keeps torn tails up to this size, then only warns


def encode(obj: Any) -> bytes:
    """One compact JSON line: the encoding of every file the store writes.

    Compact, not fsutil's indented form: indent forces json's pure-Python encoder,
    3.5x slower, and the hot file is rewritten at every checkpoint (B3: 25 ms -> 7 ms at 1k queued).
    """
    return (cjson.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def encode_checked(obj: dict[str, Any]) -> bytes:
    """``encode``, with the object's CRC-32 after it as 32 spaces and tabs (see the module docstring)."""
    from binascii import crc32  # here: ~0.2 ms of start-up a seam call that reads no state (healthz) need not pay

    body = encode(obj)[:-1]
    return body + format(crc32(body), "032b").translate(_FROM_BITS).encode() + b"\n"


def _checked(line: bytes, crc32: Callable[[bytes], int]) -> tuple[bytes, bool | None]:
    """(the JSON object's bytes, whether its checksum matches; None: the line carries none).

    ``crc32``: binascii's, imported once by the caller, not once per journal line.
    """
    tail = line[-32:]
    if len(line) < 34 or line[-33:-32] != b"}" or tail.translate(None, b" \t"):
        return line, None
    body = line[:-32]
    return body, int(tail.translate(_TO_BITS), 2) == crc32(body)


def read_json_file(path: str) -> Any:
    """Parse ``path``; FileNotFoundError passes through, anything unparseable is a StateError."""
    try:
        with open(path, encoding="utf-8") as fh:
            return cjson.loads(fh.read())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable or corrupt ({exc}); fix or move it away, it was not reset") from exc


def read_snapshot(path: str) -> dict[str, Any] | None:
    """The snapshot's hot document (hot specs as ``SpecSummary``), or None when there is none."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: unreadable ({exc}); it was not reset") from exc
    from binascii import crc32  # (zlib's would cost twice the start-up)

    body, good = _checked(data.removesuffix(b"\n"), crc32)
    if good is False:
        raise StateError(f"{path}: fails its checksum (damaged); restore it from a backup or move it away, "
                         "it was not reset")
    try:
        hot = cjson.loads(body)
    except ValueError as exc:
        raise StateError(f"{path}: unreadable or corrupt ({exc}); fix or move it away, it was not reset") from exc
    if (not isinstance(hot, dict) or not isinstance(hot.get("jobs"), dict)
            or hot.get("version") not in _READABLE_VERSIONS):
        raise StateError(f"{path}: not a coordinator state file (version {STATE_VERSION}); left untouched")
    if hot["version"] == STATE_VERSION:
        for rec in hot["jobs"].values():
            rec["spec"] = SpecSummary(rec["spec"])
    # Version 1 held full specs inline: they read as new records, so the next write moves them out
    # (``Tx.split_specs`` replaces each one's spec, which puts the record in the journal entry).
    return hot


def write_snapshot(path: str, hot: dict[str, Any]) -> None:
    write_bytes_atomic(path, encode_checked(hot))


def replay(path: str, data: bytes, hot: dict[str, Any]) -> tuple[Archived, dict[str, None], int]:
    """Apply the journal ``data`` to ``hot``: (archive versions it holds, ids it removed, bytes of whole lines)."""
    archived: Archived = {}
    gone: dict[str, None] = {}
    good = data.rfind(b"\n") + 1  # beyond: a line whose write a crash cut short (never acknowledged)
    lines = data[:good].split(b"\n")[:-1]
    from binascii import crc32

    for n, line in enumerate(lines, 1):
        body, ok = _checked(line, crc32)
        if ok is False:
            raise StateError(f"{path}: line {n} of {len(lines)} fails its checksum: damaged after it was "
                             "acknowledged; the store stops rather than undo it (restore the file, or move it away "
                             "knowingly)")
        try:
            entry = cjson.loads(body)
            apply(hot, archived, entry)
            gone.update(dict.fromkeys(entry["del"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"{path}: line {n} of {len(lines)} is corrupt ({exc}); "
                             "fix or move it away, it was not reset") from exc
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


def cut_torn_tail(path: str, torn_path: str, good: int) -> None:
    """Cut the journal back to its whole lines; the bytes beyond go to ``torn_path`` first, while it has room.

    They were never acknowledged, so keeping them is for inspection only: past
    ``TORN_MAX_BYTES`` (a disk that kept filling up, one torn write per
    operation) or when they cannot be written, they are only logged.
    """
    with open(path, "rb") as fh:
        fh.seek(good)
        tail = fh.read()
    try:
        _keep_torn(torn_path, tail + b"\n")
    except OSError as exc:
        warn("%s: %d torn bytes not kept (%s)", torn_path, len(tail), exc)
    os.truncate(path, good)


def _keep_torn(torn_path: str, data: bytes) -> None:
    fd = os.open(torn_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)  # (one an older version created 0644)
        if os.fstat(fd).st_size + len(data) > TORN_MAX_BYTES:
            warn("%s: full (%d bytes), %d more torn bytes not kept", torn_path, TORN_MAX_BYTES, len(data))
            return
        os.write(fd, data)
    finally:
        os.close(fd)


def empty(path: str) -> None:
    """Empty the journal durably (its lines are in the snapshot now)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def identity(path: str) -> tuple[int, int, int] | None:
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


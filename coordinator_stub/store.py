"""Where the coordinator's state lives: a small Store interface, in memory or in a directory.

The core (``core.py``) sees state only through one ``Tx`` per operation: the
*hot* document (the scheduling record of each queued and leased job, sequence
counter, factories, terminal counts), the write-once *spec* of each live job,
a write-once *archive* of finished jobs and composite parents (looked up by id
in O(1), so an operation's cost never grows with history), and two
append-only logs (events, shadow reports). A transaction commits when its block
exits normally and discards its changes when it raises.

Specs stay out of the hot document (a prompt can be 1 MB, and every process
that opens the state parses the hot document): a hot record's ``spec`` is a
``SpecSummary`` holding only ``SCHED_KEYS`` (what claim order, gates and
families read); ``Tx.spec_of(rec)`` gives the full spec (one file read).

``JsonStore`` layout (dir 0700, files 0600)::

    DIR/state.json            snapshot of the hot document (tmp, fsync, rename, fsync dir at each checkpoint)
    DIR/journal.jsonl         write-ahead log: one fsync'd line per committed operation since the snapshot
    DIR/.lock                 exclusive flock(2) per operation (and per tidy that writes files); never across a spawn
    DIR/jobs/<id>.json        full spec of a queued or leased job, written once at enqueue (durable)
    DIR/archive/<id>.json     write-once: a terminal job or composite parent (its current version, full spec inside)
    DIR/archive/history/<id>.<n>.json  superseded versions (a re-run job, a parent after its verify): kept
    DIR/events.jsonl          one JSON line per operation (see docs/fleet-api.md)
    DIR/shadow-reports.jsonl  one JSON line per shadow report

The commit point of an operation is its journal line (one ``write`` and one
fsync): the hot records it changed, the ids it removed, the archive versions
it wrote or superseded, and the small top-level fields. Before that line: new
spec files and history copies, fsync'd (the line refers to them). Archive
files and spec removals come after the answer, without a sync (lookups consult
the journal's archive versions first): a store built with ``tidy_later``
(``serve``) keeps a commit's bookkeeping for ``tidy()``, called once the answer
is sent, which writes ``TIDY_FILES`` of them each time; other stores write them
in batches of ``MATERIALIZE_BATCH`` finished jobs. When
the journal outgrows the snapshot (and at least ``CHECKPOINT_MIN_BYTES``), or on
``checkpoint()``, a checkpoint writes the rest of those files, makes them and
the logs durable, writes a new snapshot and empties the journal. Every journal
entry sets values (never increments), so a crash between the new snapshot and
the emptied journal replays to the same state. A line a crash cut short (no final newline) was never acknowledged: it
is ignored and cut before the next append; any other unreadable line is a
``StateError`` and nothing is reset. A crash leftover of an older version
(a job both archived and hot) still resolves to the archive in the core.
"""

from __future__ import annotations

import _thread  # not threading: its import is ~1 ms of the seam's per-call start-up (B1)
import bisect
import contextlib
import heapq
import itertools
import json
import os
import re
import sys
from abc import ABC, abstractmethod
from pathlib import Path

from agent_queue.errors import StateError
from agent_queue.fsutil import append_line, ensure_dir, fsync_dir, fsync_file, write_bytes_atomic, write_json_atomic

TYPE_CHECKING = False  # typing stays unimported on the seam's per-call path
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from contextlib import AbstractContextManager as ContextManager
    from typing import Any

    LockFactory = Callable[[Path], ContextManager[Any]]

STATE_VERSION = 2  # 2: hot specs are summaries (SCHED_KEYS); 1 (full specs inline) is read and migrated
_READABLE_VERSIONS = (1, 2)
# The spec keys a hot record keeps: everything the scheduler reads (claim order, capabilities,
# dependencies, composite families). Anything else (prompt, command, env, ...) is in the spec file.
SCHED_KEYS = ("id", "kind", "requires", "priority", "budget", "parentId", "dependsOn", "phase")
# Only names like this can be stored (job ids are validated at enqueue); anything else cannot exist.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def empty_hot() -> dict[str, Any]:
    """The hot document of a fresh coordinator."""
    return {
        "version": STATE_VERSION,
        "seq": 0,
        "jobs": {},
        "factories": {},
        "terminalCounts": {"shipped": 0, "quarantined": 0},
    }


class SpecSummary(dict):  # type: ignore[type-arg]
    """A hot record's spec cut down to ``SCHED_KEYS``; the type marks it as not the full spec."""


def summarize(spec: dict[str, Any]) -> SpecSummary:
    return SpecSummary((k, spec[k]) for k in SCHED_KEYS if k in spec)


QUEUED = "queued"  # JobState.QUEUED.value (the core's enum; the store only needs the word)


def claim_key(rec: dict[str, Any]) -> tuple[int, int]:
    """Claim order: highest priority first, then oldest enqueue (``seq``)."""
    return -rec["spec"].get("priority", 0), rec["seq"]


def _seq(rec: dict[str, Any]) -> int:
    return rec["seq"]  # type: ignore[no-any-return]


class Tx(ABC):
    """One operation's view of the state. ``hot`` may be mutated; call ``touch`` after doing so."""

    hot: dict[str, Any]

    def __init__(self, hot: dict[str, Any], loaded_ids: list[str] | None = None) -> None:
        self.hot = hot
        self._loaded_ids = list(hot["jobs"]) if loaded_ids is None else loaded_ids
        self.dirty = False
        self.events: list[dict[str, Any]] = []
        self.shadows: list[dict[str, Any]] = []
        self.pending_archive: dict[str, dict[str, Any]] = {}
        self.pending_history: set[str] = set()

    def touch(self) -> None:
        self.dirty = True

    def spec_of(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The full spec of a record (a hot record holds only its ``SpecSummary``)."""
        spec = rec["spec"]
        if not isinstance(spec, SpecSummary):
            full: dict[str, Any] = spec
            return full
        return self._load_spec(spec["id"])

    def split_specs(
        self, changed: set[str] | None = None, scan_all: bool = False
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """At commit: (full specs of records new to the hot document, ids whose spec left it).

        New hot records get their spec summarized in place; archived records get
        their full spec back, so an archive file is whole on its own. ``changed``
        (a store that tracks changes): only these ids can be new or gone, unless
        ``scan_all`` (a version-1 snapshot, whose records may all hold full specs).
        """
        jobs = self.hot["jobs"]
        new: dict[str, dict[str, Any]] = {}
        ids = jobs if changed is None or scan_all else [job_id for job_id in changed if job_id in jobs]
        for job_id in ids:
            rec = jobs[job_id]
            if not isinstance(rec["spec"], SpecSummary):
                new[job_id] = rec["spec"]
                rec["spec"] = summarize(rec["spec"])
        for rec in self.pending_archive.values():
            rec["spec"] = self.spec_of(rec)
        was = self.loaded_ids if changed is None else changed
        gone = [job_id for job_id in was if job_id not in jobs]
        return new, gone

    def queued_in_claim_order(self) -> Iterator[dict[str, Any]]:
        """Queued records, highest priority first, then oldest enqueue (a store may keep this order indexed).

        Records the caller changes or removes while iterating may still be yielded as
        they were found; callers re-check what they rely on.
        """
        recs = [r for r in self.hot["jobs"].values() if r["state"] == QUEUED]
        recs.sort(key=claim_key)
        yield from recs

    def leased_records(self) -> list[dict[str, Any]]:
        """Records holding a lease (active or expired), oldest enqueue first."""
        return sorted((r for r in self.hot["jobs"].values() if r["lease"]), key=_seq)

    @property
    def loaded_ids(self) -> list[str]:
        """Ids in the hot document when the transaction began."""
        return self._loaded_ids

    def archived(self, job_id: str) -> dict[str, Any] | None:
        """The archived record of ``job_id`` (also one archived earlier in this transaction)."""
        if job_id in self.pending_archive:
            return self.pending_archive[job_id]
        if job_id in self.pending_history:
            return None
        return self._load_archived(job_id)

    def supersede(self, job_id: str, record: dict[str, Any] | None = None) -> None:
        """Move the current archived version of ``job_id`` to history (kept, never deleted) at commit.

        With ``record``, that becomes the new current version (a parent after its
        verify); without, the id lives in the hot document only (a job re-run).
        """
        if self.archived(job_id) is None:
            raise StateError(f"archive: {job_id!r} is not archived, nothing to supersede")
        if job_id in self.pending_archive and job_id not in self.pending_history:
            # Archived earlier in this same transaction (the reaper quarantined it just now): no
            # stored version exists to keep, so the archiving is simply undone or replaced.
            del self.pending_archive[job_id]
        else:
            self.pending_history.add(job_id)
        if record is not None:
            self.pending_archive[job_id] = record
        self.touch()

    def archive(self, job_id: str, record: dict[str, Any]) -> None:
        """Move ``job_id`` out of the hot document into the write-once archive (at commit)."""
        if self.archived(job_id) is not None:
            raise StateError(f"archive: {job_id!r} is already archived (write-once)")
        self.pending_archive[job_id] = record
        self.hot["jobs"].pop(job_id, None)
        self.touch()

    def event(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)

    def shadow(self, report: dict[str, Any]) -> None:
        self.shadows.append(report)

    @abstractmethod
    def _load_archived(self, job_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def _load_spec(self, job_id: str) -> dict[str, Any]: ...

    @abstractmethod
    def iter_archived(self) -> Iterator[dict[str, Any]]:
        """Every archived record (listing only: O(history) by nature)."""


class Store(ABC):
    @abstractmethod
    def transaction(self) -> ContextManager[Tx]:
        """Exclusive access for one operation; commits on normal exit, discards on exception."""

    def tidy(self) -> None:  # noqa: B027 - an optional hook: most stores leave nothing for later
        """Do what the last operation left for after its answer (a store built to defer it; else nothing)."""


# ---------------------------------------------------------------- memory


class _MemoryTx(Tx):
    def __init__(self, store: MemoryStore) -> None:
        import copy

        super().__init__(copy.deepcopy(store.hot))
        self._store = store

    def _load_archived(self, job_id: str) -> dict[str, Any] | None:
        import copy

        rec = self._store.archive.get(job_id)
        return copy.deepcopy(rec) if rec is not None else None

    def _load_spec(self, job_id: str) -> dict[str, Any]:
        import copy

        if job_id not in self._store.specs:
            raise StateError(f"spec of {job_id!r}: missing")
        return copy.deepcopy(self._store.specs[job_id])

    def iter_archived(self) -> Iterator[dict[str, Any]]:
        import copy

        merged = {**self._store.archive, **self.pending_archive}
        for key in sorted(merged):
            yield copy.deepcopy(merged[key])


class MemoryStore(Store):
    """Everything in process memory: for unit tests and the hypothesis state machine."""

    def __init__(self) -> None:
        self.hot: dict[str, Any] = empty_hot()
        self.archive: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        self.specs: dict[str, dict[str, Any]] = {}  # as JsonStore's jobs/: full specs of hot records
        self.events: list[dict[str, Any]] = []
        self.shadow_reports: list[dict[str, Any]] = []
        self._lock = _thread.allocate_lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock:
            tx = _MemoryTx(self)
            yield tx
            if tx.dirty:
                for job_id in tx.pending_history:
                    self.history.append(self.archive.pop(job_id))
                import copy

                new, gone = tx.split_specs()
                self.specs.update(copy.deepcopy(new))
                self.archive.update(tx.pending_archive)
                self.hot = tx.hot
                for job_id in gone:
                    self.specs.pop(job_id, None)
            self.events.extend(tx.events)
            self.shadow_reports.extend(tx.shadows)


# ---------------------------------------------------------------- directory


def archive_name(job_id: str) -> str | None:
    """File name of an archived id (None: no such id can exist).

    Upper-case letters are escaped so case-insensitive disks (macOS) never collide.
    """
    if ".." in job_id or not _SAFE_NAME.fullmatch(job_id):
        return None
    if job_id.lower() == job_id:  # the common case: nothing to escape
        return job_id + ".json"
    return "".join(f"^{c.lower()}" if c.isupper() else c for c in job_id) + ".json"


def archive_id(name: str) -> str:
    """The job id of an archive file name (the inverse of ``archive_name``)."""
    stem, out, i = name.removesuffix(".json"), [], 0
    while i < len(stem):
        if stem[i] == "^" and i + 1 < len(stem):
            out.append(stem[i + 1].upper())
            i += 2
        else:
            out.append(stem[i])
            i += 1
    return "".join(out)


class LockTimeout(Exception):
    """``flock`` gave up at its deadline. Not an AQError on purpose: ``api.handle`` must not answer it."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


_LOCK_POLL_MAX_S = 0.01


@contextlib.contextmanager
def flock(path: Path, deadline: float | None = None) -> Iterator[None]:
    """Exclusive flock(2) on ``path``: the same lock ``filelock.FileLock`` takes on Unix, minus its costs.

    Every JsonStore user takes it once per operation: the command seam (a fresh
    process, where importing filelock would cost more than the operation) and
    ``serve`` (where FileLock's bookkeeping was ~0.1 ms of a 0.4 ms operation).
    Both exclude each other and ``filelock.FileLock`` on the same file.
    With ``deadline`` (``time.monotonic``), LOCK_NB is polled with short sleeps and
    ``LockTimeout`` raised at the deadline: an in-process caller (the daemon's
    embedded seam) must never hang on a lock a stuck process holds.
    """
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if deadline is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            _flock_until(fd, path, deadline)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _flock_until(fd: int, path: Path, deadline: float) -> None:
    import fcntl
    import time

    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(path) from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, _LOCK_POLL_MAX_S)


class HotRecord(dict):  # type: ignore[type-arg]
    """A hot job record that notes its id in the store's change set whenever it changes.

    This is how a commit knows which records its journal entry must carry without
    comparing 600 records. Only top-level changes are seen: the core replaces nested
    values (``rec["lease"] = {...}``) instead of mutating them in place, and
    ``AQ_STUB_SELFCHECK=1`` (set by the test suite) checks every commit against a
    full reload, so a missed change cannot go unnoticed.
    """

    __slots__ = ("_id", "_changed")

    def __init__(self, data: dict[str, Any], job_id: str, changed: set[str]) -> None:
        super().__init__(data)
        self._id = job_id
        self._changed = changed

    def __reduce__(self) -> Any:  # copies and pickles are plain dicts: the tracking stays with the store
        return (dict, (dict(self),))

    def __setitem__(self, key: str, value: Any) -> None:
        self._changed.add(self._id)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._changed.add(self._id)
        super().__delitem__(key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._changed.add(self._id)
        super().update(*args, **kwargs)

    def pop(self, *args: Any) -> Any:
        self._changed.add(self._id)
        return super().pop(*args)

    def popitem(self) -> Any:
        self._changed.add(self._id)
        return super().popitem()

    def setdefault(self, *args: Any) -> Any:
        self._changed.add(self._id)
        return super().setdefault(*args)

    def clear(self) -> None:
        self._changed.add(self._id)
        super().clear()

    def __ior__(self, other: Any) -> HotRecord:  # type: ignore[misc]
        self._changed.add(self._id)
        super().update(other)
        return self


class HotJobs(dict):  # type: ignore[type-arg]
    """The hot ``jobs`` mapping: adding, replacing or removing a record notes its id (see ``HotRecord``)."""

    __slots__ = ("_changed",)

    def __init__(self, data: dict[str, Any], changed: set[str]) -> None:
        super().__init__(data)
        self._changed = changed

    def __reduce__(self) -> Any:
        return (dict, (dict(self),))

    def __setitem__(self, key: str, value: Any) -> None:
        self._changed.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._changed.add(key)
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self._changed.add(key)
        return super().pop(key, *default)

    def popitem(self) -> Any:
        key, value = super().popitem()
        self._changed.add(key)
        return key, value

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._changed.add(key)
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key in dict(*args, **kwargs):
            self._changed.add(key)
        super().update(*args, **kwargs)

    def clear(self) -> None:
        self._changed.update(self)
        super().clear()


class _ClaimIndex:
    """Queued ids in claim order and the ids holding a lease: what claims and the reaper look for.

    Without it every claim scans and sorts the whole queue (B2: 4.8 ms per request
    at 6,000 queued). A long-lived store keeps it across operations and updates it
    from each commit's changed ids; a fresh process builds it on first use.
    """

    __slots__ = ("order", "key_of", "leased")

    def __init__(self, jobs: dict[str, dict[str, Any]]) -> None:
        self.key_of: dict[str, tuple[int, int, str]] = {}
        self.leased: set[str] = set()
        for job_id, rec in jobs.items():
            self._note(job_id, rec)
        self.order = sorted(self.key_of.values())

    def _note(self, job_id: str, rec: dict[str, Any]) -> tuple[int, int, str] | None:
        if rec["lease"]:
            self.leased.add(job_id)
        if rec["state"] != QUEUED:
            return None
        key = (*claim_key(rec), job_id)
        self.key_of[job_id] = key
        return key

    def update(self, jobs: dict[str, dict[str, Any]], ids: Iterable[str]) -> None:
        for job_id in ids:
            old = self.key_of.pop(job_id, None)
            if old is not None:
                del self.order[bisect.bisect_left(self.order, old)]
            self.leased.discard(job_id)
            rec = jobs.get(job_id)
            key = None if rec is None else self._note(job_id, rec)
            if key is not None:
                bisect.insort(self.order, key)

    def same_as(self, other: _ClaimIndex) -> bool:
        return self.order == other.order and self.leased == other.leased


class _Loaded:
    """The state as of the last read or commit: snapshot plus replayed journal, and what identifies it."""

    __slots__ = ("key", "hot", "archived", "gone", "unwritten", "journal_len", "journal_good", "index", "migrating",
                 "absent", "specs")

    def __init__(self, key: tuple[Any, Any], hot: dict[str, Any], archived: dict[str, dict[str, Any] | None],
                 journal_len: int, journal_good: int) -> None:
        self.key = key
        self.hot = hot
        self.archived = archived  # archive versions the journal holds (files: after answers, or by the checkpoint)
        # Ids the journal removed from the hot document, whose spec files are still to remove (ordered sets).
        self.gone: dict[str, None] = {}
        # Ids in ``archived`` whose file this process has not written (or removed) since: the others are whole
        # in the page cache, so the checkpoint only syncs them. A state read from the files starts with all of
        # them: after a crash, every file the journal holds is rewritten.
        self.unwritten: dict[str, None] = {}
        self.journal_len = journal_len
        self.journal_good = journal_good  # bytes of whole lines; a torn tail beyond is cut at the next append
        self.index: _ClaimIndex | None = None  # built on first use
        # Ids with no archive file. Valid while this state is: another process archives only in a
        # transaction that also appends to the journal, which makes this process re-read everything.
        self.absent: set[str] = set()
        # The bytes of spec files read since (write-once per id), so a report reuses what its claim read: a
        # file read less per job. Bytes, parsed per transaction: no object is shared with an earlier answer.
        self.specs: dict[str, bytes] = {}
        self.migrating = False  # a version-1 snapshot: records may still hold full specs

    def claim_index(self) -> _ClaimIndex:
        if self.index is None:
            self.index = _ClaimIndex(self.hot["jobs"])
        return self.index


class _JsonTx(Tx):
    def __init__(self, store: JsonStore, loaded: _Loaded, changed: set[str]) -> None:
        super().__init__(loaded.hot, loaded_ids=[])  # removals are tracked in ``changed`` instead
        self._store = store
        self._loaded = loaded
        self._changed = changed
        self._journal_archived = loaded.archived
        self._specs: dict[str, dict[str, Any]] = {}  # this transaction's objects: never shared with the next

    def queued_in_claim_order(self) -> Iterator[dict[str, Any]]:
        """The index's order, merged with the records this transaction changed so far (re-read now)."""
        index = self._loaded.claim_index()
        jobs = self.hot["jobs"]
        changed = set(self._changed)
        fresh = sorted((*claim_key(rec), job_id) for job_id in changed
                       if (rec := jobs.get(job_id)) is not None and rec["state"] == QUEUED)
        kept = (key for key in index.order if key[2] not in changed)
        for key in heapq.merge(kept, fresh):
            rec = jobs.get(key[2])
            if rec is not None:
                yield rec

    def leased_records(self) -> list[dict[str, Any]]:
        index = self._loaded.claim_index()
        jobs = self.hot["jobs"]
        changed = self._changed
        out = [jobs[job_id] for job_id in index.leased if job_id not in changed and job_id in jobs]
        out += [rec for job_id in changed if (rec := jobs.get(job_id)) is not None and rec["lease"]]
        return sorted(out, key=_seq)

    def _load_archived(self, job_id: str) -> dict[str, Any] | None:
        if job_id in self._journal_archived:
            rec = self._journal_archived[job_id]
            # A private copy: the core may change what it is given, and this one is shared state.
            return None if rec is None else json.loads(json.dumps(rec))
        absent = self._loaded.absent
        if job_id in absent:  # looked up since the files last changed: still not there
            return None
        found = self._store.read_archive_file(job_id)
        if found is None:
            absent.add(job_id)
        return found

    def _load_spec(self, job_id: str) -> dict[str, Any]:
        if job_id not in self._specs:
            path = self._store.spec_file(job_id)
            cache = self._loaded.specs
            raw = cache.get(job_id)
            if raw is None:
                try:
                    with open(path, "rb") as fh:
                        raw = fh.read()
                except FileNotFoundError:
                    raise StateError(f"{path}: the spec of queued job {job_id!r} is missing") from None
                except OSError as exc:
                    raise StateError(f"{path}: unreadable ({exc})") from exc
                if len(cache) >= _SPEC_CACHE_MAX or sum(map(len, cache.values())) + len(raw) > _SPEC_CACHE_BYTES:
                    cache.clear()  # bounded (a prompt may be 1 MB); the live jobs' specs come back as used
                cache[job_id] = raw
            try:
                spec = json.loads(raw)
            except ValueError as exc:
                raise StateError(f"{path}: unreadable or corrupt ({exc}); fix or move it away") from exc
            if not isinstance(spec, dict) or spec.get("id") != job_id:
                raise StateError(f"{path}: not the spec of {job_id!r}")
            self._specs[job_id] = spec
        return self._specs[job_id]

    def iter_archived(self) -> Iterator[dict[str, Any]]:
        seen = set(self.pending_archive) | set(self._journal_archived)
        yield from self.pending_archive.values()
        for job_id, rec in self._journal_archived.items():
            if rec is not None and job_id not in self.pending_archive:
                yield rec
        for path in sorted(self._store.archive_dir.glob("*.json")):
            if archive_id(path.name) in seen:  # the journal's version wins; the file may be torn
                continue
            rec = _read_json_file(path)
            if isinstance(rec, dict) and rec.get("spec", {}).get("id") not in seen:
                yield rec


class JsonStore(Store):
    """State in a directory, safe for many processes: one lock per operation, one fsync'd journal line per change.

    The hot document lives in ``state.json`` (a snapshot) plus ``journal.jsonl``
    (one line per committed operation: the records it changed, the ids it removed,
    the archive versions it wrote, and the small top-level fields). An operation
    appends one line and fsyncs it, so its cost does not grow with the queue; once
    the journal outgrows the snapshot, a checkpoint folds it into a new snapshot.
    A long-lived process (``serve``) keeps the state in memory between operations
    and re-reads it only when another process changed the files (their identity
    differs from what it last wrote).
    """

    def __init__(self, root: Path, lock: LockFactory = flock, tidy_later: bool = False) -> None:
        self.root = Path(root)
        self.state_path = self.root / "state.json"
        self.journal_path = self.root / "journal.jsonl"
        self.lock_path = self.root / ".lock"
        self.archive_dir = self.root / "archive"
        self.history_dir = self.archive_dir / "history"
        self.jobs_dir = self.root / "jobs"
        self.events_path = self.root / "events.jsonl"
        self.shadow_path = self.root / "shadow-reports.jsonl"
        self._jobs_prefix, self._archive_prefix = os.path.join(self.jobs_dir, ""), os.path.join(self.archive_dir, "")
        self._lock_factory = lock
        self._thread_lock = _thread.allocate_lock()  # threads of one server: serialize before the file lock
        self._changed: set[str] = set()  # ids of hot records changed in the current transaction
        self._loaded: _Loaded | None = None
        # ``tidy_later``: a commit's bookkeeping (memory, archive files, checkpoints) waits for ``tidy()``,
        # which ``serve`` calls once the answer is sent, so the caller does not wait for it (B2). Its files
        # are written only if no other process wrote since (memory is then re-read by the next operation).
        self._tidy_later = tidy_later
        self._untidy: Callable[[], _Loaded] | None = None
        self._selfcheck = os.environ.get("AQ_STUB_SELFCHECK") == "1"
        # A self-check that failed after an answer was sent (in ``tidy``): every later operation fails with
        # it, so a test sees it in an answer and not only in the server's log.
        self._selfcheck_failed: StateError | None = None
        try:
            ensure_dir(self.root)
            ensure_dir(self.archive_dir)
            ensure_dir(self.jobs_dir)
        except OSError as exc:
            raise StateError(f"state dir {self.root}: cannot create ({exc.strerror})") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._thread_lock, self._lock_factory(self.lock_path):
            if self._selfcheck_failed is not None:
                raise self._selfcheck_failed
            self._tidy_now(file_locked=True)
            loaded = self._load()
            self._loaded = None  # until this transaction ends well, memory may differ from disk
            self._changed.clear()
            meta_before = _meta_copy(loaded.hot)
            tx = _JsonTx(self, loaded, self._changed)
            yield tx
            if tx.dirty:
                self._commit(tx, loaded)
            elif self._changed or _meta_copy(tx.hot) != meta_before:
                pass  # changed in memory but not meant to be written: forget it, re-read next time
            else:
                self._loaded = loaded
            self._append_logs(tx)

    def tidy(self) -> None:
        """Finish the last commit's bookkeeping now (``serve``: after the answer is sent; cheap if none is left).

        Memory needs only this process's lock; files (a few archive files, a
        checkpoint) take the file lock too, and only if no other process wrote since.
        """
        if self._untidy is not None:
            with self._thread_lock:
                self._tidy_now(file_locked=False)
                self._read_ahead()

    def _read_ahead(self) -> None:
        """Read what the next claim looks up (the first queued job's spec file and archive miss) while no one waits.

        Without the file lock: both kinds of file are replaced whole (rename), and if
        another process wrote since, the next operation re-reads and drops this state.
        """
        loaded = self._loaded
        if loaded is None or loaded.index is None or not loaded.index.order:
            return
        job_id = loaded.index.order[0][2]
        rec = loaded.hot["jobs"].get(job_id)
        if rec is None:
            return
        tx = _JsonTx(self, loaded, set())
        with contextlib.suppress(StateError, OSError):  # the claim itself reports it
            tx.archived(job_id)
            tx.spec_of(rec)

    def _tidy_now(self, file_locked: bool) -> None:
        remember, self._untidy = self._untidy, None
        if remember is not None:
            self._after_commit(remember, file_locked, fresh=False)

    def _after_commit(self, remember: Callable[[], _Loaded], file_locked: bool, fresh: bool) -> None:
        """Memory after a journal line, then the files due. ``fresh``: no other process can have written since."""
        try:
            after = remember()
            if not self._files_due(after):
                return
            if file_locked:
                self._tidy_files(after, fresh)
            else:
                with self._lock_factory(self.lock_path):
                    self._tidy_files(after, fresh)
        except OSError as exc:  # the operation is durable: the journal rebuilds the rest
            _warn("%s: after the journal line: %s (the next operation re-reads the state)", self.root, exc)
            self._loaded = None
        except BaseException:  # (a failed self-check): memory is not trusted, the next operation re-reads
            self._loaded = None
            raise

    def spec_path(self, job_id: str) -> Path:
        return Path(self.spec_file(job_id))

    def archive_path(self, job_id: str) -> Path:
        return Path(self.archive_file(job_id))

    def spec_file(self, job_id: str) -> str:
        """``spec_path`` as a string: on every operation's path, where building a Path costs more than the read."""
        name = archive_name(job_id)
        if name is None:
            raise StateError(f"spec: {job_id[:40]!r} is not a storable id")
        return self._jobs_prefix + name

    def archive_file(self, job_id: str) -> str:
        name = archive_name(job_id)
        if name is None:
            raise StateError(f"archive: {job_id[:40]!r} is not a storable id")
        return self._archive_prefix + name

    def read_archive_file(self, job_id: str) -> dict[str, Any] | None:
        name = archive_name(job_id)
        if name is None:
            return None
        path = self._archive_prefix + name
        try:
            rec = _read_json_file(path)
        except FileNotFoundError:
            return None
        if not isinstance(rec, dict) or rec.get("spec", {}).get("id") != job_id:
            raise StateError(f"{path}: not an archived record of {job_id!r}")
        return rec

    def read_hot(self) -> dict[str, Any]:
        """The hot document as the next operation would see it (snapshot plus journal), as plain JSON."""
        with self._thread_lock, self._lock_factory(self.lock_path):
            self._tidy_now(file_locked=True)
            loaded = self._load()
            return json.loads(_compact(loaded.hot))  # type: ignore[no-any-return]

    def checkpoint(self) -> None:
        """Fold the journal into ``state.json`` now and write the archive files it holds (``serve`` on stop)."""
        with self._thread_lock, self._lock_factory(self.lock_path):
            self._tidy_now(file_locked=True)
            loaded = self._load()
            if loaded.journal_len == 0 or loaded.migrating:  # nothing to fold; a version-1 state: its next commit
                return
            self._loaded = None
            if loaded.journal_good < loaded.journal_len:  # keep a torn tail's bytes before the journal goes
                self._cut_torn_tail(loaded.journal_good)
            self._checkpoint(loaded)
            loaded.key = self._key()
            self._loaded = loaded

    # ------------------------------------------------------------ reading

    def _key(self) -> tuple[Any, Any]:
        return _identity(self.state_path), _identity(self.journal_path)

    def _load(self) -> _Loaded:
        key = self._key()
        cached = self._loaded
        if cached is not None and cached.key == key:
            if self._selfcheck:
                self._check_against_disk(cached.hot, "memory (before an operation)")
            return cached
        return self._read(key)

    def _read(self, key: tuple[Any, Any]) -> _Loaded:
        hot = self._read_snapshot()
        migrating = hot["version"] != STATE_VERSION
        archived: dict[str, dict[str, Any] | None] = {}
        try:
            with open(self.journal_path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            data = b""
        good = data.rfind(b"\n") + 1  # beyond: a line whose write a crash cut short (never acknowledged)
        lines = data[:good].split(b"\n")[:-1]
        gone: dict[str, None] = {}
        for n, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                _apply(hot, archived, entry)
                gone.update(dict.fromkeys(entry["del"]))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                if n == len(lines) and _unparseable(line):
                    # The last line only: a power cut may persist a write's end but not all of its
                    # middle. It was never acknowledged (its fsync did not return); cut at the next
                    # append, with a copy kept in journal.torn.
                    _warn("%s: last line unreadable, treated as a write a crash cut short", self.journal_path)
                    good -= len(line) + 1
                    break
                raise StateError(f"{self.journal_path}: line {n} is corrupt ({exc}); "
                                 "fix or move it away, it was not reset") from exc
        hot["version"] = STATE_VERSION
        jobs = hot["jobs"]
        hot["jobs"] = HotJobs({job_id: HotRecord(rec, job_id, self._changed) for job_id, rec in jobs.items()},
                              self._changed)
        loaded = _Loaded(key, hot, archived, len(data), good)
        loaded.gone, loaded.unwritten = gone, dict.fromkeys(archived)
        loaded.migrating = migrating
        return loaded

    def _read_snapshot(self) -> dict[str, Any]:
        try:
            hot = _read_json_file(self.state_path)
        except FileNotFoundError:
            return empty_hot()
        if (not isinstance(hot, dict) or not isinstance(hot.get("jobs"), dict)
                or hot.get("version") not in _READABLE_VERSIONS):
            raise StateError(
                f"{self.state_path}: not a coordinator state file (version {STATE_VERSION}); left untouched"
            )
        if hot["version"] == STATE_VERSION:
            for rec in hot["jobs"].values():
                rec["spec"] = SpecSummary(rec["spec"])
        # Version 1 held full specs inline: they read as new records, so the next write moves them out
        # (``split_specs`` replaces each one's spec, which puts the record in the journal entry).
        return hot

    # ------------------------------------------------------------ writing

    def _commit(self, tx: _JsonTx, loaded: _Loaded) -> None:
        """Durable before the caller hears back: one fsync'd journal line is the commit point.

        Order: history copies and new spec files first (durable: the journal line
        refers to them), then the journal line. What the journal can rebuild (archive
        files, removed specs) comes after the answer (``tidy``) or in batches, and at the
        latest with the next checkpoint (``_materialize``): a file created and one removed
        here would cost every report ~0.15 ms on ext4 (B2).
        """
        for job_id in sorted(tx.pending_history):  # copy first: a crash from here on loses no version
            self._keep_history(tx, job_id)
        new, gone = tx.split_specs(self._changed, scan_all=loaded.migrating)
        for job_id, spec in new.items():  # before the journal: never a hot record without its spec
            write_bytes_atomic(self.spec_path(job_id), _compact(spec), sync_dir=False)
            loaded.specs.pop(job_id, None)  # (a re-run job's spec is written anew)
        if new:
            fsync_dir(self.jobs_dir)  # once for all of them (a composite's children)
        jobs = tx.hot["jobs"]
        archived: dict[str, dict[str, Any] | None] = {
            job_id: None for job_id in tx.pending_history if job_id not in tx.pending_archive}
        archived.update(tx.pending_archive)
        removed = sorted(gone)
        entry = {
            "meta": {k: v for k, v in tx.hot.items() if k != "jobs"},
            "set": {job_id: jobs[job_id] for job_id in sorted(self._changed) if job_id in jobs},
            "del": removed,
            "archive": archived,
        }
        if loaded.journal_good < loaded.journal_len:  # cut a torn tail before appending after it
            self._cut_torn_tail(loaded.journal_good)
        journal = append_line(self.journal_path, _compact(entry))

        def remember() -> _Loaded:
            return self._remember(tx, loaded, archived, removed, journal)
        if self._tidy_later:
            self._untidy = remember
        else:
            self._after_commit(remember, file_locked=True, fresh=True)

    def _cut_torn_tail(self, good: int) -> None:
        with open(self.journal_path, "rb") as fh:
            fh.seek(good)
            tail = fh.read()
        with open(self.root / "journal.torn", "ab") as fh:  # kept: never delete what someone may need
            fh.write(tail + b"\n")
        os.truncate(self.journal_path, good)

    def _remember(self, tx: _JsonTx, loaded: _Loaded, archived: dict[str, dict[str, Any] | None],
                  gone: list[str], journal: os.stat_result) -> _Loaded:
        """Memory after the journal line: the new state and its claim index, kept for the next operation."""
        jobs = tx.hot["jobs"]
        loaded.archived.update(archived)  # lookups read these before any archive file
        loaded.unwritten.update(dict.fromkeys(archived))  # (also a newer version than a file written earlier)
        loaded.gone.update(dict.fromkeys(gone))
        for job_id in archived:  # its record holds the spec now: only live jobs' specs stay cached
            loaded.specs.pop(job_id, None)
        if not isinstance(jobs, HotJobs):
            jobs = tx.hot["jobs"] = HotJobs(jobs, self._changed)
        for job_id in self._changed:  # records new to memory start being tracked
            rec = jobs.get(job_id)
            if rec is not None and not isinstance(rec, HotRecord):
                dict.__setitem__(jobs, job_id, HotRecord(rec, job_id, self._changed))
        loaded.key = _key_after(loaded.key, journal)
        loaded.journal_len = loaded.journal_good = journal.st_size
        loaded.migrating = False  # this commit moved every full spec out of the hot document
        if loaded.index is not None:
            loaded.index.update(jobs, self._changed)
        loaded.absent.difference_update(archived)
        self._loaded = loaded
        return loaded

    def _checkpoint_due(self, after: _Loaded) -> bool:
        snapshot = 0 if after.key[0] is None else after.key[0][1]
        return snapshot == 0 or after.journal_len > max(CHECKPOINT_MIN_BYTES, snapshot)  # the first commit writes it

    def _files_due(self, after: _Loaded) -> bool:
        if self._tidy_later:  # a few files after each answer: the caller is not waiting for them
            return bool(after.unwritten or after.gone) or self._checkpoint_due(after) or self._selfcheck
        return len(after.unwritten) >= MATERIALIZE_BATCH or self._checkpoint_due(after) or self._selfcheck

    def _tidy_files(self, after: _Loaded, fresh: bool) -> None:
        """The files due after a commit, under the file lock: a checkpoint, or archive files and spec removals."""
        if not fresh and self._key() != after.key:
            return  # another process wrote since: the next operation reads the files afresh
        if self._checkpoint_due(after):
            self._checkpoint(after)
            after.key = self._key()
        elif self._tidy_later:
            self._materialize(after, TIDY_FILES)
        elif len(after.unwritten) >= MATERIALIZE_BATCH:
            self._materialize(after)
        if self._selfcheck:
            self._check_remembered(after)

    def _check_remembered(self, after: _Loaded) -> None:
        """Self-check (AQ_STUB_SELFCHECK=1): what this process keeps in memory must match the files."""
        try:
            self._check_memory(after)
        except StateError as exc:
            if self._tidy_later:  # maybe after the answer: fail every later operation with it
                self._selfcheck_failed = exc
            raise

    def _check_memory(self, after: _Loaded) -> None:
        self._check_against_disk(after.hot, "memory (after a commit)")
        if after.index is not None and not after.index.same_as(_ClaimIndex(after.hot["jobs"])):
            raise StateError(f"{self.root}: self-check failed: the claim index differs from the records")
        if any(self.read_archive_file(i) is not None for i in after.absent if i not in after.archived):
            raise StateError(f"{self.root}: self-check failed: an id known absent is archived")
        if any(self.spec_path(i).read_bytes() != raw for i, raw in after.specs.items()):
            raise StateError(f"{self.root}: self-check failed: a cached spec differs from its file")
        if any(self.read_archive_file(i) != rec for i, rec in after.archived.items() if i not in after.unwritten):
            raise StateError(f"{self.root}: self-check failed: an archive file differs from its journal record")

    def _checkpoint(self, loaded: _Loaded) -> None:
        """Fold the journal into a new snapshot; everything it could rebuild is made durable first.

        A crash after the new snapshot but before the journal is emptied replays
        the journal over a snapshot that already holds it: every entry sets values
        (never increments), so the result is the same.
        """
        bulk = _SYNC_IS_A_BARRIER
        self._materialize(loaded)
        if bulk:
            os.sync()  # one barrier for every file above and the logs: ~3 ms, where 200 fsyncs take ~30 ms
        else:
            for job_id, rec in loaded.archived.items():  # written earlier without a sync
                if rec is not None:
                    fsync_file(self.archive_path(job_id))
            fsync_dir(self.archive_dir)
            for path in (self.events_path, self.shadow_path):
                fsync_file(path)
        write_bytes_atomic(self.state_path, _compact(loaded.hot))
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        loaded.archived.clear()
        loaded.journal_len = loaded.journal_good = 0

    def _materialize(self, loaded: _Loaded, limit: int | None = None) -> None:
        """Write the archive files the journal holds and remove the specs it let go; no sync (the checkpoint's).

        All of them at a checkpoint. Between checkpoints, a process serving one
        operation at a time writes every ``MATERIALIZE_BATCH`` finished jobs (no single
        operation waits for thousands of files); ``serve`` writes ``limit`` after each answer.
        """
        for job_id in _take(loaded.unwritten, limit):
            rec = loaded.archived[job_id]
            if rec is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.archive_file(job_id))
            else:
                write_bytes_atomic(self.archive_path(job_id), _compact(rec), durable=False)
            del loaded.unwritten[job_id]
        jobs = loaded.hot["jobs"]
        for job_id in _take(loaded.gone, limit):  # a leftover spec file is harmless (never read): no fsync of its own
            if job_id not in jobs:  # (a re-run job is hot again, with its spec file written anew)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spec_file(job_id))
                loaded.specs.pop(job_id, None)
            del loaded.gone[job_id]

    def _append_logs(self, tx: Tx) -> None:
        try:
            self._write_logs(tx)
        except OSError as exc:  # after the state: the operation took effect, so it is still answered
            _warn("%s: event log line(s) not written: %s", self.root, exc)

    def _write_logs(self, tx: Tx) -> None:
        """The audit logs: written at once (a crashed process loses no line), fsync'd at each checkpoint.

        The state, not the log, is what must survive a power cut; an fsync per line
        would double the cost of every operation (B2). After a power cut the lines of
        the operations since the last checkpoint may be missing; the state is whole.
        """
        for path, lines in ((self.events_path, tx.events), (self.shadow_path, tx.shadows)):
            if lines:
                append_line(path, "\n".join(json.dumps(x, sort_keys=True) for x in lines), durable=False)

    def _keep_history(self, tx: _JsonTx, job_id: str) -> None:
        """Copy the current archived version of ``job_id`` to the first free ``archive/history/<id>.<n>.json``."""
        rec = tx._load_archived(job_id)
        if rec is None:
            raise StateError(f"archive: {job_id!r} has no current version to keep")
        name = archive_name(job_id)
        ensure_dir(self.history_dir)
        stem = str(name)[: -len(".json")]
        n = 1
        while (self.history_dir / f"{stem}.{n}.json").exists():
            n += 1
        write_json_atomic(self.history_dir / f"{stem}.{n}.json", rec)

    def _check_against_disk(self, hot: dict[str, Any], what: str) -> None:
        """Self-check (AQ_STUB_SELFCHECK=1): the state in memory must equal a fresh read of the files."""
        disk = self._read(self._key()).hot
        if _compact(disk) != _compact(hot):
            raise StateError(f"{self.root}: self-check failed: {what} differs from the files "
                             "(a change the journal did not carry)")


# Linux's sync(2) returns once everything is on disk; elsewhere (macOS) it may return before, so each
# file is fsync'd instead.
_SYNC_IS_A_BARRIER = sys.platform.startswith("linux")
CHECKPOINT_MIN_BYTES = 64 * 1024  # below this the journal is cheap to replay whatever the snapshot's size
MATERIALIZE_BATCH = 128  # finished jobs whose files are written together between checkpoints
TIDY_FILES = 4  # archive files (and as many spec removals) ``serve`` writes after each answer
_SPEC_CACHE_MAX, _SPEC_CACHE_BYTES = 256, 8 * 1024 * 1024  # spec files kept between operations, then dropped


def _apply(hot: dict[str, Any], archived: dict[str, dict[str, Any] | None], entry: dict[str, Any]) -> None:
    """Replay one journal entry. Every part sets a value, so replaying twice is harmless."""
    hot.update(entry["meta"])
    jobs = hot["jobs"]
    for job_id, rec in entry["set"].items():
        rec["spec"] = SpecSummary(rec["spec"])
        jobs[job_id] = rec
    for job_id in entry["del"]:
        jobs.pop(job_id, None)
    archived.update(entry["archive"])


def _take(ids: dict[str, None], limit: int | None) -> list[str]:
    """The first ``limit`` ids (all with None), in the order they were added; a copy, so the caller may remove."""
    return list(ids) if limit is None else list(itertools.islice(ids, limit))


def _warn(msg: str, *args: Any) -> None:
    import logging  # not at module level: the seam's per-call start-up would pay ~8 ms for it (B1)

    logging.getLogger(__name__).warning(msg, *args)


def _unparseable(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return True
    return False


def _meta_copy(hot: dict[str, Any]) -> dict[str, Any]:
    """The small top-level fields, copied one level deep (their dicts hold numbers only): cheap to compare."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in hot.items() if k != "jobs"}


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What changes whenever another process writes ``path`` (a rename gives a new inode)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _key_after(key: tuple[Any, Any], journal: os.stat_result) -> tuple[Any, Any]:
    """The files' identity right after this process appended to the journal (state.json is unchanged:
    only a checkpoint replaces it)."""
    return key[0], (journal.st_ino, journal.st_size, journal.st_mtime_ns)


def _compact(obj: Any) -> bytes:
    # Compact, not fsutil's indented form: indent forces json's pure-Python encoder, 3.5x slower,
    # and the hot file is rewritten by every operation (benchmark B3: 25 ms -> 7 ms at 1k queued).
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _read_json_file(path: str | Path) -> Any:
    """Parse ``path``; FileNotFoundError passes through, anything unparseable is a StateError."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable or corrupt ({exc}); fix or move it away, it was not reset") from exc

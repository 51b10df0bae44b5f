"""Where the coordinator's state lives: a small Store interface, in memory or in a directory.

The core (``core.py``) sees state only through one ``Tx`` per operation: the
*hot* document (the scheduling record of each queued and leased job, sequence
counter, factories, terminal counts), the write-once *spec* of each live job,
a write-once *archive* of finished jobs and composite parents (looked up by id
in O(1), so an operation's cost never grows with history), and two
append-only logs (events, shadow reports). A transaction commits when its block
exits normally and discards its changes when it raises.

Specs stay out of the hot document (a prompt can be 1 MB, and every operation
parses and rewrites the hot document): a hot record's ``spec`` is a
``SpecSummary`` holding only ``SCHED_KEYS`` (what claim order, gates and
families read); ``Tx.spec_of(rec)`` gives the full spec (one file read).

``JsonStore`` layout (dir 0700, files 0600)::

    DIR/state.json            hot document, replaced atomically (tmp, fsync, rename, fsync dir)
    DIR/.lock                 one exclusive lock per operation (flock(2); never held across a spawn)
    DIR/jobs/<id>.json        full spec of a queued or leased job, written once at enqueue
    DIR/archive/<id>.json     write-once: a terminal job or composite parent (its current version, full spec inside)
    DIR/archive/history/<id>.<n>.json  superseded versions (a re-run job, a parent after its verify): kept
    DIR/events.jsonl          one JSON line per operation (see docs/fleet-api.md)
    DIR/shadow-reports.jsonl  one JSON line per shadow report

Crash order: spec files first, then archive files, then the hot file, then
the removal of spec files whose job left the hot document, then the log
lines. So a hot record never exists without its spec. A crash before the hot
write leaves a spec file nothing refers to: harmless (never read), and
replaced if the same id is enqueued again. A crash between the archive and
hot writes leaves a job in both places; the archive wins (the core drops the
stale hot copy the next time it meets it, and its spec file goes then), so a
finished job never runs again and nothing is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from abc import ABC, abstractmethod
from pathlib import Path

from agent_queue.errors import StateError
from agent_queue.fsutil import append_line, ensure_dir, fsync_dir, write_bytes_atomic, write_json_atomic

TYPE_CHECKING = False  # typing stays unimported on the seam's per-call path
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
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


class Tx(ABC):
    """One operation's view of the state. ``hot`` may be mutated; call ``touch`` after doing so."""

    hot: dict[str, Any]

    def __init__(self, hot: dict[str, Any]) -> None:
        self.hot = hot
        self._loaded_ids = list(hot["jobs"])
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

    def split_specs(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """At commit: (full specs of records new to the hot document, ids whose spec left it).

        New hot records get their spec summarized in place; archived records get
        their full spec back, so an archive file is whole on its own.
        """
        new: dict[str, dict[str, Any]] = {}
        for job_id, rec in self.hot["jobs"].items():
            if not isinstance(rec["spec"], SpecSummary):
                new[job_id] = rec["spec"]
                rec["spec"] = summarize(rec["spec"])
        for rec in self.pending_archive.values():
            rec["spec"] = self.spec_of(rec)
        gone = [job_id for job_id in self.loaded_ids if job_id not in self.hot["jobs"]]
        return new, gone

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
        self._lock = threading.Lock()

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
    return "".join(f"^{c.lower()}" if c.isupper() else c for c in job_id) + ".json"


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    """Exclusive flock(2) on ``path``: the same lock ``filelock.FileLock`` takes on Unix, minus its import cost.

    The command seam runs once per operation as a fresh process, where importing
    filelock would cost more than the whole operation; both exclude each other.
    """
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def filelock_lock(path: Path) -> ContextManager[Any]:
    """The default lock: ``filelock.FileLock`` (portable, used by long-running processes)."""
    from filelock import FileLock

    return FileLock(str(path), mode=0o600)


class _JsonTx(Tx):
    def __init__(self, store: JsonStore, hot: dict[str, Any]) -> None:
        super().__init__(hot)
        self._store = store
        self._specs: dict[str, dict[str, Any]] = {}  # read at most once per transaction

    def _load_archived(self, job_id: str) -> dict[str, Any] | None:
        name = archive_name(job_id)
        if name is None:
            return None
        path = self._store.archive_dir / name
        try:
            rec = _read_json_file(path)
        except FileNotFoundError:
            return None
        if not isinstance(rec, dict) or rec.get("spec", {}).get("id") != job_id:
            raise StateError(f"{path}: not an archived record of {job_id!r}")
        return rec

    def _load_spec(self, job_id: str) -> dict[str, Any]:
        if job_id not in self._specs:
            path = self._store.spec_path(job_id)
            try:
                spec = _read_json_file(path)
            except FileNotFoundError:
                raise StateError(f"{path}: the spec of queued job {job_id!r} is missing") from None
            if not isinstance(spec, dict) or spec.get("id") != job_id:
                raise StateError(f"{path}: not the spec of {job_id!r}")
            self._specs[job_id] = spec
        return self._specs[job_id]

    def iter_archived(self) -> Iterator[dict[str, Any]]:
        seen = set(self.pending_archive)
        yield from self.pending_archive.values()
        for path in sorted(self._store.archive_dir.glob("*.json")):
            rec = _read_json_file(path)
            if isinstance(rec, dict) and rec.get("spec", {}).get("id") not in seen:
                yield rec


class JsonStore(Store):
    """State in a directory, safe for many processes (one lock per operation, atomic writes)."""

    def __init__(self, root: Path, lock: LockFactory = filelock_lock) -> None:
        self.root = Path(root)
        self.state_path = self.root / "state.json"
        self.lock_path = self.root / ".lock"
        self.archive_dir = self.root / "archive"
        self.history_dir = self.archive_dir / "history"
        self.jobs_dir = self.root / "jobs"
        self.events_path = self.root / "events.jsonl"
        self.shadow_path = self.root / "shadow-reports.jsonl"
        self._lock_factory = lock
        self._thread_lock = threading.Lock()  # threads of one server: serialize before the file lock
        try:
            ensure_dir(self.root)
            ensure_dir(self.archive_dir)
            ensure_dir(self.jobs_dir)
        except OSError as exc:
            raise StateError(f"state dir {self.root}: cannot create ({exc.strerror})") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._thread_lock, self._lock_factory(self.lock_path):
            tx = _JsonTx(self, self._load_hot())
            yield tx
            self._commit(tx)

    def spec_path(self, job_id: str) -> Path:
        name = archive_name(job_id)
        if name is None:
            raise StateError(f"spec: {job_id[:40]!r} is not a storable id")
        return self.jobs_dir / name

    def _load_hot(self) -> dict[str, Any]:
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
        # Version 1 held full specs inline: they read as new records, so the next write moves them out.
        hot["version"] = STATE_VERSION
        return hot

    def _commit(self, tx: Tx) -> None:
        if tx.dirty:
            for job_id in sorted(tx.pending_history):  # copy first: a crash from here on loses no version
                self._keep_history(job_id)
            new, gone = tx.split_specs()
            for job_id, spec in new.items():  # before the hot file: never a hot record without its spec
                write_bytes_atomic(self.spec_path(job_id), _compact(spec), sync_dir=False)
            if new:
                fsync_dir(self.jobs_dir)  # once for all of them (a composite's children)
            for job_id, rec in tx.pending_archive.items():
                name = archive_name(job_id)
                if name is None:
                    raise StateError(f"archive: {job_id[:40]!r} is not a storable id")
                write_json_atomic(self.archive_dir / name, rec)
            write_bytes_atomic(self.state_path, _compact(tx.hot))
            for job_id in sorted(tx.pending_history - set(tx.pending_archive)):
                # Back in the hot document: the current file goes (its copy is in history). A crash
                # before this line leaves both; the archive wins, so the re-run simply did not happen.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.archive_dir / str(archive_name(job_id)))
            for job_id in gone:  # after the hot file; a leftover is harmless, so no fsync
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spec_path(job_id))
            if tx.pending_history - set(tx.pending_archive):
                fsync_dir(self.archive_dir)  # a re-run's archive file must not come back after a power cut
        for path, lines in ((self.events_path, tx.events), (self.shadow_path, tx.shadows)):
            if lines:
                append_line(path, "\n".join(json.dumps(x, sort_keys=True) for x in lines))


    def _keep_history(self, job_id: str) -> None:
        """Copy ``archive/<id>.json`` to the first free ``archive/history/<id>.<n>.json``."""
        name = archive_name(job_id)
        if name is None:
            raise StateError(f"archive: {job_id[:40]!r} is not a storable id")
        rec = _read_json_file(self.archive_dir / name)
        ensure_dir(self.history_dir)
        stem = name[: -len(".json")]
        n = 1
        while (self.history_dir / f"{stem}.{n}.json").exists():
            n += 1
        write_json_atomic(self.history_dir / f"{stem}.{n}.json", rec)


def _compact(obj: Any) -> bytes:
    # Compact, not fsutil's indented form: indent forces json's pure-Python encoder, 3.5x slower,
    # and the hot file is rewritten by every operation (benchmark B3: 25 ms -> 7 ms at 1k queued).
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _read_json_file(path: Path) -> Any:
    """Parse ``path``; FileNotFoundError passes through, anything unparseable is a StateError."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable or corrupt ({exc}); fix or move it away, it was not reset") from exc

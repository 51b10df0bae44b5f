"""JsonStore: the coordinator's state in a directory, safe for many processes (the embedded default).

Layout (dir 0700, files 0600)::

    DIR/state.json            snapshot of the hot document (tmp, fsync, rename, fsync dir at each checkpoint)
    DIR/journal.jsonl         write-ahead log: one fsync'd line per committed operation since the snapshot
    DIR/journal.torn          bytes of torn journal tails (never acknowledged), kept for inspection
    DIR/.lock                 exclusive flock(2) per operation (and per tidy that writes files); never across a spawn;
                              holds a few bytes of stall bookkeeping (``locking``)
    DIR/jobs/, DIR/archive/   per-job files (``job_files``)
    DIR/events.jsonl          one JSON line per operation (see docs/fleet-api.md)
    DIR/shadow-reports.jsonl  one JSON line per shadow report

How it keeps the contract of ``base``: every operation takes the lock
(isolation); its commit point is one journal line, one ``write`` and one fsync
(atomic and durable before the answer); new spec files and history copies
come before that line, fsync'd (the line refers to them). Archive files and
spec removals come after the answer, without a sync (lookups consult the
journal's archive versions first): a store built with ``tidy_later``
(``serve``) keeps a commit's bookkeeping for ``tidy()``, called once the
answer is sent, which writes ``TIDY_FILES`` of them each time; other stores
write them in batches of ``MATERIALIZE_BATCH`` finished jobs. When the journal
outgrows the snapshot (and at least ``CHECKPOINT_MIN_BYTES``, four times that under ``serve``), or on
``checkpoint()``, a checkpoint writes the rest of those files, makes them and
the logs durable, writes a new snapshot and empties the journal (``journal``
says why a crash anywhere in between replays to the same state). A crash
leftover of an older version (a job both archived and hot) still resolves to
the archive in the core.

Nothing is created before it is needed: the directory comes with the first
operation that writes (an operation on a directory that does not exist runs
on the empty state, and if it writes, it runs again once the directory is
there), and its first snapshot comes before anything refers to it. So a
missing ``state.json`` in a directory with a journal or job files is damage
(a ``StateError``), never a new coordinator.
"""

from __future__ import annotations

import _thread  # not threading: its import is ~1 ms of the seam's per-call start-up (B1)
import itertools
import os
import sys

from agent_queue import cjson, ctxlib  # not json, contextlib: their imports are ~7 ms of a seam call (B1)
from agent_queue.errors import ConfigError, StateError
from agent_queue.fsutil import append_line, ensure_dir, fsync_dir, fsync_file
from coordinator_stub.stores import journal
from coordinator_stub.stores.base import STATE_VERSION, Retry, Store, WouldBlock, empty_hot, warn
from coordinator_stub.stores.file_tx import FileTx, Loaded
from coordinator_stub.stores.job_files import JobFiles
from coordinator_stub.stores.locking import LockHold, flock
from coordinator_stub.stores.tracking import HotJobs, HotRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from typing import Any

    from coordinator_stub.stores.base import LogReader, Tx
    from coordinator_stub.stores.group_commit import GroupCommit
    from coordinator_stub.stores.locking import LockFactory

# Linux's sync(2) returns once everything is on disk; elsewhere (macOS) it may return before, so each
# file is fsync'd instead.
_SYNC_IS_A_BARRIER = sys.platform.startswith("linux")
# Below this the journal is cheap to replay whatever the snapshot's size. A store read afresh by each
# operation (a seam call, a CLI command) replays it every time: ~16 us a line, so 64 KB (~80 lines) was
# up to ~1.3 ms of each seam call (B1). ``serve`` replays it only when another process wrote: it keeps
# KEPT_CHECKPOINT_FACTOR times as much, and checkpoints (which write the whole snapshot) that much less.
CHECKPOINT_MIN_BYTES = 16 * 1024
KEPT_CHECKPOINT_FACTOR = 4
MATERIALIZE_BATCH = 128  # finished jobs whose files are written together between checkpoints
TIDY_FILES = 4  # archive files (and as many spec removals) ``serve`` writes after each answer


class JsonStore(Store):
    """State in a directory, safe for many processes: one lock per operation, one fsync'd journal line per change.

    An operation appends one line and fsyncs it, so its cost does not grow with
    the queue; once the journal outgrows the snapshot, a checkpoint folds it into
    a new snapshot. A long-lived process (``serve``) keeps the state in memory
    between operations and re-reads it only when another process changed the
    files (their identity differs from what it last wrote).
    """

    def __init__(self, root: str | os.PathLike[str], lock: LockFactory = flock, tidy_later: bool = False,
                 must_exist: bool = False, group_commit: bool = False) -> None:
        """``must_exist``: the directory must be there already (a command that only reads or reaps a store).

        ``group_commit`` (``serve``): concurrent operations share one journal sync
        (``group_commit``); each still returns only once its own line is durable.

        Paths are strings (``os.path``): a seam call builds a store per process, and
        pathlib's import is ~3.5 ms of it (B1).
        """
        self.root = os.fspath(root)
        self.state_path = os.path.join(self.root, "state.json")
        self.journal_path = os.path.join(self.root, "journal.jsonl")
        self.torn_path = os.path.join(self.root, "journal.torn")
        self.lock_path = os.path.join(self.root, ".lock")
        self.events_path = os.path.join(self.root, "events.jsonl")
        self.shadow_path = os.path.join(self.root, "shadow-reports.jsonl")
        self.files = JobFiles(self.root)
        self._lock_factory = lock
        self._thread_lock = _thread.allocate_lock()  # threads of one server: serialize before the file lock
        self._changed: set[str] = set()  # ids of hot records changed in the current transaction
        self._loaded: Loaded | None = None
        # ``tidy_later``: a commit's bookkeeping (memory, archive files, checkpoints) waits for ``tidy()``,
        # which ``serve`` calls once the answer is sent, so the caller does not wait for it (B2). Its files
        # are written only if no other process wrote since (memory is then re-read by the next operation).
        self._tidy_later = tidy_later
        self._untidy: Callable[[], Loaded] | None = None
        self._selfcheck = os.environ.get("AQ_STUB_SELFCHECK") == "1"
        # A self-check that failed after an answer was sent (in ``tidy``): every later operation fails with
        # it, so a test sees it in an answer and not only in the server's log.
        self._selfcheck_failed: StateError | None = None
        self._layout_made = False
        self._group: GroupCommit | None = None
        if group_commit:
            from coordinator_stub.stores.group_commit import GroupCommit  # (threading: never on the seam's path)

            self._group = GroupCommit(self._sync_journal, self.journal_path)
        self._deferred = False  # ``defer_durability``: the caller waits for the sync, not the transaction
        self._waitless = False  # in ``nowait`` mode: raise WouldBlock rather than wait (``serve``'s event loop)
        if must_exist and self._is_new():
            raise ConfigError(f"state dir {self.root}: no such directory (a coordinator's state is created by "
                              "its first enqueue, call or serve)")

    def ensure(self) -> None:
        """Create the directory if missing and read the state once (``serve``: refuse to start, rather than fail
        every request, on a directory it cannot use: one it cannot create, a missing snapshot, a damaged journal)."""
        self._make_layout()
        self.read_hot()

    @ctxlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        ticket = 0
        with self._store_thread_lock():
            if self._is_new():  # a new coordinator: nothing to lock or read yet
                if self._waitless:
                    raise WouldBlock(f"{self.root}: not created yet")
                self._changed.clear()
                tx = FileTx(self.files, self._read((None, None)), self._changed)
                yield tx
                if tx.dirty:  # now there is something to write: in a directory, under its lock, read afresh
                    self._layout_made = False
                    self._make_layout()
                    raise Retry(f"{self.root}: created")
                return  # nothing written, not even the directory (its event line has nowhere to go)
            with self._file_lock() as hold:
                if self._selfcheck_failed is not None:
                    raise self._selfcheck_failed
                if self._group is not None:
                    self._group.check()  # a failed sync: nothing more until a restart reads the journal
                self._tidy_now(file_locked=True)  # (nowait: a due checkpoint raises WouldBlock here)
                loaded = self._load()
                self._loaded = None  # until this transaction ends well, memory may differ from disk
                self._changed.clear()
                meta_before = _meta_copy(loaded.hot)
                tx = FileTx(self.files, loaded, self._changed)
                if isinstance(hold, LockHold):
                    tx.stall = hold.stall()
                yield tx
                if tx.dirty:
                    ticket = self._commit(tx, loaded)
                elif self._changed or _meta_copy(tx.hot) != meta_before:
                    pass  # changed in memory but not meant to be written: forget it, re-read next time
                else:
                    self._loaded = loaded
                self._append_logs(tx)
                if isinstance(hold, LockHold):
                    hold.reported = True  # the core has credited its stall (a failed transaction: the next one)
        if ticket and not self._deferred:  # group commit: durable before the caller hears back, outside the locks
            self._group.wait(ticket)  # type: ignore[union-attr]

    def defer_durability(self) -> GroupCommit | None:
        """With group commit, operations stop waiting for their sync; the caller waits on the returned watermark."""
        if self._group is not None:
            self._deferred = True
        return self._group

    def nowait(self) -> Callable[[], AbstractContextManager[None]] | None:
        """``serve`` with group commit and the file lock: claims and reports may run on its event loop.

        In that mode nothing waits: a lock held by another process, a state another
        process changed (a disk read) or a due checkpoint raise ``WouldBlock`` before
        anything is done, and the sync is the caller's. The last commit's tidy, if
        still pending, is done first, as off the loop: it is a few small files, and
        refusing for it sent every operation after a concurrent one to the thread.
        """
        if not self._deferred or self._lock_factory is not flock:
            return None
        return self._without_waiting

    @ctxlib.contextmanager
    def _without_waiting(self) -> Iterator[None]:
        self._waitless = True
        try:
            yield
        finally:
            self._waitless = False

    def tidy(self) -> None:
        """Finish the last commit's bookkeeping now (``serve``: after the answer is sent; cheap if none is left).

        Memory needs only this process's lock; files (a few archive files, a
        checkpoint) take the file lock too, and only if no other process wrote since.
        """
        if self._untidy is not None:
            with self._store_thread_lock():
                self._tidy_now(file_locked=False)
                self._read_ahead()

    def log_readers(self, backfill_bytes: int) -> tuple[LogReader, LogReader]:
        """``events.jsonl`` and ``shadow-reports.jsonl``, tailed (``serve`` only: the seam never loads pathlib)."""
        from pathlib import Path

        from coordinator_stub.stores.log_tail import LogTail

        return LogTail(Path(self.events_path), backfill_bytes), LogTail(Path(self.shadow_path), backfill_bytes)

    def read_hot(self) -> dict[str, Any]:
        """The hot document as the next operation would see it (snapshot plus journal), as plain JSON."""
        if self._is_new():
            return cjson.loads(journal.encode(empty_hot()))  # type: ignore[no-any-return]
        with self._thread_lock, self._lock_factory(self.lock_path):
            self._tidy_now(file_locked=True)
            loaded = self._load()
            return cjson.loads(journal.encode(loaded.hot))  # type: ignore[no-any-return]

    def checkpoint(self) -> None:
        """Fold the journal into ``state.json`` now and write the archive files it holds (``serve`` on stop)."""
        if self._is_new():
            return
        with self._thread_lock, self._lock_factory(self.lock_path):
            if self._group is not None:
                self._group.check()
            self._tidy_now(file_locked=True)
            loaded = self._load()
            if loaded.journal_len == 0 or loaded.migrating:  # nothing to fold; a version-1 state: its next commit
                return
            self._loaded = None
            if loaded.journal_good < loaded.journal_len:  # keep a torn tail's bytes before the journal goes
                journal.cut_torn_tail(self.journal_path, self.torn_path, loaded.journal_good)
            self._checkpoint(loaded)
            loaded.key = self._key()
            self._loaded = loaded

    @ctxlib.contextmanager
    def _store_thread_lock(self) -> Iterator[None]:
        """This process's lock (threads of one server); in ``nowait`` mode only if free at once."""
        if not self._thread_lock.acquire(not self._waitless):
            raise WouldBlock(f"{self.root}: in use by another thread")
        try:
            yield
        finally:
            self._thread_lock.release()

    def _file_lock(self) -> AbstractContextManager[Any]:
        return flock(self.lock_path, nowait=True) if self._waitless else self._lock_factory(self.lock_path)

    # ------------------------------------------------------------ reading

    def _is_new(self) -> bool:
        """No state directory yet (a new coordinator); something else in its place is an error."""
        if os.path.isdir(self.root):
            return False
        if os.path.lexists(self.root):
            raise StateError(f"state dir {self.root}: exists and is not a directory")
        return True

    def _key(self) -> journal.Key:
        return journal.identity(self.state_path), journal.identity(self.journal_path)

    def _load(self) -> Loaded:
        key = self._key()
        cached = self._loaded
        if cached is not None and cached.key == key:
            if self._selfcheck:
                self._check_against_disk(cached.hot, "memory (before an operation)")
            return cached
        if self._waitless:
            raise WouldBlock(f"{self.root}: changed by another process; to be read from disk")
        return self._read(key)

    def _read(self, key: journal.Key) -> Loaded:
        hot = journal.read_snapshot(self.state_path)
        if hot is None:
            used = self._evidence_of_use()
            if used is not None:
                raise StateError(f"{self.state_path}: missing, but this store was used ({used} exists): restore it "
                                 "from a backup; starting empty would lose every job the store holds")
            hot = empty_hot()
        migrating = hot["version"] != STATE_VERSION
        try:
            with open(self.journal_path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            data = b""
        archived, gone, good = journal.replay(self.journal_path, data, hot)
        hot["version"] = STATE_VERSION
        changed = self._changed
        hot["jobs"] = HotJobs({job_id: HotRecord(rec, job_id, changed) for job_id, rec in hot["jobs"].items()},
                              changed)
        loaded = Loaded(key, hot, archived, len(data), good)
        # Tickets (group commit): what was read is covered once every line written so far is durable.
        ticket = 0 if self._group is None else self._group.written
        loaded.gone, loaded.unwritten = dict.fromkeys(gone, ticket), dict.fromkeys(archived, ticket)
        loaded.migrating = migrating
        return loaded

    def _evidence_of_use(self) -> str | None:
        """What shows that this directory has held state (None: a new store), when its snapshot is missing."""
        if os.path.exists(self.journal_path):
            return os.path.basename(self.journal_path)
        for path in (self.files.jobs_dir, self.files.archive_dir, self.files.history_dir):
            try:
                if any(name.endswith(".json") for name in os.listdir(path)):
                    return f"{os.path.relpath(path, self.root)}/<id>.json"
            except OSError:
                continue
        return None

    # ------------------------------------------------------------ writing

    def _make_layout(self) -> None:
        if self._layout_made:
            return
        try:
            ensure_dir(self.root)
            self.files.ensure_dirs()
        except OSError as exc:
            raise StateError(f"state dir {self.root}: cannot create ({exc.strerror})") from exc
        self._layout_made = True

    def _commit(self, tx: FileTx, loaded: Loaded) -> int:
        """Durable before the caller hears back: one fsync'd journal line is the commit point.

        With group commit the line is written here without a sync, and the returned
        ticket (else 0) is what the caller waits for, outside the lock.

        Order: history copies and new spec files first (durable: the journal line
        refers to them), then the journal line. What the journal can rebuild (archive
        files, removed specs) comes after the answer (``tidy``) or in batches, and at the
        latest with the next checkpoint (``_materialize``): a file created and one removed
        here would cost every report ~0.15 ms on ext4 (B2).
        """
        self._make_layout()
        if loaded.key[0] is None:  # a new store: its first snapshot before anything that refers to it
            journal.write_snapshot(self.state_path, empty_hot())
            loaded.key = journal.identity(self.state_path), loaded.key[1]
        for job_id in sorted(tx.pending_history):  # copy first: a crash from here on loses no version
            self._keep_history(tx, job_id)
        new, gone = tx.split_specs(self._changed, scan_all=loaded.migrating)
        self.files.write_specs(new)
        for job_id in new:  # (a re-run job's spec is written anew)
            loaded.specs.pop(job_id, None)
        jobs = tx.hot["jobs"]
        archived: journal.Archived = {job_id: None for job_id in tx.pending_history if job_id not in tx.pending_archive}
        archived.update(tx.pending_archive)
        removed = sorted(gone)
        entry = {
            "meta": {k: v for k, v in tx.hot.items() if k != "jobs"},
            "set": {job_id: jobs[job_id] for job_id in sorted(self._changed) if job_id in jobs},
            "del": removed,
            "archive": archived,
        }
        if loaded.journal_good < loaded.journal_len:  # cut a torn tail before appending after it
            journal.cut_torn_tail(self.journal_path, self.torn_path, loaded.journal_good)
        group = self._group
        line = append_line(self.journal_path, journal.encode_checked(entry), durable=group is None)
        ticket = 0 if group is None else group.wrote()

        def remember() -> Loaded:
            loaded.committed(self._changed, archived, removed, line, ticket)
            self._loaded = loaded
            return loaded
        if self._tidy_later:
            self._untidy = remember
        else:
            self._after_commit(remember, file_locked=True, fresh=True)
        return ticket

    def _sync_journal(self) -> None:
        """Group commit's sync: fdatasync flushes every line of the file, whoever wrote it."""
        fd = os.open(self.journal_path, os.O_RDONLY)
        try:
            (getattr(os, "fdatasync", None) or os.fsync)(fd)
        finally:
            os.close(fd)

    def _keep_history(self, tx: FileTx, job_id: str) -> None:
        rec = tx._load_archived(job_id)
        if rec is None:
            raise StateError(f"archive: {job_id!r} has no current version to keep")
        self.files.keep_history(job_id, rec)

    def _append_logs(self, tx: Tx) -> None:
        try:
            self._write_logs(tx)
        except OSError as exc:  # after the state: the operation took effect, so it is still answered
            warn("%s: event log line(s) not written: %s", self.root, exc)

    def _write_logs(self, tx: Tx) -> None:
        """The audit logs: written at once (a crashed process loses no line), fsync'd at each checkpoint.

        The state, not the log, is what must survive a power cut; an fsync per line
        would double the cost of every operation (B2). After a power cut the lines of
        the operations since the last checkpoint may be missing; the state is whole.
        """
        for path, lines in ((self.events_path, tx.events), (self.shadow_path, tx.shadows)):
            if lines:
                append_line(path, "\n".join(cjson.dumps(x, sort_keys=True) for x in lines), durable=False)

    # ------------------------------------------------------------ after the commit: memory, then files

    def _tidy_now(self, file_locked: bool) -> None:
        remember, self._untidy = self._untidy, None
        if remember is not None:
            self._after_commit(remember, file_locked, fresh=False)

    def _after_commit(self, remember: Callable[[], Loaded], file_locked: bool, fresh: bool) -> None:
        """Memory after a journal line, then the files due. ``fresh``: no other process can have written since."""
        try:
            after = remember()
            if not self._files_due(after):
                return
            if file_locked:
                self._tidy_files(after, fresh)
            else:
                self._tidy_files_locked(after, fresh)
        except WouldBlock:  # memory is up to date; the files are left for the store thread
            self._untidy = lambda: after
            raise
        except OSError as exc:  # the operation is durable: the journal rebuilds the rest
            warn("%s: after the journal line: %s (the next operation re-reads the state)", self.root, exc)
            self._loaded = None
        except BaseException:  # (a failed self-check): memory is not trusted, the next operation re-reads
            self._loaded = None
            raise

    def _tidy_files_locked(self, after: Loaded, fresh: bool) -> None:
        with self._file_lock():  # (nowait: a lock held elsewhere, or a due checkpoint in _tidy_files, refuses)
            self._tidy_files(after, fresh)

    def _read_ahead(self) -> None:
        """Read what the next claim looks up (the first queued job's spec file and archive miss) while no one waits.

        Without the file lock: both kinds of file are replaced whole (rename), and if
        another process wrote since, the next operation re-reads and drops this state.
        """
        loaded = self._loaded
        if loaded is None or loaded.index is None or loaded.index.key is None:
            return
        order = loaded.index.ordered(loaded.hot["jobs"], loaded.index.key)
        if not order:
            return
        job_id = order[0][1]
        rec = loaded.hot["jobs"].get(job_id)
        if rec is None:
            return
        tx = FileTx(self.files, loaded, set())
        with ctxlib.suppress(StateError, OSError):  # the claim itself reports it
            tx.archived(job_id)
            tx.spec_of(rec)

    def _refuse_checkpoint_without_waiting(self, after: Loaded) -> None:
        """A checkpoint waits for every sync and writes the whole state: never on ``serve``'s event loop."""
        if self._waitless and self._checkpoint_due(after):
            raise WouldBlock(f"{self.root}: a checkpoint is due")

    def _checkpoint_due(self, after: Loaded) -> bool:
        snapshot = 0 if after.key[0] is None else after.key[0][1]
        floor = CHECKPOINT_MIN_BYTES * KEPT_CHECKPOINT_FACTOR if self._tidy_later else CHECKPOINT_MIN_BYTES
        return after.journal_len > max(floor, snapshot)

    def _files_due(self, after: Loaded) -> bool:
        if self._tidy_later:  # a few files after each answer: the caller is not waiting for them
            return bool(after.unwritten or after.gone) or self._checkpoint_due(after) or self._selfcheck
        return len(after.unwritten) >= MATERIALIZE_BATCH or self._checkpoint_due(after) or self._selfcheck

    def _tidy_files(self, after: Loaded, fresh: bool) -> None:
        """The files due after a commit, under the file lock: a checkpoint, or archive files and spec removals."""
        if not fresh and self._key() != after.key:
            return  # another process wrote since: the next operation reads the files afresh
        self._refuse_checkpoint_without_waiting(after)
        if self._checkpoint_due(after):
            self._checkpoint(after)
            after.key = self._key()
        elif self._tidy_later:
            self._materialize(after, TIDY_FILES)
        elif len(after.unwritten) >= MATERIALIZE_BATCH:
            self._materialize(after)
        if self._selfcheck:
            self._check_remembered(after)

    def _checkpoint(self, loaded: Loaded) -> None:
        """Fold the journal into a new snapshot; everything it could rebuild is made durable first.

        A crash after the new snapshot but before the journal is emptied replays
        the journal over a snapshot that already holds it: every entry sets values
        (never increments), so the result is the same. With group commit, the lines
        not yet synced are synced first: no file runs ahead of the line it comes from.
        """
        if self._group is not None:
            self._group.sync_all()
        self._materialize(loaded)
        if _SYNC_IS_A_BARRIER:
            os.sync()  # one barrier for every file above and the logs: ~3 ms, where 200 fsyncs take ~30 ms
        else:
            for job_id, rec in loaded.archived.items():  # written earlier without a sync
                if rec is not None:
                    fsync_file(self.files.archive_file(job_id))
            fsync_dir(self.files.archive_dir)
            for path in (self.events_path, self.shadow_path):
                fsync_file(path)
        journal.write_snapshot(self.state_path, loaded.hot)
        journal.empty(self.journal_path)
        loaded.archived.clear()
        loaded.journal_len = loaded.journal_good = 0

    def _materialize(self, loaded: Loaded, limit: int | None = None) -> None:
        """Write the archive files the journal holds and remove the specs it let go; no sync (the checkpoint's).

        All of them at a checkpoint. Between checkpoints, a process serving one
        operation at a time writes every ``MATERIALIZE_BATCH`` finished jobs (no single
        operation waits for thousands of files); ``serve`` writes ``limit`` after each answer.
        """
        durable = None if self._group is None else self._group.durable
        for job_id in _take(loaded.unwritten, limit, durable):
            self.files.write_archived(job_id, loaded.archived[job_id])
            del loaded.unwritten[job_id]
        jobs = loaded.hot["jobs"]
        for job_id in _take(loaded.gone, limit, durable):
            if job_id not in jobs:  # (a re-run job is hot again, with its spec file written anew)
                self.files.remove_spec(job_id)
                loaded.specs.pop(job_id, None)
            del loaded.gone[job_id]

    # ------------------------------------------------------------ self-check (AQ_STUB_SELFCHECK=1, the test suite)

    def _check_remembered(self, after: Loaded) -> None:
        """What this process keeps in memory must match the files."""
        try:
            self._check_memory(after)
        except StateError as exc:
            if self._tidy_later:  # maybe after the answer: fail every later operation with it
                self._selfcheck_failed = exc
            raise

    def _check_memory(self, after: Loaded) -> None:
        self._check_against_disk(after.hot, "memory (after a commit)")
        files = self.files
        if after.index is not None and not after.index.matches(after.hot["jobs"]):
            raise StateError(f"{self.root}: self-check failed: the claim index differs from the records")
        if any(files.read_archived(i) is not None for i in after.absent if i not in after.archived):
            raise StateError(f"{self.root}: self-check failed: an id known absent is archived")
        if any(_read_bytes(files.spec_file(i)) != raw for i, raw in after.specs.items()):
            raise StateError(f"{self.root}: self-check failed: a cached spec differs from its file")
        if any(files.read_archived(i) != rec for i, rec in after.archived.items() if i not in after.unwritten):
            raise StateError(f"{self.root}: self-check failed: an archive file differs from its journal record")

    def _check_against_disk(self, hot: dict[str, Any], what: str) -> None:
        """The state in memory must equal a fresh read of the files."""
        disk = self._read(self._key()).hot
        if journal.encode(disk) != journal.encode(hot):
            raise StateError(f"{self.root}: self-check failed: {what} differs from the files "
                             "(a change the journal did not carry)")


def _take(ids: dict[str, int], limit: int | None, durable: int | None) -> list[str]:
    """The first ``limit`` ids (all with None), in the order they were added; a copy, so the caller may remove.

    ``durable`` (group commit): only ids whose journal line (their ticket) is durable. An archive file or
    a spec removal ahead of its line would outlive that line in a power cut: a job both archived and
    hot, or hot without its spec.
    """
    if durable is not None:
        ids = {job_id: t for job_id, t in ids.items() if t <= durable} if limit is None else dict(
            itertools.islice(((job_id, t) for job_id, t in ids.items() if t <= durable), limit))
    return list(ids) if limit is None else list(itertools.islice(ids, limit))


def _meta_copy(hot: dict[str, Any]) -> dict[str, Any]:
    """The small top-level fields, copied one level deep (their dicts hold numbers only): cheap to compare."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in hot.items() if k != "jobs"}



def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()

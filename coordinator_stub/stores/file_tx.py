"""The file store's memory between operations (``Loaded``) and one operation's view of it (``FileTx``).

A fresh process (a seam call) reads the snapshot and journal once; a long-lived
one (``serve``) keeps a ``Loaded`` and updates it from each commit, re-reading
the files only when another process changed them. Lookups consult what the
journal holds before any file: archive files and spec removals are written
after the answer, not before it.
"""

from __future__ import annotations

from agent_queue import cjson
from agent_queue.errors import StateError
from coordinator_stub.stores.base import QUEUED, Tx, seq_of
from coordinator_stub.stores.journal import key_after
from coordinator_stub.stores.tracking import HotJobs, HotRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator
    from typing import Any

    from coordinator_stub.stores.base import SortKey
    from coordinator_stub.stores.claim_index import ClaimIndex
    from coordinator_stub.stores.job_files import JobFiles
    from coordinator_stub.stores.journal import Archived, Key

SPEC_CACHE_MAX, SPEC_CACHE_BYTES = 256, 8 * 1024 * 1024  # spec files kept between operations, then dropped


class Loaded:
    """The state as of the last read or commit: snapshot plus replayed journal, and what identifies it."""

    __slots__ = ("key", "hot", "archived", "gone", "unwritten", "journal_len", "journal_good", "index", "migrating",
                 "absent", "specs")

    def __init__(self, key: Key, hot: dict[str, Any], archived: Archived, journal_len: int, journal_good: int) -> None:
        self.key = key
        self.hot = hot
        self.archived = archived  # archive versions the journal holds (files: after answers, or by the checkpoint)
        # Ids the journal removed from the hot document, whose spec files are still to remove (ordered sets;
        # the value: the group-commit ticket of the line that put it there, 0 without group commit).
        self.gone: dict[str, int] = {}
        # Ids in ``archived`` whose file this process has not written (or removed) since: the others are whole
        # in the page cache, so the checkpoint only syncs them. A state read from the files starts with all of
        # them: after a crash, every file the journal holds is rewritten.
        self.unwritten: dict[str, int] = {}
        self.journal_len = journal_len
        self.journal_good = journal_good  # bytes of whole lines; a torn tail beyond is cut at the next append
        self.index: ClaimIndex | None = None  # built by the first claim, then kept up to date
        # Ids with no archive file. Valid while this state is: another process archives only in a
        # transaction that also appends to the journal, which makes this process re-read everything.
        self.absent: set[str] = set()
        # The bytes of spec files read since (write-once per id), so a report reuses what its claim read: a
        # file read less per job. Bytes, parsed per transaction: no object is shared with an earlier answer.
        self.specs: dict[str, bytes] = {}
        self.migrating = False  # a version-1 snapshot: records may still hold full specs

    def claim_index(self) -> ClaimIndex:
        if self.index is None:
            from coordinator_stub.stores.claim_index import ClaimIndex  # (a seam call that never claims: not at all)

            self.index = ClaimIndex(self.hot["jobs"])
        return self.index

    def track(self, changed: set[str]) -> None:
        """Make the hot document note every change in ``changed`` (a state just read or committed)."""
        jobs = self.hot["jobs"]
        if not isinstance(jobs, HotJobs):
            jobs = self.hot["jobs"] = HotJobs(jobs, changed)
        for job_id in changed:  # records new to memory start being tracked
            rec = jobs.get(job_id)
            if rec is not None and not isinstance(rec, HotRecord):
                dict.__setitem__(jobs, job_id, HotRecord(rec, job_id, changed))

    def committed(self, changed: set[str], archived: Archived, gone: list[str], journal: os.stat_result,
                  ticket: int = 0) -> None:
        """Memory after a journal line: the new state and its claim index, kept for the next operation."""
        self.archived.update(archived)  # lookups read these before any archive file
        self.unwritten.update(dict.fromkeys(archived, ticket))  # (also a newer version than a file written earlier)
        self.gone.update(dict.fromkeys(gone, ticket))
        for job_id in archived:  # its record holds the spec now: only live jobs' specs stay cached
            self.specs.pop(job_id, None)
        self.track(changed)
        self.key = key_after(self.key, journal)
        self.journal_len = self.journal_good = journal.st_size
        self.migrating = False  # this commit moved every full spec out of the hot document
        if self.index is not None:
            self.index.update(changed)
        self.absent.difference_update(archived)


class FileTx(Tx):
    def __init__(self, files: JobFiles, loaded: Loaded, changed: set[str]) -> None:
        super().__init__(loaded.hot, loaded_ids=[])  # removals are tracked in ``changed`` instead
        self._files = files
        self._loaded = loaded
        self._changed = changed
        self._journal_archived = loaded.archived
        self._specs: dict[str, dict[str, Any]] = {}  # this transaction's objects: never shared with the next

    def queued_by(self, key: SortKey) -> Iterator[dict[str, Any]]:
        """The index's order, merged with the records this transaction changed so far (re-read now)."""
        jobs = self.hot["jobs"]
        order = self._loaded.claim_index().ordered(jobs, key)
        changed = set(self._changed)
        fresh = sorted((key(rec), job_id) for job_id in changed
                       if (rec := jobs.get(job_id)) is not None and rec["state"] == QUEUED)
        merged: Iterable[tuple[Any, str]] = (entry for entry in order if entry[1] not in changed)
        if fresh:  # (usually none: a lease the reaper just ended)
            import heapq  # here, not at the top: only a claim that needs it pays for it (B1)

            merged = heapq.merge(merged, fresh)
        for entry in merged:
            rec = jobs.get(entry[1])
            if rec is not None:
                yield rec

    def leased_records(self) -> list[dict[str, Any]]:
        """The index's leased ids, merged with this transaction's changes; without an index yet, one scan.

        The reaper asks in every operation: a fresh process (a seam call) that does
        not claim scans once rather than build an index it would use once.
        """
        index = self._loaded.index
        if index is None:
            return super().leased_records()
        jobs = self.hot["jobs"]
        changed = self._changed
        out = [jobs[job_id] for job_id in index.leased(jobs) if job_id not in changed and job_id in jobs]
        out += [rec for job_id in changed if (rec := jobs.get(job_id)) is not None and rec["lease"]]
        return sorted(out, key=seq_of)

    def _load_archived(self, job_id: str) -> dict[str, Any] | None:
        if job_id in self._journal_archived:
            rec = self._journal_archived[job_id]
            # A private copy: the core may change what it is given, and this one is shared state.
            return None if rec is None else cjson.loads(cjson.dumps(rec))
        absent = self._loaded.absent
        if job_id in absent:  # looked up since the files last changed: still not there
            return None
        found = self._files.read_archived(job_id)
        if found is None:
            absent.add(job_id)
        return found

    def _load_spec(self, job_id: str) -> dict[str, Any]:
        if job_id not in self._specs:
            path = self._files.spec_file(job_id)
            raw = self._loaded.specs.get(job_id)
            if raw is None:
                raw = self._read_spec_file(job_id, path)
            try:
                spec = cjson.loads(raw)
            except ValueError as exc:
                raise StateError(f"{path}: unreadable or corrupt ({exc}); fix or move it away") from exc
            if not isinstance(spec, dict) or spec.get("id") != job_id:
                raise StateError(f"{path}: not the spec of {job_id!r}")
            self._specs[job_id] = spec
        return self._specs[job_id]

    def _read_spec_file(self, job_id: str, path: str) -> bytes:
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            raise StateError(f"{path}: the spec of queued job {job_id!r} is missing") from None
        except OSError as exc:
            raise StateError(f"{path}: unreadable ({exc})") from exc
        cache = self._loaded.specs
        if len(cache) >= SPEC_CACHE_MAX or sum(map(len, cache.values())) + len(raw) > SPEC_CACHE_BYTES:
            cache.clear()  # bounded (a prompt may be 1 MB); the live jobs' specs come back as used
        cache[job_id] = raw
        return raw

    def iter_archived(self) -> Iterator[dict[str, Any]]:
        seen = set(self.pending_archive) | set(self._journal_archived)
        yield from self.pending_archive.values()
        for job_id, rec in self._journal_archived.items():
            if rec is not None and job_id not in self.pending_archive:
                yield rec
        yield from self._files.iter_files(seen)

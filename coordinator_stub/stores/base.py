"""The store contract: what the core may rely on, and what any store (memory, directory, database) must do.

The core (``core.py``) sees state only through one ``Tx`` per operation,
opened by ``Store.transaction()``. It holds:

- the *hot* document (``tx.hot``): the scheduling record of each queued and
  leased job (``jobs``), the enqueue sequence counter (``seq``), factories'
  last sighting, terminal counts, and any other small top-level field the core
  sets. A hot record's ``spec`` is a ``SpecSummary`` (only ``SCHED_KEYS``: what
  claim order, gates and families read); ``tx.spec_of(rec)`` gives the full
  spec, written once at enqueue. Specs stay out of the hot document because a
  prompt can be 1 MB and a store may parse the hot document per operation.
- a write-once *archive* of finished jobs and composite parents, looked up by
  id (``tx.archived``), so an operation's cost never grows with history;
  ``tx.archive`` moves a record there, ``tx.supersede`` keeps the current
  version as history and installs a new one (or none: the job runs again).
- two append-only logs: ``tx.event`` (one line per operation) and
  ``tx.shadow`` (shadow reports).

What a store must guarantee (the core's rules are only correct under these):

1. **Atomic.** A transaction whose block exits normally commits every change
   it made (hot records, archive versions, specs, counters) as one; one whose
   block raises leaves no trace of its changes. A change the core made
   without ``tx.touch()`` need not be kept (and must not leak into a later
   transaction as if committed).
2. **Durable before the answer.** When ``transaction()``'s block returns, the
   commit survives a crash of the process and a power cut: the caller
   (a factory) acts on the answer (it ships). The event and shadow logs are
   an audit trail: a store may lose their last lines in a power cut, never the state.
   A store may let a later transaction see a commit whose sync has not yet
   returned (group commit) only if it then answers no later transaction
   unless that sync returns.
3. **Isolated.** Transactions are serializable across every thread and process
   that opens the same state: each one sees every earlier commit and none of a
   concurrent one. (A directory: one exclusive lock per operation; a database:
   row locks or SERIALIZABLE.)
4. **Private copies.** Nothing the core is given (records, specs, archived
   records) is shared with the store's own state or a later transaction: the
   core and its callers may change what they receive.
5. **Orders it is asked for.** ``tx.queued_by(key)`` yields queued records
   sorted by ``key``; the core's claim order is the only key in use, and a
   store may keep queued records indexed by it (it must then keep that index
   consistent with every commit).
6. **Refuses rather than guesses.** State it cannot read whole (a damaged
   line, a checksum that does not match, a snapshot missing from a store that
   was used) is a ``StateError`` naming what and where; it never rolls back or
   starts empty in its place. A store that does not exist yet is created by
   the first operation that changes state, and by no other.

Two optional duties:

- **Measure stalls.** ``tx.stall`` (a ``Stall``) is time just before the
  transaction during which the store could serve no one (a lock holder that
  was paused or stuck), measured where the wait happens. The core gives that
  time back to every lease (``core._credit_stall``); a store that cannot
  measure leaves it None.
- **Ask for a re-run.** A transaction may end by raising ``Retry`` once it has
  discarded everything the attempt did; the core then runs the operation again
  from the start (an optimistic store's conflict; the file store's first write
  to a directory that did not exist).

The store holds no lease rule: claim order, fencing, expiry and reaping, the
replay of a lost answer, composite readiness are all the core's. A store
decides only how state is laid out, locked, made durable and read back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from agent_queue.errors import StateError

TYPE_CHECKING = False  # typing stays unimported on the seam's per-call path
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager as ContextManager
    from typing import Any

    from coordinator_stub.stores.group_commit import GroupCommit

    SortKey = Callable[[dict[str, Any]], Any]

    from typing import Protocol

    class LogReader(Protocol):
        """One audit log read as it grows (``Store.log_readers``)."""

        def read(self) -> Iterator[tuple[dict[str, Any], bool]]:
            """(record, live) for each record added since the last call; live False: history at start-up."""

STATE_VERSION = 2  # of the hot document's shape. 2: hot specs are summaries (SCHED_KEYS); 1: full specs inline
# The spec keys a hot record keeps: everything the scheduler reads (claim order, capabilities,
# dependencies, composite families). Anything else (prompt, command, env, ...) is in the full spec.
SCHED_KEYS = ("id", "kind", "requires", "priority", "budget", "parentId", "dependsOn", "phase")
QUEUED = "queued"  # JobState.QUEUED (records.py; a store only needs the word to index)


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


def seq_of(rec: dict[str, Any]) -> int:
    return rec["seq"]  # type: ignore[no-any-return]


class Stall:
    """Time the store could not serve anyone, measured by the store: ``seconds`` long, ended ``ended_ago`` s
    before the transaction began. Durations only: the core maps them onto its own (injected) clock."""

    __slots__ = ("seconds", "ended_ago")

    def __init__(self, seconds: float, ended_ago: float) -> None:
        self.seconds = seconds
        self.ended_ago = ended_ago

    def __repr__(self) -> str:
        return f"Stall(seconds={self.seconds:.3f}, ended_ago={self.ended_ago:.3f})"


class Retry(Exception):
    """Raised by a transaction on exit: nothing of this attempt was kept; the core runs the operation again."""


class WouldBlock(Exception):
    """Raised in a store's ``nowait`` mode before anything is done: the operation would have to wait (a lock
    held elsewhere, a read from disk, a checkpoint). ``serve`` then runs it on its store thread instead."""


def warn(msg: str, *args: Any) -> None:
    """Log a warning of a store (an operation that still succeeded, or a file kept aside)."""
    import logging  # not at module level: the seam's per-call start-up would pay ~8 ms for it (B1)

    logging.getLogger("coordinator_stub.stores").warning(msg, *args)


class Tx(ABC):
    """One operation's view of the state. ``hot`` may be mutated; call ``touch`` after doing so.

    The base class keeps what a transaction changed besides the hot document
    (archive versions, history, log lines) for the store to commit; a store
    supplies the lookups (``_load_archived``, ``_load_spec``, ``iter_archived``)
    and may replace the two queries (``queued_by``, ``leased_records``) with indexed ones.
    """

    hot: dict[str, Any]
    stall: Stall | None = None  # see the module docstring: set by a store that measures its stalls

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
        their full spec back, so an archived record is whole on its own. ``changed``
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

    def queued_by(self, key: SortKey) -> Iterator[dict[str, Any]]:
        """Queued records sorted by ``key`` (the core's claim order); a store may keep them indexed by it.

        Records the caller changes or removes while iterating may still be yielded as
        they were found; callers re-check what they rely on.
        """
        recs = [r for r in self.hot["jobs"].values() if r["state"] == QUEUED]
        recs.sort(key=key)
        yield from recs

    def leased_records(self) -> list[dict[str, Any]]:
        """Records holding a lease (active or expired), oldest enqueue first."""
        return sorted((r for r in self.hot["jobs"].values() if r["lease"]), key=seq_of)

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
    """A place for the coordinator's state that keeps the guarantees in this module's docstring."""

    @abstractmethod
    def transaction(self) -> ContextManager[Tx]:
        """Exclusive access for one operation; commits on normal exit, discards on exception."""

    def defer_durability(self) -> GroupCommit | None:
        """``serve``: let operations return before their commit is durable, and answer each once the returned
        watermark covers what it wrote or read (``stores/group_commit.py``). None (the default): every
        operation is durable when it returns, and the caller answers at once."""
        return None

    def nowait(self) -> Callable[[], ContextManager[None]] | None:
        """``serve``: a mode for running an operation on the event loop itself. In it an operation either
        finishes without waiting on anything (no lock held elsewhere, no disk read, no sync, no checkpoint) or
        raises ``WouldBlock`` having done nothing. None (the default): the store cannot run on the loop."""
        return None

    def tidy(self) -> None:  # noqa: B027 - an optional hook: most stores leave nothing for later
        """Do what the last operation left for after its answer (a store built to defer it; else nothing)."""

    def check(self) -> None:  # noqa: B027 - an optional hook: a directory has no server to be down
        """Raise ``StoreUnavailable`` when the store cannot serve now (healthz: a database that does not answer)."""

    def log_readers(self, backfill_bytes: int) -> tuple[LogReader, LogReader] | None:
        """The event log and the shadow-report log, each read as it grows (``serve``'s dashboard and metrics):
        about the last ``backfill_bytes`` of each as history first. None: a store that keeps no logs."""
        return None

    def close(self) -> None:  # noqa: B027 - an optional hook: a store holding connections releases them
        """Release what the store holds open (a database's connections); the store is not used after."""

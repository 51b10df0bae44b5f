"""MemoryStore: the whole state in process memory, for unit tests and the hypothesis state machine.

It keeps the contract of ``base`` within one process: a transaction works on a
deep copy of the hot document (so one that raises leaves nothing behind),
commits by swapping it in, and a lock serializes threads. Nothing is durable.
"""

from __future__ import annotations

import _thread  # not threading: its import is ~1 ms of the seam's per-call start-up (B1)
import contextlib
import copy

from agent_queue.errors import StateError
from coordinator_stub.stores.base import Store, Tx, empty_hot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


class _MemoryTx(Tx):
    def __init__(self, store: MemoryStore) -> None:
        super().__init__(copy.deepcopy(store.hot))
        self._store = store

    def _load_archived(self, job_id: str) -> dict[str, Any] | None:
        rec = self._store.archive.get(job_id)
        return copy.deepcopy(rec) if rec is not None else None

    def _load_spec(self, job_id: str) -> dict[str, Any]:
        if job_id not in self._store.specs:
            raise StateError(f"spec of {job_id!r}: missing")
        return copy.deepcopy(self._store.specs[job_id])

    def iter_archived(self) -> Iterator[dict[str, Any]]:
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
                new, gone = tx.split_specs()
                self.specs.update(copy.deepcopy(new))
                self.archive.update(tx.pending_archive)
                self.hot = tx.hot
                for job_id in gone:
                    self.specs.pop(job_id, None)
            self.events.extend(tx.events)
            self.shadow_reports.extend(tx.shadows)

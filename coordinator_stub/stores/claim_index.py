"""Queued ids in the core's claim order and the ids holding a lease: what claims and the reaper look for.

Without it every claim scans and sorts the whole queue (B2: 4.8 ms per request
at 6,000 queued). A long-lived file store keeps it across operations and updates
it from each commit's changed ids; a fresh process builds it on first use. The
order is the core's (the ``key`` a caller asks for): the index only keeps it.

A commit only notes its changed ids; they are applied when the index is next
read. A seam call commits once and exits: it never pays for an update no one
reads (~0.4 ms of a claim, with ``bisect``'s import; B1).
"""

from __future__ import annotations

from coordinator_stub.stores.base import QUEUED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from coordinator_stub.stores.base import SortKey


class ClaimIndex:
    """``leased``: ids whose record holds a lease. ``order``: sorted ``(key(rec), job_id)`` of queued records.

    The order is built on the first ``ordered(key)`` (the reaper, which runs
    first in every operation, needs only ``leased``) and rebuilt if asked for
    another key.
    """

    __slots__ = ("key", "order", "key_of", "_leased", "_stale")

    def __init__(self, jobs: dict[str, dict[str, Any]]) -> None:
        self._leased: set[str] = {job_id for job_id, rec in jobs.items() if rec["lease"]}
        self.key: SortKey | None = None
        self.key_of: dict[str, tuple[Any, str]] = {}
        self.order: list[tuple[Any, str]] = []
        self._stale: set[str] = set()  # ids changed since: applied on the next read

    def leased(self, jobs: dict[str, dict[str, Any]]) -> set[str]:
        self._settle(jobs)
        return self._leased

    def ordered(self, jobs: dict[str, dict[str, Any]], key: SortKey) -> list[tuple[Any, str]]:
        self._settle(jobs)
        if self.key is not key:
            self.key = key
            self.key_of = {job_id: (key(rec), job_id) for job_id, rec in jobs.items() if rec["state"] == QUEUED}
            self.order = sorted(self.key_of.values())
        return self.order

    def update(self, ids: Iterable[str]) -> None:
        """Note that the records of ``ids`` changed (applied when the index is next read)."""
        self._stale.update(ids)

    def _settle(self, jobs: dict[str, dict[str, Any]]) -> None:
        if not self._stale:
            return
        ids, self._stale = self._stale, set()
        if self.key is not None:  # an order to keep: a claim built it (or serve keeps it)
            import bisect  # here: a seam call that only reads, renews or reports never sorts (B1)

        for job_id in ids:
            rec = jobs.get(job_id)
            self._leased.discard(job_id)
            if rec is not None and rec["lease"]:
                self._leased.add(job_id)
            if self.key is None:
                continue
            old = self.key_of.pop(job_id, None)
            if old is not None:
                del self.order[bisect.bisect_left(self.order, old)]
            if rec is not None and rec["state"] == QUEUED:
                entry = self.key_of[job_id] = (self.key(rec), job_id)
                bisect.insort(self.order, entry)

    def matches(self, jobs: dict[str, dict[str, Any]]) -> bool:
        """The self-check: this index, its noted changes applied, equals one built afresh from ``jobs``.

        Applied to a copy: the index itself stays as it was, so the self-check
        does not hide an index read that forgets to apply them first.
        """
        mine = ClaimIndex({})
        mine._leased, mine._stale = set(self._leased), set(self._stale)
        mine.key, mine.key_of, mine.order = self.key, dict(self.key_of), list(self.order)
        mine._settle(jobs)
        fresh = ClaimIndex(jobs)
        if self.key is not None:
            fresh.ordered(jobs, self.key)
        return fresh._leased == mine._leased and fresh.order == mine.order

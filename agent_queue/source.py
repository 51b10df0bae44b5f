"""Where the runner gets work: a ``Source`` hands out ``Claim``s; the loop never changes.

This module is the contract only, at the bottom of the claim layer: the local
implementation (``local_source``), the composite verify gate (``composite_queue``)
and the fleet one (``fleet.source``) import it; it imports none of them. Which
Source a daemon uses is decided where the daemon is assembled (``assemble``).

Protocol (what a second implementation, e.g. FleetSource, must honour):

``Source.recover()``
    Called once at start-up, before the first claim. Deal with work a crashed
    daemon left behind (local: running/ -> inbox/, attempt counted).
``Source.next_claim() -> Claim | None``
    Take at most one job, or None when there is none right now. May raise
    ``errors.TransportError`` / ``CoordinatorError``: the runner logs, backs
    off and asks again; it never dies of it.
``Source.close()``
    Release whatever the source holds (connections, locks).

A ``Claim`` is one job taken for one attempt. The runner calls, in order:
``begin(attempt)`` once; ``keepalive(on_lost)`` as a context manager around
the tool and the verify gate (a fleet claim renews its lease there and calls
``on_lost(reason)`` from any thread when the lease is gone: the runner kills
the tool group at once, runs no verify and never ships); ``note_pid(pid, cgroup)``
just before the tool starts. Then exactly one ending:

- ``approve_ship(record)`` BEFORE any ship side effect; raises ``errors.Fenced``
  when the job may not ship (fleet: the coordinator refused report(shipped)),
  or ``errors.ReportPending`` when the answer never came: the runner then
  leaves the job in running/ untouched and the source settles it later (a
  claim with ``resume_record`` set comes back when the coordinator confirms,
  and the runner resumes at the ship step without re-running the tool).
  Offline it always approves. Then ``shipped(record)`` moves it to shipped/,
  the runner runs the ship hook and reports it with ``note_ship_hook``.
- ``retry(record)``: the attempt failed, attempts remain; back to the queue.
  Also used when this factory cannot run the job at all but ``can_pass_on``
  (fleet: another factory may have the tool).
- ``quarantine(record)``: give up on the job, with ``record["reason"]``.
- ``fenced(record)``: the claim was lost; record it, ship nothing.
- ``give_back(reason)``: shutdown; back to the queue, attempt NOT counted.
- ``defer(record, not_before)``: the tool hit a usage/rate limit; back to the
  queue, attempt NOT counted, not to be taken again before ``not_before``
  (epoch seconds). The default falls back to ``give_back``.

``epoch`` is the lease's fencing token (None offline); repo jobs stamp it on
the ship commit.

``record`` is the attempt's result (attempt, exitCode, verifyExitCode,
durationS, startedAt, endedAt, outcome, reason); a claim stores it in the
job's result.json history.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

from agent_queue.jobs import Job

Record = dict[str, Any]


class Claim(ABC):
    """One job held by this factory for one attempt (see the module docstring)."""

    job: Job
    attempts_done: int
    # 1 + how often the job was requeued after it ended (``requeue``): the attempt log header says it.
    round: int = 1
    # Set on a claim whose report(shipped) the coordinator accepted before this daemon stopped
    # (or before an outage ended): the runner skips the tool and verify and resumes at the ship
    # step with this attempt record.
    resume_record: Record | None = None
    # Whether another factory could take the job if this one cannot run it (fleet: yes).
    can_pass_on: bool = False
    epoch: int | None = None

    @abstractmethod
    def begin(self, attempt: int) -> None: ...

    @contextlib.contextmanager
    def keepalive(self, on_lost: Callable[[str], None]) -> Iterator[None]:
        """Keep the claim valid while the body runs; the local claim cannot be lost."""
        yield

    def note_pid(self, pid: int, cgroup: str | None = None) -> None:
        """The tool's process id (and cgroup scope), for `status` and for a crash's leftovers."""
        return None

    def note_ship_hook(self, outcome: Record) -> None:
        """The ship hook's result, after ``shipped`` (it cannot unship the job)."""
        return None

    def pass_on(self, record: Record) -> None:
        """This factory cannot run the job but another may (only called when ``can_pass_on``)."""
        self.retry(record)

    @abstractmethod
    def approve_ship(self, record: Record) -> None: ...

    @abstractmethod
    def shipped(self, record: Record) -> None: ...

    @abstractmethod
    def retry(self, record: Record) -> None: ...

    @abstractmethod
    def quarantine(self, record: Record) -> None: ...

    @abstractmethod
    def fenced(self, record: Record) -> None: ...

    @abstractmethod
    def give_back(self, reason: str) -> None: ...

    def defer(self, record: Record, not_before: float) -> None:
        """Usage limit: back to the queue until ``not_before``, attempt not counted."""
        self.give_back(str(record.get("reason")))


class Source(ABC):
    @abstractmethod
    def recover(self) -> list[str]: ...

    @abstractmethod
    def next_claim(self) -> Claim | None: ...

    # True when the last empty ``next_claim`` already waited for work (a held claim): no idle on top.
    just_waited: bool = False

    def close(self) -> None:
        """Nothing to release by default."""
        return None

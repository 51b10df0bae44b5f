"""The daemon loop: take a claim from the Source, run the attempt, then ship, retry or quarantine.

``Runner.work`` is the loop and ``Runner.process`` is one job's life. The
steps live beside it: ``planning`` resolves an attempt, ``attempt`` runs the
tool and the verify gate, ``shipping`` ships; this module turns each attempt's
outcome into exactly one claim ending. Signals only set flags on
``control.Control`` (see there for warm and cold shutdown). A full disk is the
factory's condition, never the job's: the job is given back uncounted and the
loop holds new work until there is room again (``diskfull``).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from agent_queue import workspace
from agent_queue.attempt import AttemptRunner, new_record
from agent_queue.control import Control
from agent_queue.diskfull import DiskBackoff
from agent_queue.errors import AQError, is_disk_full
from agent_queue.joblog import log_fields
from agent_queue.jobs import DEFAULT_MAX_ATTEMPTS
from agent_queue.planning import Plan, Rejected, plan_attempt
from agent_queue.settings import Settings
from agent_queue.shipping import Shipper
from agent_queue.source import Claim, Record, Source
from agent_queue.timeutil import parse_rfc3339

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class RunOptions:
    once: bool = False  # take at most one job, then return
    drain: bool = False  # return when no job is left
    max_jobs: int | None = None


class Runner:
    def __init__(self, settings: Settings, source: Source, control: Control | None = None) -> None:
        self.settings = settings
        self.source = source
        self.control = control or Control(settings.grace_s)
        self.root = settings.root
        self.attempts = AttemptRunner(settings, self.control)
        self.shipper = Shipper(settings, self.control)
        self.disk = DiskBackoff(self.root, self.control)
        self._stranded: list[Claim] = []  # given back while the disk was full, but not even moved back
        # Jobs that reached an end here (shipped, quarantined, cancelled, fenced): what --max-jobs and the
        # shutdown line count. A retried job is one job however many attempts it takes.
        self.ended: set[str] = set()
        self.attempts_run = 0

    # --- the loop ---------------------------------------------------------------

    def work(self, opts: RunOptions) -> int:
        """Run jobs until told to stop (or, with --once/--drain, until done); return how many ended here."""
        self._start_up()
        backoff = self.settings.poll_s
        while not self.control.stopping:
            if self.disk.active and not self._room_again():
                continue
            try:
                claim = self.source.next_claim()
            except Exception as exc:  # coordinator down, disk full, a bug: back off, never die of it
                message = exc.message if isinstance(exc, AQError) else f"{type(exc).__name__}: {exc}"
                if is_disk_full(exc):
                    self.disk.hit(message)
                    continue
                log.warning("source unavailable, backing off", extra={"error": message, "backoffS": backoff},
                            exc_info=not isinstance(exc, AQError))
                self.control.idle(backoff)
                backoff = min(MAX_BACKOFF_S, max(backoff * 2, 0.5))
                continue
            backoff = self.settings.poll_s
            if claim is None:
                if opts.once or opts.drain:
                    break
                self.control.idle(0.0 if self.source.just_waited else self.settings.poll_s)
                continue
            if self.control.stopping:  # stopped while a held claim waited: the job goes back, unstarted
                claim.give_back("daemon stopping before the job started")
                break
            try:
                self.process(claim)
                self.disk.job_ended_well()
            except Exception as exc:  # an OS error or a bug must neither kill the daemon nor strand the job
                if is_disk_full(exc):
                    self._disk_full(claim, exc)
                else:
                    self._salvage(claim, exc)
                    self.control.idle(self.settings.poll_s)
            workspace.housekeeping(self.root, self.settings.keep_worktrees_days, time.time(), startup=False)
            self.attempts_run += 1
            if opts.once or (opts.max_jobs is not None and len(self.ended) >= opts.max_jobs):
                break
        self.source.close()
        return len(self.ended)

    def _start_up(self) -> None:
        """Recover what a crash left (jobs, ship hooks, worktrees); what is left is settled again later."""
        for step in (self.disk.keep_reserve, self.source.recover, self.shipper.rerun_interrupted_hooks,
                     lambda: workspace.housekeeping(self.root, self.settings.keep_worktrees_days, time.time(),
                                                    startup=True)):
            try:
                step()
            except Exception:  # the daemon must come up
                log.exception("start-up step incomplete; continuing")

    def process(self, claim: Claim) -> None:
        """One job's life: plan, workspace, run + verify under keepalive, then ship / retry / quarantine."""
        job, attempt = claim.job, claim.attempts_done + 1
        ctx = {"job_id": job.id, "attempt": attempt}
        if claim.resume_record is not None:
            self._resume_ship(claim, claim.resume_record)
            return
        log.info("job taken", extra={**ctx, "tool": job.tool, "profile": job.profile})
        try:
            plan = plan_attempt(self.settings, job, attempt)
        except Rejected as exc:
            record = new_record(attempt, "rejected", reason=str(exc))
            if exc.here_only and claim.can_pass_on:
                claim.pass_on(record)  # fleet: released (attempt counted) for a factory that can run it
                log.warning("job passed on: this factory cannot run it", extra={**ctx, "reason": str(exc)})
            else:
                self._quarantine(claim, record)
            return
        try:
            workdir = workspace.prepare(self.root, job)
        except workspace.WorkspaceUnavailable as exc:  # e.g. a fetch failed: may be transient, counts an attempt
            if is_disk_full(exc):
                raise  # not the job's failure: given back uncounted (``_disk_full``)
            self._finish(claim, plan, self.root, new_record(attempt, "failed", reason=f"workspace: {exc}"))
            return
        claim.begin(attempt)
        self.control.lost_reason = None
        with claim.keepalive(self.control.lose):
            record = self.attempts.run(claim, plan, workdir, attempt)
        self._finish(claim, plan, workdir, record)

    def _disk_full(self, claim: Claim, exc: Exception) -> None:
        """A factory condition: the job goes back with its attempt not counted, and the daemon holds new work."""
        reason = f"disk full: {exc.message if isinstance(exc, AQError) else exc}"
        log.error("disk full during the job: given back, attempt not counted", extra={"job_id": claim.job.id,
                                                                                     "error": reason})
        self.disk.hit(reason)
        self._give_back(claim, reason)

    def _give_back(self, claim: Claim, reason: str) -> None:
        try:
            claim.give_back(reason)
        except Exception:
            log.exception("cannot put the job back yet; trying again when space is back",
                          extra={"job_id": claim.job.id})
            self._stranded.append(claim)

    def _room_again(self) -> bool:
        """Hold new work while the disk is full; once a probe write fits, first put back what was stranded."""
        if not self.disk.wait_for_room():
            return False
        stranded, self._stranded = self._stranded, []
        for claim in stranded:
            self._give_back(claim, "disk full")
        return True

    def _salvage(self, claim: Claim, exc: Exception) -> None:
        """Count the attempt and put the job back (or quarantine it when spent), so a bug cannot loop."""
        attempt = claim.attempts_done + 1
        log.error("job failed unexpectedly", exc_info=exc, extra={"job_id": claim.job.id, "attempt": attempt})
        record = new_record(attempt, "failed", reason=f"internal error: {type(exc).__name__}: {exc}")
        try:
            if attempt < (claim.job.budget.max_attempts or DEFAULT_MAX_ATTEMPTS):
                claim.retry(record)
            else:
                self._quarantine(claim, record)
        except Exception:
            log.exception("could not put the job back; it stays in running/ until the next start-up recovery",
                          extra={"job_id": claim.job.id})

    # --- endings ----------------------------------------------------------------

    def _finish(self, claim: Claim, plan: Plan, workdir: Path, record: Record) -> None:
        """The one claim ending an attempt's outcome calls for."""
        outcome = record["outcome"]
        if outcome in ("lost", "fenced"):
            self._fenced(claim, record)
        elif outcome == "shutdown":
            claim.give_back(record["reason"])
            log.info("job given back (shutdown, attempt not counted)", extra=log_fields(claim, record))
        elif outcome == "passed":
            self._ship(claim, plan, workdir, record)
        elif outcome == "rate_limited":
            claim.defer(record, parse_rfc3339(record["notBefore"]))
            log.warning("tool usage limit: job put back until notBefore (attempt not counted)",
                        extra={**log_fields(claim, record), "notBefore": record["notBefore"]})
        elif outcome in ("auth_expired", "over_budget", "quarantined"):
            self._quarantine(claim, record)
        elif record["attempt"] < plan.max_attempts:
            claim.retry(record)
            log.info("attempt failed, will retry", extra={**log_fields(claim, record), "reason": record["reason"]})
        else:
            record["reason"] = f"{record['reason']} (attempt {record['attempt']} of {plan.max_attempts})"
            self._quarantine(claim, record)

    def _ship(self, claim: Claim, plan: Plan, workdir: Path, record: Record) -> None:
        refused = self.shipper.ship(claim, plan, workdir, record)
        if refused is not None:  # fenced, or an offline push failed: ends like any other attempt
            self._finish(claim, plan, workdir, refused)
        elif record.get("outcome") == "shipped":  # not when the report is pending (the job waits in running/)
            self.ended.add(claim.job.id)

    def _resume_ship(self, claim: Claim, record: Record) -> None:
        """The coordinator accepted this attempt's report before we could ship it: ship it now.

        No tool, no verify, no workspace reset: the attempt's work is in ``work/<id>`` as it was left.
        """
        log.warning("resuming the ship of an accepted report", extra={"job_id": claim.job.id,
                                                                     "attempt": record.get("attempt")})
        try:
            plan = plan_attempt(self.settings, claim.job, int(record.get("attempt") or claim.attempts_done + 1))
        except Rejected as exc:  # this factory's config changed since; the job still counts as shipped
            self.shipper.ship_unplanned(claim, record, exc)
            self.ended.add(claim.job.id)
            return
        self._ship(claim, plan, workspace.existing(self.root, claim.job), record)

    def _quarantine(self, claim: Claim, record: Record) -> None:
        record["outcome"] = "quarantined" if record["outcome"] != "rejected" else "rejected"
        workspace.finish(self.root, claim.job, "quarantined")
        claim.quarantine(record)
        self.ended.add(claim.job.id)
        log.warning("quarantined", extra={**log_fields(claim, record), "reason": record["reason"]})

    def _fenced(self, claim: Claim, record: Record) -> None:
        record["outcome"] = "fenced"
        workspace.finish(self.root, claim.job, "fenced")
        claim.fenced(record)  # a local claim is lost only by a cancel: it says so in the record
        self.ended.add(claim.job.id)
        log.warning(f"{record['outcome']}: not shipped",
                    extra={**log_fields(claim, record), "reason": record["reason"]})

    @contextmanager
    def signals(self) -> Iterator[None]:
        """Route SIGTERM/SIGINT to ``Control.request_stop`` while the daemon runs (main thread only)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: %s", signal.Signals(signum).name,
                     "killing the running job" if self.control.stopping else "stopping after the running job")
            self.control.request_stop()

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, prev in old.items():
                signal.signal(sig, prev)

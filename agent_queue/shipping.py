"""Shipping a passed attempt: the claim's approval, the fenced push of a repo job, shipped/, the ship hook.

Order is the safety property: nothing ships before ``claim.approve_ship``
(fleet: the coordinator's 200 to report(shipped)); a repo job's push comes
next, then the move to shipped/, then the ship hook. A hook is marked in
``shiphooks`` before the move, so a crash at any point runs it again at the
next start (``rerun_interrupted_hooks``), never twice after it completed.

A ship that cannot happen hands its record back to the runner with the
outcome it ends in (``fenced``; offline ``failed`` when the push failed, ``quarantined`` when the
remote branch holds work that is not this attempt's).
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent_queue import plan_job, process, shiphooks, workspace
from agent_queue.control import Control
from agent_queue.errors import AQError, Fenced, ReportPending
from agent_queue.gitcmd import GitFenced
from agent_queue.inbox import LocalQueue, State
from agent_queue.joblog import log_fields, log_header, log_path, show
from agent_queue.local_source import LocalClaim
from agent_queue.planning import Plan, Rejected, plan_attempt
from agent_queue.settings import Settings
from agent_queue.source import Claim, Record

log = logging.getLogger(__name__)

PUSH_TRIES = 3  # fleet mode: pushes of a job the coordinator already accepted


class Shipper:
    """Ships for one daemon: its root and factory id (commit trailers, log headers), its ``Control`` for hooks."""

    def __init__(self, settings: Settings, control: Control) -> None:
        self.settings = settings
        self.control = control
        self.root = settings.root

    def ship(self, claim: Claim, plan: Plan, workdir: Path, record: Record) -> Record | None:
        """Ship only after the claim approves it: push, move to shipped/, then the ship hook.

        None when done here (shipped, or waiting in running/ for the coordinator's
        answer); else ``record`` with the outcome the job ends in instead.
        """
        try:
            claim.approve_ship(record)
        except ReportPending as exc:
            log.warning("report unanswered: the job waits in running/ until the coordinator answers",
                        extra={**log_fields(claim, record), "reason": exc.message})
            return None
        except Fenced as exc:
            record.update(outcome="fenced", reason=f"ship refused: {exc.message}")
            return record
        if claim.job.repo is not None and not plan_job.is_planning(claim.job.extra):  # a plan ships no content
            refused = self._push(claim, workdir, record)
            if refused is not None:
                return refused
        elif claim.job.repo is not None:
            workspace.finish(self.root, claim.job, "shipped")
        record["outcome"] = "shipped"
        hook = plan.ship and not record.get("pushPending")  # no branch on the remote: a PR hook cannot work
        if hook:  # marked before the move: a crash right after it must not skip the hook
            shiphooks.mark(self.root, claim.job.id)
        claim.shipped(record)
        log.info("shipped", extra=log_fields(claim, record))
        if hook:
            self.run_ship_hook(claim, plan, workdir)
        return None

    def ship_unplanned(self, claim: Claim, record: Record, why: Rejected) -> None:
        """A resumed ship this factory can no longer plan (its config changed): the job still counts as shipped.

        The push needs no tool, so the accepted work of a repo job still arrives; the hook is not run.
        """
        if claim.job.repo is not None and not plan_job.is_planning(claim.job.extra):
            try:
                res = workspace.push(self.root, claim.job, workspace.existing(self.root, claim.job),
                                     factory_id=self.settings.factory_id, epoch=claim.epoch)
                record.update(branch=res.branch, sha=res.sha, pushed=res.pushed)
            except AQError as perr:
                record.update(pushPending=True, pushError=perr.message)
        record.update(outcome="shipped", shipHook=f"not run: {why}")
        claim.shipped(record)

    def run_ship_hook(self, claim: Claim, plan: Plan, workdir: Path) -> None:
        """The hook of a shipped job, marked while under way so a crash cannot skip it (``shiphooks``)."""
        shiphooks.mark(self.root, claim.job.id)
        if claim.job.repo is not None:
            self._repo_ship_hook(claim, plan, workdir)
        elif not self._plain_ship_hook(claim, plan, workdir):
            return  # stopped by shutdown: the marker stays
        shiphooks.done(self.root, claim.job.id)

    def rerun_interrupted_hooks(self) -> None:
        """Start-up: run again each ship hook a crash cut short or never started (see ``shiphooks``)."""
        queue = LocalQueue(self.root)
        for job_id in shiphooks.interrupted(self.root):
            try:
                entry = queue.get(job_id)
                if entry.state in (State.RUNNING, State.INBOX):
                    continue  # crashed before the move: its ship (resumed or re-run) runs the hook
                if entry.state is not State.SHIPPED:
                    raise Rejected(f"job is in {entry.state.value}/, not shipped/")
                plan = plan_attempt(self.settings, entry.job, 1)
            except (AQError, Rejected) as exc:
                log.error("cannot re-run the interrupted ship hook: %s", exc, extra={"job_id": job_id})
                shiphooks.done(self.root, job_id)
                continue
            log.warning("re-running a ship hook a crash interrupted", extra={"job_id": job_id})
            claim = LocalClaim(queue, entry)
            epoch = entry.result.get("leaseEpoch")
            claim.epoch = epoch if isinstance(epoch, int) else None  # the lease it shipped under (fleet)
            self.run_ship_hook(claim, plan, workspace.existing(self.root, entry.job))

    def _plain_ship_hook(self, claim: Claim, plan: Plan, workdir: Path) -> bool:
        """A job without a repo: the hook as a child of the daemon; False when a shutdown cut it short."""
        job = claim.job
        log_header(self.root, self.settings.factory_id, job.id, f"ship hook: {show(plan.ship)}")
        hook = process.run(plan.ship, cwd=workdir, env=plan.env, log_path=log_path(self.root, job.id),
                           timeout_s=plan.timeout_s, watch=self.control,
                           on_start=lambda pid, cgroup: shiphooks.mark(self.root, job.id, pid, cgroup),
                           log_cap=self.settings.log_cap)
        claim.note_ship_hook({"exitCode": hook.exit_code, "timedOut": hook.timed_out, "error": hook.error})
        if hook.aborted:  # the marker stays, the next start runs it again
            log.warning("ship hook stopped by shutdown; it runs again at the next start", extra={"job_id": job.id})
            return False
        if not hook.ok:
            log.warning("ship hook failed (job stays shipped)", extra={"job_id": job.id, "exitCode": hook.exit_code})
        return True

    def _repo_ship_hook(self, claim: Claim, plan: Plan, workdir: Path) -> None:
        """A repo job's hook runs inside ship_worktree (placeholders {branch} {sha}), once; never here as well."""
        try:
            workspace.run_ship_hook(self.root, claim.job, workdir, plan.ship, factory_id=self.settings.factory_id,
                                    epoch=claim.epoch, env=plan.env, log_cap=self.settings.log_cap)
        except AQError as exc:
            claim.note_ship_hook({"ok": False, "error": exc.message})
            log.warning("ship hook failed (job stays shipped)", extra={"job_id": claim.job.id,
                                                                        "error": exc.message})
            return
        claim.note_ship_hook({"ok": True, "exitCode": 0})

    def _push(self, claim: Claim, workdir: Path, record: Record) -> Record | None:
        """Commit + fenced push of ``aq/<id>`` before the job counts as shipped; a record when it may not ship.

        Offline a failed push is a failed attempt, and a remote branch holding foreign work
        (``GitFenced``) quarantines the job with that reason. In fleet mode the coordinator has
        already accepted the job as shipped, so releasing it now would lose it: the push
        (idempotent) is tried again a few times, then the job ships with ``pushPending``, the
        reason and its commit in work/<id>; a foreign branch is never retried (it cannot change by
        itself). Every ending is final: nothing here loops.
        """
        tries = 1 if claim.epoch is None else PUSH_TRIES
        error = ""
        for n in range(1, tries + 1):
            try:
                res = workspace.push(self.root, claim.job, workdir, factory_id=self.settings.factory_id,
                                     epoch=claim.epoch)
            except GitFenced as exc:
                if claim.epoch is None:
                    record.update(outcome="quarantined", reason=f"ship refused: {exc.message}")
                    return record
                error = exc.message
                break
            except AQError as exc:
                error = exc.message
                if n < tries:
                    log.warning("push failed, trying again", extra={"job_id": claim.job.id, "error": error})
                    self.control.idle(2.0 * n)
                continue
            record.update(branch=res.branch, sha=res.sha, pushed=res.pushed)
            return None
        if claim.epoch is None:
            record.update(outcome="failed", reason=f"ship: {error}")
            return record
        record.update(pushPending=True, pushError=error)
        workspace.finish(self.root, claim.job, "shipped")  # finished, not orphaned: pruned by age only
        log.error("push failed after the coordinator accepted the job: shipped with pushPending; the commit "
                  "waits in the job's worktree", extra={"job_id": claim.job.id, "error": error})
        return None

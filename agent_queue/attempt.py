"""One attempt of one job: run the tool, read what it said, run the verify gate; describe it as a ``Record``.

Nothing here decides the job's next state: the attempt ends in an outcome
(passed | failed | lost | shutdown | rate_limited | auth_expired |
over_budget) and a reason, and the runner turns that into a claim ending.
Every child runs under the daemon's ``Control``, so a lost claim or a
shutdown kills the tool group at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_queue import doctor, plan_job, process, repo_guard, tools, workspace
from agent_queue.adapters import AgentAdapter
from agent_queue.agent_output import answer_text
from agent_queue.assessment import assess
from agent_queue.control import Control
from agent_queue.errors import AQError, DiskFull
from agent_queue.joblog import log_header, log_path, show
from agent_queue.jobs import Job
from agent_queue.planning import Plan, run_dir
from agent_queue.process import ProcResult
from agent_queue.settings import Settings
from agent_queue.source import Claim, Record
from agent_queue.timeutil import to_rfc3339

log = logging.getLogger(__name__)

Verdict = tuple[str, str]  # (outcome, reason) of a step that did not pass


def new_record(attempt: int, outcome: str, **fields: Any) -> Record:
    """An attempt record (what result.json's history keeps), before its timing is known."""
    return {"attempt": attempt, "outcome": outcome, "reason": None, **fields}


class AttemptRunner:
    """Runs attempts for one daemon: its root and factory id for the job log, its ``Control`` for every child."""

    def __init__(self, settings: Settings, control: Control) -> None:
        self.settings = settings
        self.control = control
        self.root = settings.root

    def run(self, claim: Claim, plan: Plan, workdir: Path, attempt: int) -> Record:
        """Run the tool, then the verify gate if the tool succeeded; describe what happened."""
        job = claim.job
        started = time.time()
        epoch = f", epoch {claim.epoch}" if claim.epoch is not None else ""
        self._header(job, f"attempt {attempt} of {plan.max_attempts} (round {claim.round}{epoch}): {show(plan.argv)}")
        log.info("attempt started", extra={"job_id": job.id, "attempt": attempt})
        raw = run_dir(self.root, job) / f"attempt-{attempt}.out"  # the tool's bytes as written, for _assess
        raw.unlink(missing_ok=True)
        guard = _Guard(job)
        tool = self._run(job, plan.argv, plan, workdir, stdin=plan.stdin_path, on_start=claim.note_pid, raw=raw)
        record = new_record(attempt, "passed", exitCode=tool.exit_code, toolDurationS=round(tool.duration_s, 3),
                            startedAt=to_rfc3339(started))
        verdict = guard.verdict() or self._verdict("tool", tool, plan.timeout_s)
        if verdict is None or verdict[0] == "failed" and tool.exit_code is not None and not tool.timed_out:
            verdict = self._assess(job, plan.adapter, tool, raw, record) or verdict
        if verdict is None and plan.verify:
            verdict = self._verify(job, plan, workdir, record)
        if verdict is None:
            verdict = self._pin(job, workdir, record)
        if verdict is not None:
            record.update(outcome=verdict[0], reason=verdict[1])
        record.update(endedAt=to_rfc3339(time.time()), durationS=round(time.time() - started, 3))
        return record

    def _verify(self, job: Job, plan: Plan, workdir: Path, record: Record) -> Verdict | None:
        self._header(job, f"verify: {show(plan.verify)}")
        gate = self._run(job, plan.verify, plan, workdir)
        record["verifyExitCode"] = gate.exit_code
        verdict = self._verdict("verify gate", gate, plan.timeout_s)
        log.info("verify %s", "passed" if verdict is None else "failed",
                 extra={"job_id": job.id, "attempt": record["attempt"], "exitCode": gate.exit_code})
        return verdict

    def _pin(self, job: Job, workdir: Path, record: Record) -> Verdict | None:
        """Pin what verify saw (every process of the attempt has ended): exactly that ships."""
        try:
            tree = workspace.record_verified(self.root, job, workdir)
        except AQError as exc:
            return "failed", f"workspace: {exc.message}"
        if tree is not None:
            record["verifiedTree"] = tree
        return None

    def _assess(self, job: Job, adapter: AgentAdapter, tool: ProcResult, raw: Path,
                record: Record) -> Verdict | None:
        """Read what the tool said (``assessment.assess``): usage limit, expired login, over budget, or plain.

        Keeps the transcript with the job and puts the parsed fields
        (costUsd, tokensIn, tokensOut, turns, sessionId) in the attempt record.
        """
        output = tools.attempt_output(raw, 0)  # not the log: its lines carry time stamps
        if plan_job.is_planning(job.extra):  # the plan travels in the record (and a fleet report)
            record["answer"] = answer_text(adapter.output_format, output)[-plan_job.MAX_ANSWER_CHARS:]
        record["transcript"] = str(tools.keep_transcript(run_dir(self.root, job), adapter, record["attempt"], output))
        raw.unlink(missing_ok=True)  # kept as the transcript now
        now = time.time()
        a = assess(adapter, job, tool.exit_code if tool.exit_code is not None else -1, output, now)
        record.update({k: v for k, v in a.report.items() if k not in ("tool", "exitCode")})
        if a.verdict == "rate_limited":
            record["notBefore"] = to_rfc3339(a.not_before or now)
        elif a.verdict == "auth_expired":
            doctor.record_auth_expired(self.root, adapter.name, now, job.id, a.reason)
        elif a.verdict == "ok":
            doctor.clear_auth_expired(self.root, adapter.name)
        if a.verdict == "failed":  # a plain failure keeps the exit-status reason; exit 0 + is_error gets one here
            return None if tool.exit_code else ("failed", f"tool: reported an error ({a.reason})")
        return None if a.verdict == "ok" else (a.verdict, a.reason)

    def _run(self, job: Job, argv: tuple[str, ...], plan: Plan, workdir: Path, *, stdin: Path | None = None,
             on_start: Callable[[int, str | None], None] | None = None, raw: Path | None = None) -> ProcResult:
        """One child under the daemon's ``Control``; a log it cannot write (disk full) raises ``DiskFull``."""
        res = process.run(argv, cwd=workdir, env=plan.env, log_path=log_path(self.root, job.id),
                          timeout_s=plan.timeout_s, watch=self.control, stdin_path=stdin, on_start=on_start,
                          raw_path=raw, log_cap=self.settings.log_cap)
        if res.disk_full is not None:
            raise DiskFull(f"job {job.id}: {res.disk_full}")
        return res

    def _verdict(self, what: str, res: ProcResult, timeout_s: float) -> Verdict | None:
        """None when ``res`` passed; else (outcome, reason) with outcome lost | shutdown | failed."""
        if res.aborted is not None:
            return ("lost" if self.control.lost_reason is not None else "shutdown"), res.aborted
        if res.error is not None:
            return "failed", f"{what}: {res.error}"
        if res.timed_out:
            return "failed", f"{what}: timed out after {timeout_s:g}s"
        if res.exit_code != 0:
            return "failed", f"{what}: exited with status {res.exit_code}"
        return None

    def _header(self, job: Job, text: str) -> None:
        log_header(self.root, self.settings.factory_id, job.id, text)


class _Guard:
    """A planning job may read its repo, never change it: the repo's state before the tool, compared after.

    A change ends the attempt ``quarantined`` with a reason naming it (the
    composite's planning then fails with that reason). A repo that cannot be
    read is a failed attempt, as a workspace that cannot be prepared is.
    """

    def __init__(self, job: Job) -> None:
        self.repo = job.repo if plan_job.is_planning(job.extra) else None
        self.error: str | None = None
        self.before: repo_guard.Snapshot = {}
        if self.repo is not None:
            try:
                self.before = repo_guard.snapshot(self.repo)
            except AQError as exc:
                self.error = exc.message

    def verdict(self) -> Verdict | None:
        if self.repo is None:
            return None
        try:
            changed = self.error is None and repo_guard.differences(self.before, repo_guard.snapshot(self.repo))
        except AQError as exc:
            self.error = exc.message
        if self.error is not None:
            return "failed", f"planning: cannot read the repo to check it is unchanged ({self.error})"
        if changed:
            return "quarantined", (f"planning: the planner changed the repo {self.repo} ({'; '.join(changed)}); "
                                   "a planner may read the repo, never change it")
        return None

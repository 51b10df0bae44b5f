"""The daemon loop: take a claim from the Source, run the tool, verify, then ship or quarantine.

``Runner.work`` is the loop and ``Runner.process`` is one job's life; every
step is a small helper below them. Signals only set flags on ``Control``:
the first SIGTERM/SIGINT stops taking work and gives the running job
``grace_s`` seconds (then kills its group and gives it back, attempt not
counted); a second one kills it at once. Waiting (idle poll, running child)
is an ``Event.wait`` that any of those flags wakes, so idle CPU stays near zero.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from agent_queue import doctor, process, shiphooks, tools, workspace
from agent_queue.adapters import AgentAdapter, assess
from agent_queue.errors import AQError, BadInput, Fenced, ReportPending
from agent_queue.fsutil import append_line, ensure_dir
from agent_queue.gitrepo import GitFenced
from agent_queue.inbox import LocalQueue, State
from agent_queue.jobs import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, Job
from agent_queue.local_source import LocalClaim
from agent_queue.process import ProcResult
from agent_queue.settings import Settings
from agent_queue.source import Claim, Record, Source
from agent_queue.timeutil import parse_rfc3339, to_rfc3339

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
PUSH_TRIES = 3  # fleet mode: pushes of a job the coordinator already accepted


@dataclass(frozen=True)
class RunOptions:
    once: bool = False  # take at most one job, then return
    drain: bool = False  # return when no job is left
    max_jobs: int | None = None


class Rejected(Exception):
    """The job cannot run here. ``here_only``: another factory might (its tool, profile or program
    is missing on this one), so a fleet claim passes it on instead of quarantining it fleet-wide."""

    def __init__(self, message: str, here_only: bool = False) -> None:
        super().__init__(message)
        self.here_only = here_only


@dataclass(frozen=True)
class Plan:
    """Everything resolved for one attempt before anything runs."""

    adapter: AgentAdapter
    argv: tuple[str, ...]
    env: dict[str, str]
    timeout_s: float
    max_attempts: int
    verify: tuple[str, ...]
    ship: tuple[str, ...]
    stdin_path: Path | None


class Control:
    """Stop/kill/lost flags shared by the signal handlers, the keepalive and the waits (a ``process.Watch``)."""

    def __init__(self, grace_s: float) -> None:
        self.wake = threading.Event()
        self.grace_s = grace_s
        self._stop_at: float | None = None
        self._kill_now = False
        self.lost_reason: str | None = None

    @property
    def stopping(self) -> bool:
        return self._stop_at is not None

    def request_stop(self) -> None:
        """First call: warm shutdown. Second call: cold (kill the running job now)."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        else:
            self._kill_now = True
        self.wake.set()

    def lose(self, reason: str) -> None:
        """Called by a claim's keepalive (any thread) when the claim is gone."""
        self.lost_reason = reason
        self.wake.set()

    def abort_reason(self) -> str | None:
        if self.lost_reason is not None:
            return f"claim lost: {self.lost_reason}"
        if self._kill_now:
            return "shutdown: second signal"
        if self._stop_at is not None and time.monotonic() >= self._stop_at + self.grace_s:
            return f"shutdown: grace of {self.grace_s:g}s expired"
        return None

    def next_deadline(self) -> float | None:
        return None if self._stop_at is None else self._stop_at + self.grace_s


class Runner:
    def __init__(self, settings: Settings, source: Source, control: Control | None = None) -> None:
        self.settings = settings
        self.source = source
        self.control = control or Control(settings.grace_s)
        self.root = settings.root

    # --- the loop ---------------------------------------------------------------

    def work(self, opts: RunOptions) -> int:
        """Run jobs until told to stop (or, with --once/--drain, until done); return how many ran."""
        for step in (self.source.recover, self._rerun_interrupted_hooks,
                     lambda: workspace.housekeeping(self.root, self.settings.keep_worktrees_days, time.time(),
                                                    startup=True)):
            try:
                step()
            except Exception:  # what is left is settled again later; the daemon must come up
                log.exception("start-up step incomplete; continuing")
        done, backoff = 0, self.settings.poll_s
        while not self.control.stopping:
            try:
                claim = self.source.next_claim()
            except Exception as exc:  # coordinator down, disk full, a bug: back off, never die of it
                message = exc.message if isinstance(exc, AQError) else f"{type(exc).__name__}: {exc}"
                log.warning("source unavailable, backing off", extra={"error": message, "backoffS": backoff},
                            exc_info=not isinstance(exc, AQError))
                self._idle(backoff)
                backoff = min(MAX_BACKOFF_S, max(backoff * 2, 0.5))
                continue
            backoff = self.settings.poll_s
            if claim is None:
                if opts.once or opts.drain:
                    break
                self._idle(self.settings.poll_s)
                continue
            try:
                self.process(claim)
            except Exception as exc:  # an OS error or a bug must neither kill the daemon nor strand the job
                self._salvage(claim, exc)
                self._idle(self.settings.poll_s)
            workspace.housekeeping(self.root, self.settings.keep_worktrees_days, time.time(), startup=False)
            done += 1
            if opts.once or (opts.max_jobs is not None and done >= opts.max_jobs):
                break
        self.source.close()
        return done

    def process(self, claim: Claim) -> None:
        """One job's life: plan, workspace, run + verify under keepalive, then ship / retry / quarantine."""
        job, attempt = claim.job, claim.attempts_done + 1
        ctx = {"job_id": job.id, "attempt": attempt}
        if claim.resume_record is not None:
            self._resume_ship(claim, claim.resume_record)
            return
        log.info("job taken", extra={**ctx, "tool": job.tool, "profile": job.profile})
        try:
            plan = self._plan(job, attempt)
        except Rejected as exc:
            record = _record(attempt, "rejected", reason=str(exc))
            if exc.here_only and claim.can_pass_on:
                claim.pass_on(record)  # fleet: released (attempt counted) for a factory that can run it
                log.warning("job passed on: this factory cannot run it", extra={**ctx, "reason": str(exc)})
            else:
                self._quarantine(claim, record)
            return
        try:
            workdir = workspace.prepare(self.root, job)
        except workspace.WorkspaceUnavailable as exc:  # e.g. a fetch failed: may be transient, counts an attempt
            self._finish(claim, plan, self.root, _record(attempt, "failed", reason=f"workspace: {exc}"))
            return
        claim.begin(attempt)
        self.control.lost_reason = None
        with claim.keepalive(self.control.lose):
            record = self._attempt(claim, plan, workdir, attempt)
        self._finish(claim, plan, workdir, record)

    def _salvage(self, claim: Claim, exc: Exception) -> None:
        """Count the attempt and put the job back (or quarantine it when spent), so a bug cannot loop."""
        attempt = claim.attempts_done + 1
        log.error("job failed unexpectedly", exc_info=exc, extra={"job_id": claim.job.id, "attempt": attempt})
        record = _record(attempt, "failed", reason=f"internal error: {type(exc).__name__}: {exc}")
        try:
            if attempt < (claim.job.budget.max_attempts or DEFAULT_MAX_ATTEMPTS):
                claim.retry(record)
            else:
                self._quarantine(claim, record)
        except Exception:
            log.exception("could not put the job back; it stays in running/ until the next start-up recovery",
                          extra={"job_id": claim.job.id})

    # --- steps ------------------------------------------------------------------

    def _plan(self, job: Job, attempt: int) -> Plan:
        spec = self.settings.tools.get(job.tool)
        profile = self.settings.profiles.get(job.profile)
        if spec is None:
            raise Rejected(f"unknown tool {job.tool!r} on factory {self.settings.factory_id}", here_only=True)
        if profile is None:
            raise Rejected(f"unknown profile {job.profile!r} on factory {self.settings.factory_id}", here_only=True)
        if job.repo is not None and not workspace.repo_allowed(job.repo, self.settings.allowed_repos):
            raise Rejected(f"repo {job.repo[:200]!r} is not in allowed_repos of factory "
                           f"{self.settings.factory_id}", here_only=True)
        max_attempts = job.budget.max_attempts or profile.max_attempts or DEFAULT_MAX_ATTEMPTS
        if attempt > max_attempts:
            raise Rejected(f"attempts exhausted ({attempt - 1} of {max_attempts} used)")
        try:
            inv = tools.invocation(spec, profile, job, workdir=self.root / "work" / job.id, root=self.root,
                                   run_dir=self._run_dir(job), host=self.settings.host_env)
        except BadInput as exc:
            raise Rejected(exc.message) from exc
        if tools.find_program(inv.argv[0], inv.env) is None:
            raise Rejected(f"tool {job.tool!r}: program {inv.argv[0]!r} not found on PATH of factory "
                           f"{self.settings.factory_id}", here_only=True)
        return Plan(adapter=spec, argv=inv.argv, env=inv.env,
                    timeout_s=job.budget.timeout_s or profile.timeout_s or DEFAULT_TIMEOUT_S,
                    max_attempts=max_attempts, verify=job.verify, ship=job.ship or profile.ship,
                    stdin_path=inv.stdin_path)

    def _run_dir(self, job: Job) -> Path:
        """Per-job private files: the prompt (fed as stdin or named by path) and the attempts' transcripts."""
        return ensure_dir(self.root / ".state" / "jobs" / job.id)

    def _attempt(self, claim: Claim, plan: Plan, workdir: Path, attempt: int) -> Record:
        """Run the tool, then the verify gate if the tool succeeded; describe what happened."""
        started = time.time()
        self._log_header(claim.job, f"attempt {attempt} of {plan.max_attempts}: {_show(plan.argv)}")
        log.info("attempt started", extra={"job_id": claim.job.id, "attempt": attempt})
        offset = self._log_size(claim.job)
        tool = self._run(claim.job, plan.argv, plan, workdir, stdin=plan.stdin_path, on_start=claim.note_pid)
        record = _record(attempt, "passed", exitCode=tool.exit_code, toolDurationS=round(tool.duration_s, 3),
                         startedAt=to_rfc3339(started))
        verdict = self._verdict("tool", tool, plan.timeout_s)
        if verdict is None or verdict[0] == "failed" and tool.exit_code is not None and not tool.timed_out:
            verdict = self._assess(claim.job, plan.adapter, tool, offset, record) or verdict
        if verdict is None and plan.verify:
            self._log_header(claim.job, f"verify: {_show(plan.verify)}")
            gate = self._run(claim.job, plan.verify, plan, workdir)
            record["verifyExitCode"] = gate.exit_code
            verdict = self._verdict("verify gate", gate, plan.timeout_s)
            log.info("verify %s", "passed" if verdict is None else "failed",
                     extra={"job_id": claim.job.id, "attempt": attempt, "exitCode": gate.exit_code})
        if verdict is not None:
            record.update(outcome=verdict[0], reason=verdict[1])
        record.update(endedAt=to_rfc3339(time.time()), durationS=round(time.time() - started, 3))
        return record

    def _assess(self, job: Job, adapter: AgentAdapter, tool: ProcResult, offset: int,
                record: Record) -> tuple[str, str] | None:
        """Read what the tool said (``adapters.assess``): usage limit, expired login, over budget, or plain.

        Keeps the transcript with the job and puts the parsed fields
        (costUsd, tokensIn, tokensOut, turns, sessionId) in the attempt record.
        """
        output = tools.attempt_output(self._log_path(job), offset)
        record["transcript"] = str(tools.keep_transcript(self._run_dir(job), adapter, record["attempt"], output))
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
             on_start: Any = None) -> ProcResult:
        return process.run(argv, cwd=workdir, env=plan.env, log_path=self._log_path(job), timeout_s=plan.timeout_s,
                           watch=self.control, stdin_path=stdin, on_start=on_start)

    def _verdict(self, what: str, res: ProcResult, timeout_s: float) -> tuple[str, str] | None:
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

    def _finish(self, claim: Claim, plan: Plan, workdir: Path, record: Record) -> None:
        outcome = record["outcome"]
        if outcome == "lost":
            self._fenced(claim, record)
        elif outcome == "shutdown":
            claim.give_back(record["reason"])
            log.info("job given back (shutdown, attempt not counted)", extra=_ctx(claim, record))
        elif outcome == "passed":
            self._ship(claim, plan, workdir, record)
        elif outcome == "rate_limited":
            claim.defer(record, parse_rfc3339(record["notBefore"]))
            log.warning("tool usage limit: job put back until notBefore (attempt not counted)",
                        extra={**_ctx(claim, record), "notBefore": record["notBefore"]})
        elif outcome in ("auth_expired", "over_budget"):
            self._quarantine(claim, record)
        elif record["attempt"] < plan.max_attempts:
            claim.retry(record)
            log.info("attempt failed, will retry", extra={**_ctx(claim, record), "reason": record["reason"]})
        else:
            record["reason"] = f"{record['reason']} (attempt {record['attempt']} of {plan.max_attempts})"
            self._quarantine(claim, record)

    def _resume_ship(self, claim: Claim, record: Record) -> None:
        """The coordinator accepted this attempt's report before we could ship it: ship it now.

        No tool, no verify, no workspace reset: the attempt's work is in ``work/<id>`` as it was left.
        """
        log.warning("resuming the ship of an accepted report", extra={"job_id": claim.job.id,
                                                                     "attempt": record.get("attempt")})
        try:
            plan = self._plan(claim.job, int(record.get("attempt") or claim.attempts_done + 1))
        except Rejected as exc:  # this factory's config changed since; the job still counts as shipped
            if claim.job.repo is not None:  # the push needs no tool: the accepted work must still arrive
                try:
                    res = workspace.push(self.root, claim.job, workspace.existing(self.root, claim.job),
                                         factory_id=self.settings.factory_id, epoch=claim.epoch)
                    record.update(branch=res.branch, sha=res.sha, pushed=res.pushed)
                except AQError as perr:
                    record.update(pushPending=True, pushError=perr.message)
            record.update(outcome="shipped", shipHook=f"not run: {exc}")
            claim.shipped(record)
            return
        self._ship(claim, plan, workspace.existing(self.root, claim.job), record)

    def _ship(self, claim: Claim, plan: Plan, workdir: Path, record: Record) -> None:
        """Ship only after the claim approves it: move to shipped/, then the ship hook."""
        try:
            claim.approve_ship(record)
        except ReportPending as exc:
            log.warning("report unanswered: the job waits in running/ until the coordinator answers",
                        extra={**_ctx(claim, record), "reason": exc.message})
            return
        except Fenced as exc:
            record.update(outcome="fenced", reason=f"ship refused: {exc.message}")
            self._fenced(claim, record)
            return
        if claim.job.repo is not None and not self._push(claim, plan, workdir, record):
            return
        record["outcome"] = "shipped"
        hook = plan.ship and not record.get("pushPending")  # no branch on the remote: a PR hook cannot work
        if hook:  # marked before the move: a crash right after it must not skip the hook
            shiphooks.mark(self.root, claim.job.id)
        claim.shipped(record)
        log.info("shipped", extra=_ctx(claim, record))
        if hook:
            self._run_ship_hook(claim, plan, workdir)

    def _run_ship_hook(self, claim: Claim, plan: Plan, workdir: Path) -> None:
        """The hook of a shipped job, marked while under way so a crash cannot skip it (``shiphooks``)."""
        shiphooks.mark(self.root, claim.job.id)
        if claim.job.repo is not None:
            self._repo_ship_hook(claim, plan, workdir)
        else:
            self._log_header(claim.job, f"ship hook: {_show(plan.ship)}")
            hook = process.run(plan.ship, cwd=workdir, env=plan.env, log_path=self._log_path(claim.job),
                               timeout_s=plan.timeout_s, watch=self.control,
                               on_start=lambda pid: shiphooks.mark(self.root, claim.job.id, pid))
            claim.note_ship_hook({"exitCode": hook.exit_code, "timedOut": hook.timed_out, "error": hook.error})
            if hook.aborted:  # shutdown cut it short: the marker stays, the next start runs it again
                log.warning("ship hook stopped by shutdown; it runs again at the next start",
                            extra={"job_id": claim.job.id})
                return
            if not hook.ok:
                log.warning("ship hook failed (job stays shipped)", extra={"job_id": claim.job.id,
                                                                            "exitCode": hook.exit_code})
        shiphooks.done(self.root, claim.job.id)

    def _rerun_interrupted_hooks(self) -> None:
        """Start-up: run again each ship hook a crash cut short or never started (see ``shiphooks``)."""
        queue = LocalQueue(self.root)
        for job_id in shiphooks.interrupted(self.root):
            try:
                entry = queue.get(job_id)
                if entry.state in (State.RUNNING, State.INBOX):
                    continue  # crashed before the move: its ship (resumed or re-run) runs the hook
                if entry.state is not State.SHIPPED:
                    raise Rejected(f"job is in {entry.state.value}/, not shipped/")
                plan = self._plan(entry.job, 1)
            except (AQError, Rejected) as exc:
                log.error("cannot re-run the interrupted ship hook: %s", exc, extra={"job_id": job_id})
                shiphooks.done(self.root, job_id)
                continue
            log.warning("re-running a ship hook a crash interrupted", extra={"job_id": job_id})
            claim = LocalClaim(queue, entry)
            epoch = entry.result.get("leaseEpoch")
            claim.epoch = epoch if isinstance(epoch, int) else None  # the lease it shipped under (fleet)
            self._run_ship_hook(claim, plan, workspace.existing(self.root, entry.job))

    def _push(self, claim: Claim, plan: Plan, workdir: Path, record: Record) -> bool:
        """Commit + fenced push of ``aq/<id>`` before the job counts as shipped; False: handled otherwise.

        Offline a failed push is a failed attempt. In fleet mode the coordinator has already
        accepted the job as shipped, so releasing it now would lose it: the push (idempotent) is
        tried again a few times, then the job ships with ``pushPending`` and its commit in work/<id>.
        """
        tries = 1 if claim.epoch is None else PUSH_TRIES
        for n in range(1, tries + 1):
            try:
                res = workspace.push(self.root, claim.job, workdir, factory_id=self.settings.factory_id,
                                     epoch=claim.epoch)
            except GitFenced as exc:
                record.update(outcome="fenced", reason=f"push refused: {exc.message}")
                self._fenced(claim, record)
                return False
            except AQError as exc:
                error = exc.message
                if n < tries:
                    log.warning("push failed, trying again", extra={"job_id": claim.job.id, "error": error})
                    self._idle(2.0 * n)
                continue
            record.update(branch=res.branch, sha=res.sha, pushed=res.pushed)
            return True
        if claim.epoch is None:
            record.update(outcome="failed", reason=f"ship: {error}")
            self._finish(claim, plan, workdir, record)
            return False
        record.update(pushPending=True, pushError=error)
        workspace.finish(self.root, claim.job, "shipped")  # finished, not orphaned: pruned by age only
        log.error("push failed after the coordinator accepted the job: shipped with pushPending; the commit "
                  "waits in the job's worktree", extra={"job_id": claim.job.id, "error": error})
        return True

    def _repo_ship_hook(self, claim: Claim, plan: Plan, workdir: Path) -> None:
        """A repo job's hook runs inside ship_worktree (placeholders {branch} {sha}), once; never here as well."""
        try:
            workspace.run_ship_hook(self.root, claim.job, workdir, plan.ship, factory_id=self.settings.factory_id,
                                    epoch=claim.epoch, env=plan.env)
        except AQError as exc:
            claim.note_ship_hook({"ok": False, "error": exc.message})
            log.warning("ship hook failed (job stays shipped)", extra={"job_id": claim.job.id,
                                                                        "error": exc.message})
            return
        claim.note_ship_hook({"ok": True, "exitCode": 0})

    def _quarantine(self, claim: Claim, record: Record) -> None:
        record["outcome"] = "quarantined" if record["outcome"] != "rejected" else "rejected"
        workspace.finish(self.root, claim.job, "quarantined")
        claim.quarantine(record)
        log.warning("quarantined", extra={**_ctx(claim, record), "reason": record["reason"]})

    def _fenced(self, claim: Claim, record: Record) -> None:
        record["outcome"] = "fenced"
        workspace.finish(self.root, claim.job, "fenced")
        claim.fenced(record)
        log.warning("fenced: not shipped", extra={**_ctx(claim, record), "reason": record["reason"]})

    # --- small utilities ----------------------------------------------------------

    def _idle(self, seconds: float) -> None:
        self.control.wake.clear()
        if not self.control.stopping:
            self.control.wake.wait(seconds)

    def _log_path(self, job: Job) -> Path:
        return ensure_dir(self.root / "logs") / f"{job.id}.log"

    def _log_size(self, job: Job) -> int:
        path = self._log_path(job)
        return path.stat().st_size if path.exists() else 0

    def _log_header(self, job: Job, text: str) -> None:
        append_line(self._log_path(job), f"=== {to_rfc3339(time.time())} {self.settings.factory_id} {job.id} {text}")

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


def _record(attempt: int, outcome: str, **fields: Any) -> Record:
    return {"attempt": attempt, "outcome": outcome, "reason": None, **fields}


def _ctx(claim: Claim, record: Record) -> dict[str, Any]:
    return {"job_id": claim.job.id, "attempt": record["attempt"]}


def _show(argv: tuple[str, ...]) -> str:
    """argv for a log header, each item cut short (prompts can be 1 MB)."""
    return " ".join(a if len(a) <= 80 else a[:77] + "..." for a in argv)

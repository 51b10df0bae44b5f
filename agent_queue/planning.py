"""Resolving one attempt before anything runs: tool, profile, argv, env, limits (``Plan``), or why not (``Rejected``).

Used by the runner before each attempt and by the ship step when it resumes
or re-runs a ship hook after a crash (it needs the same env and hook).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent_queue import tools, workspace
from agent_queue.adapters import AgentAdapter
from agent_queue.errors import BadInput
from agent_queue.fsutil import ensure_dir
from agent_queue.inbox import PROMPT_FILE
from agent_queue.jobs import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, Job
from agent_queue.settings import Settings


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


def plan_attempt(settings: Settings, job: Job, attempt: int) -> Plan:
    """The plan of attempt ``attempt`` of ``job`` on this factory; ``Rejected`` when it cannot run."""
    spec = settings.tools.get(job.tool)
    profile = settings.profiles.get(job.profile)
    if spec is None:
        raise Rejected(f"unknown tool {job.tool!r} on factory {settings.factory_id}", here_only=True)
    if profile is None:
        raise Rejected(f"unknown profile {job.profile!r} on factory {settings.factory_id}", here_only=True)
    if job.repo is not None and not workspace.repo_allowed(job.repo, settings.allowed_repos):
        raise Rejected(f"repo {job.repo[:200]!r} is not in allowed_repos of factory "
                       f"{settings.factory_id}", here_only=True)
    max_attempts = job.budget.max_attempts or profile.max_attempts or DEFAULT_MAX_ATTEMPTS
    if attempt > max_attempts:
        raise Rejected(f"attempts exhausted ({attempt - 1} of {max_attempts} used)")
    try:
        inv = tools.invocation(spec, profile, job, workdir=settings.root / "work" / job.id, root=settings.root,
                               run_dir=run_dir(settings.root, job), host=settings.host_env,
                               prompt_path=stored_prompt(settings.root, job))
    except BadInput as exc:
        raise Rejected(exc.message) from exc
    if tools.find_program(inv.argv[0], inv.env) is None:
        raise Rejected(f"tool {job.tool!r}: program {inv.argv[0]!r} not found on PATH of factory "
                       f"{settings.factory_id}", here_only=True)
    return Plan(adapter=spec, argv=inv.argv, env=inv.env,
                timeout_s=job.budget.timeout_s or profile.timeout_s or DEFAULT_TIMEOUT_S,
                max_attempts=max_attempts, verify=job.verify, ship=job.ship or profile.ship,
                stdin_path=inv.stdin_path)


def stored_prompt(root: Path, job: Job) -> Path | None:
    """The running job's own prompt file, which the tool reads in place (None: no prompt, or an older layout)."""
    path = root / workspace.RUNNING_DIR / job.id / PROMPT_FILE
    return path if job.prompt is not None and path.is_file() else None


def run_dir(root: Path, job: Job) -> Path:
    """Per-job private files: the prompt (fed as stdin or named by path) and the attempts' transcripts."""
    return ensure_dir(root / ".state" / "jobs" / job.id)

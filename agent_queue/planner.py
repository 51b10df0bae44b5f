"""``agent-queue plan``: run a planning agent until it gives a valid composite spec, without touching the repo.

Each try renders the planning prompt (``plan_prompt``), resolves the tool the
way the runner does (``planning.plan_attempt``: adapter, profile, argv, env,
timeout), and runs it in its own process group (``process.run``) in a
throwaway workspace: a detached git worktree of the repo's HEAD (removed
after), or an empty directory without a repo. The repo is fingerprinted
before and after (HEAD, refs, status, diff): a planner that changed it is
refused. The answer is unwrapped from the tool's output format
(``agent_output.answer_text``), the plan found and checked (``plan_spec``);
a refused plan is tried again with the problems in the prompt, up to
``max_tries``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_queue import plan_prompt, plan_spec, plan_view, process, repo_guard
from agent_queue.agent_output import answer_text
from agent_queue.control import Control
from agent_queue.errors import AQError, BadInput, StateError
from agent_queue.fsutil import ensure_dir, write_bytes_atomic
from agent_queue.gitcmd import GitError, git, git_out
from agent_queue.jobs import Job
from agent_queue.planning import Rejected, plan_attempt, run_dir
from agent_queue.settings import Settings
from agent_queue.tools import attempt_output, check_known

DEFAULT_MAX_TRIES = 3
SPEC_MODE = 0o644  # a plan is for people to read and edit before they enqueue it


class NoValidPlan(AQError):
    """The planner never produced a plan that passes the composite rules (exit 1, the last problems named)."""

    code = "no_valid_plan"


@dataclass(frozen=True)
class Request:
    """One planning: the epic, the parent's fixed fields, and (re-planning) what is kept and what happened."""

    epic: str
    parent: Mapping[str, Any]  # id, prompt, and the person's repo / verify / budget: never the agent's to choose
    tool: str
    profile: str = "default"
    repo: Path | None = None
    max_tries: int = DEFAULT_MAX_TRIES
    kept: Sequence[Mapping[str, Any]] = ()
    context: Sequence[str] = ()
    timeout_s: float | None = None


@dataclass
class Outcome:
    spec: dict[str, Any]
    refused: list[list[str]] = field(default_factory=list)  # each refused try's problems
    spent_s: float = 0.0  # what the planner's runs took together (a re-plan counts it in the parent's budget)
    cost_usd: float = 0.0  # what they cost, as the tool reported it (0 when it does not say)


def make_plan(settings: Settings, req: Request, on_refused: Callable[[int, list[str]], None] | None = None) -> Outcome:
    """Plan until valid or ``max_tries`` are spent (``NoValidPlan``); nothing is written here."""
    if req.max_tries < 1:
        raise BadInput(f"plan: --max-tries must be at least 1, got {req.max_tries}")
    check_known(Job(id="plan", tool=req.tool, profile=req.profile), settings.tools, settings.profiles)
    fixed = [str(c["id"]) for c in req.kept]
    outcome = Outcome(spec={})
    problems: list[str] = []
    for number in range(1, req.max_tries + 1):
        prompt = plan_prompt.build(req.epic, tool=req.tool, tools=sorted(settings.tools),
                                   profiles=sorted(settings.profiles), budget=plan_prompt.budget_text(req.parent),
                                   problems=problems, context=req.context)
        answer, secs, cost = run_planner(settings, req, prompt)
        outcome.spent_s, outcome.cost_usd = round(outcome.spent_s + secs, 3), round(outcome.cost_usd + cost, 6)
        try:
            spec = plan_spec.compose(plan_spec.extract(answer), req.parent, req.kept)
            problems = plan_spec.problems(spec, lambda j: check_known(j, settings.tools, settings.profiles), fixed)
        except plan_spec.NoPlan as exc:
            problems = [str(exc)]
        if not problems:
            outcome.spec = spec
            return outcome
        outcome.refused.append(problems)
        if on_refused is not None:
            on_refused(number, problems)
    raise NoValidPlan(f"plan: no valid plan after {req.max_tries} tries; the last was refused: "
                      + "; ".join(problems))


def run_planner(settings: Settings, req: Request, prompt: str) -> tuple[str, float, float]:
    """One run of the planning agent in a throwaway workspace: its answer as text (a failed run says why),
    the seconds it ran and the dollars it reported."""
    spec: dict[str, Any] = {"id": f"plan-{secrets.token_hex(6)}", "tool": req.tool, "profile": req.profile,
                            "prompt": prompt}
    if req.timeout_s is not None:
        spec["budget"] = {"timeoutS": req.timeout_s}
    job = Job.from_dict(spec, where="plan")
    workdir = settings.root / "work" / job.id
    try:
        with _workspace(req.repo, workdir):
            try:
                attempt = plan_attempt(settings, job, 1)
            except Rejected as exc:
                raise BadInput(f"plan: {exc}") from None
            log = run_dir(settings.root, job) / "planner.log"
            raw = log.with_suffix(".raw")  # the tool's own bytes: the log's lines carry time stamps
            result = process.run(attempt.argv, cwd=workdir, env=attempt.env, log_path=log, raw_path=raw,
                                 timeout_s=attempt.timeout_s, watch=Control(0.0), stdin_path=attempt.stdin_path)
            output = attempt_output(raw, 0)
    finally:
        shutil.rmtree(run_dir(settings.root, job), ignore_errors=True)
    cost = attempt.adapter.parse_output(output).get("costUsd")
    spend = (result.duration_s, float(cost) if isinstance(cost, int | float) else 0.0)
    if not result.ok:
        why = result.error or ("timed out" if result.timed_out else f"exited with status {result.exit_code}")
        return f"(the planner tool {req.tool} {why}; its output ended: {output[-300:]!r})", *spend
    return answer_text(attempt.adapter.output_format, output), *spend


@contextlib.contextmanager
def _workspace(repo: Path | None, path: Path) -> Iterator[None]:
    """An empty directory, or a detached worktree of ``repo``'s HEAD; removed after; the repo checked unchanged."""
    if repo is None:
        ensure_dir(path)
        try:
            yield
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return
    before = repo_guard.snapshot(repo)
    git(["worktree", "add", "--detach", "--quiet", str(path), "HEAD"], cwd=repo, what=f"plan: repo {repo}")
    try:
        yield
    finally:
        git(["worktree", "remove", "--force", str(path)], cwd=repo, what=f"plan: repo {repo}", check=False)
        shutil.rmtree(path, ignore_errors=True)
        git(["worktree", "prune"], cwd=repo, what=f"plan: repo {repo}", check=False)
    changed = repo_guard.differences(before, repo_guard.snapshot(repo))
    if changed:
        raise StateError(f"plan: the planner changed the repository {repo} ({'; '.join(changed)}); "
                         "its plan is refused")


def local_repo(repo: str) -> Path:
    """``--repo``: a local git work tree (a planner reads it; it is never cloned for planning)."""
    path = Path(repo).expanduser().resolve()
    if not path.is_dir():
        raise BadInput(f"plan: --repo {repo}: not a directory")
    try:
        top = git_out(["rev-parse", "--show-toplevel"], cwd=path, what=f"plan: --repo {repo}")
    except GitError:
        raise BadInput(f"plan: --repo {repo}: not a git work tree") from None
    return Path(top)


def save(spec: Mapping[str, Any], out: Path) -> Path:
    """Write the spec (JSON) and its Mermaid drawing beside it (``.mmd``), each atomically; the drawing's path."""
    drawing = out.with_suffix(".mmd")
    write_bytes_atomic(drawing, plan_view.mermaid(spec).encode("utf-8"), mode=SPEC_MODE)
    write_bytes_atomic(out, (json.dumps(spec, indent=2, ensure_ascii=False) + "\n").encode("utf-8"), mode=SPEC_MODE)
    return drawing


"""The planner's commands of the ``agent-queue`` CLI: ``plan``, ``replan``, ``approve``. Parse, call, print.

Kept beside cli.py (registered there with ``add_command``) so the planner's
flags do not crowd the queue's own commands. Approval is the rule: nothing
is enqueued unless a person says so, on a terminal (y/N) or with ``--yes``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Protocol

import click

from agent_queue.errors import BadInput
from agent_queue.settings import Settings


class _Obj(Protocol):
    def settings(self, **more: Any) -> Settings: ...


@click.command()
@click.argument("prompt", required=False)
@click.option("--tool", default="claude", show_default=True, help="The planning agent (any configured tool).")
@click.option("--profile", default="default", show_default=True, help="Profile of the planning agent.")
@click.option("--repo", help="Local git work tree the planner reads (a throwaway worktree; never changed).")
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Spec file to write (default <ID>.json).")
@click.option("--id", "epic_id", help="The composite's id (default: generated, epic-...).")
@click.option("--verify", help='The epic\'s verify gate, split like a shell: --verify "make check".')
@click.option("--budget-timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds all children may run together (budget.timeoutS).")
@click.option("--budget-cost", type=click.FloatRange(min=0), help="Dollars all children may cost (budget.costUsd).")
@click.option("--max-tries", type=click.IntRange(min=1), default=3, show_default=True,
              help="Planner runs before giving up on a valid plan.")
@click.option("--enqueue", "and_enqueue", is_flag=True, help="Enqueue the plan once approved (y/N, or --yes).")
@click.option("--yes", is_flag=True, help="Approve without asking (needed with --enqueue off a terminal).")
@click.option("--fleet", "to_fleet", is_flag=True, help="With --enqueue: send it to the coordinator.")
@click.pass_obj
def plan(obj: _Obj, /, prompt: str | None, and_enqueue: bool, yes: bool, to_fleet: bool, **opts: Any) -> None:
    """Ask a planning agent to split an epic (PROMPT, or - for stdin) into a composite job; write it to a file."""
    from agent_queue import plan_view, planner

    if and_enqueue:
        _need_approver(yes, "plan --enqueue")
    settings = obj.settings()
    epic = _epic(prompt)
    repo = planner.local_repo(opts["repo"]) if opts["repo"] else None
    req = planner.Request(epic=epic, parent={**_parent(opts, repo), "prompt": epic}, tool=opts["tool"],
                          profile=opts["profile"], max_tries=opts["max_tries"], repo=repo)
    outcome = planner.make_plan(settings, req, _print_refused)
    out = Path(opts["out"] or f"{req.parent['id']}.json")
    click.echo(plan_view.tree(outcome.spec))
    drawing = planner.save(outcome.spec, out)
    click.echo(f"plan: wrote {out} and {drawing}")
    if and_enqueue:
        enqueue_approved(settings, outcome.spec, out, yes=yes, to_fleet=to_fleet)


@click.command()
@click.argument("job_id", metavar="ID")
@click.option("--prompt", "note", help="A note for the planner, added to the epic (what to do differently).")
@click.option("--tool", help="The planning agent (default: the composite's planner, else claude).")
@click.option("--profile", default="default", show_default=True, help="Profile of the planning agent.")
@click.option("--max-tries", type=click.IntRange(min=1), default=3, show_default=True,
              help="Planner runs before giving up on a valid plan.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the new spec (and its .mmd) here.")
@click.option("--yes", is_flag=True, help="Approve without asking (needed off a terminal).")
@click.option("--fleet", "to_fleet", is_flag=True,
              help="Re-plan a composite at the coordinator (the planner runs here, on this host).")
@click.pass_obj
def replan(obj: _Obj, /, job_id: str, note: str | None, tool: str | None, profile: str, max_tries: int,
           out: str | None, yes: bool, to_fleet: bool) -> None:
    """Re-plan a composite with quarantined children: shipped children are kept, the rest re-planned."""
    from agent_queue import plan_view, planner, replanning, service
    from agent_queue.fleet import ops as fleet_ops

    _need_approver(yes, "replan")
    settings = obj.settings()
    how: dict[str, Any] = {"note": note, "tool": tool, "profile": profile, "max_tries": max_tries}
    if to_fleet:
        req = replanning.fleet_request(*fleet_ops.family_views(settings, job_id), **how)
    else:
        queue = service.queue_for(settings)
        parent = replanning.load_failed(queue, job_id)
        req = replanning.request(queue, parent, **how)
    outcome = planner.make_plan(settings, req, _print_refused)
    click.echo(plan_view.tree(outcome.spec))
    if out:
        click.echo(f"replan: wrote {out} and {planner.save(outcome.spec, Path(out))}")
    if not yes and not click.confirm(f"Replace the unshipped children of {job_id}?", default=False):
        click.echo(f"replan: {job_id} left as it was")
        return
    queued = (fleet_ops.replan(settings, job_id, outcome.spec, (outcome.spent_s, outcome.cost_usd)) if to_fleet
              else replanning.apply(settings, queue, parent, outcome))
    click.echo(f"{job_id}: re-planned, queued {', '.join(queued) or 'nothing'}")


@click.command()
@click.argument("job_id", metavar="ID")
@click.option("--fleet", "to_fleet", is_flag=True, help="Approve at the coordinator, not in the local queue.")
@click.pass_obj
def approve(obj: _Obj, /, job_id: str, to_fleet: bool) -> None:
    """Approve the plan of a composite waiting in ``planned``: its children are queued."""
    from agent_queue import composite_queue, service
    from agent_queue.fleet import ops as fleet_ops

    settings = obj.settings()
    queued = (fleet_ops.approve(settings, job_id) if to_fleet
              else composite_queue.approve(service.queue_for(settings), job_id))
    click.echo(f"{job_id}: approved, queued {', '.join(queued) or 'nothing'}")


def _need_approver(yes: bool, command: str) -> None:
    if not yes and not sys.stdin.isatty():
        raise BadInput(f"{command}: no terminal to ask for approval; pass --yes")


def enqueue_approved(settings: Settings, spec: dict[str, Any], out: Path, *, yes: bool, to_fleet: bool) -> None:
    """Enqueue ``spec`` when a person approves it (``yes``, or y at the prompt); else say how to later."""
    from agent_queue import service
    from agent_queue.fleet import ops as fleet_ops

    n = len(spec.get("children") or ())
    if not yes and not click.confirm(f"Enqueue {spec['id']} ({n} children){' to the fleet' if to_fleet else ''}?",
                                     default=False):
        click.echo(f"plan: not enqueued; approve it later with: agent-queue enqueue{' --fleet' if to_fleet else ''} "
                   f"{out}")
        return
    click.echo((fleet_ops.enqueue if to_fleet else service.enqueue)(settings, spec, str(out)))


def _epic(prompt: str | None) -> str:
    text = sys.stdin.read() if prompt == "-" else prompt
    if text is None or not text.strip():
        raise BadInput("plan: give the epic as PROMPT (or - to read it from stdin)")
    return text


def _parent(opts: dict[str, Any], repo: Path | None) -> dict[str, Any]:
    """The parent's fields a person sets (id, verify, budget); the planner only writes the children."""
    import shlex

    from agent_queue.jobs import new_job_id, validate_id

    parent: dict[str, Any] = {"id": validate_id(opts["epic_id"], "--id") if opts["epic_id"] else new_job_id("epic")}
    if repo is not None:
        parent["repo"] = str(repo)
    if opts["verify"]:
        try:
            parent["verify"] = shlex.split(opts["verify"])
        except ValueError as exc:
            raise BadInput(f"--verify: cannot split {opts['verify'][:40]!r} ({exc})") from None
    budget = {k: v for k, v in (("timeoutS", opts["budget_timeout"]), ("costUsd", opts["budget_cost"]))
              if v is not None}
    if budget:
        parent["budget"] = budget
    return parent


def _print_refused(number: int, problems: list[str]) -> None:
    click.echo(f"plan: try {number} refused:", err=True)
    for line in problems:
        click.echo(f"  - {line}", err=True)

"""The ``agent-queue`` command line: parse options, call ``service``, print. No logic lives here.

``main`` is the one place where errors become exit codes: 0 ok, 1 runtime
failure, 2 usage or bad input, each with one line on stderr.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from agent_queue import log as aqlog
from agent_queue import render, service
from agent_queue.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, AQError, BadInput
from agent_queue.fleet import ops as fleet_ops
from agent_queue.fleet import shadow
from agent_queue.settings import Settings, load_settings

PROG = "agent-queue"


class _Ctx:
    """Global flags, kept until a command knows its own and can build Settings once."""

    def __init__(self, flags: dict[str, Any]) -> None:
        self.flags = flags

    def settings(self, **more: Any) -> Settings:
        return load_settings({**self.flags, **more}, os.environ)


pass_ctx = click.make_pass_decorator(_Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False), help="Queue root [env AQ_ROOT; default ~/.agent-queue].")
@click.option("--factory-id", help="This host's name in the fleet [env AQ_FACTORY_ID; default short hostname].")
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="TOML config [env AQ_CONFIG; default <root>/agent-queue.toml when present].")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Daemon log format [env AQ_LOG_FORMAT].")
@click.option("-v", "--verbose", is_flag=True, default=None,
              help="Add debug lines to the daemon log; other commands log what they do on stderr.")
@click.version_option(package_name="agent-queue")
@click.pass_context
def cli(ctx: click.Context, /, **flags: Any) -> None:
    """Run AI coding agents and commands on a queue of jobs."""
    ctx.obj = _Ctx(flags)
    if flags.get("verbose"):  # any command: what it does on stderr (the fleet client's retries, say)
        aqlog.setup(flags.get("log_format") or "text", True, flags.get("factory_id") or PROG)


class _EnqueueCommand(click.Command):
    """Keeps what follows ``--`` (the shell command) apart from the FILE argument."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta["aq_command"] = args[cut + 1:]
            args = args[:cut]
        return super().parse_args(ctx, args)


@cli.command(cls=_EnqueueCommand)
@click.argument("file", required=False)
@click.option("--id", "job_id", help="Job id (default: generated, sortable).")
@click.option("--tool", help="Tool name (default shell).")
@click.option("--prompt", help="Prompt text for an agent tool.")
@click.option("--profile", help="Profile name (default 'default').")
@click.option("--priority", type=int, help="Higher runs first (default 0).")
@click.option("--requires", multiple=True, help="Capability the factory must have (repeatable).")
@click.option("--verify", help='Verify gate argv, split like a shell: --verify "pytest -q".')
@click.option("--timeout", type=float, help="Timeout per attempt, seconds.")
@click.option("--max-attempts", type=int, help="Attempts before quarantine.")
@click.option("--fleet", "to_fleet", is_flag=True, help="Send the job to the coordinator, not the local inbox.")
@click.pass_context
def enqueue(ctx: click.Context, /, file: str | None, to_fleet: bool, **opts: Any) -> None:
    """Add a job: a JSON spec from FILE (or - for stdin), or built from flags and -- CMD ARGS..."""
    command = ctx.meta.get("aq_command")
    settings = ctx.obj.settings()
    if file is not None:
        if command is not None or any(v not in (None, ()) for v in opts.values()):
            raise BadInput("enqueue: give either FILE or the job flags / -- CMD, not both")
        spec, where = _read_spec(file)
    else:
        spec, where = _spec_from_flags(opts, command), "enqueue flags"
    click.echo((fleet_ops.enqueue if to_fleet else service.enqueue)(settings, spec, where))


def _read_spec(file: str) -> tuple[Any, str]:
    where = "stdin" if file == "-" else file
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{where}: cannot read job spec ({getattr(exc, 'strerror', None) or exc})") from None
    return service.decode_spec(text, where), where


def _spec_from_flags(opts: dict[str, Any], command: list[str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for key, field in (("job_id", "id"), ("tool", "tool"), ("prompt", "prompt"), ("profile", "profile"),
                       ("priority", "priority")):
        if opts[key] is not None:
            spec[field] = opts[key]
    if opts["requires"]:
        spec["requires"] = list(opts["requires"])
    if opts["verify"] is not None:
        try:
            spec["verify"] = shlex.split(opts["verify"])
        except ValueError as exc:
            raise BadInput(f"--verify: cannot split {opts['verify'][:40]!r} ({exc})") from None
    budget = {k: v for k, v in (("timeoutS", opts["timeout"]), ("maxAttempts", opts["max_attempts"])) if v is not None}
    if budget:
        spec["budget"] = budget
    if command:
        spec["command"] = command
    return spec


@cli.command()
@click.option("--once", is_flag=True, help="Take at most one job, then exit.")
@click.option("--drain", is_flag=True, help="Work until no job is left, then exit.")
@click.option("--poll", "poll_s", type=float, help="Seconds between inbox polls when idle (default 2).")
@click.option("--max-jobs", type=click.IntRange(min=1),
              help="Exit after this many jobs ended here (shipped, quarantined, cancelled, fenced; retries of a job "
                   "count once).")
@click.option("--grace", "grace_s", type=float, help="Seconds a running job gets at shutdown (default 30).")
@click.option("--keep-worktrees", "keep_worktrees_days", type=float,
              help="Days to keep worktrees of finished jobs (default 7; branches stay).")
@click.option("--fleet/--no-fleet", default=None, help="Fleet mode [env AQ_FLEET; default off].")
@click.option("--fleet-route/--no-fleet-route", default=None, help="Coordinator sources work [env AQ_FLEET_ROUTE].")
@click.option("--fleet-shadow/--no-fleet-shadow", default=None, help="Shadow-compare [env AQ_FLEET_SHADOW].")
@click.option("--shadow-log-idle", is_flag=True, default=None, help="Shadow mode: also log IDLE verdicts.")
@pass_ctx
def run(ctx: _Ctx, /, once: bool, drain: bool, max_jobs: int | None, **flags: Any) -> None:
    """The daemon: take jobs, run them, verify, ship or quarantine. SIGTERM/SIGINT stop it."""
    if once and drain:
        raise BadInput("run: --once and --drain exclude each other")
    from agent_queue.runner import RunOptions  # the daemon's modules load only when it runs

    service.run_daemon(ctx.settings(**flags), RunOptions(once=once, drain=drain, max_jobs=max_jobs))


def _color() -> bool:
    """Colour only for a person at a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _echo(text: str, color: bool) -> None:
    click.echo(text, color=color)


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _print(data: Any, as_json: bool, text: Callable[[bool], str]) -> None:
    """``data`` as JSON, or as the text ``text(color)`` renders."""
    if as_json:
        _json(data)
        return
    color = _color()
    _echo(text(color), color)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (everything, settings included).")
@click.option("--verbose", is_flag=True, help="Also print every resolved setting (secrets redacted).")
@click.option("--watch", "watch_s", type=click.FloatRange(min=0.1), is_flag=False, flag_value=2.0, default=None,
              metavar="[S]", help="Redraw every S seconds (default 2) until Ctrl-C.")
@pass_ctx
def status(ctx: _Ctx, as_json: bool, verbose: bool, watch_s: float | None) -> None:
    """Counts per state, the running job, the daemon and the fleet mode (--verbose: the settings)."""
    settings, color = ctx.settings(), _color()

    def frame() -> str:
        report = service.status(settings)
        return json.dumps(report, indent=2, ensure_ascii=False) if as_json else render.status(
            report, verbose=verbose, color=color)

    if watch_s is None:
        _echo(frame(), color)
        return
    try:
        render.watch(frame, watch_s, lambda text: click.echo(text, nl=False, color=color), clear=sys.stdout.isatty())
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends


@cli.command("jobs")
@click.option("--state", help="Only jobs in this state (inbox|running|shipped|quarantine|cancelled|composite; "
                              "the coordinator's words queued|leased|quarantined work too).")
@click.option("--fleet", "at_fleet", is_flag=True, help="The coordinator's jobs, not this host's queue.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="At most N jobs, the most recently changed first (0: all).")
@pass_ctx
def jobs_cmd(ctx: _Ctx, state: str | None, at_fleet: bool, as_json: bool, limit: int) -> None:
    """List jobs: id, state, tool, attempts, age, factory (--fleet) and a short reason."""
    settings = ctx.settings()
    cap = limit or None
    listing = fleet_ops.jobs(settings, state, cap) if at_fleet else service.jobs(settings, state, cap)
    _print(listing, as_json, lambda color: render.jobs(listing, fleet=at_fleet, color=color))
    note = render.more(listing)
    if note and not as_json:
        click.echo(note, err=True)


@cli.command("show")
@click.argument("job_id", metavar="ID")
@click.option("--fleet", "at_fleet", is_flag=True, help="Ask the coordinator too: its view and the lease history.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def show_cmd(ctx: _Ctx, job_id: str, at_fleet: bool, as_json: bool) -> None:
    """One job: its spec (secrets redacted), every attempt, its lease history (--fleet) and where its log is."""
    settings = ctx.settings()
    detail = fleet_ops.show(settings, job_id) if at_fleet else service.show(settings, job_id)
    _print(detail, as_json, lambda color: render.show(detail, color))


@cli.command("cancel")
@click.argument("job_id", metavar="ID")
@click.option("--fleet", "at_fleet", is_flag=True, help="Cancel at the coordinator (it fences the factory holding it).")
@pass_ctx
def cancel_cmd(ctx: _Ctx, job_id: str, at_fleet: bool) -> None:
    """Cancel a job: a queued one at once, a running one has its tool stopped and ships nothing.

    A composite parent cancels its children that have not ended, and its verify gate.
    """
    settings = ctx.settings()
    if at_fleet:
        ids = fleet_ops.cancel(settings, job_id)
        click.echo(f"{job_id}: cancelled {', '.join(ids) or 'nothing (already cancelled)'}")
        return
    done = service.cancel(settings, job_id)
    click.echo(f"{job_id}: already cancelled" if done.already else f"{job_id}: cancelled {', '.join(done.ids)}")


@cli.command("doctor")
@pass_ctx
def doctor_cmd(ctx: _Ctx) -> None:
    """Check tools (on PATH, version, login), git, the root and the coordinator; exit 1 if a need is unmet."""
    from agent_queue.doctor import exit_code, format_checks

    checks = service.doctor(ctx.settings())
    click.echo(format_checks(checks))
    click.get_current_context().exit(exit_code(checks))


@cli.command()
@click.argument("job_id", metavar="ID")
@click.option("--fleet", "to_fleet", is_flag=True, help="Requeue at the coordinator, not in the local queue.")
@pass_ctx
def requeue(ctx: _Ctx, job_id: str, to_fleet: bool) -> None:
    """Move a quarantined job back to the inbox with its attempts reset (a composite: its quarantined children)."""
    if to_fleet:
        requeued = fleet_ops.requeue(ctx.settings(), job_id)
        click.echo(f"{job_id}: requeued {', '.join(requeued) or 'nothing'}")
        return
    service.requeue(ctx.settings(), job_id)
    click.echo(job_id)


@cli.command()
@click.argument("job_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing until the job ends, then its outcome; exit 0 only when it shipped.")
@pass_ctx
def logs(ctx: _Ctx, job_id: str, follow: bool) -> None:
    """Print a job's log (tool output, verify and ship hook, one header per attempt)."""
    code = service.stream_log(ctx.settings(), job_id, follow, lambda text: click.echo(text, nl=False),
                              lambda text: click.echo(f"{PROG}: {text}", err=True))
    click.get_current_context().exit(code)


@cli.command("fleet-status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def fleet_status(ctx: _Ctx, as_json: bool) -> None:
    """The coordinator's counts, each factory (live/stale/offline, busy/idle, what it holds), stranded jobs."""
    report = fleet_ops.fleet_status(ctx.settings())
    _print(report, as_json, lambda color: render.fleet_status(report, color))


@cli.command("fleet-shadow-report")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--since", help="Only verdicts since TIME (RFC 3339, or a duration back: 15m, 2h, 7d).")
@pass_ctx
def fleet_shadow_report(ctx: _Ctx, as_json: bool, since: str | None) -> None:
    """Shadow-mode verdicts from this factory's log: counts, agreement rate, recent divergences."""
    summary = fleet_ops.shadow_report(ctx.settings(), since)
    click.echo(shadow.summary_to_json(summary) if as_json else shadow.format_summary(summary))


from agent_queue import cli_plan  # noqa: E402  (the planner's commands live beside this file)

for _command in (cli_plan.plan, cli_plan.replan, cli_plan.approve):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; the one place errors become exit codes and one-line messages."""
    try:
        code = cli.main(args=argv, prog_name=PROG, standalone_mode=False)  # an int when a command called ctx.exit
    except AQError as exc:
        click.echo(f"{PROG}: {'; '.join(exc.message.splitlines())}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"{PROG}: {exc.format_message()}", err=True)
        return EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except click.Abort:
        click.echo(f"{PROG}: aborted", err=True)
        return EXIT_FAILURE
    except OSError as exc:  # a root that cannot be created, a full disk: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"{PROG}: {where}{exc.strerror or exc}", err=True)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return code if isinstance(code, int) else EXIT_OK

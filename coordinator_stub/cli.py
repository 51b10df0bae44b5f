"""Command line of coordinator-stub: parse options, call the core, print. No business logic here.

``call`` normally never reaches this module (``__main__`` serves it without
click); it is here too so ``--help`` and odd argument orders still work.
Errors of the ``errors.py`` hierarchy become one-line messages and exit codes
in ``main`` only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import click

from agent_queue.errors import EXIT_FAILURE, EXIT_OK, AQError
from coordinator_stub.settings import StubSettings, load_settings
from coordinator_stub.web.options import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_GRACE_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_MAX_CONNECTIONS,
    ServeOptions,
)


def _settings(ctx: click.Context, ignore_dry_run: bool = False) -> StubSettings:
    opts = ctx.obj
    return load_settings(os.environ, opts["state"], opts["lease_ttl"], ignore_dry_run)


def _coordinator(settings: StubSettings, opened: tuple[Any, Any] | None = None, must_exist: bool = False) -> Any:
    """``must_exist``: a command that only reads or reaps refuses a state dir that is not there (exit 2)."""
    from coordinator_stub.core import Coordinator
    from coordinator_stub.stores.choose import open_store

    store, clock = opened or open_store(settings, must_exist=must_exist)
    return Coordinator(store, clock, settings.lease_ttl_s)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state", metavar="DIR|URL",
              help="State directory, or a postgresql:// URL (env AQ_STUB_STATE).")
@click.option("--lease-ttl", metavar="S", help="Lease time-to-live in seconds (env AQ_STUB_LEASE_TTL_S, default 60).")
@click.option("-v", "--verbose", is_flag=True, help="Log every request (never the token).")
@click.pass_context
def cli(ctx: click.Context, state: str | None, lease_ttl: str | None, verbose: bool) -> None:
    """A fleet coordinator (state in a directory or PostgreSQL): leases with fencing tokens, a reaper, HTTP, a seam."""
    ctx.obj = {"state": state, "lease_ttl": lease_ttl, "verbose": verbose}
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@cli.command()
@click.option("--ignore-dry-run", is_flag=True, help="Test aid: act like an older coordinator that ignores dryRun.")
@click.argument("method")
@click.argument("path")
@click.pass_context
def call(ctx: click.Context, ignore_dry_run: bool, method: str, path: str) -> None:
    """One request: body on stdin, one {"status", "body"} JSON line on stdout."""
    from coordinator_stub.seam import call as seam_call

    seam_call(_settings(ctx, ignore_dry_run), method, path, sys.stdin.buffer, sys.stdout)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--ignore-dry-run", is_flag=True, help="Test aid: act like an older coordinator that ignores dryRun.")
@click.option("--grace", "grace_s", default=DEFAULT_GRACE_S, show_default=True, type=click.FloatRange(min=0),
              metavar="S", help="On SIGTERM/SIGINT, requests under way get S seconds, then they are cut.")
@click.option("--header-timeout", "header_timeout_s", default=DEFAULT_HEADER_TIMEOUT_S, show_default=True,
              type=click.FloatRange(min=0.01), metavar="S", help="A request head must arrive within S seconds.")
@click.option("--body-timeout", "body_timeout_s", default=DEFAULT_BODY_TIMEOUT_S, show_default=True,
              type=click.FloatRange(min=0.01), metavar="S", help="A request body must arrive within S seconds.")
@click.option("--keep-alive", "keep_alive_s", default=DEFAULT_KEEP_ALIVE_S, show_default=True,
              type=click.FloatRange(min=0.01), metavar="S", help="Close a connection idle for S seconds.")
@click.option("--max-connections", default=DEFAULT_MAX_CONNECTIONS, show_default=True, type=click.IntRange(min=1),
              help="Open connections at most (kept below the descriptor limit).")
@click.option("--max-claim-wait", "max_claim_wait_s", default=60.0, show_default=True, type=click.FloatRange(0, 60),
              metavar="S", help="Hold a claim with waitS for S seconds at most (0: never hold).")
@click.option("--claim-recheck", "claim_recheck_s", default=2.0, show_default=True, type=click.FloatRange(min=0.01),
              metavar="S", help="A held claim claims again every S seconds, woken or not.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, ignore_dry_run: bool, grace_s: float, header_timeout_s: float,
          body_timeout_s: float, keep_alive_s: float, max_connections: int, max_claim_wait_s: float,
          claim_recheck_s: float) -> None:
    """Serve the fleet API, the dashboard (/) and /metrics over HTTP (bearer token from AQ_FLEET_TOKEN)."""
    from coordinator_stub.http import check_bind, require_stack
    from coordinator_stub.http import serve as run_server

    settings = _settings(ctx, ignore_dry_run)
    require_stack()

    def announce(url: str) -> None:
        click.echo(f"listening on {url}", err=True)

    from coordinator_stub.stores.choose import open_store
    from coordinator_stub.stores.file import JsonStore

    store, clock = open_store(settings, serving=True)  # a file store tidies after each answer is sent
    if isinstance(store, JsonStore):
        store.ensure()  # a directory it cannot use stops it here, not at every request
    coord = _coordinator(settings, (store, clock))
    enrolled = coord.enrolled()  # enrolled credentials authenticate too (issue #19)
    check_bind(host, settings.token, enrolled)
    if not settings.token and not enrolled:
        logging.getLogger(__name__).warning("AQ_FLEET_TOKEN is not set: serving WITHOUT authentication on %s", host)
    options = ServeOptions(host, port, grace_s, header_timeout_s, body_timeout_s, keep_alive_s, max_connections,
                           settings.ignore_dry_run, access_log=ctx.obj["verbose"],
                           max_claim_wait_s=max_claim_wait_s, claim_recheck_s=claim_recheck_s,
                           wake_url=settings.database_url or None)
    from coordinator_stub.web.events import BACKFILL_BYTES

    run_server(coord, options, store.log_readers(BACKFILL_BYTES), os.environ, announce)
    try:  # a stopped coordinator leaves its state folded: archive/<id>.json for every finished job
        if isinstance(store, JsonStore):
            store.checkpoint()
        store.close()
    except (OSError, AQError) as exc:  # nothing is lost: the journal holds it, the next operation folds it
        logging.getLogger(__name__).warning("checkpoint on stop skipped: %s", exc)


@cli.command()
@click.option("--loop", "loop_s", type=click.FloatRange(min=0.01), metavar="S",
              help="Reap every S seconds until killed.")
@click.pass_context
def reap(ctx: click.Context, loop_s: float | None) -> None:
    """Return expired leases' jobs to the queue (each operation does this too)."""
    coord = _coordinator(_settings(ctx), must_exist=True)
    while True:
        for r in coord.reap():
            click.echo(f"reclaimed {r['jobId']} from {r['factoryId']} (epoch {r['leaseEpoch']})")
        if loop_s is None:
            return
        time.sleep(loop_s)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw status object.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Counts per state, live leases and factories."""
    st = _coordinator(_settings(ctx), must_exist=True).status()
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
        return
    click.echo("  ".join(f"{k}={v}" for k, v in st["counts"].items()))
    for lease in st["leases"]:
        click.echo(f"lease {lease['jobId']} {lease['factoryId']} epoch={lease['leaseEpoch']} "
                   f"expires={lease['expiresAt']} left={lease['timeLeftS']}s")
    for f in st["factories"]:
        click.echo(f"factory {f['factoryId']} lastSeen={f['lastSeen']} {f.get('liveness', '')}".rstrip())
    for s in st.get("stranded", []):
        click.echo(f"stranded {s['jobId']}: {s['why']}")


@cli.command()
@click.argument("file", type=click.File("rb"))
@click.pass_context
def enqueue(ctx: click.Context, file: Any) -> None:
    """Add a job spec from FILE (or - for stdin); same id and spec again is a no-op."""
    from agent_queue.errors import BadInput

    raw = file.read()
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        raise BadInput(f"{file.name}: malformed JSON ({exc})") from exc
    created, view = _coordinator(_settings(ctx)).enqueue(spec)
    click.echo(f"{'enqueued' if created else 'already enqueued'} {view['job']['id']}")


@cli.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Apply the PostgreSQL schema (--state URL); idempotent. Stop every serve replica before an upgrade."""
    from coordinator_stub.stores import pg_admin

    settings = _settings(ctx)
    if settings.database_url is None:
        from agent_queue.errors import ConfigError

        raise ConfigError("migrate: --state must be a postgresql:// URL (a state directory needs no migration)")
    applied, version = pg_admin.migrate_database(settings.database_url)
    for name in applied:
        click.echo(f"applied {name}")
    click.echo(f"schema version {version}")


@cli.command()
@click.option("--from", "src", required=True, metavar="DIR", help="The file store's state directory.")
@click.option("--to", "dst", required=True, metavar="URL", help="A migrated, empty PostgreSQL database.")
def copy(src: str, dst: str) -> None:
    """Move a fleet's state from a state directory to PostgreSQL: jobs, leases (epochs), archive, history, logs."""
    from coordinator_stub.stores import pg_admin

    counts = pg_admin.copy_dir_to_database(src, dst)
    click.echo("copied " + "  ".join(f"{k}={v}" for k, v in counts.items()))


def _listed(ctx: click.Context, part: str, as_json: bool) -> list[dict[str, Any]]:
    """One part of the credentials listing; printed here as JSON (then nothing is left to print) or returned."""
    listed: list[dict[str, Any]] = _coordinator(_settings(ctx)).credentials()[part]
    if as_json:
        click.echo(json.dumps(listed, indent=2, sort_keys=True))
        return []
    return listed


@cli.group()
def factory() -> None:
    """Enrol factories: one token each (shown once), capabilities, revocation (issue #19)."""


@factory.command("add")
@click.argument("factory_id", metavar="ID")
@click.option("--capability", "capabilities", multiple=True, metavar="CAP",
              help="A capability the factory may claim with (repeat).")
@click.pass_context
def factory_add(ctx: click.Context, factory_id: str, capabilities: tuple[str, ...]) -> None:
    """Enrol factory ID; prints its token once (only its hash is kept)."""
    click.echo(_coordinator(_settings(ctx)).factory_add(factory_id, list(capabilities)))


@factory.command("rotate")
@click.argument("factory_id", metavar="ID")
@click.pass_context
def factory_rotate(ctx: click.Context, factory_id: str) -> None:
    """A second token for ID, working beside the first until that is revoked (token revoke TOKEN_ID)."""
    click.echo(_coordinator(_settings(ctx)).factory_rotate(factory_id))


@factory.command("revoke")
@click.argument("factory_id", metavar="ID")
@click.pass_context
def factory_revoke(ctx: click.Context, factory_id: str) -> None:
    """Revoke ID: its tokens stop working and its leases are fenced (their jobs queued again, no attempt counted)."""
    out = _coordinator(_settings(ctx), must_exist=True).factory_revoke(factory_id)
    click.echo(f"revoked {factory_id}: tokens {' '.join(out['tokenIds']) or '-'}; "
               f"fenced {' '.join(f['jobId'] for f in out['fenced']) or '-'}")


@factory.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def factory_list(ctx: click.Context, as_json: bool) -> None:
    """Enrolled factories: id, capabilities, created, last seen, token ids (never a token)."""
    for f in _listed(ctx, "factories", as_json):
        click.echo(f"{f['factoryId']} caps={','.join(f['capabilities']) or '-'} created={f['created']} "
                   f"lastSeen={f['lastSeen'] or '-'} tokens={','.join(f['tokenIds']) or '-'}"
                   + (f" revoked={f['revoked']}" if f["revoked"] else ""))


@cli.group()
def token() -> None:
    """Tokens for people and CI jobs (scope submit, read, metrics or admin); factory tokens are revoked here too."""


@token.command("add")
@click.option("--scope", required=True, type=click.Choice(["submit", "read", "metrics", "admin"]))
@click.option("--name", required=True, help="Who or what holds it (shown by token list).")
@click.pass_context
def token_add(ctx: click.Context, scope: str, name: str) -> None:
    """A new token, printed once (only its hash is kept)."""
    click.echo(_coordinator(_settings(ctx)).token_add(scope, name))


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def token_list(ctx: click.Context, as_json: bool) -> None:
    """People's tokens: id, scope, name, created (never a token)."""
    for t in _listed(ctx, "tokens", as_json):
        click.echo(f"{t['tokenId']} scope={t['scope']} name={t['name']} created={t['created']}")


@token.command("revoke")
@click.argument("token_id", metavar="TOKEN_ID")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke one token by its id (a person's, or one of a factory's after a rotation)."""
    _coordinator(_settings(ctx), must_exist=True).token_revoke(token_id)
    click.echo(f"revoked token {token_id}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; the one place where errors become messages and exit codes."""
    try:
        cli.main(args=argv, prog_name="coordinator-stub", standalone_mode=False)
    except AQError as exc:
        click.echo(f"coordinator-stub: {exc.message}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        return EXIT_FAILURE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return EXIT_OK

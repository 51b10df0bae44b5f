"""The command seam: ``coordinator-stub [--state DIR] [--lease-ttl S] call METHOD PATH``.

One process per coordinator operation (the client's ``AQ_FLEET_API_CMD``):
request body on stdin, exactly one ``{"status": N, "body": ...}`` line on
stdout, exit 0 whenever a response was delivered (whatever its status). Any
other exit is a transport error for the client. This path runs hundreds of
times per minute, so it imports neither click nor filelock nor requests: it
locks with the equivalent flock(2) (``stores.locking.flock``).

The pieces are reusable: ``parse_call_prefix`` (the flags before METHOD PATH)
and ``run_request`` / ``encode_answer`` (one request -> the answer line), so the
fleet client's embedded transport runs exactly this code in its own process
when ``AQ_FLEET_API_CMD`` names this installation's stub.
"""

from __future__ import annotations

import sys

from agent_queue import cjson
from agent_queue.errors import AQError

TYPE_CHECKING = False  # no typing import at run time: this module's whole point is start-up cost
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, BinaryIO, TextIO

    from coordinator_stub.settings import StubSettings
    from coordinator_stub.stores.locking import LockFactory

    CallPrefix = tuple[str | None, str | None, bool, list[str]]


def run_request(
    settings: StubSettings, method: str, path: str, body: bytes, lock: LockFactory | None = None
) -> tuple[int, dict[str, Any] | None]:
    """Run one request against the state (dir or database): (status, body). ``lock``: the dir's, default flock.

    An ``AQError`` (also one opening the state dir) becomes the JSON error body;
    anything else propagates (the spawned seam then exits non-zero).
    """
    from coordinator_stub.api import handle
    from coordinator_stub.core import Coordinator
    from coordinator_stub.stores.choose import open_store

    try:
        store, clock = open_store(settings, lock=lock)
        coord = Coordinator(store, clock, settings.lease_ttl_s)
    except AQError as exc:
        return exc.http_status, exc.to_body()
    try:
        return handle(coord, method, path, body, ignore_dry_run=settings.ignore_dry_run)
    finally:
        store.close()


def encode_answer(status: int, body: dict[str, Any] | None) -> str:
    """The one answer line the seam prints (without its newline)."""
    return cjson.dumps({"status": status, "body": body})


def call(settings: StubSettings, method: str, path: str, stdin: BinaryIO, stdout: TextIO) -> int:
    """Run one request against the state dir and print the response; 0 when a response was delivered."""
    status, answer = run_request(settings, method, path, stdin.read())
    stdout.write(encode_answer(status, answer) + "\n")
    stdout.flush()
    return 0


def parse_call_prefix(argv: list[str]) -> CallPrefix | None:
    """Parse ``[--state DIR] [--lease-ttl S] [--ignore-dry-run] call [--ignore-dry-run]`` and what follows.

    Returns ``(state, lease_ttl, ignore_dry_run, rest)`` with ``rest`` the
    arguments after the prefix, or None when ``argv`` is not a seam call.
    """
    opts: dict[str, str] = {}
    ignore = False
    i = 0
    while i < len(argv) and argv[i] != "call":
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if arg == "--ignore-dry-run":
            ignore = True
        elif name in ("--state", "--lease-ttl") and eq:
            opts[name] = value
        elif name in ("--state", "--lease-ttl") and i + 1 < len(argv):
            opts[name] = argv[i + 1]
            i += 1
        else:
            return None
        i += 1
    if i >= len(argv):
        return None
    rest = argv[i + 1:]
    if rest[:1] == ["--ignore-dry-run"]:
        ignore, rest = True, rest[1:]
    return opts.get("--state"), opts.get("--lease-ttl"), ignore, rest


def fast_main(argv: list[str], env: Mapping[str, str]) -> int | None:
    """Handle ``[opts] call [--ignore-dry-run] METHOD PATH`` without click; None means "not a seam call"."""
    parsed = parse_call_prefix(argv)
    if parsed is None:
        return None
    state, lease_ttl, ignore, rest = parsed
    if len(rest) != 2 or rest[0].startswith("-"):
        return None
    from coordinator_stub.settings import load_settings

    try:
        settings = load_settings(env, state, lease_ttl, ignore)
    except AQError as exc:
        sys.stderr.write(f"coordinator-stub: {exc.message}\n")
        return exc.exit_code
    return call(settings, rest[0], rest[1], sys.stdin.buffer, sys.stdout)

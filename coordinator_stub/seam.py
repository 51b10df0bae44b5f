"""The command seam: ``coordinator-stub [--state DIR] [--lease-ttl S] call METHOD PATH``.

One process per coordinator operation (the client's ``AQ_FLEET_API_CMD``):
request body on stdin, exactly one ``{"status": N, "body": ...}`` line on
stdout, exit 0 whenever a response was delivered (whatever its status). Any
other exit is a transport error for the client. This path runs hundreds of
times per minute, so it imports neither click nor filelock nor requests: it
locks with the equivalent flock(2) (``store.flock``).
"""

from __future__ import annotations

import json
import sys
import time

from agent_queue.errors import AQError

TYPE_CHECKING = False  # no typing import at run time: this module's whole point is start-up cost
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, BinaryIO, TextIO

    from coordinator_stub.settings import StubSettings


def call(settings: StubSettings, method: str, path: str, stdin: BinaryIO, stdout: TextIO) -> int:
    """Run one request against the state dir and print the response; 0 when a response was delivered."""
    from coordinator_stub.api import handle
    from coordinator_stub.core import Coordinator
    from coordinator_stub.store import JsonStore, flock

    body = stdin.read()
    status: int
    answer: dict[str, Any] | None
    try:
        coord = Coordinator(JsonStore(settings.state_dir, lock=flock), time.time, settings.lease_ttl_s)
    except AQError as exc:
        status, answer = exc.http_status, exc.to_body()
    else:
        status, answer = handle(coord, method, path, body, ignore_dry_run=settings.ignore_dry_run)
    stdout.write(json.dumps({"status": status, "body": answer}) + "\n")
    stdout.flush()
    return 0


def fast_main(argv: list[str], env: Mapping[str, str]) -> int | None:
    """Handle ``[opts] call [--ignore-dry-run] METHOD PATH`` without click; None means "not a seam call"."""
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
    rest = argv[i + 1:]
    if rest[:1] == ["--ignore-dry-run"]:
        ignore, rest = True, rest[1:]
    if i >= len(argv) or len(rest) != 2 or rest[0].startswith("-"):
        return None
    from coordinator_stub.settings import load_settings

    try:
        settings = load_settings(env, opts.get("--state"), opts.get("--lease-ttl"), ignore)
    except AQError as exc:
        sys.stderr.write(f"coordinator-stub: {exc.message}\n")
        return exc.exit_code
    return call(settings, rest[0], rest[1], sys.stdin.buffer, sys.stdout)

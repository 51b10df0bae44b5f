"""The HTTP front end: ``coordinator-stub serve``, the seam's routes behind a bearer token, on uvicorn + Starlette.

This module is what the CLI calls; the web stack (``coordinator_stub.web``)
is an optional extra, imported only here, so the command seam and a
``pip install agent-queue`` without it never load a web framework. Without
the extra, ``serve`` stops with one line saying what to install. Why this
stack, and what it does against hostile clients: docs/deploy.md.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agent_queue.errors import ConfigError
from agent_queue.fleet.http_transport import is_loopback_host
from coordinator_stub.core import Coordinator
from coordinator_stub.web.options import ServeOptions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from coordinator_stub.stores.base import LogReader

STACK = ("uvicorn", "starlette", "h11", "prometheus_client")
INSTALL_HINT = "pip install 'agent-queue[serve]'"


def check_bind(host: str, token: str | None, enrolled: bool = False) -> None:
    """Refuse to expose an unauthenticated coordinator beyond this host (enrolled credentials authenticate)."""
    if not token and not enrolled and not is_loopback_host(host):
        raise ConfigError(f"serve --host {host}: not a loopback address, so AQ_FLEET_TOKEN must be set "
                          "or a factory or token enrolled (coordinator-stub factory add / token add)")


def require_stack() -> None:
    """A one-line ConfigError naming the extra to install when the web stack is missing."""
    for name in STACK:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"serve needs the HTTP stack ({name} is not installed): {INSTALL_HINT}") from None


def serve(coord: Coordinator, options: ServeOptions, logs: Path | Sequence[LogReader] | None,
          env: Mapping[str, str] | None = None, announce: Callable[[str], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; ``announce(url)`` once the socket listens. Returns 0 after a graceful stop.

    ``logs``: the store's audit logs (``Store.log_readers``, or a state directory): the dashboard and the
    metrics read them.
    """
    env = os.environ if env is None else env
    enrolled = coord.enrolled()
    check_bind(options.host, env.get("AQ_FLEET_TOKEN"), enrolled)
    require_stack()
    from coordinator_stub.web.app import build_app
    from coordinator_stub.web.runner import StoreRunner
    from coordinator_stub.web.server import OpenConnections, run

    connections = OpenConnections()
    runner = StoreRunner(durability=coord.defer_durability(), nowait=coord.nowait(),
                         crowded=lambda: connections.count > 1)
    try:
        run(build_app(coord, options, env, runner, logs, enrolled, connections), options, announce, connections,
            runner.idle_hook())
    finally:
        runner.close()  # the operation under way finishes before the caller checkpoints
    return 0

"""Picking the transport to the coordinator from the settings (``AQ_FLEET_API_CMD`` wins over ``AQ_FLEET_API``).

The transports themselves: ``command_transport`` (spawned seam), ``embedded``
(this installation's seam in process), ``http_transport``; what they share:
``wire``. ``Response``, ``Transport`` and ``is_loopback_host`` are re-exported
here for callers that name the transport layer as a whole.
"""

from __future__ import annotations

import shlex
import shutil

from agent_queue.errors import ConfigError
from agent_queue.fleet.command_transport import CommandTransport
from agent_queue.fleet.embedded import EmbeddedTransport, announce_embedded, embedded_stub_args
from agent_queue.fleet.http_transport import http_transport, is_loopback_host
from agent_queue.fleet.token_source import TokenSource
from agent_queue.fleet.wire import Response, Transport

__all__ = ["Response", "Transport", "is_loopback_host", "make_transport"]


def make_transport(
    api_cmd: str | None, api_url: str | None, token: str | TokenSource | None, timeout_s: float
) -> Transport:
    """Pick the transport from settings: ``AQ_FLEET_API_CMD`` wins over ``AQ_FLEET_API``.

    A seam command naming this installation's own ``coordinator-stub`` with
    nothing but a call prefix runs in this process (``EmbeddedTransport``);
    any other command is spawned per request (``CommandTransport``).
    HTTP requires a token unless the URL is loopback (a coordinator on this
    host, e.g. ``coordinator-stub serve`` for a one-host fleet). Credentials
    in the URL are refused: the token belongs in ``AQ_FLEET_TOKEN`` only,
    where it is kept out of logs.
    """
    if api_cmd and api_cmd.strip():
        argv = _split_cmd(api_cmd)
        stub_args = embedded_stub_args(argv)
        if stub_args is None:
            return CommandTransport(argv, timeout_s)
        transport = EmbeddedTransport(stub_args, timeout_s)
        announce_embedded(transport)
        return transport
    if api_url and api_url.strip():
        return http_transport(api_url.strip(), token, timeout_s)
    raise ConfigError("fleet mode needs AQ_FLEET_API_CMD or AQ_FLEET_API")


def _split_cmd(api_cmd: str) -> list[str]:
    try:
        argv = shlex.split(api_cmd)
    except ValueError as exc:
        raise ConfigError(f"AQ_FLEET_API_CMD: cannot split like a shell ({exc})") from None
    if not argv:
        raise ConfigError("AQ_FLEET_API_CMD: empty command")
    if shutil.which(argv[0]) is None:
        raise ConfigError(f"AQ_FLEET_API_CMD: program {argv[0]!r} not found or not executable")
    return argv

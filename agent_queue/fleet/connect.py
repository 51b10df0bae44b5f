"""How this factory reaches its coordinator: the resolved fleet flags and a ready ``FleetClient``.

Shared by the daemon's assembly (``agent_queue.assemble``), which uses the
daemon's shorter retry policy, and the one-shot fleet CLI operations
(``fleet.ops``), which keep the client's default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent_queue.fleet.client import FleetClient, RetryPolicy
from agent_queue.fleet.flags import ResolvedFlags, resolve_flags
from agent_queue.fleet.token_source import TokenSource
from agent_queue.fleet.transport import make_transport
from agent_queue.settings import Settings

log = logging.getLogger(__name__)

TRANSPORT_TIMEOUT_S = 30.0
# A daemon call gives up sooner than a one-shot CLI call: the runner's own backoff takes over.
DAEMON_HOLD_S = 5.0  # waitS of the daemon's claims when the coordinator holds them: also the most a stop waits for one
DAEMON_RETRY = RetryPolicy(max_attempts=5, deadline_s=15.0, base_delay_s=0.2, max_delay_s=3.0)


def fleet_flags(settings: Settings, warn: Callable[[str], None] | None = None) -> ResolvedFlags:
    """The resolved AQ_FLEET / ROUTE / SHADOW flags; each precedence warning is given once per process."""
    return resolve_flags(settings.fleet, settings.fleet_route, settings.fleet_shadow, warn or log.warning)


def make_client(settings: Settings, retry: RetryPolicy | None = None) -> FleetClient:
    """A FleetClient for this factory (seam if AQ_FLEET_API_CMD is set, else HTTP); ConfigError if neither.

    A token read from AQ_FLEET_TOKEN_FILE is re-read from it after a 401 (``token_source``: rotation).
    """
    token = TokenSource(settings.fleet_token, settings.fleet_token_file)
    transport = make_transport(settings.fleet_api_cmd, settings.fleet_api, token, TRANSPORT_TIMEOUT_S)
    return FleetClient(transport, settings.factory_id, settings.capabilities, retry)

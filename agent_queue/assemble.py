"""Putting a daemon together: the one place that picks the ``Source`` the runner takes work from.

It sits above every Source implementation (local, fleet, shadow) and below
``service``, so the Source protocol module never has to know who implements
it. The choice follows the resolved fleet flags:

- AQ_FLEET=0: the local inbox (``LocalSource``); not one coordinator call.
- route on (the default with AQ_FLEET=1): ``FleetSource`` claims from the
  coordinator, with the daemon's short retry policy (the runner's backoff
  takes over after it).
- route off + shadow on: the local inbox decides and a ``ShadowProbe``
  observes each decision (``ShadowSource``).
- route off + shadow off: the local inbox alone.

Fleet modules are imported only in fleet mode.
"""

from __future__ import annotations

from agent_queue.inbox import LocalQueue
from agent_queue.local_source import LocalSource
from agent_queue.settings import Settings
from agent_queue.source import Source


def build_source(settings: Settings, queue: LocalQueue, hold_claims: bool = True) -> Source:
    """The Source of a daemon on ``queue`` with these settings (see the module docstring).

    ``hold_claims=False`` (``--once``, ``--drain``): an empty claim ends the run, so it must answer at
    once rather than wait for work that the run would not take anyway.
    """
    if not settings.fleet:
        return LocalSource(queue)
    return _fleet_source(settings, queue, hold_claims)


def _fleet_source(settings: Settings, queue: LocalQueue, hold_claims: bool) -> Source:
    from agent_queue.fleet.connect import DAEMON_HOLD_S, DAEMON_RETRY, fleet_flags, make_client
    from agent_queue.fleet.shadow import ShadowProbe, shadow_log_path
    from agent_queue.fleet.source import FleetSource, ShadowSource

    flags = fleet_flags(settings)
    if flags.coordinator_sources_work:
        # A held claim ends within half the grace, so a stop while it waits still ends in time.
        hold = min(DAEMON_HOLD_S, settings.grace_s / 2) if hold_claims else 0.0
        return FleetSource(queue, make_client(settings, DAEMON_RETRY), max_hold_s=hold)
    if flags.shadow:
        client = make_client(settings, DAEMON_RETRY)
        probe = ShadowProbe(client, settings.factory_id, shadow_log_path(settings.root),
                            log_idle=settings.shadow_log_idle)
        return ShadowSource(LocalSource(queue), probe, client)
    return LocalSource(queue)

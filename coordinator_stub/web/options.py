"""What ``serve`` is told at start-up: address, deadlines, bounds. Free of the web stack (the CLI builds it)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_GRACE_S = 10.0
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_KEEP_ALIVE_S = 60.0
DEFAULT_MAX_CONNECTIONS = 1000
# How many connections asyncio accepts in one go (its ``backlog``) before any of them is
# counted against the bound; the kernel's own queue of connections waiting to be accepted
# is LISTEN_QUEUE (set again once asyncio has listened).
ACCEPT_BURST = 16
LISTEN_QUEUE = 1024
# File descriptors kept back from the connection bound: a few accept bursts still being
# counted (a connection is counted two loop iterations after its accept), the listening
# socket, the store's files and lock, logs, the event loop's own.
FD_RESERVE = 4 * ACCEPT_BURST + 64


@dataclass(frozen=True)
class ServeOptions:
    """The flags of ``coordinator-stub serve`` (each documented in docs/deploy.md)."""

    host: str = "127.0.0.1"
    port: int = 8787
    grace_s: float = DEFAULT_GRACE_S  # SIGTERM: in-flight requests get this long, then they are cut
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S  # a request head, from its first byte (or the connection)
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S  # a request body, from the end of its head
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S  # an idle connection between requests
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    ignore_dry_run: bool = False
    access_log: bool = False
    max_claim_wait_s: float = 60.0  # the longest a claim is held for waitS (0: never held)
    claim_recheck_s: float = 2.0  # a held claim claims again this often, woken or not
    wake_url: str | None = None  # PostgreSQL: replicas wake each other's held claims (LISTEN/NOTIFY)


def connection_bound(wanted: int, fd_limit: int) -> int:
    """The connection bound in force: what was asked, but never past the descriptors this process may open."""
    return max(1, min(wanted, fd_limit - FD_RESERVE))

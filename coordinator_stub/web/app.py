"""``serve`` as one ASGI app: the fleet API, /metrics, the dashboard, and JSON errors for all of it.

``/v1/fleet`` goes straight to ``fleet.FleetApi`` (the hot path); everything
else is a Starlette app with its routes, static files and exception handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coordinator_stub.core import Coordinator
from coordinator_stub.web.auth import METRICS, Sessions, Tokens
from coordinator_stub.web.claimwait import ClaimHolder, wake_peers
from coordinator_stub.web.dashboard import Capabilities, Dashboard
from coordinator_stub.web.events import EventFeed
from coordinator_stub.web.fleet import FleetApi, Receive, Scope, Send
from coordinator_stub.web.gate import Gate
from coordinator_stub.web.metrics import CONTENT_TYPE, Metrics
from coordinator_stub.web.options import ServeOptions
from coordinator_stub.web.refusals import Refusals
from coordinator_stub.web.responses import on_http_exception, on_internal_error
from coordinator_stub.web.runner import StoreRunner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from coordinator_stub.stores.base import LogReader
    from coordinator_stub.web.server import OpenConnections


class Served:
    """What every part of the app shares: the coordinator, its store thread, tokens, sessions, logs, metrics."""

    def __init__(self, coord: Coordinator, options: ServeOptions, env: Mapping[str, str], runner: StoreRunner,
                 logs: Path | Sequence[LogReader] | None, enrolled: bool = False) -> None:
        self.coord = coord
        self.options = options
        self.runner = runner
        self.tokens = Tokens.from_env(env, enrolled)
        self.sessions = Sessions()
        self.metrics = Metrics()
        self.feed = EventFeed(logs)
        self.feed.listeners.append(self.metrics.on_event)
        runner.observe = self.metrics.observe_store
        self.refusals = Refusals(coord, runner)  # one rate limit for every door (refusals.py)
        self.gate = Gate(coord, runner, self.tokens, self.sessions, self.refusals)  # enrolled tokens (gate.py)

    async def poll_feed(self) -> None:
        await asyncio.to_thread(self.feed.poll)


def route_label(scope: Scope) -> str:
    """A bounded label for a request outside the fleet API (metrics; the fleet API labels its own)."""
    path = str(scope.get("path", ""))
    if path.startswith("/ui/api/"):
        return "ui." + path.split("/")[3]
    if path.startswith("/static/"):
        return "static"
    return {"/metrics": "metrics", "/": "page", "/login": "page"}.get(path, "other")


class RequestTiming:
    """ASGI middleware: each request's time until its last body byte is handed to the server."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def timed_send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            await send(message)
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.metrics.observe_request(route_label(scope), status, time.perf_counter() - start)

        await self.app(scope, receive, timed_send)


class PageHeaders:
    """ASGI middleware: what a browser must be told about every answer outside the fleet API.

    The content security policy allows nothing but this origin (no CDN, no inline
    script, no framing), so a page can fetch nothing from anywhere else.
    """

    HEADERS = [
        (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                     b"connect-src 'self'; form-action 'self'; base-uri 'none'; "
                                     b"frame-ancestors 'none'"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    ]

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def metrics_endpoint(served: Served) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        refused = await served.gate.allowed(request, METRICS)
        if refused is not None:
            return refused
        await served.poll_feed()
        served.metrics.on_status(await served.runner.run("status", served.coord.status))
        return Response(served.metrics.render(), media_type=CONTENT_TYPE)
    return endpoint


class ServeApp:
    """The ASGI app uvicorn runs: the fleet API without detours, the rest through Starlette."""

    def __init__(self, fleet: FleetApi, site: Starlette) -> None:
        self.fleet = fleet
        self.site = site

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/fleet"):
            await self.fleet(scope, receive, send)
        else:
            await self.site(scope, receive, send)

    def stopping(self) -> None:
        """The graceful stop begins: held claims answer 204 now rather than at the end of the grace."""
        if self.fleet.holder is not None:
            self.fleet.holder.stop()


def build_app(coord: Coordinator, options: ServeOptions, env: Mapping[str, str], runner: StoreRunner,
              logs: Path | Sequence[LogReader] | None, enrolled: bool = False,
              connections: OpenConnections | None = None) -> ServeApp:
    """The app ``serve`` runs; ``env`` gives the shared tokens (read once, here), the store the enrolled ones;
    ``connections``: the protocol's count of open connections, for /metrics."""
    served = Served(coord, options, env, runner, logs, enrolled)
    capabilities = Capabilities()
    holder = ClaimHolder(options.max_claim_wait_s, options.claim_recheck_s, max_held=options.max_connections)
    served.metrics.held_claims.set_function(lambda: holder.held)
    if connections is not None:
        served.metrics.connections.set_function(lambda: connections.count)
    fleet = FleetApi(coord, runner, served.tokens, options.body_timeout_s, options.ignore_dry_run,
                     answered=capabilities.heard, timed=served.metrics.observe_request, refusals=served.refusals,
                     holder=holder)
    routes = [Route("/metrics", metrics_endpoint(served), methods=["GET"]), *Dashboard(served, capabilities).routes()]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        backfill = asyncio.ensure_future(served.poll_feed())  # history read while the first requests come in
        holder.wakeup.current()  # bound to this loop: the PostgreSQL listener's hints find it
        peers = wake_peers(options.wake_url, holder, runner)
        yield
        backfill.cancel()
        if peers is not None:
            await asyncio.to_thread(peers.stop)

    site = Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: on_http_exception, Exception: on_internal_error})
    site.add_middleware(PageHeaders)
    site.add_middleware(RequestTiming, metrics=served.metrics)
    return ServeApp(fleet, site)

"""``serve`` as one Starlette app: the fleet API, /metrics, the dashboard, and JSON errors for all of it."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from coordinator_stub.core import Coordinator
from coordinator_stub.web.auth import Tokens
from coordinator_stub.web.fleet import FleetApi
from coordinator_stub.web.options import ServeOptions
from coordinator_stub.web.responses import on_http_exception, on_internal_error
from coordinator_stub.web.runner import StoreRunner

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def build_app(coord: Coordinator, options: ServeOptions, env: Mapping[str, str], runner: StoreRunner) -> Starlette:
    """The app ``serve`` runs; ``env`` gives the tokens (read once, here)."""
    tokens = Tokens.from_env(env)
    fleet = FleetApi(coord, runner, tokens, options.body_timeout_s, options.ignore_dry_run)
    routes = [Route("/v1/fleet{rest:path}", fleet.endpoint, methods=METHODS)]
    return Starlette(routes=routes, exception_handlers={HTTPException: on_http_exception,
                                                        Exception: on_internal_error})

"""The fleet API over HTTP: ``/v1/fleet/...``, answered by the same dispatcher as the command seam.

Per request: the token check (``auth.authorize``; healthz needs none), the body
read under a size bound and a deadline, ``api.handle`` on the store thread,
the answer, and then the store's ``tidy`` (what an operation leaves for after
its answer: the caller is not kept waiting for it). An answer given before the
body was read (401, 403, 408, 413) closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, MutableMapping
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from coordinator_stub.api import MAX_BODY, handle
from coordinator_stub.core import Coordinator
from coordinator_stub.web.auth import Tokens, authorize, scope_for
from coordinator_stub.web.protocol import AUTHORISED
from coordinator_stub.web.responses import json_error, json_response
from coordinator_stub.web.runner import StoreRunner

log = logging.getLogger(__name__)
Answered = Callable[[str, str, int, bytes], None]  # (operation, target, status, request body)


class BodyRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ClientGone(Exception):
    """The client closed its side before its body was complete: nobody to answer."""


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body within ``timeout_s`` (408) and ``limit`` bytes (413); chunked bodies come decoded."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyRefused(413, f"request body: {declared} bytes, at most {limit} allowed")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise BodyRefused(413, f"request body: more than {limit} bytes, at most {limit} allowed")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise BodyRefused(408, f"request body not complete within {timeout_s:g} s") from None


def operation(method: str, path: str) -> str:
    """A bounded name for the route (metrics labels, the store-latency histogram)."""
    parts = path.partition("?")[0].rstrip("/").split("/")[3:]  # after "", "v1", "fleet"
    if len(parts) == 1 and parts[0] == "jobs":
        return "enqueue" if method == "POST" else "list"
    if len(parts) == 2 and parts[0] == "jobs":
        return "get"
    if len(parts) == 3 and parts[0] == "jobs" and parts[2] in ("renew", "release", "report", "requeue"):
        return parts[2]
    if len(parts) == 1 and parts[0] in ("claim", "reap", "shadow-reports", "status", "healthz"):
        return parts[0].replace("-", "_")
    return "other"


class FleetApi:
    """The ``/v1/fleet`` endpoint; ``answered`` hears of every answered operation (fleet view, metrics)."""

    def __init__(self, coord: Coordinator, runner: StoreRunner, tokens: Tokens, body_timeout_s: float,
                 ignore_dry_run: bool = False, answered: Answered | None = None) -> None:
        self.coord = coord
        self.runner = runner
        self.tokens = tokens
        self.body_timeout_s = body_timeout_s
        self.ignore_dry_run = ignore_dry_run
        self.answered = answered

    async def endpoint(self, request: Request) -> Response:
        method = request.method
        target = _target(request.scope)
        principal, denied = authorize(self.tokens, None, request.headers.get("authorization"), None,
                                      scope_for(method, target))
        if denied == 401:
            return json_error(401, "missing or wrong bearer token", close=True)
        if denied:
            return json_error(403, f"{method} {target.partition('?')[0]}: the token lacks the scope", close=True)
        if principal is not None:
            request.scope[AUTHORISED] = True
        try:
            body = await read_body(request, MAX_BODY, self.body_timeout_s)
        except BodyRefused as exc:
            return json_error(exc.status, str(exc), close=True)
        except ClientGone:
            return Response(status_code=400)  # never sent: the connection is gone
        op = operation(method, target)
        status, answer = await self.runner.run(op, self._handle, method, target, body)
        if self.answered is not None:
            self.answered(op, target, status, body)
        return json_response(status, answer, background=BackgroundTask(self._tidy, method, target))

    def _handle(self, method: str, target: str, body: bytes) -> tuple[int, dict[str, Any] | None]:
        return handle(self.coord, method, target, body, ignore_dry_run=self.ignore_dry_run)

    async def _tidy(self, method: str, target: str) -> None:
        """The store's bookkeeping after an answer; a failure leaves the answer standing (the journal holds it)."""
        try:
            await self.runner.run("tidy", self.coord.tidy)
        except Exception:
            log.exception("internal error after answering %s %s", method, target.partition("?")[0])


def _target(scope: MutableMapping[str, Any]) -> str:
    """The request target as sent (still percent-encoded, as the seam would get it), with its query."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    return raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")

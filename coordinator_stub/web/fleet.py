"""The fleet API over HTTP: ``/v1/fleet/...``, answered by the same dispatcher as the command seam.

Per request: the token check (``auth.authorize``; healthz needs none), the body
read under a size bound and a deadline, ``api.handle`` on the store thread,
the answer, and then the store's ``tidy`` on that thread (what an operation
leaves for after its answer: the caller is not kept waiting for it). An
answer given before the body was read (401, 403, 408, 413) closes the
connection.

This is the hot path (benchmark B2), so it is a plain ASGI app: no router,
request object or middleware between uvicorn and ``handle``; ``app.py`` sends
everything else to Starlette.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from coordinator_stub.api import MAX_BODY, handle
from coordinator_stub.core import Coordinator
from coordinator_stub.enrolment import token_id_of
from coordinator_stub.web.auth import Principal, Tokens, authorize, bearer, bind_to_factory, scope_for
from coordinator_stub.web.claimwait import ClaimHolder
from coordinator_stub.web.gate import lookup, refusal_id
from coordinator_stub.web.protocol import AUTHORISED
from coordinator_stub.web.refusals import Refusals
from coordinator_stub.web.responses import error_document, send_json
from coordinator_stub.web.runner import StoreRunner

log = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Answered = Callable[[str, str, int, bytes], None]  # (operation, target, status, request body)
Timed = Callable[[str, int, float], None]  # (route label, status, seconds)


class BodyRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ClientGone(Exception):
    """The client closed its side before its body was complete: nobody to answer."""


async def read_body(receive: Receive, declared: bytes | None, limit: int, timeout_s: float) -> bytes:
    """The whole body within ``timeout_s`` (408) and ``limit`` bytes (413); chunked bodies come decoded."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyRefused(413, f"request body: {declared.decode()} bytes, at most {limit} allowed")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
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
    """The ``/v1/fleet`` ASGI app; ``answered`` hears of every answered operation, ``timed`` of every request."""

    def __init__(self, coord: Coordinator, runner: StoreRunner, tokens: Tokens, body_timeout_s: float,
                 ignore_dry_run: bool = False, answered: Answered | None = None, timed: Timed | None = None,
                 refusals: Refusals | None = None, holder: ClaimHolder | None = None) -> None:
        self.coord = coord
        self.holder = holder  # held claims (waitS); None: every claim answers at once
        self.runner = runner
        self.tokens = tokens
        self.body_timeout_s = body_timeout_s
        self.ignore_dry_run = ignore_dry_run
        self.answered = answered
        self.timed = timed
        self.refusals = refusals or Refusals(coord, runner)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        method, target = scope["method"], _target(scope)
        op = operation(method, target)
        try:
            status = await self._serve(scope, receive, send, method, target, op)
        except Exception:  # a bug: the JSON 500, and the traceback in the log (never the body or a header)
            log.exception("internal error on %s %s", method, target.partition("?")[0])
            status = 500
            await send_json(send, 500, error_document("internal_error", "internal error (see server log)"),
                            close=True)
        if self.timed is not None and status:
            self.timed("fleet." + op, status, time.perf_counter() - start)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, method: str, target: str, op: str) -> int:
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization")
        authorization = auth.decode("latin-1") if auth else None
        need = scope_for(method, target)
        principal, denied = authorize(self.tokens, None, authorization, None, need)
        presented = bearer(authorization)
        if presented is not None and token_id_of(presented) is not None and (
                denied == 401 or (principal is not None and principal.via == "open")):
            principal, denied = await lookup(self.coord, self.runner, self.tokens, presented, need, principal, denied)
        if denied == 401:
            return await self._refused(send, 401, "unauthorized", "missing, wrong or revoked bearer token",
                                       presented, principal)
        if denied:
            return await self._refused(send, 403, "forbidden",
                                       f"{method} {target.partition('?')[0]}: the token lacks the {need} scope",
                                       presented, principal)
        if principal is not None:
            scope[AUTHORISED] = True
        try:
            body = await read_body(receive, headers.get(b"content-length"), MAX_BODY, self.body_timeout_s)
        except BodyRefused as exc:
            code = "payload_too_large" if exc.status == 413 else "request_timeout"
            return await _refuse(send, exc.status, code, str(exc))
        except ClientGone:
            return 0  # nothing to answer, nobody to answer
        if principal is not None:
            body, mismatch = bind_to_factory(principal, op, body)
            if mismatch is not None:
                return await self._refused(send, 403, "forbidden", mismatch, presented, principal)
        if op == "claim" and self.holder is not None:
            status, answer = await self.holder.claim(
                body, lambda: self.runner.run(op, self._handle, method, target, body))
        else:
            status, answer = await self.runner.run(op, self._handle, method, target, body)
        if self.holder is not None:
            self.holder.heard(op, status)
            if op == "healthz" and status == 200 and answer is not None:
                answer = {**answer, "features": self.holder.features()}
        try:
            await send_json(send, status, answer)
        finally:
            self.runner.later("tidy", self.coord.tidy)
        if self.answered is not None:
            self.answered(op, target, status, body)
        return status

    async def _refused(self, send: Send, status: int, code: str, message: str, presented: str | None,
                       principal: Principal | None) -> int:
        """A refusal, answered and written to the event log under the token's id (never the token)."""
        await self.refusals.record(refusal_id(presented, principal), status, message)
        return await _refuse(send, status, code, message)

    def _handle(self, method: str, target: str, body: bytes) -> tuple[int, dict[str, Any] | None]:
        return handle(self.coord, method, target, body, ignore_dry_run=self.ignore_dry_run)


async def _refuse(send: Send, status: int, code: str, message: str) -> int:
    extra = [(b"www-authenticate", b'Bearer realm="agent-queue"')] if status == 401 else []
    await send_json(send, status, error_document(code, message), close=True, headers=extra)
    return status


def _target(scope: Scope) -> str:
    """The request target as sent (still percent-encoded, as the seam would get it), with its query."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    return raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")

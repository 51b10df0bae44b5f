"""Every answer ``serve`` gives in the contract's shape: JSON bodies, JSON errors, also for the framework's own."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          408: "request_timeout", 413: "payload_too_large", 415: "unsupported_media_type", 500: "internal_error"}
JSON = "application/json"
_JSON_HEADER = (b"content-type", b"application/json")
_CLOSE_HEADER = (b"connection", b"close")


def error_document(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


async def send_json(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], status: int, body: Any, *,
                    close: bool = False, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """One whole JSON answer over raw ASGI (none for 204); ``close`` ends the connection after it."""
    out = [*headers, _CLOSE_HEADER] if close else list(headers)
    if status == 204 or body is None:
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": b""})
        return
    data = json.dumps(body).encode()
    out += [_JSON_HEADER, (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": data})


def json_response(status: int, body: Any, *, close: bool = False,
                  headers: Mapping[str, str] | None = None) -> Response:
    """``body`` as a Starlette JSON response (none for 204); ``close`` ends the connection after it."""
    extra = dict(headers or {})
    if close:
        extra["connection"] = "close"
    if status == 204 or body is None:
        return Response(status_code=status, headers=extra)
    return Response(json.dumps(body).encode(), status_code=status, media_type=JSON, headers=extra)


def json_error(status: int, message: str, code: str | None = None, *, close: bool = False,
               headers: Mapping[str, str] | None = None) -> Response:
    extra = dict(headers or {})
    if status == 401:
        extra.setdefault("www-authenticate", 'Bearer realm="agent-queue"')
    return json_response(status, error_document(code or _CODES.get(status, "error"), message), close=close,
                         headers=extra)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method, a missing static file) as JSON errors."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    message = exc.detail if exc.status_code not in (404, 405) else (
        f"{request.method} {request.url.path}: " + ("no such route" if exc.status_code == 404 else
                                                   "method not allowed"))
    return json_error(exc.status_code, message, headers=exc.headers)


async def on_internal_error(request: Request, exc: Exception) -> Response:
    """A bug: the JSON 500 (uvicorn logs the traceback once the exception goes on up)."""
    return json_error(500, "internal error (see server log)", close=True)

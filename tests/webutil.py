"""Drive the ``serve`` ASGI app in-process (no socket): one request in, (status, headers, body) out.

For unit tests of the app's decisions; everything about framing, deadlines
and connections is tested against a real ``serve`` process instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any


def call_app(app: Any, method: str, path: str, headers: Mapping[str, str] | None = None,
             body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One HTTP request through the ASGI app; the background task (tidy) runs before this returns."""
    path_only, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path_only, "raw_path": path_only.encode(), "query_string": query.encode(),
             "root_path": "", "server": ("127.0.0.1", 8787), "client": ("127.0.0.1", 50000),
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()], "state": {}}
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.sleep(3600)
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    out_headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(start["status"]), out_headers, data

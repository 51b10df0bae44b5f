"""The floor of B2 on the new stack: an echo app served by ``serve``'s own server (uvicorn, h11, Starlette).

Same listening socket, protocol class (strict framing, deadlines, the
connection bound), event loop and framework as ``coordinator-stub serve``,
and a single route that answers the request body; so a client's rate
against it is the best this stack can do here, and serve's ratio to it is
what the coordinator costs on top. Usage: ``python echo_asgi.py PORT``.
"""

from __future__ import annotations

import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coordinator_stub.web.options import ServeOptions
from coordinator_stub.web.server import run


async def echo(request: Request) -> Response:
    return Response(await request.body() or b"{}", media_type="application/json")


if __name__ == "__main__":
    app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])
    run(app, ServeOptions(port=int(sys.argv[1])))

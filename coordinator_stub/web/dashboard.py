"""The fleet dashboard at ``/``: login, the pages' JSON (``/ui/api/...``), and their assets (``/static``).

The page is one HTML file and one script, served by ``serve`` itself (no CDN,
no build step); it polls the JSON below every two seconds and ticks lease
clocks between polls. Login takes a token with the ``read`` scope (an enrolled
one: a ``read`` or ``admin`` token, see ``gate.py``) and opens a session in
an HttpOnly, ``SameSite=Strict`` cookie (never a URL or localStorage); the
one write, logout, also needs the session's CSRF token and a same-origin
``Origin``. Every page reads through the store thread like any
request, and the whole job list is listed at most every ``5x`` its own cost,
so a dashboard at 10k jobs never takes more than a fifth of the store's time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from agent_queue.errors import AQError
from coordinator_stub.web.auth import READ, SESSION_COOKIE, SESSION_TTL_S, authorize, csrf_ok
from coordinator_stub.web.responses import json_error, json_response
from coordinator_stub.web.views import dag, fleet, job_row, leases, redact, select_events, select_rows, shadow, story

TYPE_CHECKING = False
if TYPE_CHECKING:
    from coordinator_stub.web.app import Served

STATIC = Path(__file__).parent / "static"
LIST_MIN_AGE_S = 1.0  # the job list is re-read at most this often...
LIST_COST_FACTOR = 5.0  # ...and at most every this many times what the last listing took
Endpoint = Callable[[Request], Awaitable[Response]]


class JobList:
    """All jobs as queue rows, shared by every dashboard client and re-listed only when it is due."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.rows: list[dict[str, Any]] = []
        self.listed_at = float("-inf")
        self.cost_s = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> list[dict[str, Any]]:
        async with self._lock:
            if time.monotonic() - self.listed_at >= max(LIST_MIN_AGE_S, LIST_COST_FACTOR * self.cost_s):
                start = time.monotonic()
                self.rows = await self.served.runner.run("list", self._list)
                self.listed_at = time.monotonic()
                self.cost_s = self.listed_at - start
            return self.rows

    def _list(self) -> list[dict[str, Any]]:
        return [job_row(v) for v in self.served.coord.list_jobs()]


class Capabilities:
    """What each factory said it can do in its last claim to this server (the coordinator keeps no such list)."""

    def __init__(self) -> None:
        self.by_factory: dict[str, list[str]] = {}

    def heard(self, op: str, target: str, status: int, body: bytes) -> None:
        if op != "claim" or status not in (200, 204):
            return
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return
        caps = req.get("capabilities", []) if isinstance(req, dict) else None
        if isinstance(req, dict) and isinstance(req.get("factoryId"), str) and isinstance(caps, list):
            self.by_factory[req["factoryId"]] = sorted(str(c) for c in caps)[:100]


class Dashboard:
    def __init__(self, served: Served, capabilities: Capabilities) -> None:
        self.served = served
        self.capabilities = capabilities
        self.jobs = JobList(served)

    def routes(self) -> list[BaseRoute]:
        api = {"session": self.session, "fleet": self.fleet, "jobs": self.job_list, "composites": self.composites,
               "shadow": self.shadow, "events": self.events}
        return [
            Route("/", self.index, methods=["GET"]),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/ui/login", self.login, methods=["POST"]),
            Route("/ui/logout", self.logout, methods=["POST"]),
            *(Route(f"/ui/api/{name}", self._read(fn), methods=["GET"]) for name, fn in api.items()),
            Route("/ui/api/jobs/{job_id:path}", self._read(self.job), methods=["GET"]),
            Route("/ui/api/composites/{job_id:path}", self._read(self.composite), methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ]

    # ------------------------------------------------------------ pages and login

    async def index(self, request: Request) -> Response:
        verdict = await self.served.gate.check(request.headers.get("authorization"),
                                               request.cookies.get(SESSION_COOKIE), READ)
        if verdict.denied:
            return RedirectResponse("/login", status_code=303)
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def login_page(self, request: Request) -> Response:
        return FileResponse(STATIC / "login.html", headers={"cache-control": "no-store"})

    async def login(self, request: Request) -> Response:
        """``{"token": ...}`` -> a session cookie when the token has the read scope; 401 otherwise."""
        if not _same_origin(request):
            return json_error(403, "cross-origin login refused")
        try:
            token = json.loads(await request.body()).get("token")
        except (ValueError, AttributeError):
            token = None
        granted = await self.served.gate.login(token if isinstance(token, str) else None)
        if granted is None:
            return json_response(200, {"open": True})
        if isinstance(granted, Response):
            return granted
        scopes, token_id = granted
        sid, session = self.served.sessions.open(scopes, token_id)
        response = json_response(200, {"scopes": sorted(scopes)})
        response.set_cookie(SESSION_COOKIE, sid, max_age=int(SESSION_TTL_S), path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        principal, denied = self._who(request)
        session = principal.session if principal is not None else None
        if denied or session is None:
            return json_error(401, "not logged in")
        if not _same_origin(request) or not csrf_ok(session, request.headers.get("x-csrf-token")):
            return json_error(403, "logout needs the page's CSRF token")
        self.served.sessions.close(request.cookies.get(SESSION_COOKIE))
        response = json_response(204, None)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def _who(self, request: Request) -> tuple[Any, int]:
        return authorize(self.served.tokens, self.served.sessions, request.headers.get("authorization"),
                         request.cookies.get(SESSION_COOKIE), READ)

    def _read(self, fn: Endpoint) -> Endpoint:
        """A page's JSON: read scope (session or bearer), the audit logs polled first, never cached."""
        async def endpoint(request: Request) -> Response:
            refused = await self.served.gate.allowed(request, READ)
            if refused is not None:
                return refused
            await self.served.poll_feed()
            try:
                response = await fn(request)
            except AQError as exc:
                return json_error(exc.http_status, exc.message, exc.code)
            response.headers["cache-control"] = "no-store"
            return response
        return endpoint

    # ------------------------------------------------------------ the pages' data

    async def session(self, request: Request) -> Response:
        principal, _ = self._who(request)
        csrf = principal.session.csrf if principal is not None and principal.session is not None else None
        return json_response(200, {"open": self.served.tokens.open, "csrf": csrf,
                                   "scopes": sorted(principal.scopes) if principal is not None else []})

    async def fleet(self, request: Request) -> Response:
        status = await self.served.runner.run("status", self.served.coord.status)
        return json_response(200, {**fleet(status, self.capabilities.by_factory), "now": _now()})

    async def job_list(self, request: Request) -> Response:
        q = request.query_params
        page = select_rows(await self.jobs.get(), q.get("state") or None, q.get("q"), q.get("factory") or None,
                           _int(q.get("page"), 1), _int(q.get("size"), 50))
        return json_response(200, {**page, "now": _now(), "listedAgoS": round(time.monotonic() - self.jobs.listed_at,
                                                                              3)})

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        view = await self.served.runner.run("get", self.served.coord.get_job, job_id)
        events = self.served.feed.job_events(job_id)
        history = leases(events)
        return json_response(200, {"view": {**view, "job": redact(view["job"])}, "row": job_row(view),
                                   "leases": history, "story": story(history), "events": events[-200:][::-1],
                                   "now": _now()})

    async def composites(self, request: Request) -> Response:
        rows = [r for r in await self.jobs.get() if r["kind"] == "composite"]
        q = request.query_params
        return json_response(200, {**select_rows(rows, None, q.get("q"), None, _int(q.get("page"), 1),
                                                 _int(q.get("size"), 50)), "now": _now()})

    async def composite(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        parent, children = await self.served.runner.run("get", self._family, job_id)
        return json_response(200, {"parent": job_row(parent), "dag": dag(parent, children), "now": _now()})

    def _family(self, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        coord = self.served.coord
        parent = coord.get_job(job_id)
        children = []
        for child_id in parent["job"].get("childIds") or []:
            try:
                children.append(coord.get_job(child_id))
            except AQError:  # a child not written yet (a crash mid-enqueue): drawn without its edges
                continue
        return parent, children

    async def shadow(self, request: Request) -> Response:
        bucket = min(max(_int(request.query_params.get("bucket"), 300), 10), 86400)
        return json_response(200, {**shadow(self.served.feed.shadow_reports(), time.time(), float(bucket)),
                                   "now": _now()})

    async def events(self, request: Request) -> Response:
        q = request.query_params
        before = q.get("before")
        picked = select_events(self.served.feed.recent_events(), q.get("op") or None, q.get("job") or None,
                               q.get("factory") or None, q.get("status") or None,
                               min(max(_int(q.get("limit"), 200), 1), 1000),
                               _int(before, 0) if before else None)
        return json_response(200, {"events": picked, "now": _now()})


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _now() -> str:
    from agent_queue.timeutil import to_rfc3339

    return to_rfc3339(time.time())


def _same_origin(request: Request) -> bool:
    """A browser's POST names its page's origin; its host must be this server's (no other site can post).

    The scheme is not compared: behind a TLS-terminating proxy the page is https and serve sees http.
    """
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")

"""Enrolled tokens at every door of ``serve``: the fleet API, the dashboard (login and pages) and ``/metrics``.

``auth.py`` decides over the shared tokens and sessions without touching the
store; an enrolled token (``aqf_...``/``aqt_...``, issue #19) needs one read of
the store to say who it is, and that is done here, on the store thread, for
every door alike:

- the fleet API and ``/metrics`` take a bearer enrolled token with the scopes
  ``auth.ENROLLED_GRANTS`` gives it (``/metrics``: ``metrics``, ``read`` or
  ``admin``);
- the dashboard's login opens a session for a ``read`` or ``admin`` token only;
  a ``factory``, ``submit`` or ``metrics`` token is refused with 403 (a session
  is a person's, and a factory's or CI job's credential has no business in a
  browser);
- a session opened with an enrolled token remembers the token's id, and each
  request checks by that id that the token is still live (one read of the hot
  document): revoking the token ends the session at its next request.

Every refusal goes to ``refusals.Refusals`` (the event log, rate-limited),
under the token's id, never the token.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from coordinator_stub.core import Coordinator
from coordinator_stub.enrolment import token_id_of
from coordinator_stub.web.auth import (
    ADMIN,
    READ,
    SESSION_COOKIE,
    Principal,
    Sessions,
    Tokens,
    authorize,
    bearer,
    decide,
    enrolled,
)
from coordinator_stub.web.protocol import AUTHORISED
from coordinator_stub.web.refusals import Refusals
from coordinator_stub.web.responses import json_error
from coordinator_stub.web.runner import StoreRunner

DASHBOARD_SCOPES = frozenset({READ, ADMIN})  # the enrolled scopes that may open a dashboard session


@dataclass(frozen=True)
class Verdict:
    """An access decision: who (or None), 0/401/403, and the id the event log names for a refusal."""

    principal: Principal | None
    denied: int
    token_id: str | None


def refusal_id(presented: str | None, principal: Principal | None) -> str | None:
    """The id a refusal is logged under: the enrolled token's id, ``shared`` for a shared token, else None."""
    if principal is not None and principal.token_id:
        return principal.token_id
    found = token_id_of(presented) if presented else None
    return found or ("shared" if principal is not None else None)


async def lookup(coord: Coordinator, runner: StoreRunner, tokens: Tokens, presented: str, need: str | None,
                 principal: Principal | None, denied: int) -> tuple[Principal | None, int]:
    """An enrolled token, looked up in the store (shared tokens never get here: no store call for them).

    An open server (started before anything was enrolled) closes for good once
    the store holds credentials; until then the decision it was given stands.
    """
    who = await runner.run("identify", coord.identify, presented)
    if tokens.open and (who is not None or await runner.run("enrolled", coord.enrolled)):
        tokens.close()
    if tokens.open:
        return principal, denied
    found = enrolled(who)
    return found, decide(found, need)


class Gate:
    """The access decisions of the dashboard and ``/metrics`` (the fleet API calls ``lookup`` itself)."""

    def __init__(self, coord: Coordinator, runner: StoreRunner, tokens: Tokens, sessions: Sessions,
                 refusals: Refusals) -> None:
        self.coord = coord
        self.runner = runner
        self.tokens = tokens
        self.sessions = sessions
        self.refusals = refusals

    async def check(self, authorization: str | None, cookie: str | None, need: str | None) -> Verdict:
        """Shared tokens and sessions first (no store call), then an enrolled bearer token or session."""
        principal, denied = authorize(self.tokens, self.sessions, authorization, cookie, need)
        presented = bearer(authorization)
        if presented is not None and token_id_of(presented) is not None and (
                denied == 401 or (principal is not None and principal.via == "open")):
            principal, denied = await lookup(self.coord, self.runner, self.tokens, presented, need, principal, denied)
            return Verdict(principal, denied, refusal_id(presented, principal))
        session = principal.session if principal is not None else None
        if session is not None and session.token_id is not None and not await self.runner.run(
                "token_live", self.coord.token_live, session.token_id):
            self.sessions.close(cookie)  # for good: a revoked token's session never comes back
            return Verdict(None, decide(None, need), session.token_id)
        return Verdict(principal, denied, refusal_id(presented, principal))

    async def allowed(self, request: Request, need: str) -> Response | None:
        """None when ``request`` may go on, else the JSON 401/403 (and the refusal in the event log)."""
        verdict = await self.check(request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE), need)
        if verdict.denied:
            why = ("log in, or send a bearer token" if verdict.denied == 401
                   else f"this token or session lacks the {need} scope")
            await self.refusals.record(verdict.token_id, verdict.denied, f"{request.url.path}: {why}")
            return json_error(verdict.denied, why)
        if verdict.principal is not None:
            request.scope[AUTHORISED] = True
        return None

    async def login(self, token: str | None) -> tuple[frozenset[str], str | None] | Response | None:
        """What a dashboard login gets: (scopes, enrolled token id or None), the refusal, or None (serving is open).

        A shared token needs the ``read`` scope; an enrolled one must be a ``read``
        or ``admin`` token (403 for any other: it is known, but not a person's).
        """
        enrolled_id = token_id_of(token) if token else None
        who = await self.runner.run("identify", self.coord.identify, token) if token and enrolled_id else None
        if self.tokens.open and enrolled_id and (who is not None or await self.runner.run("enrolled",
                                                                                        self.coord.enrolled)):
            self.tokens.close()
        if self.tokens.open:
            return None
        shared = self.tokens.scopes_for(token)
        if READ in shared:
            return shared, None
        if who is None:
            await self.refusals.record(enrolled_id, 401, "/ui/login: wrong token")
            return json_error(401, "wrong token (the dashboard needs one with the read scope)")
        if who["scope"] not in DASHBOARD_SCOPES:
            await self.refusals.record(enrolled_id, 403, f"/ui/login: a {who['scope']} token")
            return json_error(403, f"a {who['scope']} token cannot log in to the dashboard: "
                                   "use a read or admin token (coordinator-stub token add --scope read)")
        found = enrolled(who)
        assert found is not None  # who is not None
        return found.scopes, enrolled_id

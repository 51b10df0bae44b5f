"""Who may do what: bearer tokens and the scopes they grant, dashboard sessions, CSRF tokens.

Every request of ``serve`` is authorised by one policy (``scope_for`` and
``decide``) over shared tokens (``Tokens``) and enrolled ones (``enrolled``).
Scopes follow the design of the production fleet: ``factory`` (claim, renew,
release, report, shadow reports, reap), ``submit`` (enqueue, requeue),
``read`` (every read, the dashboard, metrics), ``metrics`` (/metrics only),
``admin`` (cancel, approve, replan, and everything else). Enrolled tokens (kept hashed
in the store, see ``coordinator_stub/enrolment.py``) grant what
``ENROLLED_GRANTS`` says; ``fleet.py`` looks them up, and a factory token acts
only as its own factory (``bind_to_factory``). Shared tokens from the
environment: ``AQ_FLEET_TOKEN`` (every scope, as before), ``AQ_READ_TOKEN``
(read and metrics, for people at the dashboard) and ``AQ_METRICS_TOKEN``
(metrics, for a Prometheus server); the last two are optional. Without
``AQ_FLEET_TOKEN`` and without enrolled credentials in the store, serving is
open (loopback only, see ``check_bind``) and every request has every scope.

Tokens are compared in constant time and each presented token is compared with
every configured one (no early exit). A dashboard session lives in an
HttpOnly, ``SameSite=Strict`` cookie; the server keeps only its SHA-256, so a
lookup leaks nothing through timing, and a restart logs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

FACTORY, SUBMIT, READ, METRICS, ADMIN = "factory", "submit", "read", "metrics", "admin"
ALL_SCOPES = frozenset({FACTORY, SUBMIT, READ, METRICS, ADMIN})
# What an enrolled token's scope grants (issue #19). A factory token is also bound to its factory id
# (``Principal.factory_id``, checked against the request body by fleet.py).
ENROLLED_GRANTS = {FACTORY: frozenset({FACTORY, READ}), SUBMIT: frozenset({SUBMIT, READ}),
                   READ: frozenset({READ, METRICS}), METRICS: frozenset({METRICS}), ADMIN: ALL_SCOPES}
BOUND_OPS = frozenset({"claim", "renew", "release", "report", "shadow_report"})  # the body names a factory
NO_SCOPES: frozenset[str] = frozenset()
SESSION_COOKIE = "aq_session"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 1000
_TOKEN_ENV = (("AQ_FLEET_TOKEN", ALL_SCOPES), ("AQ_READ_TOKEN", frozenset({READ, METRICS})),
              ("AQ_METRICS_TOKEN", frozenset({METRICS})))


class Tokens:
    """The configured bearer tokens and the scopes each grants (never shown: no ``repr`` of a token)."""

    def __init__(self, entries: list[tuple[str, frozenset[str]]], enrolled: bool = False) -> None:
        self._entries = [(token.encode(), scopes) for token, scopes in entries if token]
        self.open = not enrolled and not any(scopes == ALL_SCOPES for _, scopes in self._entries)

    @classmethod
    def from_env(cls, env: Mapping[str, str], enrolled: bool = False) -> Tokens:
        """``enrolled``: the store holds enrolled credentials, so serving is never open."""
        return cls([(env.get(name) or "", scopes) for name, scopes in _TOKEN_ENV], enrolled)

    def close(self) -> None:
        """An enrolled token was presented to an open server: from now on every request must authenticate."""
        self.open = False

    def __repr__(self) -> str:
        return f"Tokens({len(self._entries)} configured, open={self.open})"

    def scopes_for(self, presented: str | None) -> frozenset[str]:
        """The scopes a presented token grants; every configured token is compared (constant time each)."""
        if self.open:
            return ALL_SCOPES
        got = (presented or "").encode()
        granted = NO_SCOPES
        for token, scopes in self._entries:
            if hmac.compare_digest(got, token) and presented:
                granted = granted | scopes
        return granted


@dataclass
class Session:
    scopes: frozenset[str]
    csrf: str  # sent back by the page in X-CSRF-Token on every write (logout)
    expires: float
    token_id: str | None = None  # opened with an enrolled token: the session ends when it is revoked (gate.py)


class Sessions:
    """Dashboard sessions in memory, bounded (the oldest goes first), keyed by the SHA-256 of the cookie."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, limit: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._limit = limit
        self._clock = clock
        self._by_hash: OrderedDict[str, Session] = OrderedDict()

    def open(self, scopes: frozenset[str], token_id: str | None = None) -> tuple[str, Session]:
        """A new session: (the cookie value, the session)."""
        sid = secrets.token_urlsafe(32)
        session = Session(scopes, secrets.token_urlsafe(24), self._clock() + self._ttl_s, token_id)
        self._by_hash[_digest(sid)] = session
        while len(self._by_hash) > self._limit:
            self._by_hash.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        key = _digest(sid)
        session = self._by_hash.get(key)
        if session is not None and session.expires <= self._clock():
            del self._by_hash[key]
            return None
        return session

    def close(self, sid: str | None) -> None:
        if sid:
            self._by_hash.pop(_digest(sid), None)


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is asking: the scopes granted, and how (``open``, ``bearer``, ``session`` or ``enrolled``).

    An enrolled token also has its id (for the event log), and a factory's its
    factory id and the capabilities it was enrolled with.
    """

    scopes: frozenset[str]
    via: str
    session: Session | None = None
    token_id: str | None = None
    factory_id: str | None = None
    capabilities: frozenset[str] = frozenset()


def enrolled(who: Mapping[str, object] | None) -> Principal | None:
    """The principal of an enrolled token as the core identified it (``Coordinator.identify``), or None."""
    if who is None:
        return None
    caps = who.get("capabilities")
    factory = who.get("factoryId")
    return Principal(ENROLLED_GRANTS[str(who["scope"])], "enrolled", token_id=str(who["tokenId"]),
                     factory_id=str(factory) if factory is not None else None,
                     capabilities=frozenset(str(c) for c in caps) if isinstance(caps, list) else frozenset())


def decide(principal: Principal | None, need: str | None) -> int:
    """0 when ``principal`` may do what needs ``need``, else 401 (nobody) or 403 (lacks the scope)."""
    if need is None:
        return 0
    if principal is None:
        return 401
    return 0 if need in principal.scopes else 403


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), else None."""
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authorize(tokens: Tokens, sessions: Sessions | None, authorization: str | None, cookie: str | None,
              need: str | None) -> tuple[Principal | None, int]:
    """The one access decision: (principal, 0) when allowed, else (principal or None, 401 or 403).

    ``need`` None: anyone (healthz). ``sessions`` None: bearer tokens only (the
    fleet API takes no cookie, so no page can ride a session into a write).
    """
    principal = _identify(tokens, sessions, authorization, cookie)
    return principal, decide(principal, need)


def _identify(tokens: Tokens, sessions: Sessions | None, authorization: str | None,
              cookie: str | None) -> Principal | None:
    if tokens.open:
        return Principal(ALL_SCOPES, "open")
    presented = bearer(authorization)
    if presented is not None:
        scopes = tokens.scopes_for(presented)
        return Principal(scopes, "bearer") if scopes else None
    session = sessions.get(cookie) if sessions is not None else None
    return Principal(session.scopes, "session", session) if session is not None else None


def scope_for(method: str, path: str) -> str | None:
    """The scope a fleet API request needs: none for healthz, ``read`` for reads, else by what it changes."""
    route = path.partition("?")[0].rstrip("/")
    if route.endswith("/v1/fleet/healthz"):
        return None
    if method in ("GET", "HEAD"):
        return READ
    if route.endswith("/v1/fleet/jobs") or route.endswith("/requeue"):
        return SUBMIT
    if route.endswith("/cancel") or route.endswith("/approve") or route.endswith("/replan"):
        return ADMIN  # a person's decision over any job: no factory token may take it
    return FACTORY


def bind_to_factory(principal: Principal, op: str, body: bytes) -> tuple[bytes, str | None]:
    """A factory token acts only as its own factory: (body to run, None), or (body, why it is refused).

    A claim is capped to the capabilities the factory was enrolled with: those it
    names beyond them are dropped (the claim still runs, for jobs it may take).
    A body that is not a JSON object goes on unchanged: the dispatcher answers 400.
    """
    if principal.factory_id is None or op not in BOUND_OPS:
        return body, None
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return body, None
    if not isinstance(doc, dict):
        return body, None
    named = doc.get("factoryId")
    if named != principal.factory_id:
        return body, (f"factoryId {str(named)[:128]!r} in the body, but this token belongs to factory "
                      f"{principal.factory_id!r}")
    caps = doc.get("capabilities")
    if op == "claim" and isinstance(caps, list) and any(c not in principal.capabilities for c in caps):
        doc["capabilities"] = [c for c in caps if c in principal.capabilities]
        return json.dumps(doc).encode(), None
    return body, None


def csrf_ok(session: Session | None, presented: str | None) -> bool:
    """A write from the page carries its session's CSRF token (constant-time compare)."""
    return session is not None and bool(presented) and hmac.compare_digest(session.csrf.encode(),
                                                                           (presented or "").encode())

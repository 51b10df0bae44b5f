"""Who may do what: bearer tokens and the scopes they grant, dashboard sessions, CSRF tokens.

Every request of ``serve`` is authorised by ``authorize`` alone, so scoped and
per-factory tokens (issue #19) extend one table (``Tokens``) and one policy
(``scope_for``). Scopes follow the design of the production fleet: ``factory``
(claim, renew, release, report, shadow reports, reap), ``submit`` (enqueue,
requeue), ``read`` (every read, the dashboard, metrics), ``metrics`` (/metrics
only). Today's tokens: ``AQ_FLEET_TOKEN`` (every scope, as before),
``AQ_READ_TOKEN`` (read and metrics, for people at the dashboard) and
``AQ_METRICS_TOKEN`` (metrics, for a Prometheus server); the last two are
optional. Without ``AQ_FLEET_TOKEN`` serving is open (loopback only, see
``check_bind``) and every request has every scope.

Tokens are compared in constant time and each presented token is compared with
every configured one (no early exit). A dashboard session lives in an
HttpOnly, ``SameSite=Strict`` cookie; the server keeps only its SHA-256, so a
lookup leaks nothing through timing, and a restart logs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

FACTORY, SUBMIT, READ, METRICS = "factory", "submit", "read", "metrics"
ALL_SCOPES = frozenset({FACTORY, SUBMIT, READ, METRICS})
NO_SCOPES: frozenset[str] = frozenset()
SESSION_COOKIE = "aq_session"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 1000
_TOKEN_ENV = (("AQ_FLEET_TOKEN", ALL_SCOPES), ("AQ_READ_TOKEN", frozenset({READ, METRICS})),
              ("AQ_METRICS_TOKEN", frozenset({METRICS})))


class Tokens:
    """The configured bearer tokens and the scopes each grants (never shown: no ``repr`` of a token)."""

    def __init__(self, entries: list[tuple[str, frozenset[str]]]) -> None:
        self._entries = [(token.encode(), scopes) for token, scopes in entries if token]
        self.open = not any(scopes == ALL_SCOPES for _, scopes in self._entries)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Tokens:
        return cls([(env.get(name) or "", scopes) for name, scopes in _TOKEN_ENV])

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


class Sessions:
    """Dashboard sessions in memory, bounded (the oldest goes first), keyed by the SHA-256 of the cookie."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, limit: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._limit = limit
        self._clock = clock
        self._by_hash: OrderedDict[str, Session] = OrderedDict()

    def open(self, scopes: frozenset[str]) -> tuple[str, Session]:
        """A new session: (the cookie value, the session)."""
        sid = secrets.token_urlsafe(32)
        session = Session(scopes, secrets.token_urlsafe(24), self._clock() + self._ttl_s)
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
    """Who is asking: the scopes granted, and how (``open``, ``bearer`` or ``session``)."""

    scopes: frozenset[str]
    via: str
    session: Session | None = None


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
    if need is None:
        return principal, 0
    if principal is None:
        return None, 401
    return principal, (0 if need in principal.scopes else 403)


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
    return FACTORY


def csrf_ok(session: Session | None, presented: str | None) -> bool:
    """A write from the page carries its session's CSRF token (constant-time compare)."""
    return session is not None and bool(presented) and hmac.compare_digest(session.csrf.encode(),
                                                                           (presented or "").encode())

"""Tokens, scopes and sessions of ``serve``: the one access decision (``auth.authorize``)."""

from __future__ import annotations

import json

from coordinator_stub.web.auth import (
    ADMIN,
    ALL_SCOPES,
    FACTORY,
    METRICS,
    READ,
    SUBMIT,
    Sessions,
    Tokens,
    authorize,
    bearer,
    bind_to_factory,
    csrf_ok,
    decide,
    enrolled,
    scope_for,
)

ENV = {"AQ_FLEET_TOKEN": "fleet", "AQ_READ_TOKEN": "reader", "AQ_METRICS_TOKEN": "prom"}


def test_each_token_grants_its_scopes_and_nothing_else() -> None:
    tokens = Tokens.from_env(ENV)
    assert not tokens.open
    assert tokens.scopes_for("fleet") == ALL_SCOPES
    assert tokens.scopes_for("reader") == {READ, METRICS}
    assert tokens.scopes_for("prom") == {METRICS}
    for wrong in ("", None, "flee", "fleet ", "FLEET", "reader2"):
        assert tokens.scopes_for(wrong) == frozenset()
    assert "fleet" not in repr(tokens) and "reader" not in repr(tokens)


def test_without_the_shared_token_serving_is_open_even_with_a_read_token() -> None:
    tokens = Tokens.from_env({"AQ_READ_TOKEN": "reader"})
    assert tokens.open
    assert authorize(tokens, None, None, None, FACTORY)[1] == 0


def test_the_access_decision() -> None:
    tokens, sessions = Tokens.from_env(ENV), Sessions()
    assert authorize(tokens, sessions, None, None, None)[1] == 0  # healthz
    assert authorize(tokens, sessions, None, None, READ)[1] == 401
    assert authorize(tokens, sessions, "Bearer nope", None, READ)[1] == 401
    assert authorize(tokens, sessions, "Basic fleet", None, READ)[1] == 401
    assert authorize(tokens, sessions, "bearer  fleet ", None, FACTORY)[1] == 0
    assert authorize(tokens, sessions, "Bearer reader", None, FACTORY)[1] == 403
    assert authorize(tokens, sessions, "Bearer prom", None, READ)[1] == 403
    sid, _ = sessions.open(frozenset({READ, METRICS}))
    principal, denied = authorize(tokens, sessions, None, sid, READ)
    assert denied == 0 and principal is not None and principal.via == "session"
    assert authorize(tokens, None, None, sid, READ)[1] == 401  # the fleet API takes no session cookie
    assert authorize(tokens, sessions, None, sid, SUBMIT)[1] == 403
    assert authorize(tokens, sessions, None, sid + "x", READ)[1] == 401


def test_sessions_expire_are_bounded_and_close() -> None:
    now = [0.0]
    sessions = Sessions(ttl_s=10, limit=2, clock=lambda: now[0])
    a, sa = sessions.open(frozenset({READ}))
    b, _ = sessions.open(frozenset({READ}))
    assert sessions.get(a) is sa
    c, _ = sessions.open(frozenset({READ}))
    assert sessions.get(a) is None and sessions.get(b) is not None  # the oldest went first
    sessions.close(b)
    assert sessions.get(b) is None
    now[0] = 10.0
    assert sessions.get(c) is None
    assert sessions.get(None) is None and sessions.get("") is None


def test_csrf_and_bearer_parsing() -> None:
    _, session = Sessions().open(frozenset({READ}))
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, session.csrf + "x") and not csrf_ok(session, None) and not csrf_ok(None, "x")
    assert bearer("Bearer abc") == "abc" and bearer("BEARER abc ") == "abc"
    assert bearer("Bearer ") is None and bearer("Token abc") is None and bearer(None) is None


def test_the_scope_each_fleet_route_needs() -> None:
    assert scope_for("GET", "/v1/fleet/healthz") is None
    assert scope_for("GET", "/v1/fleet/healthz/") is None
    assert scope_for("GET", "/v1/fleet/status") == READ
    assert scope_for("GET", "/v1/fleet/jobs?state=queued") == READ
    assert scope_for("POST", "/v1/fleet/jobs") == SUBMIT
    assert scope_for("POST", "/v1/fleet/jobs/a/requeue") == SUBMIT
    for path in ("/v1/fleet/claim", "/v1/fleet/jobs/a/renew", "/v1/fleet/jobs/a/report", "/v1/fleet/reap",
                 "/v1/fleet/shadow-reports", "/v1/fleet/nowhere"):
        assert scope_for("POST", path) == FACTORY


def test_enrolled_scopes_and_the_admin_only_routes() -> None:
    factory = enrolled({"tokenId": "0123456789ab", "scope": "factory", "factoryId": "f1", "capabilities": ["gpu"]})
    submit = enrolled({"tokenId": "ba9876543210", "scope": "submit"})
    assert factory is not None and submit is not None
    assert factory.factory_id == "f1" and factory.capabilities == frozenset({"gpu"}) and factory.via == "enrolled"
    assert scope_for("POST", "/v1/fleet/jobs/x/cancel") == ADMIN == scope_for("POST", "/v1/fleet/jobs/x/approve")
    assert scope_for("POST", "/v1/fleet/jobs/x/replan") == ADMIN
    assert [decide(factory, n) for n in (FACTORY, READ, SUBMIT, ADMIN)] == [0, 0, 403, 403]
    assert [decide(submit, n) for n in (FACTORY, READ, SUBMIT, ADMIN)] == [403, 0, 0, 403]
    assert decide(None, READ) == 401 and decide(None, None) == 0 and enrolled(None) is None


def test_a_factory_token_is_bound_to_its_factory_and_its_capabilities() -> None:
    f1 = enrolled({"tokenId": "0123456789ab", "scope": "factory", "factoryId": "f1", "capabilities": ["linux"]})
    assert f1 is not None
    body, why = bind_to_factory(f1, "renew", b'{"factoryId": "f2", "leaseEpoch": 1}')
    assert why is not None and "'f2'" in why and "'f1'" in why
    body, why = bind_to_factory(f1, "claim", b'{"factoryId": "f1", "capabilities": ["gpu", "linux"]}')
    assert why is None and json.loads(body)["capabilities"] == ["linux"]
    assert bind_to_factory(f1, "claim", b"{broken") == (b"{broken", None)  # the dispatcher answers 400
    assert bind_to_factory(f1, "reap", b"{}") == (b"{}", None)

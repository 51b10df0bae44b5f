"""Enrolled credentials: factory tokens and people's scoped tokens, kept in the hot document (issue #19).

Everything lives under one top-level key of the hot document,
``hot["credentials"]``, so every store (file, PostgreSQL, memory) keeps it
without a schema of its own:

- ``factories``: factory id -> {capabilities, created, revoked}
- ``tokens``: token id -> {hash, scope, factoryId | name, created}

A token reads ``aq<kind>_<token id>_<secret>`` (kind ``f`` for a factory,
``t`` for a person or CI job); the secret is 32 random bytes. Only the
SHA-256 of the whole token is stored, so the state (a backup, a copied
directory) gives no one a working token; the token id names a token in
``list``, ``revoke`` and the event log without revealing it.

The functions here work on an operation's ``Ctx``; the lease rule of a
revocation (fencing the factory's live leases) is the core's.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from agent_queue.errors import BadInput, NotFound
from agent_queue.timeutil import to_rfc3339
from coordinator_stub.records import Ctx

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FACTORY_SCOPE = "factory"
PERSON_SCOPES = ("submit", "read", "metrics", "admin")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CAP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def token_id_of(token: str) -> str | None:
    """The public id inside a presented token (``aqf_<id>_...``), or None when it is not an enrolled token."""
    parts = token.split("_", 2)
    if len(parts) == 3 and parts[0] in ("aqf", "aqt") and re.fullmatch(r"[0-9a-f]{12}", parts[1]):
        return parts[1]
    return None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _creds(c: Ctx) -> dict[str, Any]:
    creds: dict[str, Any] = c.tx.hot.setdefault("credentials", {})
    creds.setdefault("factories", {})
    creds.setdefault("tokens", {})
    return creds


def _new_token(c: Ctx, kind: str, entry: dict[str, Any]) -> str:
    creds = _creds(c)
    token_id = secrets.token_hex(6)
    while token_id in creds["tokens"]:
        token_id = secrets.token_hex(6)
    token = f"aq{kind}_{token_id}_{secrets.token_urlsafe(32)}"
    creds["tokens"][token_id] = {**entry, "hash": digest(token), "created": c.now}
    c.ev["tokenId"] = token_id
    c.tx.touch()
    return token


def _factory(c: Ctx, factory_id: str) -> dict[str, Any]:
    rec: dict[str, Any] | None = _creds(c)["factories"].get(factory_id)
    if rec is None or rec.get("revoked") is not None:
        raise NotFound(f"factory {factory_id}: not enrolled" + (" (revoked)" if rec else ""))
    return rec


def add_factory(c: Ctx, factory_id: str, capabilities: list[str]) -> str:
    """Enrol a factory (or re-enrol a revoked one); its first token, shown once."""
    if not _ID_RE.fullmatch(factory_id):
        raise BadInput(f"factory id: {factory_id[:40]!r} is not valid ([A-Za-z0-9._-], 1-128 chars)")
    for cap in capabilities:
        if not _CAP_RE.fullmatch(cap):
            raise BadInput(f"--capability: {cap[:40]!r} is not valid ([A-Za-z0-9._:-], 1-64 chars)")
    factories = _creds(c)["factories"]
    if factory_id in factories and factories[factory_id].get("revoked") is None:
        raise BadInput(f"factory {factory_id}: already enrolled (use rotate for another token)")
    factories[factory_id] = {"capabilities": sorted(set(capabilities)), "created": c.now, "revoked": None}
    return _new_token(c, "f", {"scope": FACTORY_SCOPE, "factoryId": factory_id})


def rotate_factory(c: Ctx, factory_id: str) -> str:
    """Another token for an enrolled factory; the old ones keep working until revoked by token id."""
    _factory(c, factory_id)
    return _new_token(c, "f", {"scope": FACTORY_SCOPE, "factoryId": factory_id})


def revoke_factory(c: Ctx, factory_id: str) -> list[str]:
    """Mark the factory revoked and drop its tokens; the ids of the tokens dropped."""
    rec = _factory(c, factory_id)
    rec["revoked"] = c.now
    tokens = _creds(c)["tokens"]
    gone = sorted(t for t, e in tokens.items() if e.get("factoryId") == factory_id)
    for token_id in gone:
        del tokens[token_id]
    c.tx.touch()
    return gone


def add_token(c: Ctx, scope: str, name: str) -> str:
    if scope not in PERSON_SCOPES:
        raise BadInput(f"--scope: {scope!r} is not one of {', '.join(PERSON_SCOPES)}")
    if not name.strip() or len(name) > 128:
        raise BadInput("--name: must be 1-128 characters")
    return _new_token(c, "t", {"scope": scope, "name": name})


def revoke_token(c: Ctx, token_id: str) -> dict[str, Any]:
    entry: dict[str, Any] | None = _creds(c)["tokens"].pop(token_id, None)
    if entry is None:
        raise NotFound(f"token {token_id}: no such token")
    c.tx.touch()
    return {k: v for k, v in entry.items() if k != "hash"}


def listing(c: Ctx) -> dict[str, Any]:
    """Factories and people's tokens, with token ids; never a token nor its hash."""
    creds = c.tx.hot.get("credentials") or {"factories": {}, "tokens": {}}
    seen = c.tx.hot.get("factories", {})
    by_factory: dict[str, list[str]] = {}
    people = []
    for token_id, e in sorted(creds["tokens"].items()):
        if e["scope"] == FACTORY_SCOPE:
            by_factory.setdefault(e["factoryId"], []).append(token_id)
        else:
            people.append({"tokenId": token_id, "scope": e["scope"], "name": e["name"],
                           "created": to_rfc3339(e["created"])})
    factories = []
    for fid, f in sorted(creds["factories"].items()):
        last = seen.get(fid)
        factories.append({"factoryId": fid, "capabilities": f["capabilities"], "created": to_rfc3339(f["created"]),
                          "lastSeen": to_rfc3339(last) if last is not None else None,
                          "revoked": to_rfc3339(f["revoked"]) if f.get("revoked") is not None else None,
                          "tokenIds": by_factory.get(fid, [])})
    return {"factories": factories, "tokens": people}


def identify(c: Ctx, token: str) -> dict[str, Any] | None:
    """Who an enrolled token is: {tokenId, scope, factoryId?, capabilities?}, or None (unknown or revoked)."""
    token_id = token_id_of(token)
    entry = _live_entry(c, token_id) if token_id is not None else None
    if entry is None or not hmac.compare_digest(entry["hash"], digest(token)):
        return None
    who: dict[str, Any] = {"tokenId": token_id, "scope": entry["scope"]}
    if entry["scope"] == FACTORY_SCOPE:
        who.update(factoryId=entry["factoryId"],
                   capabilities=c.tx.hot["credentials"]["factories"][entry["factoryId"]]["capabilities"])
    return who


def live(c: Ctx, token_id: str) -> bool:
    """Whether the token ``token_id`` still works (not revoked, nor its factory): a cheap check by id."""
    return _live_entry(c, token_id) is not None


def _live_entry(c: Ctx, token_id: str) -> dict[str, Any] | None:
    creds = c.tx.hot.get("credentials")
    entry: dict[str, Any] | None = creds["tokens"].get(token_id) if creds else None
    if entry is not None and entry["scope"] == FACTORY_SCOPE:
        f = creds["factories"].get(entry["factoryId"]) if creds else None
        if f is None or f.get("revoked") is not None:
            return None
    return entry

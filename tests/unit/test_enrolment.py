"""Enrolment in the core (issue #19), on MemoryStore and PostgreSQL: tokens, hashes only, revocation fences."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_queue.errors import BadInput, NotFound, NotLeased
from coordinator_stub.core import Coordinator
from coordinator_stub.enrolment import digest, token_id_of
from coordinator_stub.stores.memory import MemoryStore
from tests.unit.test_coordinator import TTL, Clock, job


@pytest.fixture
def coord(contract_store: MemoryStore) -> Coordinator:
    return Coordinator(contract_store, Clock(), TTL)


def test_factory_token_identifies_its_factory_and_only_its_hash_is_kept(coord: Coordinator) -> None:
    token = coord.factory_add("f1", ["gpu", "linux"])
    assert token.startswith("aqf_") and len(token) > 50
    who = coord.identify(token)
    assert who == {"tokenId": token_id_of(token), "scope": "factory", "factoryId": "f1",
                   "capabilities": ["gpu", "linux"]}
    listed = json.dumps(coord.credentials())
    assert token not in listed and digest(token) not in listed
    assert coord.identify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert coord.identify("aqf_000000000000_nope") is None


def test_listing_names_factories_and_token_ids(coord: Coordinator) -> None:
    token = coord.factory_add("f1", ["gpu"])
    coord.claim("f1", ["gpu"])
    (f,) = coord.credentials()["factories"]
    assert f["factoryId"] == "f1" and f["capabilities"] == ["gpu"] and f["tokenIds"] == [token_id_of(token)]
    assert f["lastSeen"] is not None and f["revoked"] is None


def test_rotate_adds_a_second_token_and_revoking_the_old_keeps_the_new(coord: Coordinator) -> None:
    old = coord.factory_add("f1", [])
    new = coord.factory_rotate("f1")
    assert coord.identify(old) is not None and coord.identify(new) is not None
    coord.token_revoke(str(token_id_of(old)))
    assert coord.identify(old) is None
    assert coord.identify(new) is not None and coord.identify(new)["factoryId"] == "f1"  # type: ignore[index]


def test_revoke_stops_tokens_and_fences_live_leases_without_counting_the_attempt(coord: Coordinator) -> None:
    token = coord.factory_add("f1", [])
    coord.enqueue(job("a"))
    lease = coord.claim("f1", [])
    assert lease is not None
    epoch = lease["lease"]["leaseEpoch"]
    out = coord.factory_revoke("f1")
    assert out["fenced"] == [{"jobId": "a", "leaseEpoch": epoch}]
    assert coord.identify(token) is None
    meta = coord.get_job("a")["meta"]
    assert meta["state"] == "queued" and meta["attempts"] == 0
    with pytest.raises(NotLeased):
        coord.report("a", "f1", epoch, "shipped", {})
    again = coord.claim("f2", [])
    assert again is not None and again["lease"]["leaseEpoch"] > epoch
    with pytest.raises(NotFound):
        coord.factory_rotate("f1")


def test_people_tokens_have_a_scope_and_revoke_by_id(coord: Coordinator) -> None:
    token = coord.token_add("submit", "ci")
    assert token.startswith("aqt_")
    assert coord.identify(token) == {"tokenId": token_id_of(token), "scope": "submit"}
    assert [t["name"] for t in coord.credentials()["tokens"]] == ["ci"]
    coord.token_revoke(str(token_id_of(token)))
    assert coord.identify(token) is None
    with pytest.raises(NotFound):
        coord.token_revoke(str(token_id_of(token)))


@pytest.mark.parametrize("call", [
    lambda c: c.token_add("factory", "x"), lambda c: c.token_add("root", "x"),
    lambda c: c.factory_add("../x", []), lambda c: c.factory_add("f", ["a b"]),
])
def test_bad_enrolment_input_is_refused(coord: Coordinator, call: Any) -> None:
    with pytest.raises(BadInput):
        call(coord)
    assert coord.credentials() == {"factories": [], "tokens": []}


def test_enrolling_twice_is_refused(coord: Coordinator) -> None:
    coord.factory_add("f1", [])
    with pytest.raises(BadInput):
        coord.factory_add("f1", [])

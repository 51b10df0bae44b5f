"""Held claims (``waitS``) against a real ``serve``: what wakes them, when they give up, how they stop.

The server's ``--claim-recheck`` is far longer than any test waits, so a held
claim that comes back with a job was answered by the wake-up, not by the
periodic re-check; each test waits for the claim to be held (``aq_held_claims``
in /metrics) before it does what should wake it.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.test_stub_http import check
from tests.stubutil import RunningStub, running_stub

TOKEN = "claim-wait-token"
NEVER = "600"  # --claim-recheck: no held claim is re-checked within a test


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[RunningStub]:
    with running_stub(tmp_path / "coord", token=TOKEN, lease_ttl_s=30,
                      extra_args=["--claim-recheck", NEVER, "--grace", "30"]) as s:
        yield s


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as p:
        yield p


def post(stub: RunningStub, path: str, body: Any = None, timeout: float = 30) -> requests.Response:
    return requests.post(stub.url + "/v1/fleet" + path, json=body, headers=stub.headers(), timeout=timeout)


def held(stub: RunningStub) -> int:
    text = requests.get(stub.url + "/metrics", headers=stub.headers(), timeout=30).text
    line = next(ln for ln in text.splitlines() if ln.startswith("aq_held_claims "))
    return int(float(line.split()[1]))


def hold(stub: RunningStub, pool: concurrent.futures.ThreadPoolExecutor, factory: str = "f2",
         wait_s: float = 30) -> concurrent.futures.Future[requests.Response]:
    """A claim with ``waitS`` from another thread, returned once the server holds it."""
    before = held(stub)
    answer = pool.submit(post, stub, "/claim", {"factoryId": factory, "waitS": wait_s}, 60)
    while held(stub) == before:
        assert not answer.done(), answer.result().text
        time.sleep(0.01)
    return answer


def test_healthz_advertises_the_longest_hold(stub: RunningStub) -> None:
    body = check(requests.get(stub.url + "/v1/fleet/healthz", timeout=30), 200)
    assert body["features"] == {"claimWaitS": 60}


def test_a_held_claim_is_answered_by_an_enqueue(stub: RunningStub,
                                                pool: concurrent.futures.ThreadPoolExecutor) -> None:
    answer = hold(stub, pool)
    check(post(stub, "/jobs", {"id": "w1", "command": ["true"]}), 201)
    got = check(answer.result(timeout=25), 200)  # waitS is 30, the re-check 600: only the wake-up answers in time
    assert got["job"]["id"] == "w1" and got["lease"]["factoryId"] == "f2"
    assert held(stub) == 0


def test_nothing_claimable_answers_204_after_wait(stub: RunningStub) -> None:
    check(post(stub, "/claim", {"factoryId": "f1", "waitS": 0.2}), 204)
    check(post(stub, "/claim", {"factoryId": "f1", "waitS": 0}), 204)


@pytest.mark.parametrize("wait", [-1, 61, "5", True, None, [1]])
def test_a_bad_wait_is_refused(stub: RunningStub, wait: Any) -> None:
    body = check(post(stub, "/claim", {"factoryId": "f1", "waitS": wait}), 400)
    assert body["error"]["code"] == "bad_input" and "waitS" in body["error"]["message"]


def test_a_claim_nested_too_deep_for_the_parser_is_a_400_not_a_500(stub: RunningStub) -> None:
    """The hold reads waitS before the dispatcher sees the body: a RecursionError there must not become a 500."""
    deep = b'{"factoryId": "f1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = requests.post(stub.url + "/v1/fleet/claim", data=deep, timeout=30,
                           headers={**stub.headers(), "Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text  # 200 kB: under the body bound, so the parser meets it
    assert answer.json()["error"]["code"] == "bad_input"


def test_a_release_wakes_a_held_claim(stub: RunningStub, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    check(post(stub, "/jobs", {"id": "r1", "command": ["true"]}), 201)
    lease = check(post(stub, "/claim", {"factoryId": "f1"}), 200)["lease"]
    answer = hold(stub, pool)
    check(post(stub, "/jobs/r1/release", {"factoryId": "f1", "leaseEpoch": lease["leaseEpoch"],
                                          "countAttempt": False}), 200)
    assert check(answer.result(timeout=25), 200)["job"]["id"] == "r1"


def test_a_requeue_wakes_a_held_claim(stub: RunningStub, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    check(post(stub, "/jobs", {"id": "q1", "command": ["true"], "budget": {"maxAttempts": 1}}), 201)
    lease = check(post(stub, "/claim", {"factoryId": "f1"}), 200)["lease"]
    check(post(stub, "/jobs/q1/report", {"factoryId": "f1", "leaseEpoch": lease["leaseEpoch"],
                                         "outcome": "quarantined"}), 200)
    answer = hold(stub, pool)
    check(post(stub, "/jobs/q1/requeue"), 200)
    assert check(answer.result(timeout=25), 200)["job"]["id"] == "q1"


def test_a_shipped_dependency_wakes_a_held_claim(stub: RunningStub,
                                                  pool: concurrent.futures.ThreadPoolExecutor) -> None:
    epic = {"id": "ep", "kind": "composite", "verify": ["true"],
            "children": [{"id": "a", "command": ["true"]}, {"id": "b", "command": ["true"], "dependsOn": ["a"]}]}
    check(post(stub, "/jobs", epic), 201)
    got = check(post(stub, "/claim", {"factoryId": "f1"}), 200)
    assert got["job"]["id"] == "a"
    answer = hold(stub, pool)  # b waits for a
    check(post(stub, "/jobs/a/report", {"factoryId": "f1", "leaseEpoch": got["lease"]["leaseEpoch"],
                                        "outcome": "shipped"}), 200)
    assert check(answer.result(timeout=25), 200)["job"]["id"] == "b"


def test_a_stopping_server_answers_held_claims_at_once(stub: RunningStub,
                                                       pool: concurrent.futures.ThreadPoolExecutor) -> None:
    answer = hold(stub, pool, wait_s=60)
    stub.proc.send_signal(signal.SIGTERM)
    assert answer.result(timeout=20).status_code == 204  # the grace is 30 s, waitS 60: only the stop answers
    assert stub.proc.wait(timeout=20) == 0


def test_max_claim_wait_zero_never_holds(tmp_path: Path) -> None:
    with running_stub(tmp_path / "coord", token=TOKEN, extra_args=["--max-claim-wait", "0"]) as stub:
        assert check(requests.get(stub.url + "/v1/fleet/healthz", timeout=30), 200)["features"] == {"claimWaitS": 0}
        check(post(stub, "/claim", {"factoryId": "f1", "waitS": 60}, timeout=20), 204)


@pytest.mark.postgres
def test_a_claim_held_on_one_replica_is_woken_by_an_enqueue_on_another(
        pg_url: str, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    with running_stub(pg_url, token=TOKEN, extra_args=["--claim-recheck", NEVER]) as a, \
            running_stub(pg_url, token=TOKEN, extra_args=["--claim-recheck", NEVER]) as b:
        answer = hold(a, pool)
        check(post(b, "/jobs", {"id": "x1", "command": ["true"]}), 201)
        got = check(answer.result(timeout=25), 200)  # only B's NOTIFY reaches A in time (its re-check is 600 s)
        assert got["job"]["id"] == "x1"

"""ShadowProbe against fake coordinator clients: verdicts, isolation from real work, every failure non-fatal."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_queue.errors import CoordinatorError, Fenced, TransportError
from agent_queue.fleet.shadow import RELEASE_REASON, ShadowProbe, shadow_log_path
from agent_queue.jobs import Job, Lease

NOW = 1_700_000_000.0
LOGGER = "agent_queue.fleet.shadow"


def job(job_id: str) -> Job:
    return Job.from_dict({"id": job_id, "command": ["true"]})


def lease(job_id: str, factory: str = "f1-shadow") -> Lease:
    return Lease(job_id=job_id, factory_id=factory, epoch=1, expires_at=NOW + 60, ttl_s=60)


class FakeClient:
    """Records every call; each method's behaviour is a value, an exception, or a callable."""

    def __init__(self, claim: Any = None, release: Any = None, report: Any = None) -> None:
        self.on_claim, self.on_release, self.on_report = claim, release, report
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.lock = threading.Lock()

    def _do(self, name: str, behaviour: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self.lock:
            self.calls.append((name, args, kwargs))
        if isinstance(behaviour, BaseException):
            raise behaviour
        if callable(behaviour):
            return behaviour()
        return behaviour

    def claim(self, dry_run: bool = False, factory_id: str | None = None) -> Any:
        return self._do("claim", self.on_claim, (), {"dry_run": dry_run, "factory_id": factory_id})

    def release(self, lease: Lease, reason: str, retry: bool = True, count_attempt: bool = True) -> Any:
        return self._do("release", self.on_release, (lease, reason), {"retry": retry, "count_attempt": count_attempt})

    def shadow_report(self, verdict: str, local_job_id: str | None, coord_job_id: str | None, factory_id: str) -> Any:
        return self._do("shadow_report", self.on_report, (verdict, local_job_id, coord_job_id, factory_id), {})

    def names(self) -> list[str]:
        with self.lock:
            return [c[0] for c in self.calls]

    def call(self, name: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        with self.lock:
            matches = [(a, k) for n, a, k in self.calls if n == name]
        assert len(matches) == 1, f"{name}: {len(matches)} calls"
        return matches[0]


class Gate:
    """A coordinator call that hangs until the test opens the gate, then returns ``result``."""

    def __init__(self, result: Any = None) -> None:
        self.result = result
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.finished = threading.Event()

    def __call__(self) -> Any:
        self.entered.set()
        self.opened.wait(30)
        self.finished.set()
        return self.result


@pytest.fixture
def gates() -> Iterator[list[Gate]]:
    """Every gate a test creates is opened at teardown, so no worker thread outlives the test."""
    made: list[Gate] = []
    yield made
    for gate in made:
        gate.opened.set()


def probe(client: FakeClient, root: Path, **kw: Any) -> ShadowProbe:
    kw.setdefault("timeout_s", 5.0)
    return ShadowProbe(client, "f1", shadow_log_path(root), clock=lambda: NOW, **kw)


def lines(root: Path) -> list[dict[str, Any]]:
    path = shadow_log_path(root)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.005)


# ---- verdicts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "coord", "verdict"),
    [("a", "a", "AGREE"), ("a", "b", "DIVERGE"), ("a", None, "COORD_EMPTY"), (None, "b", "LOCAL_EMPTY")],
)
def test_verdict_is_logged_and_reported(tmp_path: Path, local: str | None, coord: str | None, verdict: str) -> None:
    client = FakeClient(claim=None if coord is None else (job(coord), None))
    assert probe(client, tmp_path).observe(7, local) == verdict

    args, kwargs = client.call("claim")
    assert kwargs == {"dry_run": True, "factory_id": "f1-shadow"}
    assert client.call("shadow_report")[0] == (verdict, local, coord, "f1-shadow")
    assert client.names() == ["claim", "shadow_report"]  # no release: nothing was leased
    assert lines(tmp_path) == [
        {"time": "2023-11-14T22:13:20.000Z", "iteration": 7, "factoryId": "f1-shadow", "verdict": verdict,
         "localJobId": local, "coordJobId": coord}
    ]


def test_idle_is_not_logged_or_reported_by_default(tmp_path: Path) -> None:
    client = FakeClient(claim=None)
    assert probe(client, tmp_path).observe(1, None) == "IDLE"
    assert client.names() == ["claim"]
    assert not shadow_log_path(tmp_path).exists()


def test_idle_is_logged_and_reported_with_log_idle(tmp_path: Path) -> None:
    client = FakeClient(claim=None)
    assert probe(client, tmp_path, log_idle=True).observe(1, None) == "IDLE"
    assert client.call("shadow_report")[0] == ("IDLE", None, None, "f1-shadow")
    assert [(r["verdict"], r["localJobId"], r["coordJobId"]) for r in lines(tmp_path)] == [("IDLE", None, None)]


# ---- isolation from real work --------------------------------------------------------------


def test_a_real_lease_from_a_dry_run_ignoring_coordinator_is_released_at_once(tmp_path: Path) -> None:
    real = lease("b")
    client = FakeClient(claim=(job("b"), real), release={"job": {"id": "b", "state": "queued"}})
    p = probe(client, tmp_path)
    assert p.observe(3, "a") == "DIVERGE"

    args, kwargs = client.call("release")
    assert args == (real, RELEASE_REASON)
    assert kwargs == {"retry": True, "count_attempt": False}  # an accidental lease must not burn an attempt
    assert client.names() == ["claim", "release", "shadow_report"]
    assert p.errors.counts() == {"dry_run_ignored": 1}
    # never materialized: the only thing shadow wrote under the root is its log
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [".state", ".state/fleet-shadow.log"]


def test_a_failed_release_is_counted_and_the_verdict_still_stands(tmp_path: Path) -> None:
    client = FakeClient(claim=(job("a"), lease("a")), release=Fenced("stale epoch"))
    p = probe(client, tmp_path)
    assert p.observe(1, "a") == "AGREE"
    assert p.errors.counts() == {"dry_run_ignored": 1, "release.fenced": 1}
    assert [r["verdict"] for r in lines(tmp_path)] == ["AGREE"]


def test_the_report_answer_is_ignored(tmp_path: Path) -> None:
    # a coordinator that answers the shadow report with an "instruction" gets no reaction
    client = FakeClient(claim=(job("b"), None), report={"action": "ship", "jobId": "b"})
    p = probe(client, tmp_path)
    assert p.observe(1, "a") == "DIVERGE"
    assert client.names() == ["claim", "shadow_report"]
    assert p.errors.total() == 0


# ---- failures are non-fatal, counted, logged once per kind ---------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        (CoordinatorError("HTTP 503 from coordinator", status=503), "claim.coordinator_error"),
        (TransportError("connection refused"), "claim.transport_error"),
        ("<html>502 Bad Gateway</html>", "claim.garbage"),
        (({"id": "a"}, None), "claim.garbage"),
        ((job("a"), {"leaseEpoch": 1}), "claim.garbage"),
        (KeyError("bug in the client"), "claim.unexpected"),
        (ZeroDivisionError("bug"), "claim.unexpected"),
    ],
)
def test_claim_failures_are_counted_logged_once_and_never_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, behaviour: Any, kind: str
) -> None:
    client = FakeClient(claim=behaviour)
    p = probe(client, tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        results = [p.observe(i, "a") for i in range(5)]
    assert results == [None] * 5
    assert p.errors.counts() == {kind: 5}
    assert len([r for r in caplog.records if kind in r.getMessage()]) == 1
    assert client.names() == ["claim"] * 5  # no report for an iteration without a verdict
    assert [(r["iteration"], r["error"]) for r in lines(tmp_path)] == [(i, kind) for i in range(5)]
    assert all("verdict" not in r for r in lines(tmp_path))


def test_report_failure_keeps_the_verdict(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = FakeClient(claim=(job("a"), None), report=CoordinatorError("500", status=500))
    p = probe(client, tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert [p.observe(i, "a") for i in range(3)] == ["AGREE"] * 3
    assert p.errors.counts() == {"report.coordinator_error": 3}
    assert len(caplog.records) == 1
    assert [r["verdict"] for r in lines(tmp_path)] == ["AGREE"] * 3


def test_different_kinds_are_each_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = FakeClient()
    p = probe(client, tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for behaviour in [TransportError("x"), TransportError("y"), RuntimeError("z"), RuntimeError("w")]:
            client.on_claim = behaviour
            p.observe(1, None)
    assert p.errors.counts() == {"claim.transport_error": 2, "claim.unexpected": 2}
    assert len(caplog.records) == 2


def test_unwritable_log_is_counted_not_raised(tmp_path: Path) -> None:
    (tmp_path / ".state").write_text("a file where the state dir should be")
    p = probe(FakeClient(claim=(job("a"), None)), tmp_path)
    assert p.observe(1, "a") == "AGREE"
    assert p.errors.counts() == {"log_write": 1}


# ---- a hung coordinator cannot hold the real job -----------------------------------------------


def test_hung_claim_is_abandoned_and_the_real_path_continues(tmp_path: Path, gates: list[Gate]) -> None:
    gate = Gate(result=(job("b"), lease("b")))  # it will eventually hand out a real lease
    gates.append(gate)
    client = FakeClient(claim=gate)
    p = probe(client, tmp_path, timeout_s=0.2)

    assert p.observe(1, "a") is None
    # observe came back while the coordinator call was still hanging: the real job was not held
    assert gate.entered.is_set() and not gate.finished.is_set()
    assert p.errors.counts() == {"claim.timeout": 1}

    # while the abandoned call still hangs, the next iteration skips instead of piling up threads
    assert p.observe(2, "a") is None
    assert client.names() == ["claim"]
    assert p.errors.counts() == {"claim.timeout": 1, "busy": 1}

    # when the hung call finally returns a real lease, it is still released, but no report is sent
    gate.opened.set()
    wait_for(lambda: "release" in client.names(), "the late lease to be released")
    assert p._worker is not None
    p._worker.join(10)
    assert client.names() == ["claim", "release"]
    assert [(r["iteration"], r.get("error")) for r in lines(tmp_path)] == [(1, "claim.timeout"), (2, "busy")]

    # and shadow recovers on the next iteration
    client.on_claim = (job("a"), None)
    assert p.observe(3, "a") == "AGREE"


def test_hung_report_is_abandoned_after_the_verdict_is_logged(tmp_path: Path, gates: list[Gate]) -> None:
    gate = Gate()
    gates.append(gate)
    client = FakeClient(claim=(job("a"), None), report=gate)
    p = probe(client, tmp_path, timeout_s=0.5)  # the claim itself must answer within it, even on a busy box
    assert p.observe(1, "a") == "AGREE"
    assert gate.entered.is_set() and not gate.finished.is_set()
    assert p.errors.counts() == {"report.timeout": 1}
    assert [r["verdict"] for r in lines(tmp_path)] == ["AGREE"]


def test_observe_never_raises_even_on_an_internal_bug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: Any, **k: Any) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", broken)
    p = probe(FakeClient(claim=None), tmp_path)
    assert p.observe(1, "a") is None
    assert p.errors.counts() == {"unexpected": 1}

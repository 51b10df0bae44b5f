"""Heartbeat: renew cadence, immediate loss on fencing, loss on local expiry during an outage.

Most tests drive ``tick()`` with a fake clock (deterministic, no sleeping);
two run the real thread against a fake client and poll for the outcome.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from agent_queue.errors import CoordinatorError, Fenced, NotFound, NotLeased, TransportError
from agent_queue.fleet.heartbeat import Heartbeat, safety_margin
from agent_queue.jobs import Lease

TTL = 30.0
LEASE = Lease("j1", "f1", 4, 1000.0 + TTL, TTL)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeClient:
    """renew() answers from a script: an exception to raise, or None for success (expiry + ttl)."""

    def __init__(self, *script: Exception | None, clock: Clock | None = None, cost_s: float = 0.0) -> None:
        self.script = list(script)
        self.calls: list[tuple[Lease, float | None]] = []
        self.clock = clock
        self.cost_s = cost_s  # how long each renew takes on the fake clock
        self.renewed = threading.Event()

    def renew(self, lease: Lease, *, deadline_s: float | None = None) -> Lease:
        self.calls.append((lease, deadline_s))
        if self.clock is not None:
            self.clock.now += self.cost_s
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        self.renewed.set()
        return replace(lease, expires_at=lease.expires_at + lease.ttl_s)


class Lost:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.event = threading.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.event.set()


def make(client: FakeClient, clock: Clock, **kw: float) -> tuple[Heartbeat, Lost]:
    lost = Lost()
    return Heartbeat(client, LEASE, lost, clock=clock, **kw), lost  # type: ignore[arg-type]


def test_renews_every_third_of_ttl_and_tracks_latest_lease() -> None:
    clock = Clock()
    client = FakeClient()
    hb, lost = make(client, clock)
    assert hb.interval_s == pytest.approx(TTL / 3)
    for i in range(1, 4):
        clock.now += hb.interval_s
        assert hb.tick() == pytest.approx(TTL / 3)
        assert hb.current_lease.expires_at == LEASE.expires_at + i * TTL
        assert hb.current_lease.epoch == LEASE.epoch
    assert len(client.calls) == 3 and lost.reasons == []


def test_custom_interval_is_used_but_never_beyond_half_the_validity() -> None:
    clock = Clock()
    assert make(FakeClient(), clock, interval_s=2.0)[0].interval_s == 2.0
    assert make(FakeClient(), clock, interval_s=1000.0)[0].interval_s == pytest.approx((TTL - safety_margin(TTL)) / 2)


@pytest.mark.parametrize("error", [Fenced("epoch 5 is current"), NotLeased("job is queued"), NotFound("gone")])
def test_fenced_calls_on_lost_at_once_and_stops(error: Exception) -> None:
    clock = Clock()
    client = FakeClient(error)
    hb, lost = make(client, clock)
    assert hb.tick() is None
    assert len(lost.reasons) == 1 and lost.reasons[0].startswith("fenced: ")
    assert hb.lost
    assert hb.tick() is None
    assert len(client.calls) == 1 and len(lost.reasons) == 1


def test_outage_keeps_retrying_and_declares_loss_only_at_local_expiry() -> None:
    clock = Clock()
    start = clock.now
    errors = [TransportError("refused"), CoordinatorError("busy", 503)] * 100
    client = FakeClient(*errors, clock=clock, cost_s=0.5)
    hb, lost = make(client, clock)
    local_expiry = start + TTL - safety_margin(TTL)
    delay = hb.interval_s
    while True:
        clock.now += delay
        before = clock.now
        next_delay = hb.tick()
        if next_delay is None:
            break
        assert lost.reasons == []
        assert clock.now < local_expiry
        # Each call is bounded by the validity left, so it cannot overrun the expiry.
        assert client.calls[-1][1] is not None and client.calls[-1][1] <= local_expiry - before + 1e-9
        delay = next_delay
    assert lost.reasons == ["lease expired: coordinator unreachable"]
    assert clock.now >= local_expiry
    assert len(client.calls) >= 4  # retried faster than the renew interval while the lease was still valid


def test_a_successful_renew_after_errors_restores_the_full_validity() -> None:
    clock = Clock()
    client = FakeClient(TransportError("blip"), TransportError("blip"), None, clock=clock)
    hb, lost = make(client, clock)
    for _ in range(3):
        clock.now += 5.0
        hb.tick()
    renewed_at = clock.now
    client.script = [TransportError("down")] * 100
    clock.now = renewed_at + TTL - safety_margin(TTL) - 0.01
    assert hb.tick() is not None
    clock.now = renewed_at + TTL - safety_margin(TTL)
    assert hb.tick() is None
    assert lost.reasons == ["lease expired: coordinator unreachable"]


def test_unexpected_exception_in_renew_does_not_end_the_heartbeat() -> None:
    clock = Clock()
    hb, lost = make(FakeClient(RuntimeError("bug"), None), clock)
    assert hb.tick() is not None
    assert hb.tick() == pytest.approx(hb.interval_s)
    assert lost.reasons == []


def test_stopped_heartbeat_never_reports_loss() -> None:
    clock = Clock()
    hb, lost = make(FakeClient(Fenced("late")), clock)
    hb.stop()
    assert hb.tick() is None
    assert lost.reasons == []


def test_thread_renews_until_stopped() -> None:
    client = FakeClient()
    lost = Lost()
    with Heartbeat(client, LEASE, lost, interval_s=0.05) as hb:
        deadline = time.monotonic() + 10
        while len(client.calls) < 3 and time.monotonic() < deadline:
            client.renewed.wait(0.1)
            client.renewed.clear()
        assert len(client.calls) >= 3
    assert hb._thread is not None and not hb._thread.is_alive()
    calls_after_stop = len(client.calls)
    assert lost.reasons == []
    assert hb.current_lease.expires_at == LEASE.expires_at + calls_after_stop * TTL


def test_thread_reports_fencing_through_on_lost() -> None:
    client = FakeClient(Fenced("epoch 5 is current"))
    lost = Lost()
    with Heartbeat(client, LEASE, lost, interval_s=0.05) as hb:
        assert lost.event.wait(10)
        assert hb._thread is not None
        hb._thread.join(10)
        assert not hb._thread.is_alive()
    assert lost.reasons == ["fenced: epoch 5 is current"]


def test_stop_interrupts_a_long_wait() -> None:
    client = FakeClient()
    hb = Heartbeat(client, replace(LEASE, ttl_s=3600.0), Lost()).start()
    hb.stop()
    assert hb._thread is not None and not hb._thread.is_alive()
    assert client.calls == []


def test_after_a_pause_past_expiry_the_coordinators_409_decides() -> None:
    """A frozen (SIGSTOP) factory wakes past its lease: it asks once and is fenced by the coordinator."""
    clock = Clock()
    client = FakeClient(Fenced("lease held by f2 at epoch 5"))
    hb, lost = make(client, clock)
    clock.now += TTL * 3  # the whole process was paused
    assert hb.tick() is None
    assert len(client.calls) == 1 and client.calls[0][1] is not None and client.calls[0][1] <= 2.0
    assert lost.reasons == ["fenced: lease held by f2 at epoch 5"]


def test_after_a_pause_past_expiry_an_unreachable_coordinator_means_lost() -> None:
    clock = Clock()
    client = FakeClient(TransportError("connection refused"))
    hb, lost = make(client, clock)
    clock.now += TTL * 3
    assert hb.tick() is None
    assert lost.reasons == ["lease expired: coordinator unreachable"]


def test_after_a_pause_past_expiry_a_renewal_the_coordinator_grants_keeps_the_lease() -> None:
    """The coordinator, not the local clock, is the authority while it can be asked."""
    clock = Clock()
    client = FakeClient()
    hb, lost = make(client, clock)
    clock.now += TTL * 3
    assert hb.tick() == pytest.approx(hb.interval_s)
    assert lost.reasons == [] and hb.current_lease.expires_at == LEASE.expires_at + TTL

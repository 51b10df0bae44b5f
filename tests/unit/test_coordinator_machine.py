"""The lease protocol under random interleavings: a hypothesis state machine over Coordinator + MemoryStore / PgStore.

Several factories enqueue, claim, renew, release and report (also with stale
epochs and as the wrong factory) while the fake clock jumps; after every step
the five invariants of docs/fleet-api.md must hold.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from agent_queue.errors import AQError, Fenced
from coordinator_stub.core import Coordinator
from coordinator_stub.stores.memory import MemoryStore

TTL = 10.0
FACTORIES = st.sampled_from(["f1", "f2", "f3"])


class LeaseMachine(RuleBasedStateMachine):
    def new_store(self) -> Any:
        return MemoryStore()

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0
        self.store = self.new_store()
        self.coord = Coordinator(self.store, lambda: self.t, TTL)
        self.ids: list[str] = []
        self.terminal: dict[str, str] = {}
        self.last_renew: dict[str, float] = {}  # job -> time of its holder's last successful claim/renew
        self.held: list[tuple[str, str, int]] = []  # leases some factory believes it holds

    def _all(self) -> dict[str, str]:
        return {v["job"]["id"]: v["meta"]["state"] for v in self.coord.list_jobs()}

    @rule(priority=st.integers(0, 2), attempts=st.integers(1, 3))
    def enqueue(self, priority: int, attempts: int) -> None:
        job_id = f"j{len(self.ids)}"
        self.coord.enqueue({"id": job_id, "command": ["true"], "priority": priority,
                            "budget": {"maxAttempts": attempts}})
        self.ids.append(job_id)

    @rule(factory=FACTORIES)
    def claim(self, factory: str) -> None:
        view = self.coord.claim(factory, ())
        if view is not None:
            lease = view["lease"]
            self.held.append((lease["jobId"], factory, lease["leaseEpoch"]))
            self.last_renew[lease["jobId"]] = self.t

    @precondition(lambda self: self.held)
    @rule(data=st.data(), op=st.sampled_from(["renew", "release", "ship", "quarantine"]),
          wrong=st.sampled_from([None, "factory", "epoch"]))
    def act(self, data: st.DataObject, op: str, wrong: str | None) -> None:
        job_id, factory, epoch = data.draw(st.sampled_from(self.held))
        if wrong == "factory":
            factory = "intruder"
        elif wrong == "epoch":
            epoch += 7
        self.coord.reap()  # let the reaper run first so the snapshot below is what the op itself sees
        before = self.store.hot
        try:
            if op == "renew":
                self.coord.renew(job_id, factory, epoch)
                self.last_renew[job_id] = self.t
            elif op == "release":
                self.coord.release(job_id, factory, epoch, "test")
            else:
                outcome = "shipped" if op == "ship" else "quarantined"
                out = self.coord.report(job_id, factory, epoch, outcome)
                assert wrong is None
                self.terminal.setdefault(job_id, out["meta"]["state"])
        except Fenced:
            assert self.store.hot == before, "a fenced operation changed state"
        except AQError as exc:  # pragma: no cover - any other refusal is a bug here
            raise AssertionError(f"unexpected {exc!r}") from exc

    @rule(dt=st.sampled_from([1.0, TTL / 2, TTL, TTL * 2]))
    def advance(self, dt: float) -> None:
        self.t += dt

    @rule()
    def reap(self) -> None:
        self.coord.reap()

    @invariant()
    def no_double_assign_and_reclaim_within_ttl(self) -> None:
        leases: dict[str, Any] = {}
        for lease in self.coord.status()["leases"]:
            assert lease["jobId"] not in leases, "two live leases for one job"
            leases[lease["jobId"]] = lease
            assert lease["timeLeftS"] <= TTL
            assert self.t - self.last_renew.get(lease["jobId"], self.t) < TTL, "lease outlived ttl after renew"

    @invariant()
    def nothing_lost_and_terminal_stays_terminal(self) -> None:
        states = self._all()
        assert sorted(states) == sorted(self.ids)
        assert set(states.values()) <= {"queued", "leased", "shipped", "quarantined"}
        for job_id, state in self.terminal.items():
            assert states[job_id] == state
        for job_id, state in states.items():
            if state in ("shipped", "quarantined"):
                self.terminal.setdefault(job_id, state)


LeaseMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestLeaseMachine = LeaseMachine.TestCase


class PgLeaseMachine(LeaseMachine):
    """The same machine on PostgreSQL: each example starts from an emptied database."""

    url = ""

    def new_store(self) -> Any:
        from tests.pgutil import inspect_store, reset

        reset(self.url)
        return inspect_store(self.url)

    def teardown(self) -> None:
        self.store.close()


@pytest.mark.postgres
def test_lease_machine_on_postgres(pg_database: str) -> None:
    PgLeaseMachine.url = pg_database
    run_state_machine_as_test(PgLeaseMachine, settings=settings(max_examples=25, stateful_step_count=30,
                                                                deadline=None))

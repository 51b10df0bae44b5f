"""Several `coordinator-stub serve` replicas on one PostgreSQL database, real `agent-queue run --fleet` daemons.

Two replicas, three daemons spread over them, many short jobs: every job ships
exactly once, each job's epochs strictly increase, and every ship is the one
the coordinator accepted (the shipped record's epoch is that of the 200
report). The fault version runs on a throwaway cluster the test starts itself:
mid-run one replica is SIGKILLed (and started again), then the database is
crash-restarted (``pg_ctl restart -m immediate``); still every job ships
exactly once, none is lost, and nothing ships after a 409.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cli_support import wait_for
from fleet_support import Daemons, daemons, fleet_env, local_records, result_of

from tests.pgutil import Cluster, need_psycopg, reset
from tests.stubutil import RunningStub, running_stub

psycopg = need_psycopg()
pytestmark = pytest.mark.postgres
TOKEN = "pg-fleet-token"
TTL_S = 4


@pytest.fixture()
def ds() -> Iterator[Daemons]:
    with daemons() as d:
        yield d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def job(job_id: str, marker: Path) -> dict[str, Any]:
    return {"id": job_id, "command": ["sh", "-c", "sleep 0.1"], "budget": {"maxAttempts": 9},
            "ship": ["sh", "-c", f"echo {job_id} >> {shlex.quote(str(marker))}"]}


def enqueue(stub: RunningStub, spec: dict[str, Any]) -> None:
    resp = requests.post(stub.url + "/v1/fleet/jobs", json=spec, headers=stub.headers(), timeout=30)
    assert resp.status_code in (200, 201), resp.text


def shipped_count(url: str) -> int:
    with contextlib.suppress(psycopg.Error), psycopg.connect(url, connect_timeout=3) as conn:
        row = conn.execute("SELECT count(*) FROM aq_archive WHERE state = 'shipped'").fetchone()
        return int(row[0]) if row else 0
    return -1


def events(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT ev FROM aq_events ORDER BY n").fetchall()]


def check_exactly_once(url: str, ids: list[str], marker: Path, roots: list[Path]) -> None:
    """Each job shipped once, from the lease whose report the coordinator accepted; epochs strictly increase."""
    assert sorted(marker.read_text().splitlines()) == sorted(ids)  # exactly once each, none lost
    evs = events(url)
    epochs: dict[str, list[int]] = {}
    for ev in evs:
        if ev["op"] == "claim" and ev.get("status") == 200 and not ev.get("replay") and not ev.get("dryRun"):
            epochs.setdefault(ev["jobId"], []).append(ev["leaseEpoch"])
    for job_id, seen in epochs.items():
        assert seen == sorted(set(seen)), f"{job_id}: epochs {seen} do not strictly increase"
    accepted = {ev["jobId"]: ev["leaseEpoch"] for ev in evs
                if ev["op"] == "report" and ev.get("status") == 200 and ev.get("outcome") == "shipped"}
    assert sorted(accepted) == sorted(ids)
    shipped_by = {}
    for root in roots:
        for name in local_records(root, "shipped"):
            assert name not in shipped_by, f"{name} shipped by two factories"
            shipped_by[name] = result_of(root / "shipped" / name)["leaseEpoch"]
    assert shipped_by == accepted  # every ship is the accepted lease's: nothing shipped on a 409


def run_fleet(url: str, tmp_path: Path, ds: Daemons, n_jobs: int, faults: Any = None) -> None:
    marker = tmp_path / "shipped.txt"
    ports = [free_port(), free_port()]
    roots = [tmp_path / f"factory{i}" for i in range(3)]
    ids = [f"job{i:03d}" for i in range(n_jobs)]
    stack = contextlib.ExitStack()
    with stack:
        replicas = [stack.enter_context(running_stub(url, token=TOKEN, lease_ttl_s=TTL_S,
                                                     extra_args=("--port", str(p)))) for p in ports]
        for job_id in ids:
            enqueue(replicas[0], job(job_id, marker))
        for i, root in enumerate(roots):  # f0 and f2 on replica 0, f1 on replica 1
            ds.start(root, fleet_env(api=replicas[i % 2].url, token=TOKEN), factory=f"f{i}")
        if faults is not None:
            faults(replicas, ports, stack, lambda: shipped_count(url))
        wait_for(lambda: shipped_count(url) == n_jobs, "every job shipped", deadline_s=120)
        wait_for(lambda: marker.exists() and len(marker.read_text().splitlines()) >= n_jobs, "every ship hook")
        time.sleep(0.5)  # a double ship would show up here: give any straggler its chance
    check_exactly_once(url, ids, marker, roots)


def test_two_replicas_three_daemons_every_job_ships_once(pg_database: str, tmp_path: Path, ds: Daemons) -> None:
    reset(pg_database)
    run_fleet(pg_database, tmp_path, ds, 30)


def test_replica_sigkill_and_database_crash_restart_lose_nothing_and_ship_nothing_twice(
    tmp_path: Path, ds: Daemons
) -> None:
    cluster = Cluster(free_port()).start()
    try:
        from coordinator_stub.stores.pg_admin import migrate_database

        migrate_database(cluster.url)

        def faults(replicas: list[RunningStub], ports: list[int], stack: contextlib.ExitStack, shipped: Any) -> None:
            wait_for(lambda: shipped() >= 8, "a third of the jobs shipped", deadline_s=60)
            replicas[0].proc.send_signal(signal.SIGKILL)  # no shutdown: its connections just vanish
            replicas[0].proc.wait(10)
            wait_for(lambda: shipped() >= 12, "replica 1 carrying on alone", deadline_s=60)
            stack.enter_context(running_stub(cluster.url, token=TOKEN, lease_ttl_s=TTL_S,
                                             extra_args=("--port", str(ports[0]))))
            wait_for(lambda: shipped() >= 16, "both replicas serving again", deadline_s=60)
            at_crash.append(shipped())
            cluster.crash_restart()

        at_crash: list[int] = []
        run_fleet(cluster.url, tmp_path, ds, 30, faults)
        assert at_crash and at_crash[0] < 30  # the crash came mid-run
        log = (cluster.root / "log").read_text()
        assert "database system was not properly shut down; automatic recovery in progress" in log
    finally:
        ds.stop_all()
        cluster.stop()

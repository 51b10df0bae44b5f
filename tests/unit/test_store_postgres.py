"""PgStore and its commands: schema versions, atomicity, the database clock, replicas racing, copy, redaction.

The rules themselves run on PostgreSQL in test_coordinator.py, the composite and
lease-machine tests and the differential test; here is what only this store has.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from agent_queue.errors import Fenced, SchemaMismatch, StoreUnavailable
from coordinator_stub.core import Coordinator
from coordinator_stub.settings import load_settings, redact_url
from coordinator_stub.stores.file import JsonStore
from coordinator_stub.stores.pg_migrations import SCHEMA_VERSION, migrations
from tests.pgutil import admin_dsn, create_database, inspect_store, need_psycopg, with_database
from tests.stubutil import STUB_ARGV, stub_env

psycopg = need_psycopg()  # skipped with the reason where psycopg is missing (a failure under AQ_REQUIRE_PG=1)
from coordinator_stub.stores.postgres import PgStore  # noqa: E402

pytestmark = pytest.mark.postgres


def stub(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STUB_ARGV, *args], input=stdin, capture_output=True, text=True, env=stub_env(),
                          timeout=60)


def job(job_id: str, **kw: Any) -> dict[str, Any]:
    return {"id": job_id, "command": ["true"], **kw}


def test_the_schema_version_is_the_last_migration() -> None:
    assert [v for v, _, _ in migrations()] == list(range(1, SCHEMA_VERSION + 1))


def test_an_unmigrated_or_newer_database_is_refused_naming_both_versions(pg_database: str) -> None:
    with psycopg.connect(admin_dsn(), autocommit=True) as admin:
        admin.execute('DROP DATABASE IF EXISTS "aq_test_unmigrated"')
        admin.execute('CREATE DATABASE "aq_test_unmigrated"')
    try:
        url = with_database(admin_dsn(), "aq_test_unmigrated")
        needs = f"schema version 0, this coordinator-stub needs version {SCHEMA_VERSION}"
        with pytest.raises(SchemaMismatch, match=needs):
            PgStore(url)
        out = stub("--state", url, "status")
        assert out.returncode == 1
        assert out.stderr.strip().splitlines() == [
            f"coordinator-stub: database {url}: schema version 0, this coordinator-stub needs version "
            f"{SCHEMA_VERSION} (run 'coordinator-stub migrate')"]
        first = stub("--state", url, "migrate")
        assert first.returncode == 0 and "applied 001_initial.sql" in first.stdout
        again = stub("--state", url, "migrate")  # idempotent
        assert again.returncode == 0 and "applied" not in again.stdout
        assert stub("--state", url, "status").returncode == 0
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO aq_schema_version (version, name) VALUES (%s, 'from the future')",
                         (SCHEMA_VERSION + 1,))
        newer = stub("--state", url, "serve", "--port", "0")
        assert newer.returncode == 1
        assert f"schema version {SCHEMA_VERSION + 1}, this coordinator-stub needs version {SCHEMA_VERSION}" \
            in newer.stderr and "upgrade coordinator-stub" in newer.stderr
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as admin:
            admin.execute('DROP DATABASE IF EXISTS "aq_test_unmigrated" WITH (FORCE)')


def test_a_transaction_that_raises_leaves_no_trace(pg_url: str) -> None:
    store = inspect_store(pg_url)
    coord = Coordinator(store, store.clock, 30)
    coord.enqueue(job("a"))
    before = store.hot
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.hot["jobs"]["a"]["state"] = "leased"
        tx.hot["seq"] = 99
        tx.event({"op": "never"})
        tx.touch()
        raise RuntimeError("boom")
    assert store.hot == before
    assert [e["op"] for e in store.events] == ["enqueue"]
    with store.transaction() as tx:  # a change without touch() is not kept either
        tx.hot["jobs"]["a"]["state"] = "leased"
    assert store.hot == before
    store.close()


def test_the_lease_clock_is_the_databases_and_fixed_within_an_operation(pg_url: str) -> None:
    store = PgStore(pg_url)
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT extract(epoch from clock_timestamp())::float8").fetchone()
    assert row is not None
    with store.transaction():
        first = store.clock()
        assert store.clock() == first  # one reading per operation, taken with its lock
    assert first >= row[0]
    assert store.clock() >= first
    coord = Coordinator(store, store.clock, 30)
    coord.enqueue(job("a"))
    view = coord.claim("f1", ())
    assert view is not None
    with psycopg.connect(pg_url) as conn:
        rec = conn.execute("SELECT rec FROM aq_jobs WHERE id = 'a'").fetchone()
        now = conn.execute("SELECT extract(epoch from clock_timestamp())::float8").fetchone()
    assert rec is not None and now is not None
    assert rec[0]["lease"]["claimedAt"] <= now[0] < rec[0]["lease"]["expiresAt"]
    store.close()


def test_replicas_racing_never_lease_a_job_twice_and_epochs_increase(pg_url: str) -> None:
    """Four threads on two stores (two replicas, one pooled as serve's) claim, release and re-claim 30 jobs."""
    stores = [PgStore(pg_url, pooled=True), PgStore(pg_url)]
    coords = [Coordinator(s, s.clock, 30) for s in stores]
    for i in range(30):
        coords[0].enqueue(job(f"j{i}", budget={"maxAttempts": 9}))
    leases: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        coord = coords[n % 2]
        released = 0
        while True:
            view = coord.claim(f"f{n}", ())
            if view is None:
                return
            lease = view["lease"]
            with lock:
                leases.append((lease["jobId"], f"f{n}", lease["leaseEpoch"]))
            if released < 3:  # give some back: they are claimed again with a higher epoch
                released += 1
                coord.release(lease["jobId"], f"f{n}", lease["leaseEpoch"], "again", count_attempt=False)
            else:
                coord.report(lease["jobId"], f"f{n}", lease["leaseEpoch"], "shipped")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_job: dict[str, list[int]] = {}
    for job_id, _, epoch in leases:
        per_job.setdefault(job_id, []).append(epoch)
    assert sorted(per_job) == sorted(f"j{i}" for i in range(30))
    for job_id, epochs in per_job.items():
        assert epochs == list(range(1, len(epochs) + 1)), job_id  # each epoch handed out once, in order
    assert len(leases) == 30 + 12
    assert coords[1].status()["counts"] == {"queued": 0, "leased": 0, "shipped": 30, "quarantined": 0, "cancelled": 0}
    for s in stores:
        s.close()


def test_copy_moves_a_file_store_and_zombies_stay_fenced(tmp_path: Path, pg_url: str) -> None:
    root = tmp_path / "coord"
    now = [1_000_000.0]
    src = Coordinator(JsonStore(root), lambda: now[0], 3600)
    for name in ("l", "s", "r"):
        src.enqueue(job(name, prompt=f"prompt of {name}", budget={"maxAttempts": 3}))
    src.enqueue({"id": "epic", "kind": "composite", "verify": ["true"],
                 "children": [job("epic-a"), job("epic-b", dependsOn=["epic-a"])]})
    held = {}
    for _ in range(4):
        view = src.claim("f1", ())
        assert view is not None
        held[view["job"]["id"]] = view["lease"]["leaseEpoch"]
    src.enqueue(job("q", prompt="prompt of q"))
    src.report("s", "f1", held["s"], "shipped")
    src.release("r", "f1", held["r"], "flaky")  # back to queued, epoch 1 spent
    zombie = src.claim("f1", ())  # r again, epoch 2: the holder of epoch 1 is now a zombie
    assert zombie is not None and zombie["job"]["id"] == "r" and zombie["lease"]["leaseEpoch"] == 2
    src.report("epic-a", "f1", held["epic-a"], "quarantined")
    src.requeue("epic-a")  # its quarantined version goes to history
    before = json.loads(json.dumps([src.list_jobs(), src.status()]))

    out = stub("copy", "--from", str(root), "--to", pg_url)
    assert out.returncode == 0, out.stderr
    assert "history=1" in out.stdout

    pg = inspect_store(pg_url)
    dst = Coordinator(pg, lambda: now[0], 3600)
    assert json.loads(json.dumps([dst.list_jobs(), dst.status()])) == before
    with pytest.raises(Fenced):
        dst.report("r", "f1", 1, "shipped")  # the zombie of epoch 1: fenced on PostgreSQL too
    assert dst.report("r", "f1", 2, "shipped")["meta"]["state"] == "shipped"
    assert dst.report("l", "f1", held["l"], "shipped")["meta"]["state"] == "shipped"
    assert dst.get_job("q")["job"]["prompt"] == "prompt of q"
    assert len(pg.history) == 1 and pg.history[0]["state"] == "quarantined"
    assert [e["jobId"] for e in pg.events if e["op"] == "enqueue"] == ["l", "s", "r", "epic", "q"]  # the log too
    again = stub("copy", "--from", str(root), "--to", pg_url)  # never into a database that holds jobs
    assert again.returncode == 2 and "already holds jobs" in again.stderr
    pg.close()


def test_copy_refuses_what_is_not_a_state_dir(tmp_path: Path, pg_url: str) -> None:
    out = stub("copy", "--from", str(tmp_path), "--to", pg_url)
    assert out.returncode == 2 and "not a coordinator-stub state directory" in out.stderr


def test_a_password_is_never_printed() -> None:
    url = "postgresql://aq:hunter2@127.0.0.1:1/aq?sslmode=disable&password=hunter3"
    assert redact_url(url) == "postgresql://aq:***@127.0.0.1:1/aq?sslmode=disable&password=***"
    assert "hunter2" not in repr(load_settings({}, url))
    out = stub("--state", url, "status")  # nothing listens on port 1
    assert out.returncode == 1
    assert "hunter" not in out.stderr and "aq:***@127.0.0.1:1" in out.stderr
    with pytest.raises(StoreUnavailable):
        PgStore(url)


def test_the_seam_on_a_directory_never_imports_psycopg(tmp_path: Path) -> None:
    code = ("import sys, io; from coordinator_stub.seam import run_request; from coordinator_stub.settings "
            f"import load_settings; s = load_settings({{}}, {str(tmp_path)!r}); "
            "print(run_request(s, 'GET', '/v1/fleet/status', b'')[0], 'psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["200", "False"], out.stderr


def test_a_session_database_is_dropped_by_its_owner() -> None:
    url, drop = create_database("aq_test_drop")
    name = url.rsplit("/", 1)[1]
    drop()
    with psycopg.connect(admin_dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (0,)

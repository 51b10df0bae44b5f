"""PostgreSQL plumbing shared by B8 and B9: a throwaway database, bulk-loaded queues, a serve replica on it.

The server is ``AQ_BENCH_PG_DSN`` (else ``AQ_TEST_PG_DSN``, else the local
``postgresql://postgres@127.0.0.1:5432/postgres``). Each run creates its own
database and drops it at the end. Where no server answers, the figure is saved
as unavailable (with the reason) rather than failing the whole run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import common

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_dsn() -> str:
    return os.environ.get("AQ_BENCH_PG_DSN") or os.environ.get("AQ_TEST_PG_DSN") or DEFAULT_DSN


def unavailable_reason() -> str | None:
    """None when a server answers and psycopg is installed; else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg not installed (pip install 'agent-queue[postgres]')"
    try:
        psycopg.connect(admin_dsn(), connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL at {admin_dsn()}: {str(exc).strip().splitlines()[0]}"
    return None


@contextlib.contextmanager
def database(prefix: str) -> Iterator[str]:
    """A new migrated database (its URL), dropped on the way out."""
    import psycopg

    from coordinator_stub.stores.pg_admin import migrate_database

    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(admin_dsn())
        url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
        try:
            migrate_database(url)
            yield url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load_queued(url: str, n: int, prefix: str = "q") -> None:
    """Add ``n`` queued jobs (command ``true``) with COPY: records shaped exactly as the core makes one.

    One job goes through the real core (a MemoryStore) to get the record and
    spec; the others are that template with their own id and sequence number.
    Then ANALYZE: without it the planner may ignore the claim index until
    autovacuum runs (docs/postgres.md).
    """
    import psycopg

    h = common.History()
    [tmpl_id] = h.queued(1, prefix="tmpl")
    rec = json.loads(json.dumps(h.store.hot["jobs"][tmpl_id]))
    spec = h.store.specs[tmpl_id]
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT doc FROM aq_meta WHERE id = 1").fetchone()
        meta: dict[str, Any] = row[0] if row else {}
        first = int(meta.get("seq", 0)) + 1
        with conn.cursor() as cur:
            with cur.copy("COPY aq_jobs (id, state, priority, seq, leased, rec) FROM STDIN") as copy:
                for seq in range(first, first + n):
                    job_id = f"{prefix}-{seq:07d}"
                    copy.write_row((job_id, "queued", 0, seq, False,
                                    json.dumps({**rec, "seq": seq, "spec": {**rec["spec"], "id": job_id}})))
            with cur.copy("COPY aq_specs (id, spec) FROM STDIN") as copy:
                for seq in range(first, first + n):
                    job_id = f"{prefix}-{seq:07d}"
                    copy.write_row((job_id, json.dumps({**spec, "id": job_id})))
            meta["seq"] = first + n - 1
            cur.execute("UPDATE aq_meta SET doc = %s WHERE id = 1", (json.dumps(meta),))
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE aq_jobs")
        conn.execute("ANALYZE aq_specs")


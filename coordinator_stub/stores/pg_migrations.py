"""The PostgreSQL store's schema: numbered SQL files in ``pg_schema/``, applied in order by ``migrate``.

``NNN_name.sql`` is schema version NNN. ``migrate`` applies each missing file in
its own transaction under the store's advisory lock (so no operation of any
replica runs against a half-made schema, and two ``migrate`` runs at once apply
each file once), and records it in ``aq_schema_version``. Every store checks
the version at start-up and refuses any other than ``SCHEMA_VERSION``: a
newer database needs a newer coordinator-stub, an older one ``migrate``.
"""

from __future__ import annotations

from importlib import resources

from agent_queue.errors import SchemaMismatch, StateError
from coordinator_stub.settings import redact_url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import psycopg

# One key for every operation and every migration: each store transaction takes it
# (pg_advisory_xact_lock), which makes all operations of all replicas serial. "aq_stub1".
ADVISORY_KEY = 0x61715F7374756231
VERSION_TABLE = """CREATE TABLE IF NOT EXISTS aq_schema_version (
    version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every packaged migration, in order."""
    out = []
    for entry in resources.files("coordinator_stub.stores").joinpath("pg_schema").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            out.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    out.sort()
    if [v for v, _, _ in out] != list(range(1, len(out) + 1)):
        raise StateError(f"pg_schema: migrations must be numbered 001.. without gaps, got {[n for _, n, _ in out]}")
    return out


SCHEMA_VERSION = 1  # the highest migration; a test pins it to migrations()


def current_version(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
    """The database's schema version (0: never migrated)."""
    row = conn.execute("SELECT to_regclass('aq_schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    found = conn.execute("SELECT coalesce(max(version), 0) FROM aq_schema_version").fetchone()
    return int(found[0]) if found else 0


def check_version(conn: psycopg.Connection[tuple[Any, ...]], url: str) -> None:
    """Refuse a database whose schema this coordinator-stub does not know, in one line naming both versions."""
    found = current_version(conn)
    conn.rollback()
    if found == SCHEMA_VERSION:
        return
    hint = "run 'coordinator-stub migrate'" if found < SCHEMA_VERSION else "upgrade coordinator-stub"
    raise SchemaMismatch(f"database {redact_url(url)}: schema version {found}, this coordinator-stub needs "
                         f"version {SCHEMA_VERSION} ({hint})")


def migrate(conn: psycopg.Connection[tuple[Any, ...]]) -> list[str]:
    """Apply every missing migration, one transaction each; the names applied (empty: already current)."""
    applied = []
    for version, name, sql in migrations():
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_KEY,))
            conn.execute(VERSION_TABLE)
            if current_version(conn) >= version:
                continue
            conn.execute(sql.encode("utf-8"))  # no parameters: several statements in one go
            conn.execute("INSERT INTO aq_schema_version (version, name) VALUES (%s, %s)", (version, name))
            applied.append(name)
    found = current_version(conn)
    conn.rollback()
    if found > SCHEMA_VERSION:
        raise SchemaMismatch(f"schema version {found} is newer than this coordinator-stub's {SCHEMA_VERSION} "
                             "(upgrade coordinator-stub)")
    return applied

"""PostgreSQL for the tests: one database per test session on the server ``AQ_TEST_PG_DSN`` names.

Default DSN: ``postgresql://postgres@127.0.0.1:5432/postgres`` (this project's
machines and CI run that server). The session creates a database with a
unique name, migrates it, empties it before each test that asks for it, and
drops it at the end. Where no server answers (or psycopg is missing) the
PostgreSQL tests skip with the reason; ``AQ_REQUIRE_PG=1`` (set by ``.ci/run``)
turns that skip into a failure, so CI never passes without them.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TABLES = ("aq_jobs", "aq_specs", "aq_archive", "aq_history", "aq_events", "aq_shadow_reports")


def admin_dsn() -> str:
    return os.environ.get("AQ_TEST_PG_DSN") or DEFAULT_DSN


def with_database(dsn: str, name: str) -> str:
    """``dsn`` (a URL) naming database ``name`` instead."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def unavailable(reason: str, module_level: bool = False) -> None:
    """Skip (with the reason) or, under ``AQ_REQUIRE_PG=1``, fail."""
    if os.environ.get("AQ_REQUIRE_PG") == "1":
        pytest.fail(f"PostgreSQL is required here (AQ_REQUIRE_PG=1) but {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}", allow_module_level=module_level)


def need_psycopg() -> Any:
    """psycopg, for a test module that imports it (or the PostgreSQL store) at its top; else skip/fail it."""
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (pip install 'agent-queue[postgres]')", module_level=True)
        raise
    return psycopg


def create_database(prefix: str = "aq_test") -> tuple[str, Any]:
    """(URL of a new migrated database, a function that drops it); skips/fails when no server answers."""
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (pip install 'agent-queue[postgres]')")
        raise
    dsn = admin_dsn()
    try:
        admin = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        unavailable(f"no server answers at {dsn} ({str(exc).strip().splitlines()[0]}); set AQ_TEST_PG_DSN")
        raise
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(dsn, name)
    from coordinator_stub.stores.pg_admin import migrate_database

    migrate_database(url)

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return url, drop


def reset(url: str) -> None:
    """Every table emptied, the counters as in a fresh coordinator (faster than a new database per test)."""
    import psycopg

    from coordinator_stub.stores.base import empty_hot

    meta = {k: v for k, v in empty_hot().items() if k != "jobs"}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
        conn.execute("UPDATE aq_meta SET doc = %s WHERE id = 1", (json.dumps(meta),))


def inspect_store(url: str) -> Any:
    """A PgStore with read-only views the store tests use on MemoryStore: ``hot``, ``events``, ``shadow_reports``."""
    from coordinator_stub.stores.postgres import PgStore

    class InspectablePgStore(PgStore):
        def _rows(self, sql: str) -> list[Any]:
            import psycopg

            with psycopg.connect(self.url) as conn:
                return conn.execute(sql).fetchall()

        @property
        def hot(self) -> dict[str, Any]:
            meta = self._rows("SELECT doc FROM aq_meta WHERE id = 1")[0][0]
            return {**meta, "jobs": dict(self._rows("SELECT id, rec FROM aq_jobs ORDER BY seq"))}

        @property
        def events(self) -> list[dict[str, Any]]:
            return [r[0] for r in self._rows("SELECT ev FROM aq_events ORDER BY n")]

        @property
        def shadow_reports(self) -> list[dict[str, Any]]:
            return [r[0] for r in self._rows("SELECT report FROM aq_shadow_reports ORDER BY n")]

        @property
        def history(self) -> list[dict[str, Any]]:
            return [r[0] for r in self._rows("SELECT rec FROM aq_history ORDER BY n")]

    return InspectablePgStore(url)


class Cluster:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) that a test may crash and restart; never the shared one."""

    def __init__(self, port: int) -> None:
        import shutil
        import tempfile

        self.port = port
        self.bindir = _pg_bindir()
        if self.bindir is None or shutil.which("pg_ctl", path=self.bindir) is None:
            unavailable("initdb/pg_ctl are not installed (a test needs a throwaway cluster)")
        self.root = Path(tempfile.mkdtemp(prefix="aq-pg-cluster-"))
        self.data = self.root / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(Path(self.bindir or "") / argv[0]), *argv[1:]]
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {out.stderr or out.stdout}")
        return out

    def start(self) -> Cluster:
        if os.geteuid() == 0:
            shutil_chown(self.root)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on", "start")
        return self

    def crash_restart(self) -> None:
        """``pg_ctl restart -m immediate``: no shutdown checkpoint, crash recovery on start."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-m", "immediate", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "restart")

    def halt(self) -> None:
        """The server down (``pg_ctl stop -m immediate``), its data kept: ``resume`` starts it again."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")

    def resume(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        import shutil

        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def shutil_chown(path: Path) -> None:
    import shutil

    shutil.chown(path, "postgres", "postgres")


def _pg_bindir() -> str | None:
    import glob
    import shutil

    found = shutil.which("pg_ctl")
    if found:
        return str(Path(found).parent)
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return dirs[-1] if dirs else None

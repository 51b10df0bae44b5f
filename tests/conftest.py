"""Suite-wide settings.

``AQ_STUB_SELFCHECK=1``: every coordinator-stub store (in this process and in
every stub process a test starts, which inherit the environment) checks each
commit and each cached read against a full reload of its files. A change the
journal failed to carry then fails the test that made it.
"""

import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

os.environ["AQ_STUB_SELFCHECK"] = "1"


@pytest.fixture()
def strays() -> Iterator[list[int]]:
    """Pids a test saw (background processes of tools); SIGKILLed at teardown whatever happened, so a
    failing containment test never leaks a ``sleep 300``."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# ---- PostgreSQL (tests/pgutil.py): one database per session, emptied per test that asks for it

@pytest.fixture(scope="session")
def pg_database():  # type: ignore[no-untyped-def]
    from tests.pgutil import create_database

    url, drop = create_database()
    yield url
    drop()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's database, emptied: each test starts from a fresh coordinator."""
    from tests.pgutil import reset

    reset(pg_database)
    return pg_database


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def contract_store(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A fresh store of each kind the contract tests run on: MemoryStore, then PgStore (tests/pgutil.py)."""
    if request.param == "memory":
        from coordinator_stub.stores.memory import MemoryStore

        yield MemoryStore()
        return
    from tests.pgutil import inspect_store

    store = inspect_store(request.getfixturevalue("pg_url"))
    yield store
    store.close()

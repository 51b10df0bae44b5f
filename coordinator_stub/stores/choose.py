"""The front ends' one choice of store: ``--state`` names a directory (the file store) or a database URL.

Returns the store with its lease clock: the local clock for a directory (one
host), the database's for PostgreSQL (replicas on many hosts never compare
their own clocks). The PostgreSQL store, and psycopg with it, is imported only
when the state is a URL: a seam call on a directory pays nothing for it.
"""

from __future__ import annotations

from agent_queue.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from coordinator_stub.core import Clock
    from coordinator_stub.settings import StubSettings
    from coordinator_stub.stores.base import Store
    from coordinator_stub.stores.locking import LockFactory


def open_store(settings: StubSettings, serving: bool = False, lock: LockFactory | None = None,
               must_exist: bool = False) -> tuple[Store, Clock]:
    """The store ``settings`` name and its clock; ``serving``: a long-lived server's (pooled, tidied later,
    a file store's commits grouped into shared syncs).

    ``must_exist``: a directory that is not there is an error (a read never creates a store).
    """
    if settings.database_url:
        try:
            from coordinator_stub.stores.postgres import PgStore
        except ImportError as exc:
            raise ConfigError(f"--state is a PostgreSQL URL but {exc.name} is not installed: "
                              "pip install 'agent-queue[postgres]'") from None
        pg = PgStore(settings.database_url, pooled=serving)
        return pg, pg.clock
    import time

    from coordinator_stub.stores.file import JsonStore
    from coordinator_stub.stores.locking import flock

    return JsonStore(settings.state_dir, lock=lock or flock, tidy_later=serving, must_exist=must_exist,
                     group_commit=serving), time.time

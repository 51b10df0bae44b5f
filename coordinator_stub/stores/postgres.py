"""PgStore: the coordinator's state in PostgreSQL, shared by several ``serve`` replicas (``--state postgresql://``).

Tables (``pg_schema/001_initial.sql``): ``aq_jobs`` one row per hot record
(queued, leased, a waiting verify gate) with its claim-order columns, under
two partial indexes (queued rows in claim order, leased rows); ``aq_specs``
the full specs of hot records; ``aq_archive`` the current version of each
finished job and composite parent, ``aq_history`` the versions it replaced;
``aq_meta`` the hot document's small fields (``seq``, ``factories``,
``terminalCounts``); ``aq_events`` and ``aq_shadow_reports`` the logs.

How it keeps the contract of ``base``:

- **Isolated.** Each transaction first takes one transaction-level advisory
  lock (``pg_advisory_xact_lock``), the same key for every operation of every
  replica: operations run one at a time across the whole fleet, exactly like
  the file store's flock, and each sees every earlier commit (READ COMMITTED
  reads after the lock). The cost: one operation at a time, whatever the
  number of replicas; replicas add availability, not throughput. Row-level
  concurrency (``FOR UPDATE SKIP LOCKED`` claims) is the later optimisation,
  see docs/postgres.md.
- **Atomic, durable before the answer.** Everything an operation changed is
  written in its one transaction and committed (``synchronous_commit`` never
  off) before ``transaction()`` returns; an exception rolls all of it back.
- **Private copies.** Every record is parsed from its row per transaction.
- **Orders it is asked for.** ``queued_by`` reads ``aq_jobs_queued`` in the
  core's claim order (``core.claim_key``: priority DESC, seq), in batches, so a
  claim reads the queue's head, not the queue; the core still applies every
  gate (``requires``, ``exclude``, ``notBefore``, dependencies, families).

``tx.hot["jobs"]`` is a lazy mapping (``PgJobs``): a record is read when the
core first asks for it, and the commit writes only the records it changed.
The lease clock is the database's (``clock``): replicas never compare their
own clocks. psycopg is imported here only: the seam and the file store never
load this module unless ``--state`` is a URL.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import threading

import psycopg

from agent_queue.errors import StateError, StoreUnavailable
from coordinator_stub.settings import redact_url
from coordinator_stub.stores.base import QUEUED, SpecSummary, Store, Tx, seq_of, warn
from coordinator_stub.stores.pg_migrations import ADVISORY_KEY, check_version
from coordinator_stub.stores.tracking import HotRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

    from coordinator_stub.stores.base import LogReader, SortKey

    Cursor = psycopg.Cursor[tuple[Any, ...]]
    Connection = psycopg.Connection[tuple[Any, ...]]

# Queued rows read per round trip while the core looks for one it may hand out: the head first (usually
# its first row is taken), then batches this many times larger each time, up to CLAIM_BATCH_MAX.
CLAIM_BATCH, CLAIM_BATCH_GROWTH, CLAIM_BATCH_MAX = 4, 4, 256
# Connections of a serving replica: its operations run one at a time (``_serial``), so one is in use and
# the other is ready when a restart broke the first.
POOL_SIZE = 2
POOL_WAIT_S = 5.0  # a request waits this long for a connection, then answers 503 (the client retries)
CHECK_WAIT_S = 2.0  # healthz waits at most this long for a connection (the database down: 503 soon)
# A log row's usual size: a backfill of N bytes (the file store's measure) reads about N / this many rows.
LOG_ROW_BYTES = 200
LOG_BATCH = 5000  # log rows per round trip of a tail's read
# An operation begins: the advisory lock every operation takes, and the database clock's reading for it.
BEGIN_OP = "SELECT pg_advisory_xact_lock(%s), extract(epoch from clock_timestamp())::float8"
# Then (a separate statement: its snapshot is taken once the lock is held) the meta row and the leased rows.
READ_META = ("SELECT doc, (SELECT coalesce(json_agg(json_build_array(id, rec) ORDER BY seq), '[]'::json) "
             "FROM aq_jobs WHERE leased) FROM aq_meta WHERE id = 1")
# A lookup by id: the archived record and the hot one (the archive wins; records.find_opt decides).
ARCHIVED_AND_HOT = ("SELECT (SELECT rec FROM aq_archive WHERE id = %s), (SELECT rec FROM aq_jobs WHERE id = %s)")
# A hot record's row; ``job_row`` gives its values in this order.
INSERT_JOB = "INSERT INTO aq_jobs (id, state, priority, seq, leased, rec) VALUES (%s, %s, %s, %s, %s, %s)"
UPSERT_JOB = INSERT_JOB + (" ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, priority = EXCLUDED.priority, "
                           "seq = EXCLUDED.seq, leased = EXCLUDED.leased, rec = EXCLUDED.rec")
# The queue's head in claim order (``core.claim_key``: priority DESC, seq), and the batch after a row.
QUEUED_HEAD = ("SELECT id, priority, seq, rec FROM aq_jobs WHERE state = 'queued' "
               "ORDER BY priority DESC, seq LIMIT %s")
QUEUED_AFTER = ("SELECT id, priority, seq, rec FROM aq_jobs WHERE state = 'queued' "
                "AND (priority < %s OR (priority = %s AND seq > %s)) ORDER BY priority DESC, seq LIMIT %s")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _record(rec: dict[str, Any]) -> dict[str, Any]:
    """A hot record as read: its spec marked as the summary it is."""
    rec["spec"] = SpecSummary(rec["spec"])
    return rec


def job_row(job_id: str, rec: dict[str, Any]) -> tuple[Any, ...]:
    return (job_id, rec["state"], int(rec["spec"].get("priority", 0)), rec["seq"], bool(rec["lease"]), dumps(rec))


class PgJobs:
    """The hot ``jobs`` mapping of one transaction: rows read on first use, changes noted for the commit.

    ``cache`` holds every record read or written so far (None: absent or removed);
    ``changed`` the ids the commit must write. Records read are ``HotRecord``s,
    so the core's in-place changes (``rec.update(...)``) are noted too.
    """

    def __init__(self, cur: Cursor) -> None:
        self._cur = cur
        self.cache: dict[str, dict[str, Any] | None] = {}
        self.changed: set[str] = set()

    def adopt(self, job_id: str, rec: dict[str, Any]) -> dict[str, Any]:
        """The record of a row just read: the one this transaction already holds, if any."""
        if job_id in self.cache:
            held = self.cache[job_id]
            return held if held is not None else rec
        tracked = HotRecord(_record(rec), job_id, self.changed)
        self.cache[job_id] = tracked
        return tracked

    def peek(self, job_id: str) -> dict[str, Any] | None:
        """Only what this transaction holds (no read)."""
        return self.cache.get(job_id)

    def get(self, job_id: str, default: Any = None) -> Any:
        if job_id not in self.cache:
            row = self._cur.execute("SELECT rec FROM aq_jobs WHERE id = %s", (job_id,)).fetchone()
            if row is None:
                self.cache[job_id] = None
                return default
            return self.adopt(job_id, row[0])
        rec = self.cache[job_id]
        return default if rec is None else rec

    def __getitem__(self, job_id: str) -> dict[str, Any]:
        rec: dict[str, Any] | None = self.get(job_id)
        if rec is None:
            raise KeyError(job_id)
        return rec

    def __contains__(self, job_id: object) -> bool:
        return isinstance(job_id, str) and self.get(job_id) is not None

    def __setitem__(self, job_id: str, rec: dict[str, Any]) -> None:
        self.changed.add(job_id)
        self.cache[job_id] = rec

    def __delitem__(self, job_id: str) -> None:
        self[job_id]  # noqa: B018 - KeyError when absent, as a dict
        self.changed.add(job_id)
        self.cache[job_id] = None

    def pop(self, job_id: str, *default: Any) -> Any:
        rec = self.get(job_id)
        if rec is None:
            if default:
                return default[0]
            raise KeyError(job_id)
        del self[job_id]
        return rec

    def _all(self) -> dict[str, dict[str, Any]]:
        """Every hot record (status, listing: O(live jobs) by nature), this transaction's changes included."""
        for job_id, rec in self._cur.execute("SELECT id, rec FROM aq_jobs ORDER BY seq").fetchall():
            self.adopt(job_id, rec)
        return {job_id: rec for job_id, rec in self.cache.items() if rec is not None}

    def values(self) -> Iterable[dict[str, Any]]:
        return self._all().values()

    def items(self) -> Iterable[tuple[str, dict[str, Any]]]:
        return self._all().items()

    def keys(self) -> Iterable[str]:
        return self._all().keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


class PgTx(Tx):
    """One operation's view. Rows read here stay valid for the whole transaction: it holds the advisory
    lock, and its own writes wait for the commit, so the database does not change under it."""

    def __init__(self, cur: Cursor, meta: dict[str, Any], leased: list[tuple[str, dict[str, Any]]]) -> None:
        self.jobs = PgJobs(cur)
        super().__init__({**meta, "jobs": self.jobs}, loaded_ids=[])  # removals are in ``jobs.changed``
        self._cur = cur
        self._leased = leased  # read with the meta row: every operation's reaper asks first
        self._specs: dict[str, dict[str, Any]] = {}
        self._absent: set[str] = set()  # ids not in aq_archive (it cannot change under the advisory lock)

    def queued_by(self, key: SortKey) -> Iterator[dict[str, Any]]:
        """Rows of ``aq_jobs_queued`` in claim order, merged with the records this transaction changed."""
        jobs = self.jobs
        changed = set(jobs.changed)
        fresh = sorted((key(rec), job_id) for job_id in changed
                       if (rec := jobs.peek(job_id)) is not None and rec["state"] == QUEUED)
        kept = ((key(rec), job_id) for job_id, rec in self._queued_rows() if job_id not in changed)
        for _, job_id in heapq.merge(kept, fresh):
            rec = jobs.get(job_id)
            if rec is not None:
                yield rec

    def _queued_rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(id, record) of queued rows, highest priority then oldest first: ``core.claim_key``'s order."""
        size = CLAIM_BATCH
        rows = self._cur.execute(QUEUED_HEAD, (size,)).fetchall()
        while rows:
            for job_id, _, _, rec in rows:
                yield job_id, self.jobs.adopt(job_id, rec)
            if len(rows) < size:
                return
            _, priority, seq, _ = rows[-1]
            size = min(size * CLAIM_BATCH_GROWTH, CLAIM_BATCH_MAX)
            rows = self._cur.execute(QUEUED_AFTER, (priority, priority, seq, size)).fetchall()

    def leased_records(self) -> list[dict[str, Any]]:
        jobs = self.jobs
        changed = jobs.changed
        out = [jobs.adopt(job_id, rec) for job_id, rec in self._leased if job_id not in changed]
        out += [rec for job_id in changed if (rec := jobs.peek(job_id)) is not None and rec["lease"]]
        return sorted(out, key=seq_of)

    def _load_archived(self, job_id: str) -> dict[str, Any] | None:
        """The archived row; the hot row of the same id comes along (every lookup of the core asks for both)."""
        jobs = self.jobs
        if job_id in self._absent:
            return None
        if job_id in jobs.cache:
            row = self._cur.execute("SELECT rec FROM aq_archive WHERE id = %s", (job_id,)).fetchone()
            if row is None:
                self._absent.add(job_id)
            return None if row is None else row[0]
        row = self._cur.execute(ARCHIVED_AND_HOT, (job_id, job_id)).fetchone()
        archived: dict[str, Any] | None = row[0] if row else None
        if archived is None:
            self._absent.add(job_id)
        hot = row[1] if row else None
        if hot is None:
            jobs.cache[job_id] = None
        else:
            jobs.adopt(job_id, hot)
        return archived

    def _load_spec(self, job_id: str) -> dict[str, Any]:
        if job_id not in self._specs:  # write-once per id: read once per transaction (its own object)
            row = self._cur.execute("SELECT spec FROM aq_specs WHERE id = %s", (job_id,)).fetchone()
            if row is None:
                raise StateError(f"spec of {job_id!r}: missing in aq_specs")
            self._specs[job_id] = row[0]
        return self._specs[job_id]

    def iter_archived(self) -> Iterator[dict[str, Any]]:
        stored = {job_id: rec for job_id, rec in self._cur.execute("SELECT id, rec FROM aq_archive").fetchall()}
        merged = {**stored, **self.pending_archive}
        for job_id in sorted(merged):
            yield merged[job_id]

    def meta(self) -> dict[str, Any]:
        return {k: v for k, v in self.hot.items() if k != "jobs"}


class PgStore(Store):
    """State in PostgreSQL: one advisory-locked transaction per operation, committed before the answer.

    ``pooled`` (``serve``): a connection pool for the server's threads; otherwise
    one connection, opened on first use (a seam call, a CLI command).
    """

    def __init__(self, url: str, pooled: bool = False, check_schema: bool = True) -> None:
        self.url = url
        self.where = f"database {redact_url(url)}"
        self._local = threading.local()
        self._lock = threading.Lock()
        # One operation at a time per process: they are serial across replicas anyway (the advisory lock),
        # and threads queueing here instead of in the database's lock queue keep one connection busy, not all.
        self._serial = threading.Lock()
        self._conn: Connection | None = None
        self._pool: Any = None
        if pooled:
            from psycopg_pool import ConnectionPool

            # No check per checkout (a round trip per operation): a connection a restart broke fails its
            # operation (503, retried by the client) and the pool replaces it.
            self._pool = ConnectionPool(url, min_size=1, max_size=POOL_SIZE, open=False, configure=_configure,
                                        kwargs={"autocommit": True},
                                        name="coordinator-stub", timeout=POOL_WAIT_S)
            with self._guard():
                self._pool.open(wait=True, timeout=10.0)
        if check_schema:
            with self._connection() as conn, self._guard():
                check_version(conn, url)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._conn is not None:
            self._conn.close()

    # ------------------------------------------------------------ the lease clock

    def clock(self) -> float:
        """The database's time: inside a transaction, read once at its start (with its lock); else now."""
        now: float | None = getattr(self._local, "now", None)
        if now is not None:
            return now
        with self._connection() as conn, self._guard():
            row = conn.execute("SELECT extract(epoch from clock_timestamp())::float8").fetchone()
            conn.rollback()
        return float(row[0]) if row else 0.0

    def check(self) -> None:
        """One round trip (``SELECT 1``) on a connection of its own: a database that does not answer is 503.

        Not behind ``_serial``: a health check waits for no operation, and the
        pool's second connection is there for it; a connection the database
        dropped fails here and the pool replaces it, so the next check is 200.
        """
        with self._connection(CHECK_WAIT_S) as conn, self._guard():
            conn.execute("SELECT 1")
            conn.rollback()

    def log_readers(self, backfill_bytes: int) -> tuple[LogReader, LogReader]:
        """``aq_events`` and ``aq_shadow_reports``, tailed by row number (each on its own connection)."""
        rows = max(0, backfill_bytes // LOG_ROW_BYTES)
        return (PgLogTail(self.url, self.where, "aq_events", "ev", rows),
                PgLogTail(self.url, self.where, "aq_shadow_reports", "report", rows))

    # ------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._serial, self._connection() as conn, self._guard():
            try:
                with conn.cursor() as cur, conn.cursor() as locking:
                    with conn.pipeline():  # one round trip: the lock, then (its own snapshot, after it) the reads
                        locking.execute("BEGIN")  # explicit (autocommit connections): no round trip of its own
                        locking.execute(BEGIN_OP, (ADVISORY_KEY,))
                        cur.execute(READ_META)
                        row = locking.fetchone()
                        meta = cur.fetchone()
                    self._local.now = float(row[1]) if row else None
                    if meta is None:
                        raise StateError(f"{self.where}: aq_meta has no row (not made by 'coordinator-stub migrate')")
                    tx = PgTx(cur, meta[0], [(r[0], r[1]) for r in meta[1]])
                    before = dumps(meta[0])
                    yield tx
                    with conn.pipeline():  # every write of the commit, and the commit, in one round trip
                        if tx.dirty:
                            _commit_state(cur, tx, before)
                        _append_logs(cur, tx)
                        cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                raise
            finally:
                self._local.now = None

    @contextlib.contextmanager
    def _connection(self, wait_s: float = POOL_WAIT_S) -> Iterator[Connection]:
        if self._pool is not None:
            with self._guard(), self._pool.connection(timeout=wait_s) as conn:
                yield conn
            return
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                with self._guard():
                    self._conn = psycopg.connect(self.url, connect_timeout=10, autocommit=True)
                    _configure(self._conn)
            yield self._conn

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return db_errors(self.where)


class PgLogTail:
    """New rows of one append-only log table, from the last row number read (``Store.log_readers``).

    Row numbers (``bigserial``) follow commit order: every insert happens while
    its transaction holds the advisory lock every operation takes, so no row
    with a smaller number can commit after a larger one was read. A database
    that does not answer yields nothing (the next read retries), never an error:
    the dashboard stays up and shows what it has.
    """

    def __init__(self, url: str, where: str, table: str, column: str, backfill_rows: int) -> None:
        self._url = url
        self._where = where
        self._last_sql = f"SELECT coalesce(max(n), 0) FROM {table}"  # noqa: S608 - our own table names
        self._read_sql = f"SELECT n, {column} FROM {table} WHERE n > %s ORDER BY n LIMIT {LOG_BATCH}"  # noqa: S608
        self._backfill_rows = backfill_rows
        self._conn: Connection | None = None
        self._after: int | None = None  # the last row number read (None: not started)
        self._live_from = 0  # rows up to this one were there at start-up: history

    def read(self) -> Iterator[tuple[dict[str, Any], bool]]:
        try:
            rows = self._fetch()
        except StateError as exc:  # StoreUnavailable included: the next poll tries again
            warn("reading %s: %s", self._where, exc)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            return
        for n, doc in rows:
            if isinstance(doc, dict):
                yield doc, n > self._live_from

    def _fetch(self) -> list[tuple[int, Any]]:
        with db_errors(self._where):
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = psycopg.connect(self._url, connect_timeout=10, autocommit=True)
            conn = self._conn
            if self._after is None:
                row = conn.execute(self._last_sql).fetchone()
                self._live_from = int(row[0]) if row else 0
                self._after = max(0, self._live_from - self._backfill_rows)
            out: list[tuple[int, Any]] = []
            while True:
                rows = conn.execute(self._read_sql, (self._after,)).fetchall()
                out += rows
                if rows:
                    self._after = int(rows[-1][0])
                if len(rows) < LOG_BATCH:
                    return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


@contextlib.contextmanager
def db_errors(where: str) -> Iterator[None]:
    """Database failures as the store's errors: unreachable -> StoreUnavailable (503, retryable), else StateError."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"{where}: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise StateError(f"{where}: {_first_line(exc)}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("psycopg_pool"):  # PoolTimeout, PoolClosed
            raise StoreUnavailable(f"{where}: {_first_line(exc)}") from exc
        raise


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _configure(conn: Connection) -> None:
    """Every connection: answers only after a durable commit, whatever the server's default says."""
    row = conn.execute("SHOW synchronous_commit").fetchone()
    if row and row[0] == "off":
        conn.execute("SET synchronous_commit = on")
    conn.commit()


def _commit_state(cur: Cursor, tx: PgTx, meta_before: str) -> None:
    """Write what the transaction changed: history, specs, archive versions, hot rows, the meta row."""
    for job_id in tx.pending_history:
        cur.execute("INSERT INTO aq_history (id, rec) SELECT id, rec FROM aq_archive WHERE id = %s", (job_id,))
        cur.execute("DELETE FROM aq_archive WHERE id = %s", (job_id,))
    jobs = tx.jobs
    new, gone = tx.split_specs(jobs.changed)
    if new:
        cur.executemany("INSERT INTO aq_specs (id, spec) VALUES (%s, %s) "
                        "ON CONFLICT (id) DO UPDATE SET spec = EXCLUDED.spec",
                        [(job_id, dumps(spec)) for job_id, spec in new.items()])
    if tx.pending_archive:
        cur.executemany("INSERT INTO aq_archive (id, seq, state, rec) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, state = EXCLUDED.state, rec = EXCLUDED.rec",
                        [(job_id, rec["seq"], rec["state"], dumps(rec)) for job_id, rec in tx.pending_archive.items()])
    upserts = [job_row(job_id, rec) for job_id in sorted(jobs.changed) if (rec := jobs.peek(job_id)) is not None]
    removed = [job_id for job_id in sorted(jobs.changed) if jobs.peek(job_id) is None]
    if upserts:
        cur.executemany(UPSERT_JOB, upserts)
    if removed:
        cur.execute("DELETE FROM aq_jobs WHERE id = ANY(%s)", (removed,))
    if gone:
        cur.execute("DELETE FROM aq_specs WHERE id = ANY(%s)", (gone,))
    meta = dumps(tx.meta())
    if meta != meta_before:
        cur.execute("UPDATE aq_meta SET doc = %s WHERE id = 1", (meta,))


def _append_logs(cur: Cursor, tx: Tx) -> None:
    """Events and shadow reports: rows of the operation's own transaction (committed with it, or not at all)."""
    if tx.events:
        cur.executemany("INSERT INTO aq_events (ev) VALUES (%s)", [(dumps(ev),) for ev in tx.events])
    if tx.shadows:
        cur.executemany("INSERT INTO aq_shadow_reports (report) VALUES (%s)", [(dumps(r),) for r in tx.shadows])

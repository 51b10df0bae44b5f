"""Where the PostgreSQL store's time goes (a diagnostic beside B8, not one of the report's figures).

Two measurements, each for the file store and the PostgreSQL store, in one run:

- **In process** (no HTTP): a ``Coordinator`` on the store runs claim+report
  pairs from one thread. Per pair: the CPU of this process (the core, the
  store's Python, psycopg), the wall time, and for PostgreSQL the round trips
  to the server (libpq's protocol trace: each turn from sending to receiving).
- **Behind serve** (as B8, 4 clients over HTTP): per pair, the CPU of the
  ``serve`` process, and for PostgreSQL the CPU of its database backends
  (``/proc`` of the ``pg_stat_activity`` pids; the server must be on this host).

Prints one JSON document; ``docs/performance.md`` quotes it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import pg_common  # noqa: E402
from b2_http import claim_report_op, rate  # noqa: E402

PAIRS = 1000


def pairs(coord: Any, n: int) -> None:
    for _ in range(n):
        claimed = coord.claim("cost", [])
        if claimed is None:
            raise RuntimeError("pg_cost: the queue ran dry")
        lease = claimed["lease"]
        coord.report(lease["jobId"], "cost", lease["leaseEpoch"], "shipped", {})


def in_process(store: Any, clock: Callable[[], float]) -> dict[str, float]:
    """Claim+report pairs through the core on ``store``; per pair: CPU ms and wall ms of this process."""
    from coordinator_stub.core import Coordinator

    coord = Coordinator(store, clock, 60)
    cpu, wall = time.process_time(), time.perf_counter()
    pairs(coord, PAIRS)
    return {"cpu_ms_per_pair": round((time.process_time() - cpu) * 1000 / PAIRS, 3),
            "wall_ms_per_pair": round((time.perf_counter() - wall) * 1000 / PAIRS, 3)}


def round_trips(store: Any, n: int = 50) -> float:
    """Round trips per pair: libpq's protocol trace of ``n`` pairs, each turn from sending (F) to receiving (B)."""
    from coordinator_stub.core import Coordinator

    coord = Coordinator(store, store.clock, 60)
    pairs(coord, 1)  # the store's connection is open
    conn = store._conn  # a diagnostic: the one connection of an unpooled store
    with tempfile.NamedTemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        pairs(coord, n)
        conn.pgconn.untrace()
        trace.seek(0)
        turns, last = 0, ""
        for line in trace:
            direction = line.split("\t")[1] if "\t" in line else ""
            turns += last == "F" and direction == "B"
            last = direction or last
    return round(turns / n, 2)


def backend_cpu(url: str) -> float:
    """CPU seconds of every backend connected to ``url``'s database, but this one."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                           "AND pid <> pg_backend_pid()").fetchall()]
    return sum(common.cpu_seconds(pid) or 0.0 for pid in pids)


def behind_serve(state: str, url: str | None, clients: int = 4, seconds: float = 3.0) -> dict[str, float]:
    proc, base = common.serve_stub(state)
    try:
        rate(1, 0.3, claim_report_op(base))  # warm: connections open, code paths taken
        cpu0, db0 = common.cpu_seconds(proc.pid) or 0.0, backend_cpu(url) if url else 0.0
        ops_s = rate(clients, seconds, claim_report_op(base))
        cpu1, db1 = common.cpu_seconds(proc.pid) or 0.0, backend_cpu(url) if url else 0.0
    finally:
        common.stop(proc)
    pairs = ops_s * seconds / 2
    out = {"pairs_s": round(ops_s / 2, 1), "serve_cpu_ms_per_pair": round((cpu1 - cpu0) * 1000 / pairs, 3)}
    if url:
        out["db_cpu_ms_per_pair"] = round((db1 - db0) * 1000 / pairs, 3)
    return out


def main() -> None:
    from coordinator_stub.stores.file import JsonStore
    from coordinator_stub.stores.postgres import PgStore

    result: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for name in ("inproc", "serve"):
            h = common.History()
            h.bulk_queued(PAIRS * 20)
            h.dump(tmp / name)
        db = stack.enter_context(pg_common.database("aq_pg_cost"))
        pg_common.load_queued(db, PAIRS * 20)
        result["file_in_process"] = in_process(JsonStore(tmp / "inproc"), time.time)
        pg = PgStore(db)
        result["pg_in_process"] = {**in_process(pg, pg.clock), "round_trips_per_pair": round_trips(pg)}
        pg.close()
        result["file_serve_4_clients"] = behind_serve(str(tmp / "serve"), None)
        result["pg_serve_4_clients"] = behind_serve(db, db)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""B8: claim+report pairs per second over HTTP at 1, 4 and 16 clients: PostgreSQL store against the file store.

Same client code as B2 (one keep-alive ``requests.Session`` per client thread),
same run, back to back in rounds: ``coordinator-stub serve`` on a state
directory (the file store), on a PostgreSQL database with 1 replica and with 2
replicas (clients spread over them), and the floor: a bare psycopg
claim+report loop straight on a table (one durable transaction each, ``FOR
UPDATE SKIP LOCKED`` over a partial index), with no HTTP and no coordinator
logic. Ratios are to the file store (the issue's targets: >= 1.2x at 4 and 16
clients, >= 0.7x at 1) and to the floor; each is the median of per-round ratios.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import pg_common  # noqa: E402
from b2_http import claim_report_op, rate  # noqa: E402

CLIENTS = ("1", "4", "16")
TARGET = ">= 1.2x file store at 4 and 16 clients, >= 0.7x at 1"
FLOOR_TABLE = """CREATE TABLE bench_floor (id bigserial PRIMARY KEY, state text NOT NULL, priority int NOT NULL,
    epoch int NOT NULL DEFAULT 0);
CREATE INDEX bench_floor_queued ON bench_floor (priority DESC, id) WHERE state = 'queued'"""
FLOOR_CLAIM = """UPDATE bench_floor SET state = 'leased', epoch = epoch + 1 WHERE id = (
    SELECT id FROM bench_floor WHERE state = 'queued' ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING id, epoch"""
FLOOR_REPORT = "UPDATE bench_floor SET state = 'shipped' WHERE id = %s AND epoch = %s AND state = 'leased'"


def floor_op(url: str) -> Callable[[int], Callable[[], int]]:
    import psycopg

    def make(i: int) -> Callable[[], int]:
        conn = psycopg.connect(url)

        def op() -> int:
            row = conn.execute(FLOOR_CLAIM).fetchone()
            conn.commit()
            if row is None:
                raise RuntimeError("B8: floor queue ran dry")
            conn.execute(FLOOR_REPORT, row)
            conn.commit()
            return 2
        return op
    return make


def spread(urls: list[str]) -> Callable[[int], Callable[[], int]]:
    """Client i talks to replica i mod n."""
    makers = [claim_report_op(u) for u in urls]
    return lambda i: makers[i % len(makers)](i)


def main() -> None:
    args = common.parse_args(__doc__)
    reason = pg_common.unavailable_reason()
    if reason is not None:
        common.save(args.out, "b8_pg_http", {"headline": {"status": "unavailable", "reason": reason,
                                                          "target": TARGET}}, args.smoke)
        return
    rounds, seconds, jobs = (1, 0.2, 1500) if args.smoke else (3, 1.5, 10000)
    keys = ("file", "pg1", "pg2", "floor")
    samples: dict[str, dict[str, list[float]]] = {k: {c: [] for c in CLIENTS} for k in keys}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        h = common.History()
        h.bulk_queued(jobs)
        h.dump(tmp / "stub")
        proc, file_url = common.serve_stub(tmp / "stub")
        stack.callback(common.stop, proc)
        db = stack.enter_context(pg_common.database("aq_bench_b8"))
        pg_common.load_queued(db, jobs * 2)
        replicas = []
        for _ in range(2):
            p, u = common.serve_stub(db)
            stack.callback(common.stop, p)
            replicas.append(u)
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(FLOOR_TABLE.encode())
            conn.execute("INSERT INTO bench_floor (state, priority) SELECT 'queued', 0 FROM generate_series(1, %s)",
                         (jobs * 8,))  # the bare floor runs ~8x the served rate: never let it run dry
            conn.execute("ANALYZE bench_floor")
        ops = {"file": claim_report_op(file_url), "pg1": claim_report_op(replicas[0]), "pg2": spread(replicas),
               "floor": floor_op(db)}
        for _ in range(rounds):
            for c in CLIENTS:
                for key in keys:
                    samples[key][c].append(rate(int(c), seconds, ops[key]))
    med = {k: {c: statistics.median(v) for c, v in per.items()} for k, per in samples.items()}

    def ratio(key: str, base: str) -> dict[str, float]:
        return {c: round(statistics.median(a / b for a, b in zip(samples[key][c], samples[base][c], strict=True)), 3)
                for c in CLIENTS}

    headline = {"pairs_s": {k: {c: round(v / 2, 1) for c, v in per.items()} for k, per in med.items()},
                "pg1_vs_file": ratio("pg1", "file"), "pg2_vs_file": ratio("pg2", "file"),
                "pg1_vs_floor": ratio("pg1", "floor"), "target": TARGET}
    common.save(args.out, "b8_pg_http", {"headline": headline, "ops_per_s": med, "samples": samples,
                                         "rounds": rounds, "seconds_per_config": seconds}, args.smoke)


if __name__ == "__main__":
    main()

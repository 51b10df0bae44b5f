"""B9: claim latency by queue depth (1k, 10k, 100k, 1M queued): PostgreSQL against the file store.

Each sample is one claim (timed) followed by its report (not timed), so the
depth stays put. PostgreSQL is measured behind ``coordinator-stub serve``
(HTTP, one keep-alive session) at every depth; the file store behind ``serve``
and through the command seam (one process per call) at the depths its set-up
can reach in reasonable time (the 1M file-store state would take many minutes
to build through the core; its trend is clear by 100k). Each seam sample is
paired with a ``python -c pass`` of the same venv (B1's floor), so the seam's
figures are also ratios to a floor of the same run, and the hot document's
size is recorded: a seam call reads all of it, which is its bound by depth
(docs/performance.md). Target: PostgreSQL
flat, its 1M median no more than 1.5x its 1k median. Beside each PostgreSQL
depth, its floor: the bare claim statement on the same table in one durable
transaction (``FLOOR_CLAIM``), so the ratio to it is what serve and the core
add at that depth. The figures tell when to
move a fleet to PostgreSQL (docs/postgres.md, docs/performance.md).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import pg_common  # noqa: E402

TARGET = "PostgreSQL 1M / 1k <= 1.5x"


def claim_samples_http(url: str, n: int) -> list[float]:
    import requests

    s = requests.Session()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = s.post(url + "/v1/fleet/claim", json={"factoryId": "b9"}, timeout=60)
        out.append(time.perf_counter() - t0)
        r.raise_for_status()
        lease = r.json()["lease"]
        s.post(url + f"/v1/fleet/jobs/{lease['jobId']}/report",
               json={"factoryId": "b9", "leaseEpoch": lease["leaseEpoch"], "outcome": "shipped"},
               timeout=60).raise_for_status()
    return out


def claim_samples_seam(state: Path, n: int, floor: list[float]) -> list[float]:
    """``n`` timed seam claims (each reported, untimed); a ``python -c pass`` before each goes to ``floor``."""
    out = []
    for _ in range(n):
        floor += common.timed(lambda: subprocess.run([common.PYTHON, "-c", "pass"], check=True), 1)
        t0 = time.perf_counter()
        status, body = common.seam_call(state, "POST", "/v1/fleet/claim", {"factoryId": "b9"})
        out.append(time.perf_counter() - t0)
        assert status == 200, body
        lease = body["lease"]
        common.seam_call(state, "POST", f"/v1/fleet/jobs/{lease['jobId']}/report",
                         {"factoryId": "b9", "leaseEpoch": lease["leaseEpoch"], "outcome": "shipped"})
    return out


# The floor at a depth: the bare claim statement (the queue's head over the same partial index, FOR UPDATE SKIP
# LOCKED) in one durable transaction, on the same table. It changes nothing (state = state), so the depth stays.
FLOOR_CLAIM = """UPDATE aq_jobs SET state = state WHERE id = (SELECT id FROM aq_jobs WHERE state = 'queued'
    ORDER BY priority DESC, seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"""


def floor_samples_pg(db: str, n: int) -> list[float]:
    import psycopg

    out = []
    with psycopg.connect(db) as conn:
        for _ in range(n):
            t0 = time.perf_counter()
            row = conn.execute(FLOOR_CLAIM).fetchone()
            conn.commit()
            out.append(time.perf_counter() - t0)
            assert row is not None, "B9: the floor found no queued row"
    return out


def measure_pg(depths: list[int], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"floor": {}}
    with pg_common.database("aq_bench_b9") as db:
        loaded = 0
        for depth in depths:
            pg_common.load_queued(db, depth - loaded, prefix=f"d{depth}")
            loaded = depth
            proc, url = common.serve_stub(db)
            try:
                claim_samples_http(url, 5)  # warm: connections, plans, caches
                out[str(depth)] = common.summary(claim_samples_http(url, n))
            finally:
                common.stop(proc)
            floor_samples_pg(db, 5)
            out["floor"][str(depth)] = common.summary(floor_samples_pg(db, n))
            loaded -= n + 5
    return out


def measure_file(depths: list[int], n_http: int, n_seam: int) -> dict[str, Any]:
    out: dict[str, Any] = {"serve": {}, "seam": {}, "seam_floor": {}, "hot_file_bytes": {}}
    h = common.History()
    have = 0
    with tempfile.TemporaryDirectory() as tmp:
        for depth in depths:
            h.bulk_queued(depth - have, prefix=f"d{depth}")
            have = depth
            state = Path(tmp) / f"d{depth}"
            h.dump(state)
            proc, url = common.serve_stub(state)
            try:
                claim_samples_http(url, 5)
                out["serve"][str(depth)] = common.summary(claim_samples_http(url, n_http))
            finally:
                common.stop(proc)
            out["hot_file_bytes"][str(depth)] = (state / "state.json").stat().st_size
            floor: list[float] = []
            out["seam"][str(depth)] = common.summary(claim_samples_seam(state, n_seam, floor))
            out["seam_floor"][str(depth)] = common.summary(floor)
            subprocess.run(["rm", "-rf", str(state)], check=False)
    return out


def main() -> None:
    args = common.parse_args(__doc__)
    if args.smoke:
        pg_depths, file_depths, n, n_seam = [100, 1000], [100, 1000], 10, 3
    else:
        pg_depths, file_depths, n, n_seam = [1000, 10_000, 100_000, 1_000_000], [1000, 10_000, 100_000], 200, 20
    doc: dict[str, Any] = {"file": measure_file(file_depths, n, n_seam)}
    reason = pg_common.unavailable_reason()
    headline: dict[str, Any] = {"target": TARGET}
    if reason is None:
        doc["pg"] = measure_pg(pg_depths, n)
        first, last = str(pg_depths[0]), str(pg_depths[-1])
        floor = doc["pg"].pop("floor")
        doc["pg_floor"] = floor
        headline.update(pg_ms={d: round(v["median"] * 1e3, 3) for d, v in doc["pg"].items()},
                        pg_ratio_last_first=round(doc["pg"][last]["median"] / doc["pg"][first]["median"], 3),
                        pg_floor_ms={d: round(v["median"] * 1e3, 3) for d, v in floor.items()},
                        pg_vs_floor={d: common.ratio(v["median"], floor[d]["median"]) for d, v in doc["pg"].items()})
    else:
        headline.update(pg_status="unavailable", reason=reason)
    headline.update(file_serve_ms={d: round(v["median"] * 1e3, 3) for d, v in doc["file"]["serve"].items()},
                    file_seam_ms={d: round(v["median"] * 1e3, 3) for d, v in doc["file"]["seam"].items()},
                    file_seam_vs_floor={d: common.ratio(v["median"], doc["file"]["seam_floor"][d]["median"])
                                        for d, v in doc["file"]["seam"].items()},
                    hot_file_mb={d: round(b / 1e6, 2) for d, b in doc["file"]["hot_file_bytes"].items()})
    with contextlib.suppress(KeyError, ZeroDivisionError):
        f = doc["file"]["serve"]
        headline["file_serve_ratio_last_first"] = round(f[str(file_depths[-1])]["median"]
                                                        / f[str(file_depths[0])]["median"], 3)
    common.save(args.out, "b9_claim_depth", {"headline": headline, **doc, "samples_per_depth": n}, args.smoke)


if __name__ == "__main__":
    main()

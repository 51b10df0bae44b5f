"""B3: coordinator operation latency as history grows (100 .. 100k terminal jobs, 1k queued).

History is built in-process through the core (``common.History``), dumped
into a state dir, then the operations are timed on the real ``JsonStore``
(flock, atomic writes, fsync) exactly as one seam call runs them, minus the
process start (B1 measures that). The state dir is on tmpfs where there is
one (/dev/shm): the question here is growth with history, and fsync cost,
which does not grow with history, is what B1 and B2 measure on disk. Each level times claim, renew and report of
jobs enqueued at a higher priority, so every level does the same work; the
figure is each level's median over the 100-terminal level's median. Flat
means terminal jobs left the hot file.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def measure(state: Path, n: int) -> dict[str, list[float]]:
    """Claim, renew and report ``n`` jobs on disk; seconds per operation."""
    from coordinator_stub.core import Coordinator
    from coordinator_stub.stores.file import JsonStore
    from coordinator_stub.stores.locking import flock

    def coord() -> Coordinator:  # a fresh store per operation: it reads the files as a seam process does
        return Coordinator(JsonStore(state, lock=flock), time.time)

    ops: dict[str, list[float]] = {"claim": [], "renew": [], "report": []}
    for _ in range(n):
        t0 = time.perf_counter()
        view = coord().claim("b3", [])
        ops["claim"].append(time.perf_counter() - t0)
        assert view is not None and view["job"]["id"].startswith("m-"), view
        job_id, epoch = view["job"]["id"], view["lease"]["leaseEpoch"]
        t0 = time.perf_counter()
        coord().renew(job_id, "b3", epoch)
        ops["renew"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        coord().report(job_id, "b3", epoch, "shipped")
        ops["report"].append(time.perf_counter() - t0)
    return ops


def measure_in_child(state: Path, n: int) -> dict[str, list[float]]:
    """``measure`` in a fresh interpreter, as a seam call runs: the set-up's 100k in-memory records
    (this process) must not slow the timed operations through cache and allocator effects."""
    import json
    import subprocess

    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from b3_history import measure; "
            "from pathlib import Path; print(json.dumps(measure(Path(sys.argv[2]), int(sys.argv[3]))))")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent), str(state), str(n)],
                         capture_output=True, text=True, check=True, env=common.bench_env())
    result: dict[str, list[float]] = json.loads(out.stdout)
    return result


def main() -> None:
    args = common.parse_args(__doc__)
    levels, queued, per_level = ([10, 100], 20, 3) if args.smoke else ([100, 1000, 10_000, 100_000], 1000, 20)
    history = common.History()
    history.queued(queued)
    rows: list[dict[str, Any]] = []
    shm = Path("/dev/shm")
    base_dir = str(shm) if shm.is_dir() else None  # tmpfs: 100k set-up files in seconds, and no fsync noise
    with tempfile.TemporaryDirectory(dir=base_dir) as tmp:
        state = Path(tmp) / "stub"
        done = 0
        for level in levels:
            t0 = time.perf_counter()
            history.terminal(level - done)
            history.queued(per_level, prefix="m", priority=10)
            history.dump(state)
            build_s = time.perf_counter() - t0
            gc.collect()
            gc.freeze()  # the set-up's 100k records live in this process only: keep them out of GC scans
            os.sync()  # set-up writeback must not land inside the timed operations
            ops = measure_in_child(state, per_level)
            history.finish_first(per_level)  # mirror the measured jobs in memory before the next dump
            done = level + per_level
            all_ops = [x for v in ops.values() for x in v]
            hot_bytes = (state / "state.json").stat().st_size
            rows.append({"terminal": level, "queued": queued, "op_s": common.summary(all_ops),
                         "per_op_s": {k: common.summary(v) for k, v in ops.items()},
                         "hot_file_bytes": hot_bytes, "build_s": round(build_s, 2)})
            print(f"  b3: {level} terminal: op median {rows[-1]['op_s']['median'] * 1e3:.1f} ms, "
                  f"hot file {hot_bytes} B")
    base = rows[0]["op_s"]["median"]
    for row in rows:
        row["ratio"] = common.ratio(row["op_s"]["median"], base)
    headline = {"ratio_at_max": rows[-1]["ratio"], "max_terminal": rows[-1]["terminal"],
                "base_ms": round(base * 1e3, 2), "target": "<= 1.5"}
    common.save(args.out, "b3_history", {"headline": headline, "levels": rows, "state_dir_fs":
                                         "tmpfs" if base_dir else "disk"}, args.smoke)


if __name__ == "__main__":
    main()

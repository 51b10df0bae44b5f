"""B4: end to end, 200 trivial jobs (``true``) through 2 factories and the command-seam stub.

The seam command is the literal ``coordinator-stub --state DIR call``, which the
daemons run in-process (the embedded transport, docs/fleet-client.md): no
process per coordinator request, the same state directory and lock.

Figure: jobs/s and overhead per job = (wall - the jobs' own run time) / jobs,
where the jobs' own run time is the floor: ``bash -c true`` run 200 times by
one process. Both factories must do some of the work. When this build's
daemon has no fleet mode, the same figure is measured for one offline daemon
(``run --drain`` on a local inbox) and labelled so.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def floor(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(["bash", "-c", "true"], check=True)
    return time.perf_counter() - t0


def offline(base: Path, n: int) -> dict[str, object]:
    root = base / "offline"
    common.fill_local_inbox(root, n)
    t0 = time.perf_counter()
    res = subprocess.run([common.AQ, "--root", str(root), "--factory-id", "b4", "run", "--drain"],
                         env=common.bench_env(), capture_output=True, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"B4 offline daemon exited {res.returncode}: {res.stderr.decode()[-300:]}")
    shipped = len(list((root / "shipped").iterdir()))
    return {"mode": "offline, 1 factory (fleet mode unavailable)", "wall_s": wall, "shipped": shipped,
            "per_factory": {"b4": shipped}}


def fleet(base: Path, n: int) -> dict[str, object]:
    state = base / "stub"
    h = common.History()
    h.queued(n)
    h.dump(state)
    env = common.fleet_env(state)
    t0 = time.perf_counter()
    procs = [common.spawn([common.AQ, "--root", str(base / f"f{i}"), "--factory-id", f"f{i}", "run"], env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
    try:
        def shipped() -> int:
            return sum(1 for e in common.events(state) if e.get("op") == "report" and e.get("status") == 200)
        common.wait_for(lambda: shipped() >= n, 600, f"{n} jobs shipped", step=0.1)
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            common.stop(p)
    per: dict[str, int] = {}
    for e in common.events(state):
        if e.get("op") == "report" and e.get("status") == 200:
            per[e["factoryId"]] = per.get(e["factoryId"], 0) + 1
    return {"mode": "fleet, 2 factories, stub seam run in-process", "wall_s": wall, "shipped": sum(per.values()),
            "per_factory": per}


def main() -> None:
    args = common.parse_args(__doc__)
    n = 10 if args.smoke else 200
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        jobs_own = floor(n)
        why = common.fleet_unavailable(base)
        run = offline(base, n) if why else fleet(base, n)
    wall = float(run["wall_s"])  # type: ignore[arg-type]
    overhead_ms = (wall - jobs_own) / n * 1e3
    per = run["per_factory"]
    assert isinstance(per, dict)
    headline = {"mode": run["mode"], "jobs_per_s": round(n / wall, 2), "overhead_ms_per_job": round(overhead_ms, 1),
                "floor_ms_per_job": round(jobs_own / n * 1e3, 1), "factories_busy": sum(1 for v in per.values() if v),
                "target": "overhead <= 100 ms/job, both factories busy"}
    common.save(args.out, "b4_e2e", {"headline": headline, "jobs": n, "floor_s": jobs_own, **run,
                                     "fleet_unavailable": why}, args.smoke)


if __name__ == "__main__":
    main()

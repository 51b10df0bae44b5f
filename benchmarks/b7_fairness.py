"""B7: claim fairness and throughput, 8 factories hammering one command-seam stub.

Eight threads, each a factory, loop ``claim`` then ``report`` through fresh
``coordinator-stub call`` processes (as the fleet client does) until the
queue is empty. Reported: claims/s, claim latency p50/p99, claims per factory
(no starvation: every factory gets some, min/max share). The seam takes its
lock only inside the process, after start-up, and releases it before
answering, so the lock is never held across a spawn.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> None:
    args = common.parse_args(__doc__)
    factories, jobs = (8, 16) if args.smoke else (8, 240)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "stub"
        h = common.History()
        h.queued(jobs)
        h.dump(state)
        latencies: list[float] = []
        per_factory = dict.fromkeys(range(factories), 0)
        lock = threading.Lock()

        def factory(i: int) -> None:
            fid = f"f{i}"
            while True:
                t0 = time.perf_counter()
                status, view = common.seam_call(state, "POST", "/v1/fleet/claim", {"factoryId": fid})
                dt = time.perf_counter() - t0
                if status == 204:
                    return
                lease = view["lease"]
                with lock:
                    latencies.append(dt)
                    per_factory[i] += 1
                common.seam_call(state, "POST", f"/v1/fleet/jobs/{lease['jobId']}/report",
                                 {"factoryId": fid, "leaseEpoch": lease["leaseEpoch"], "outcome": "shipped"})

        threads = [threading.Thread(target=factory, args=(i,)) for i in range(factories)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    counts = sorted(per_factory.values())
    lat = common.summary(latencies)
    headline = {"claims_per_s": round(len(latencies) / wall, 1), "p50_ms": round(lat["median"] * 1e3, 1),
                "p99_ms": round(lat["p99"] * 1e3, 1), "min_share": counts[0], "max_share": counts[-1],
                "starved": sum(1 for c in counts if c == 0), "target": "report only"}
    common.save(args.out, "b7_fairness", {"headline": headline, "claims": len(latencies), "wall_s": wall,
                                          "claim_latency_s": lat, "claims_per_factory": per_factory,
                                          "factories": factories}, args.smoke)


if __name__ == "__main__":
    main()

"""B6: failover: SIGKILL the factory holding a job; time until another factory starts it.

Two fleet daemons share a command-seam stub with a short lease TTL; one job
(``sleep 60``) is enqueued. When its claim appears in events.jsonl, the
holder's whole process group is SIGKILLed; the figure is the time from the
kill to the other factory's claim, against TTL + poll interval + 1 s.
Recorded as unavailable when this build's daemon has no fleet mode.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

POLL_S = 2.0  # the daemon's default poll


def claims(state: Path) -> list[dict[str, object]]:
    return [e for e in common.events(state) if e.get("op") == "claim" and e.get("status") == 200]


def measure(base: Path, ttl: float) -> dict[str, object]:
    state = base / "stub"
    h = common.History()
    h.coord.enqueue({"id": "victim", "command": ["sleep", "60"]})
    h.dump(state)
    env = common.fleet_env(state, ttl)
    procs = {f"f{i}": common.spawn([common.AQ, "--root", str(base / f"f{i}"), "--factory-id", f"f{i}", "run"], env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)}
    try:
        first = common.wait_for(lambda: claims(state), 60, "the first claim", step=0.05)[0]
        holder = str(first["factoryId"])
        os.killpg(procs[holder].pid, signal.SIGKILL)
        killed_at = time.time()
        second = common.wait_for(lambda: claims(state)[1:], ttl + POLL_S + 30, "the reclaim", step=0.05)[0]
    finally:
        for p in procs.values():
            common.stop(p)
    gap = float(str(second["ts"])) - killed_at
    return {"holder": holder, "taker": second["factoryId"], "failover_s": gap, "bound_s": ttl + POLL_S + 1}


def main() -> None:
    args = common.parse_args(__doc__)
    ttl = 3.0 if args.smoke else 5.0
    with tempfile.TemporaryDirectory() as tmp:
        why = common.fleet_unavailable(Path(tmp))
        result = {"unavailable": why} if why else measure(Path(tmp), ttl)
    headline = {"target": "<= TTL + poll + 1 s", "ttl_s": ttl}
    if why:
        headline["status"] = "unavailable"
    else:
        headline.update(failover_s=round(float(result["failover_s"]), 2),  # type: ignore[arg-type]
                        bound_s=result["bound_s"])
    common.save(args.out, "b6_failover", {"headline": headline, **result}, args.smoke)


if __name__ == "__main__":
    main()

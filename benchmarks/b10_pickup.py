"""B10: instant pickup: from an enqueue over HTTP to the tool's start on an idle HTTP daemon, p50 and p99.

One ``coordinator-stub serve`` and one ``agent-queue run`` daemon (default
poll, 2 s) over HTTP, twice: with held claims (the server's default; the
daemon sends ``waitS``) and with plain polling (``serve --max-claim-wait 0``,
so healthz offers no hold and the daemon polls as before). Each sample
enqueues one job whose tool is ``touch FILE`` and takes the file's mtime
minus the time just before the enqueue; samples are spaced by a random
pause so polling is met at every phase. The idle CPU of the daemon and of
``serve`` with a claim held is measured too (B5's method), beside the
polling one: held claims must not cost idle CPU.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET_P50_S = 0.050


def enqueue(url: str, job: dict[str, Any]) -> None:
    req = urllib.request.Request(url + "/v1/fleet/jobs", data=json.dumps(job).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def idle_cpu(daemon: int, server: int, window: float) -> dict[str, float | None]:
    """CPU seconds per minute of the idle daemon and of ``serve`` over ``window`` (B5's measure)."""
    d0, s0, t0 = common.cpu_seconds(daemon), common.cpu_seconds(server), time.monotonic()
    time.sleep(window)
    d1, s1, t1 = common.cpu_seconds(daemon), common.cpu_seconds(server), time.monotonic()
    scale = 60 / (t1 - t0)
    return {"daemon_cpu_s_per_min": None if d0 is None or d1 is None else round((d1 - d0) * scale, 3),
            "server_cpu_s_per_min": None if s0 is None or s1 is None else round((s1 - s0) * scale, 3)}


def pickup(base: Path, serve_args: list[str], samples: int, window: float) -> dict[str, Any]:
    proc, url = common.serve_stub(base / "stub", args=serve_args)
    root, marks = base / "root", base / "marks"
    marks.mkdir()
    env = common.bench_env(AQ_FLEET="1", AQ_FLEET_API=url)
    daemon = common.spawn([common.AQ, "--root", str(root), "--factory-id", "b10", "run"], env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        common.wait_for(lambda: (root / ".state" / "daemon.json").exists(), 30, "daemon start-up")
        time.sleep(min(3.0, window))  # start-up is not idle
        cpu = idle_cpu(daemon.pid, proc.pid, window)
        waits: list[float] = []
        for i in range(samples):
            mark = marks / f"m{i}"
            start = time.time()
            enqueue(url, {"id": f"p{i}", "command": ["touch", str(mark)]})
            common.wait_for(mark.exists, 60, f"job p{i} to start")
            waits.append(mark.stat().st_mtime - start)
            time.sleep(0.3 + random.uniform(0, 2.0))  # the job ends; the next enqueue meets a random poll phase
    finally:
        common.stop(daemon)
        common.stop(proc)
    return {"pickup_s": common.summary(waits), **cpu}


def main() -> None:
    args = common.parse_args(__doc__)
    samples, window = (2, 1.0) if args.smoke else (40, 20.0)
    with tempfile.TemporaryDirectory() as tmp:
        held = pickup(Path(tmp) / "held", [], samples, window)
        polled = pickup(Path(tmp) / "polled", ["--max-claim-wait", "0"], samples, window)
    h, p = held["pickup_s"], polled["pickup_s"]
    headline = {
        "held_p50_ms": round(h["median"] * 1000, 1), "held_p99_ms": round(h["p99"] * 1000, 1),
        "polled_p50_ms": round(p["median"] * 1000, 1), "polled_p99_ms": round(p["p99"] * 1000, 1),
        "p50_ratio_held_to_polled": round(common.ratio(h["median"], p["median"]), 3),
        "held_daemon_cpu_s_per_min": held["daemon_cpu_s_per_min"],
        "polled_daemon_cpu_s_per_min": polled["daemon_cpu_s_per_min"],
        "held_server_cpu_s_per_min": held["server_cpu_s_per_min"],
        "polled_server_cpu_s_per_min": polled["server_cpu_s_per_min"],
        "target": f"held p50 <= {TARGET_P50_S * 1000:g} ms, idle CPU (B5) unchanged",
    }
    common.save(args.out, "b10_pickup", {"headline": headline, "held": held, "polled": polled, "poll_s": 2.0},
                args.smoke)


if __name__ == "__main__":
    main()

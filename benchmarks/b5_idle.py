"""B5: an idle daemon: CPU seconds per minute and RSS with an empty queue, offline and in fleet mode.

Starts ``agent-queue run`` at the default poll interval on an empty root,
lets start-up finish, then samples its CPU time (itself plus reaped children,
so any seam processes count) over a window and scales to a minute.
Fleet mode is measured twice: over the command seam (the literal
``coordinator-stub --state DIR call`` of this venv, which the daemon runs
in-process; any other command would spawn a process per poll) and over HTTP
against a real ``coordinator-stub serve`` (whose CPU is reported apart).
Fleet mode is measured when this build's daemon supports it, else recorded
as unavailable with the daemon's own message.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def idle(root: Path, window: float, env: dict[str, str]) -> dict[str, float | None]:
    proc = common.spawn([common.AQ, "--root", str(root), "--factory-id", "idle", "run"], env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        common.wait_for(lambda: (root / ".state" / "daemon.json").exists() or proc.poll() is not None, 30,
                        "daemon start-up")
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode} at start-up")
        time.sleep(min(3.0, window))  # start-up (imports, recovery) is not idle cost
        c0, t0 = common.cpu_seconds(proc.pid), time.monotonic()
        time.sleep(window)
        c1, t1 = common.cpu_seconds(proc.pid), time.monotonic()
        rss = common.rss_mb(proc.pid)
    finally:
        common.stop(proc)
    per_min = None if c0 is None or c1 is None else (c1 - c0) * 60 / (t1 - t0)
    return {"cpu_s_per_min": per_min, "rss_mb": rss, "window_s": round(t1 - t0, 2)}


def main() -> None:
    args = common.parse_args(__doc__)
    window = 1.0 if args.smoke else 30.0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        modes: dict[str, object] = {"offline": idle(base / "offline", window, common.bench_env())}
        why = common.fleet_unavailable(base)
        if why is None:
            env = common.bench_env(AQ_FLEET="1", AQ_FLEET_API_CMD=f"{common.STUB} --state {base / 'stub'} call")
            modes["fleet"] = idle(base / "fleet", window, env)
            # Over HTTP: one long-lived `coordinator-stub serve`, no process per poll (its own CPU reported apart).
            proc, url = common.serve_stub(base / "stub-http")
            try:
                s0 = common.cpu_seconds(proc.pid)
                t0 = time.monotonic()
                http_env = common.bench_env(AQ_FLEET="1", AQ_FLEET_API=url)
                modes["fleet_http"] = idle(base / "fleet-http", window, http_env)
                s1 = common.cpu_seconds(proc.pid)
                if s0 is not None and s1 is not None and isinstance(modes["fleet_http"], dict):
                    modes["fleet_http"]["server_cpu_s_per_min"] = round((s1 - s0) * 60 / (time.monotonic() - t0), 3)
            finally:
                common.stop(proc)
        else:
            modes["fleet"] = {"unavailable": why}
    off = modes["offline"]
    assert isinstance(off, dict)
    headline = {"offline_cpu_s_per_min": off["cpu_s_per_min"] and round(off["cpu_s_per_min"], 3),
                "offline_rss_mb": off["rss_mb"] and round(off["rss_mb"], 1), "target": "< 0.3 CPU-s/min, < 40 MB"}
    fleet = modes["fleet"]
    if isinstance(fleet, dict) and "cpu_s_per_min" in fleet:
        headline["fleet_cpu_s_per_min"] = fleet["cpu_s_per_min"] and round(fleet["cpu_s_per_min"], 3)
        headline["fleet_rss_mb"] = fleet["rss_mb"] and round(fleet["rss_mb"], 1)
    http = modes.get("fleet_http")
    if isinstance(http, dict) and "cpu_s_per_min" in http:
        headline["fleet_http_cpu_s_per_min"] = http["cpu_s_per_min"] and round(http["cpu_s_per_min"], 3)
        headline["fleet_http_server_cpu_s_per_min"] = http.get("server_cpu_s_per_min")
    else:
        headline["fleet"] = "unavailable"
    common.save(args.out, "b5_idle", {"headline": headline, "modes": modes, "poll_s": "default"}, args.smoke)


if __name__ == "__main__":
    main()

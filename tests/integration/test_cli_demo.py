"""`make demo`'s script works end to end: one ships, two are quarantined for the right reasons."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli_support import clean_env

DEMO = Path(__file__).resolve().parents[2] / "demo" / "offline-demo"


def test_offline_demo_runs_and_reports_where_each_job_ended() -> None:
    out = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=60, env=clean_env())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo-ships           shipped" in out.stdout
    assert "timed out after 1s" in out.stdout and "verify gate: exited with status 1" in out.stdout

"""Helpers for the CLI tests that run `python -m agent_queue` in real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQ_")}
    env.update(extra)
    return env


def aq(root: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
       timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent_queue", "--root", str(root), *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=env or clean_env())


def start(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agent_queue", "--root", str(root), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or clean_env())


def status(root: Path) -> dict[str, Any]:
    out = aq(root, "status", "--json")
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def wait_for(cond: Callable[[], Any], what: str, deadline_s: float = 20) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def running_pid(root: Path) -> int | None:
    for job_dir in (root / "running").glob("*"):
        try:
            pid = json.loads((job_dir / "result.json").read_text()).get("pid")
        except (OSError, ValueError):
            continue
        if pid:
            return int(pid)
    return None

"""Helpers for the fleet-mode tests: real `agent-queue run` daemons against a real coordinator-stub."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cli_support import aq, clean_env

from tests.stubutil import STUB_ARGV, seam_call, seam_command

RECORDING_SEAM = Path(__file__).resolve().parents[1] / "fakes" / "recording_seam.py"


def fleet_env(api_cmd: str | None = None, api: str | None = None, token: str | None = None,
              **extra: str) -> dict[str, str]:
    """The daemon's environment: fleet on, the given transport, nothing inherited from AQ_*."""
    env = clean_env(**{"AQ_FLEET": "1", **extra})
    if api_cmd is not None:
        env["AQ_FLEET_API_CMD"] = api_cmd
    if api is not None:
        env["AQ_FLEET_API"] = api
    if token is not None:
        env["AQ_FLEET_TOKEN"] = token
    return env


def recording_command(state: Path, log: Path, ttl: float | None = None, ignore_dry_run: bool = False) -> str:
    """An AQ_FLEET_API_CMD that records each call in ``log`` and forwards it to the stub on ``state``."""
    real = shlex.split(seam_command(state, ttl, ignore_dry_run))
    return shlex.join([sys.executable, str(RECORDING_SEAM), str(log), "--", *real])


def recorded(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def coord(state: Path, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One call to the stub through the real seam; (status, body)."""
    out = seam_call(state, method, path, json.dumps(body) if body is not None else b"")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    return answer["status"], answer["body"]


def coord_enqueue(state: Path, spec: dict[str, Any]) -> None:
    status, body = coord(state, "POST", "/v1/fleet/jobs", spec)
    assert status in (200, 201), body


def coord_job(state: Path, job_id: str) -> dict[str, Any]:
    status, body = coord(state, "GET", f"/v1/fleet/jobs/{job_id}")
    assert status == 200, body
    result: dict[str, Any] = body
    return result


def steal_script(state: Path, job_id: str, holder: str, epoch: int, thief: str) -> str:
    """Shell text that releases ``holder``'s lease (uncounted) and claims the job as ``thief``."""
    stub = shlex.join([*STUB_ARGV, "--state", str(state), "call"])
    release = json.dumps({"factoryId": holder, "leaseEpoch": epoch, "reason": "stolen by the test",
                          "retry": True, "countAttempt": False})
    claim = json.dumps({"factoryId": thief, "capabilities": [], "dryRun": False})
    return (f"printf '%s' {shlex.quote(release)} | {stub} POST /v1/fleet/jobs/{job_id}/release >/dev/null && "
            f"printf '%s' {shlex.quote(claim)} | {stub} POST /v1/fleet/claim >/dev/null")


def start_daemon(root: Path, env: dict[str, str], *args: str, factory: str = "f1") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agent_queue", "--root", str(root), "--factory-id", factory,
                             "run", "--poll", "0.2", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)


def local_records(root: Path, kind: str) -> list[str]:
    base = root / kind
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


def result_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / "result.json").read_text())
    return data


def tool_pids(root: Path) -> list[int]:
    """Pids recorded by running jobs (their process groups are killed at test teardown)."""
    pids = []
    for job_dir in (root / "running").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            pid = json.loads((job_dir / "result.json").read_text()).get("pid")
            if pid:
                pids.append(int(pid))
    return pids


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class Daemons:
    """Daemons started by a test; ``stop_all`` kills them and their jobs' tool groups, also on failure."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []

    def start(self, root: Path, env: dict[str, str], *args: str, factory: str = "f1") -> subprocess.Popen[str]:
        proc = start_daemon(root, env, *args, factory=factory)
        self.procs.append((proc, root))
        return proc

    def stop_all(self) -> None:
        for proc, root in self.procs:
            for pid in tool_pids(root):
                kill_group(pid)
            if proc.poll() is None:
                kill_group(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=10)


@contextlib.contextmanager
def daemons() -> Iterator[Daemons]:
    ds = Daemons()
    try:
        yield ds
    finally:
        ds.stop_all()


__all__ = ["aq"]

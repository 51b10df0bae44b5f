"""Ship hooks a crash interrupted: a marker per hook under way, so start-up runs it again (at least once).

A job moves to shipped/ *before* its ship hook runs; a daemon killed between
the two (or during the hook) used to leave the job shipped with its hook never
run or cut short, and nothing ever ran it: the PR was never opened. The marker
``<root>/.state/ship-hooks/<id>.json`` is written before the move to shipped/
(and again with the hook's pid and start-time fingerprint once it runs) and removed when
it ends; at start-up the runner stops a leftover hook process and runs each
marked hook again. Hooks must therefore be idempotent (a repo job's hook is
skipped once it completed: ``gitrepo`` records ``hookDone``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from agent_queue import process
from agent_queue.fsutil import ensure_dir, read_json, write_json_atomic

DIR = Path(".state") / "ship-hooks"


def _path(root: Path, job_id: str) -> Path:
    return ensure_dir(root / DIR) / f"{job_id}.json"


def mark(root: Path, job_id: str, pid: int | None = None, cgroup: str | None = None) -> None:
    """The hook of ``job_id`` is about to run (or runs as ``pid``, in ``cgroup``): re-run it if this daemon dies."""
    info: dict[str, Any] = {"jobId": job_id}
    if pid is not None:
        info.update(pid=pid, pidStart=process.identity(pid), cgroup=cgroup)
    write_json_atomic(_path(root, job_id), info)


def done(root: Path, job_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(root, job_id).unlink()


def interrupted(root: Path) -> list[str]:
    """Job ids whose hook a crash interrupted; any leftover hook process is stopped first."""
    folder = root / DIR
    ids = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            info = read_json(path)
            pid, cgroup = info.get("pid"), info.get("cgroup")
            process.stop_leftover(pid if isinstance(pid, int) and pid > 1 else 0, info.get("pidStart"),
                                  cgroup if isinstance(cgroup, str) else None)
        ids.append(path.stem)
    return ids

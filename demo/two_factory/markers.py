"""Execution markers: the demo's own evidence of who ran a job, independent of what the coordinator says.

Each job's command leaves one marker file per execution
(`<markers>/<jobId>.XXXXXX` holding "<pgid> <cwd>", plus a line `done` when
it finishes) and works in UNIT_S units, so a frozen job makes no progress
while it is frozen. The command is argv only (`sh -c SCRIPT sh ARGS`): no job
field passes through a shell.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

UNIT_S = 0.2  # one work unit of a job's command: the job makes progress only while it runs
JOB_SCRIPT = ('m=$(mktemp "$1/$2.XXXXXX") || exit 1; echo "$$ $(pwd -P)" > "$m"; i=0; '
              'while [ "$i" -lt "$3" ]; do sleep ' + str(UNIT_S) + '; i=$((i+1)); done; echo done >> "$m"')


def job_command(markers: Path, job_id: str, seconds: float) -> list[str]:
    """The argv of a job that leaves its marker in `markers` and works for about `seconds`."""
    units = max(1, math.ceil(seconds / UNIT_S))
    return ["sh", "-c", JOB_SCRIPT, "sh", str(markers), job_id, str(units)]


@dataclass(frozen=True)
class Execution:
    job_id: str
    factory: str
    pgid: int
    finished: bool
    started: float


def executions(markers: Path, job_id: str, owner_of: Callable[[str], str]) -> list[Execution]:
    """Every execution of `job_id` so far, oldest first; `owner_of(cwd)` names the factory it ran on."""
    out = []
    for path in sorted(markers.glob(f"{job_id}.*")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            lines = path.read_text().splitlines()
            pgid, cwd = lines[0].split(" ", 1)
            out.append(Execution(job_id, owner_of(cwd), int(pgid), "done" in lines[1:], path.stat().st_mtime))
    return sorted(out, key=lambda e: e.started)

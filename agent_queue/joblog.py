"""A job's log, ``<root>/logs/<id>.log``: tool, verify gate and ship hook output, each run under a header line.

Shared by the attempt (``attempt``) and the ship (``shipping``) so both write
the same headers; ``agent-queue log`` streams the file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent_queue.fsutil import append_line, ensure_dir
from agent_queue.source import Claim, Record
from agent_queue.timeutil import to_rfc3339


def log_path(root: Path, job_id: str) -> Path:
    return ensure_dir(root / "logs") / f"{job_id}.log"


def log_header(root: Path, factory_id: str, job_id: str, text: str) -> None:
    append_line(log_path(root, job_id), f"=== {to_rfc3339(time.time())} {factory_id} {job_id} {text}")


def show(argv: tuple[str, ...]) -> str:
    """argv for a log header, each item cut short (prompts can be 1 MB)."""
    return " ".join(a if len(a) <= 80 else a[:77] + "..." for a in argv)


def log_fields(claim: Claim, record: Record) -> dict[str, Any]:
    """The fields every daemon log line about one attempt carries."""
    return {"job_id": claim.job.id, "attempt": record["attempt"]}

"""The scripted-response queue shared by the fake seam and the fake HTTP coordinator.

A test writes a JSON list of steps to a file; each request pops the first
step (under a file lock, so concurrent requests never take the same one) and
appends one JSON line describing itself to a log file. Steps:
``{"status": N, "body": ...}`` answer; ``{"exit": N, "stderr": "..."}``
(seam) exit without an answer; ``{"raw": "text", "status": N}`` send bytes
that are not a valid answer; ``{"sleep": S, "grandchild": bool}`` hang;
``{"drop": true}`` (HTTP) close the connection without answering. When the
script is empty the answer is a 500 ``script_exhausted``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from filelock import FileLock

EXHAUSTED = {"status": 500, "body": {"error": {"code": "script_exhausted", "message": "no scripted answer left"}}}


def pop_step(script: Path) -> dict[str, Any]:
    with FileLock(str(script) + ".lock"):
        steps = json.loads(script.read_text(encoding="utf-8")) if script.exists() else []
        if not steps:
            return dict(EXHAUSTED)
        step = steps.pop(0)
        script.write_text(json.dumps(steps), encoding="utf-8")
        return dict(step)


def record(log: Path, entry: dict[str, Any]) -> None:
    with FileLock(str(log) + ".lock"), open(log, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


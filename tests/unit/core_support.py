"""Shared helpers for the core unit tests (importable because tests/unit is on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent_queue.control import Control
from agent_queue.inbox import LocalQueue
from agent_queue.jobs import Job
from agent_queue.local_source import LocalSource
from agent_queue.runner import Runner, RunOptions
from agent_queue.settings import Settings, load_settings


def make_settings(root: Path, config: str | None = None, env: dict[str, str] | None = None,
                  **flags: Any) -> Settings:
    if config is not None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "agent-queue.toml").write_text(config)
    base = {"PATH": os.environ["PATH"], "HOME": str(root), "AQ_FLEET_TOKEN": "tok-secret-123"}
    return load_settings({"root": str(root), "factory_id": "test-1", "poll_s": 0.05, **flags}, {**base, **(env or {})})


def shell_job(job_id: str, *cmd: str, **spec: Any) -> Job:
    return Job.from_dict({"id": job_id, "command": list(cmd), **spec})


def drain(settings: Settings, control: Control | None = None) -> int:
    queue = LocalQueue(settings.root).init()
    return Runner(settings, LocalSource(queue), control).work(RunOptions(drain=True))


def result(root: Path, state: str, job_id: str) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads((root / state / job_id / "result.json").read_text())
    return data

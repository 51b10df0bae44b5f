"""Helpers for the planner tests: a fake planning agent configured as the tool ``planner`` of a root."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FAKE_PLANNER = Path(__file__).resolve().parents[1] / "fakes" / "fake_planner.py"


def configure(root: Path, script: Path, replies: list[dict[str, Any]] | None = None) -> None:
    """``root``'s agent-queue.toml names the fake planner (tool ``planner``, claude-json output)."""
    root.mkdir(parents=True, exist_ok=True)
    script.mkdir(parents=True, exist_ok=True)
    if replies is not None:
        (script / "replies.json").write_text(json.dumps(replies))
    argv = json.dumps([sys.executable, str(FAKE_PLANNER), str(script)])
    (root / "agent-queue.toml").write_text(
        f'[tools.planner]\nargv = {argv}\nprompt_via = "stdin"\noutput_format = "claude-json"\n')


def answer(children: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A reply whose answer holds the plan in a fenced json block, with prose around it."""
    body = json.dumps({"children": children}, indent=1)
    return {"text": f"Here is the plan.\n\n```json\n{body}\n```\nGood luck.", **extra}


def runs(script: Path) -> int:
    count = script / "count"
    return int(count.read_text()) if count.exists() else 0


def prompt_of(script: Path, n: int) -> str:
    return (script / f"prompt-{n}.txt").read_text()


def shell(name: str, log: Path, **extra: Any) -> dict[str, Any]:
    """A planned shell child that records its run in ``log``."""
    return {"id": name, "tool": "shell", "command": ["sh", "-c", f"echo {name} >> {log}"], **extra}

"""Render the chaos figures JSON (from ``--chaos-figures``) as the markdown table of docs/reliability.md.

    python -m tests.chaos.report docs/reliability-figures.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FAULTS = {"5xx": "coordinator answers 503", "drop": "answer lost after the operation took effect",
          "garbage": "garbage body instead of the answer", "slow": "slow answer (+0.2 s)",
          "timeout": "no answer: call held, then dropped before reaching the coordinator"}
PHASES = {"tool": "running the tool", "verify": "in the verify gate", "held": "holding a job between steps "
          "(claim, report(shipped), move)", "ship": "in the ship hook", "idle": "idle (polling)"}


def command(name: str) -> str:
    transport = name.removesuffix("-long")
    if name.endswith("-long"):
        return f"`make chaos` (`-k {transport}`)"
    return f"`.venv/bin/pytest -s -m chaos tests/chaos -k {transport}`"


def rows(figures: dict[str, dict[str, Any]]) -> list[str]:
    out = ["| run | fault / check | count | outcome | reproduce |", "|---|---|---|---|---|"]
    for name, f in sorted(figures.items()):
        cmd = command(name)
        head = f"{name} ({f['factories']} factories, {f['jobs']} jobs, seed {f['seed']}, {f.get('wallS')} s)"

        def row(what: str, count: object, outcome: str, head: str = head, cmd: str = cmd) -> None:
            out.append(f"| {head} | {what} | {count} | {outcome} | {cmd} |")

        for kind, n in f["faults"].items():
            row(f"injected: {FAULTS.get(kind, kind)}", n, "retried; no crash, no double ship")
        row("SIGKILL + restart of a daemon (`agent-queue run`)", f["kills"],
            "job released/reclaimed, or its interrupted ship resumed on restart")
        for phase, n in f.get("killPhases", {}).items():
            row(f"&nbsp;&nbsp;of which killed {PHASES.get(phase, phase)}", n, "as above")
        row("SIGSTOP longer than the lease TTL, then SIGCONT", f["pauses"], "lease reclaimed; paused holder fenced")
        if f["coordRestarts"]:
            row("coordinator restart", f["coordRestarts"], "clients retried; state kept")
        row(f"executions / reclaims / 409s (all stale or non-holder: {f['bad409'] == 0})",
            f"{f['executions']} / {f['reclaims']} / {f['conflicts409']}", "expected under faults")
        row("**double ships / lost / ship after 409**", f"**{f['doubleShips']} / {f['lost']} / {f['shipAfter409']}**",
            f"must be 0 / 0 / 0; local roots agree: {f['localAgrees']}")
    return out


if __name__ == "__main__":
    print("\n".join(rows(json.loads(Path(sys.argv[1]).read_text()))))

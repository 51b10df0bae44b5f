"""The built-in planning prompt: what a planner agent is asked, and what it is told after a refused plan.

One template, filled per try: the epic, the tools and profiles a child may
name, the parent's budget, what an earlier try got wrong (``problems``) and,
when re-planning, what already shipped or failed (``context``). The answer
format is the composite spec's JSON, so what comes back goes through the same
validation as a hand-written composite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TEMPLATE = """\
You are the planner of a fleet of coding agents. Break the epic below into a
small set of leaf jobs that independent agents can carry out in parallel, each
in its own checkout of the repository. Do not change any file: only read and plan.

EPIC:
{epic}

Answer with exactly one JSON object in a ```json fenced block, of this form:

```json
{{"children": [
  {{"id": "schema", "tool": "{tool}", "prompt": "what this agent must do, self-contained",
    "dependsOn": [], "phase": 1, "verify": ["make", "test"], "requires": [],
    "budget": {{"timeoutS": 1800, "maxAttempts": 2}}}},
  {{"id": "api", "tool": "{tool}", "prompt": "...", "dependsOn": ["schema"], "phase": 2}}
]}}
```

Rules (a plan breaking one is refused and you are asked again):
- ids: letters, digits, '.', '_', '-'; unique; short (the epic's id is prefixed to each).
- dependsOn names sibling ids only; no cycles; a child never depends on a later phase.
- tool is one of: {tools}; profile (optional) one of: {profiles}.
- a "shell" child needs "command" (an argv list) instead of a prompt.
- verify (optional) is an argv list run in the child's checkout after its agent; it must pass.
- budget.timeoutS / budget.costUsd are per child; together they must stay within the epic's budget: {budget}.
{context}{problems}"""

PROBLEMS = """
Your previous plan was refused. Fix every problem below and answer again with the whole plan:
{lines}
"""

CONTEXT = """
This epic was planned and run before. Children that SHIPPED are done and are kept
as they are; do not list them again (you may depend on their ids). Children that
did not ship may be replaced or changed. What happened:
{lines}
"""


def build(epic: str, *, tool: str, tools: Sequence[str], profiles: Sequence[str], budget: str,
          problems: Sequence[str] = (), context: Sequence[str] = ()) -> str:
    """The planning prompt of one try."""
    return TEMPLATE.format(
        epic=epic.strip(), tool=tool, tools=", ".join(tools), profiles=", ".join(profiles), budget=budget,
        context=CONTEXT.format(lines=_bullets(context)) if context else "",
        problems=PROBLEMS.format(lines=_bullets(problems)) if problems else "",
    )


def budget_text(parent: Mapping[str, Any]) -> str:
    """The epic's budget as the prompt states it: ``timeoutS 7200, costUsd 5`` or ``none set``."""
    budget = {k: v for k, v in (parent.get("budget") or {}).items() if k in ("timeoutS", "costUsd")}
    return ", ".join(f"{k} {v:g}" for k, v in budget.items()) or "none set"


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def history_line(child_id: str, state: str, spec: Mapping[str, Any], attempts: int, reason: Any) -> str | None:
    """What a re-planning agent is told of one child (``state``: shipped | quarantined | anything else,
    which never ended); None for a shipped planning run (kept, but not news). Both queues use it."""
    task = " ".join(str(spec.get("prompt") or " ".join(spec.get("command") or ())).split())[:300]
    if state == "shipped":
        return None if spec.get("planFor") else f"{child_id}: SHIPPED (kept). Its task was: {task}"
    if state == "quarantined":
        return f"{child_id}: FAILED after {attempts} attempt(s): {reason}. Its task was: {task}"
    return f"{child_id}: did not run ({state}). Its task was: {task}"

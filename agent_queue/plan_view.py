"""A plan drawn for the person who approves it: an indented tree for the terminal, a Mermaid flowchart for a file.

Both take the composite spec (wire form, already valid). In the tree each
child sits under the last of its dependencies in dependency order (so it is
read after everything it waits for), and names its other dependencies; a
child with none is a root.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent_queue import composite
from agent_queue.jobs import Job

EXCERPT = 72


def tree(spec: Mapping[str, Any]) -> str:
    """The DAG as an indented tree, phases and budgets shown."""
    job = Job.from_dict(spec, where="plan")
    order = composite.validate_graph(job.children, where="plan")
    by_id = {c.id: c for c in job.children}
    lines = [f"{job.id}: {len(job.children)} children{_parent_notes(job)}"]
    lines += ["  " * depth + "- " + _describe(by_id[cid], under)
              for depth, cid, under in nest(order, {c.id: c.depends_on for c in job.children})]
    return "\n".join(lines)


def nest(order: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[tuple[int, str, str | None]]:
    """(depth, id, the dependency it is shown under) per node, in reading order: each node under the
    last of its dependencies in ``order`` (a dependency order), a node with none at depth 1."""
    rank = {cid: i for i, cid in enumerate(order)}
    under: dict[str | None, list[str]] = {}
    for cid in order:
        known = [d for d in deps.get(cid, ()) if d in rank]
        under.setdefault(max(known, key=rank.__getitem__) if known else None, []).append(cid)
    out: list[tuple[int, str, str | None]] = []

    def walk(key: str | None, depth: int) -> None:
        for cid in under.get(key, []):
            out.append((depth, cid, key))
            walk(cid, depth + 1)

    walk(None, 1)
    return out


def dag_lines(nodes: Sequence[Mapping[str, Any]], indent: str = "    ") -> list[str]:
    """A rollup's ``plan.dag`` (nodes ``{id, dependsOn, state}``) as an indented tree for ``status`` and
    ``fleet-status``: ``- id [state]``, each node under the last of its dependencies."""
    deps = {str(n["id"]): [str(d) for d in n.get("dependsOn") or ()] for n in nodes}
    states = {str(n["id"]): str(n.get("state")) for n in nodes}
    order: list[str] = []
    pending = list(deps)
    while pending:  # dependencies first; a dependency outside the nodes does not hold a node back
        ready = [cid for cid in pending if all(d in order or d not in deps for d in deps[cid])] or pending[:1]
        order += ready
        pending = [cid for cid in pending if cid not in ready]
    lines = []
    for depth, cid, shown in nest(order, deps):
        others = [d for d in deps[cid] if d != shown]
        also = f" (also after {', '.join(others)})" if others else ""
        lines.append(indent + "  " * (depth - 1) + f"- {cid} [{states[cid]}]{also}")
    return lines


def mermaid(spec: Mapping[str, Any]) -> str:
    """A Mermaid flowchart: one node per child (grouped by phase), an arrow per dependency."""
    job = Job.from_dict(spec, where="plan")
    node = {c.id: f"n{i}" for i, c in enumerate(job.children)}
    lines = ["flowchart TD"]
    phases = sorted({c.phase for c in job.children if c.phase is not None})
    for phase in [None, *phases]:
        members = [c for c in job.children if c.phase == phase]
        indent = "  " if phase is None else "    "
        if phase is not None:
            lines.append(f'  subgraph phase{phase}["phase {phase}"]')
        lines += [f'{indent}{node[c.id]}["{_label(c.id + ": " + _what(c))}"]' for c in members]
        if phase is not None:
            lines.append("  end")
    lines += [f"  {node[dep]} --> {node[c.id]}" for c in job.children for dep in c.depends_on]
    return "\n".join(lines) + "\n"


def _parent_notes(job: Job) -> str:
    notes = []
    if job.verify:
        notes.append("verify: " + " ".join(job.verify))
    if job.budget.to_dict():
        notes.append("budget: " + _budget(job))
    return f" ({'; '.join(notes)})" if notes else ""


def _describe(child: Job, shown_under: str | None) -> str:
    parts = [child.id]
    if child.phase is not None:
        parts.append(f"[phase {child.phase}]")
    others = [d for d in child.depends_on if d != shown_under]
    if others:
        parts.append("(also after " + ", ".join(others) + ")")
    parts.append(f"{child.tool}: {_what(child)}")
    if child.budget.to_dict():
        parts.append(f"budget {_budget(child)}")
    if child.verify:
        parts.append("verify: " + " ".join(child.verify))
    return " ".join(parts)


def _what(child: Job) -> str:
    text = " ".join((child.prompt or " ".join(child.command)).split())
    return text if len(text) <= EXCERPT else text[: EXCERPT - 3] + "..."


def _budget(job: Job) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in job.budget.to_dict().items())


def _label(text: str) -> str:
    """Mermaid labels are quoted strings: quotes and brackets become entity codes."""
    for char, code in (('"', "#quot;"), ("[", "#91;"), ("]", "#93;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return text

"""Validation of a composite job's child graph, shared by the coordinator and the local queue.

A composite job is a parent plus leaf children linked by ``dependsOn`` (ids of
siblings that must ship first) and an optional ``phase`` (no child of phase
N+1 runs before every child of phase N shipped). Whoever accepts a composite
job calls ``validate_graph`` once, at the edge, so nothing downstream can meet
an unknown dependency, a duplicate id or a cycle that would block work forever.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent_queue.errors import InvalidJob
from agent_queue.jobs import Job


def validate_graph(children: Sequence[Job], *, where: str = "composite") -> list[str]:
    """Return the child ids in a dependency-respecting order; raise ``InvalidJob`` naming the problem.

    Refuses duplicate ids, a ``dependsOn`` naming no sibling (or the child itself),
    cycles (the message names the ids on the cycle), and a dependency on a child
    of a later phase (it could never ship before its dependent's phase opens).
    """
    by_id: dict[str, Job] = {}
    for child in children:
        if child.id in by_id:
            raise InvalidJob(f"{where}: duplicate child id {child.id!r}")
        by_id[child.id] = child
    for child in children:
        for dep in child.depends_on:
            if dep == child.id:
                raise InvalidJob(f"{where}: child {child.id!r} depends on itself")
            if dep not in by_id:
                raise InvalidJob(f"{where}: child {child.id!r} depends on unknown id {dep!r}")
            dep_phase = by_id[dep].phase
            if child.phase is not None and dep_phase is not None and dep_phase > child.phase:
                raise InvalidJob(
                    f"{where}: child {child.id!r} (phase {child.phase}) depends on {dep!r} "
                    f"of the later phase {dep_phase}"
                )
    return _topological_order(by_id, where)


def _topological_order(by_id: dict[str, Job], where: str) -> list[str]:
    """Depth-first order; a back edge is a cycle, reported as ``a -> b -> a``."""
    order: list[str] = []
    done: set[str] = set()
    for root in by_id:
        if root in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                path.append(node)
                on_path.add(node)
            deps = by_id[node].depends_on
            if i < len(deps):
                stack.append((node, i + 1))
                dep = deps[i]
                if dep in on_path:
                    cycle = path[path.index(dep):] + [dep]
                    raise InvalidJob(f"{where}: dependency cycle {' -> '.join(cycle)}")
                if dep not in done:
                    stack.append((dep, 0))
                continue
            path.pop()
            on_path.discard(node)
            done.add(node)
            order.append(node)
    return order

"""Imports run one way: no cycle in agent_queue + coordinator_stub, and the layering rules hold.

The graph is read from the source (AST), not from what a run happened to
import, so a lazy import inside a function counts like a top-level one: a
cycle hidden behind a function-level import is still a cycle. Imports under
``if TYPE_CHECKING:`` are left out (they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("agent_queue", "coordinator_stub")
# What the coordinator (and its per-call seam) may load from agent_queue: small, I/O-light, fleet-free.
CORE = {"agent_queue.errors", "agent_queue.timeutil", "agent_queue.fsutil", "agent_queue.cjson", "agent_queue.ctxlib",
        "agent_queue.jobs", "agent_queue.composite"}
# The one door from the factory into the coordinator's code (see its docstring).
SEAM = "agent_queue.fleet.embedded"

Graph = dict[str, set[str]]


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``packages`` under ``root``."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth, except those under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join([*package, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules ``module`` imports (any package), a ``from pkg import mod`` resolved to ``pkg.mod``."""
    out: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        base = _base(module, path, node)
        for alias in node.names:
            out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    out.discard(module)  # `from . import x` inside a package's own __init__ is not a cycle
    return out


def import_graph(root: Path, packages: Iterable[str]) -> Graph:
    files = module_files(root, packages)
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue  # the standard library and third parties
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def importers(graph: Graph, target: str) -> set[str]:
    """Modules that import ``target`` or anything below it."""
    return {m for m, deps in graph.items() if any(d == target or d.startswith(target + ".") for d in deps)}


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(REPO, PACKAGES)


# --- the checker itself can fail ------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_cycle_through_a_lazy_import_is_found(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import thing\n",
        "pkg/b.py": "def thing():\n    from pkg import c\n    return c\n",
        "pkg/c.py": "import pkg.a\n",
        "pkg/d.py": "from pkg import c\n",
    })
    assert cycles(import_graph(tmp_path, ["pkg"])) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_relative_and_type_checking_imports(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/x.py": "from typing import TYPE_CHECKING\nfrom .. import y\nif TYPE_CHECKING:\n    import pkg.z\n",
        "pkg/y.py": "from .sub.x import name\n",
        "pkg/z.py": "from pkg.sub import x\n",
    })
    g = import_graph(tmp_path, ["pkg"])
    assert g["pkg.sub.x"] == {"typing", "pkg.y"}
    assert g["pkg.y"] == {"pkg.sub.x"}
    assert cycles(g) == [["pkg.sub.x", "pkg.y"]]  # the TYPE_CHECKING edge to z is not counted


# --- the rules ----------------------------------------------------------------------------


def test_the_graph_covers_both_packages(graph: Graph) -> None:
    assert {"agent_queue.cli", "agent_queue.source", SEAM, "coordinator_stub.seam"} <= set(graph)
    assert "agent_queue.composite_queue" in graph["agent_queue.local_source"]


def test_no_import_cycle_in_agent_queue_or_coordinator_stub(graph: Graph) -> None:
    assert cycles(graph) == []


def test_nothing_imports_the_cli_but_the_entry_point(graph: Graph) -> None:
    assert importers(graph, "agent_queue.cli") <= {"agent_queue.__main__"}
    assert importers(graph, "coordinator_stub.cli") <= {"coordinator_stub.__main__"}


def test_command_operations_are_called_by_the_cli_only(graph: Graph) -> None:
    cli = {"agent_queue.cli", "agent_queue.cli_plan"}  # the planner's commands live in their own CLI file
    assert importers(graph, "agent_queue.service") <= cli
    assert importers(graph, "agent_queue.fleet.ops") <= cli


def test_the_daemon_is_assembled_in_one_place(graph: Graph) -> None:
    assert importers(graph, "agent_queue.assemble") == {"agent_queue.service"}


def test_the_source_protocol_knows_no_implementation(graph: Graph) -> None:
    inside = {d for d in graph["agent_queue.source"] if d.startswith("agent_queue")}
    assert inside <= CORE


def test_only_the_embedded_seam_imports_the_coordinator(graph: Graph) -> None:
    agent_side = {m for m in importers(graph, "coordinator_stub") if m.startswith("agent_queue")}
    assert agent_side == {SEAM}


def test_the_core_the_coordinator_loads_stays_small(graph: Graph) -> None:
    for module in CORE:
        inside = {d for d in graph[module] if d.startswith("agent_queue")}
        assert inside <= CORE, module
        assert not {"requests", "click", "filelock"} & {d.split(".")[0] for d in graph[module]}, module


def test_only_the_postgresql_store_imports_psycopg(graph: Graph) -> None:
    """The seam and the file store never load psycopg: only the PostgreSQL store, its administration and
    the replicas' wake-up hints do, and only the store choice (a URL), that administration and serve's
    held claims (given a URL) import them."""
    assert {m for m in graph if {"psycopg", "psycopg_pool"} & {d.split(".")[0] for d in graph[m]}} == {
        "coordinator_stub.stores.postgres", "coordinator_stub.stores.pg_admin", "coordinator_stub.stores.pg_wake"}
    assert importers(graph, "coordinator_stub.stores.pg_wake") == {"coordinator_stub.web.claimwait"}
    assert importers(graph, "coordinator_stub.stores.postgres") == {
        "coordinator_stub.stores.choose", "coordinator_stub.stores.pg_admin"}
    assert importers(graph, "coordinator_stub.stores.pg_admin") == {"coordinator_stub.cli"}

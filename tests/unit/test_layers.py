"""Imports flow one way between service/'s sub-packages, and no module imports itself back.

Read from the source (ast), every import counted wherever it is written, in a function
too, except those under `if TYPE_CHECKING:` (annotations, never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"

# package -> packages it must never import, and why
NEVER = {
    "service.scripts": ({"service.http", "service.platform", "service.jobs"}, "loading"),
    "service.observability": ({"service.http", "service.platform", "service.jobs"}, "observing"),
    "service.runners": (
        {"service.access", "service.http", "service.platform", "service.jobs"},
        "script code's side: no keys, no access decisions",
    ),
    "service.access": ({"service.platform", "service.jobs", "service.runners"}, "deciding"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("service")}


MODULES = {module_name(p): p for p in SERVICE.rglob("*.py")}
GRAPH = {
    name: {target for target in imports_of(path) if target in MODULES and target != name}
    for name, path in MODULES.items()
}


@pytest.mark.parametrize("package", sorted(NEVER))
def test_a_layer_never_imports_the_layers_above_it(package: str) -> None:
    banned, role = NEVER[package]
    wrong = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name == package or name.startswith(package + ".")
        for target in targets
        if any(target == b or target.startswith(b + ".") for b in banned)
    ]
    assert not wrong, f"{package} ({role}) must not import {sorted(banned)}: {wrong}"


def test_no_import_cycle() -> None:
    """Packages' __init__ modules are skipped: importing a submodule runs them, but they
    import nothing of their own here."""
    graph = {n: {t for t in ts if MODULES[t].name != "__init__.py"} for n, ts in GRAPH.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, " -> ".join(cycle)


def test_the_rules_see_real_imports() -> None:
    """The walk finds what is there: the pipeline imports the access guard."""
    assert "service.access.guard" in GRAPH["service.http.pipeline"]

"""The code's shape (issue 15): no import cycle, no function over 80 lines.

No function over 80 lines anywhere in src/hubbub, bench/benchrun and bench/run.py.
No import cycle inside the packages listed in PACKAGES. Every import counts, the
ones inside functions too: a lazy import hides a cycle, it does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

SRC = ROOT / "src" / "hubbub"
PACKAGES = {
    "hubbub.bench": SRC / "bench",
    "benchrun": ROOT / "bench" / "benchrun",
    "hubbub.apps": SRC / "apps",
    "hubbub.core": SRC / "core",
}
MAX_LINES = 80


def _modules(package: str, folder: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(folder.glob("*.py")):
        out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def import_graph(package: str, folder: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (anywhere in its code)."""
    mods = _modules(package, folder)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        here = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    base = f"{parent}.{base}" if base else parent
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                # ``from pkg import submodule`` needs the submodule (pkg, its parent, is loaded).
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, as the module names along it."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycle(package: str) -> None:
    graph = import_graph(package, PACKAGES[package])
    assert len(graph) > 3 and any(graph.values())  # the walk saw the package's imports
    assert cycles(graph) == []


def test_no_function_over_80_lines() -> None:
    files = sorted(SRC.rglob("*.py")) + sorted((ROOT / "bench" / "benchrun").glob("*.py"))
    files.append(ROOT / "bench" / "run.py")
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)"
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for lines in [(node.end_lineno or node.lineno) - node.lineno + 1]
        if lines > MAX_LINES
    ]
    assert long == []

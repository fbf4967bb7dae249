"""The shape of the chat product's code (issue 15): no import cycle among the
modules of apps/ and core/, and no function over 80 lines in them, in the terminal
client or in the protocol module. Uses the import-graph walk of the bench's shape test."""

from __future__ import annotations

import ast

import pytest

from ..bench.test_structure import cycles, import_graph
from ..conftest import ROOT

SRC = ROOT / "src" / "hubbub"
PACKAGES = {"hubbub.apps": SRC / "apps", "hubbub.core": SRC / "core"}
MAX_LINES = 80


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycle(package: str) -> None:
    graph = import_graph(package, PACKAGES[package])
    assert any(graph.values())  # the walk saw the package's imports
    assert cycles(graph) == []


def test_no_function_over_80_lines() -> None:
    files = [path for folder in PACKAGES.values() for path in folder.glob("*.py")]
    files += [SRC / "client" / "terminal.py", SRC / "protocol.py"]
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)"
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for lines in [(node.end_lineno or node.lineno) - node.lineno + 1]
        if lines > MAX_LINES
    ]
    assert long == []

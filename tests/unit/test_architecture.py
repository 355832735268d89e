"""The shape of the code, held in the suite: no import cycles, and the import-linter
contracts of pyproject.toml (layers, a domain without I/O, the mesh SDK's dependencies),
which ``make lint`` also runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in modules:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if child < len(edges[node]):
                work.append((node, child + 1))
                nxt = edges[node][child]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_no_module_imports_itself_through_others() -> None:
    # Imports under TYPE_CHECKING name types only; they never run.
    assert _cycles(grimp.build_graph("iap", exclude_type_checking_imports=True)) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "loopy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from loopy import b\n")
    (package / "b.py").write_text("from loopy import c\n")
    (package / "c.py").write_text("from loopy import a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert _cycles(grimp.build_graph("loopy")) == [["loopy.a", "loopy.b", "loopy.c"]]
    finally:
        sys.path.remove(str(tmp_path))


def test_the_import_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 broken" in result.stdout


MODULE_LINES = 400
FUNCTION_LINES = 40
OVERSIZE: dict[str, str] = {}
"""Modules or functions allowed over the budget, each with its reason (empty is the aim)."""


def _function_lengths(path: Path) -> list[tuple[str, int]]:
    """Each function's body length in lines, its docstring left out."""
    lengths = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0]
            start = node.lineno
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                start = first.end_lineno or start
            lengths.append((node.name, (node.end_lineno or start) - start))
    return lengths


def test_modules_and_functions_stay_small() -> None:
    too_long, oversize = [], set()
    for path in sorted((ROOT / "iap").rglob("*.py")):
        name = str(path.relative_to(ROOT))
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MODULE_LINES:
            oversize.add(name)
        for function, length in _function_lengths(path):
            if length > FUNCTION_LINES:
                oversize.add(f"{name}:{function}")
                too_long.append(f"{name}:{function}: {length} lines")
        too_long += [f"{name}: {lines} lines"] if lines > MODULE_LINES else []
    assert [entry for entry in too_long if entry.rsplit(": ", 1)[0] not in OVERSIZE] == []
    assert set(OVERSIZE) <= oversize, "an exception that is no longer needed: remove it"

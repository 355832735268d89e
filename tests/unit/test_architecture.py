"""The shape of the code, held in the suite: the import-linter contracts of pyproject.toml
(no import cycles, layers, a domain without I/O, one owner per library, the mesh SDK's
dependencies), which ``make lint`` also runs, and the size budget."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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

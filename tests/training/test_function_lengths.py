"""The trainer stays readable top to bottom: no function in anchor_interp/training/ is longer than 60
lines (from its ``def``, decorators excluded, to its last line, docstring included), and the loop keeps
no state in closures (no ``nonlocal``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TRAINING = Path(__file__).resolve().parents[2] / "anchor_interp" / "training"
MAX_LINES = 60
FILES = sorted(TRAINING.glob("*.py"))


def functions(path: Path) -> list[tuple[str, int]]:
    """(qualified name, length in lines) of every function and method defined in ``path``."""
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return out


def test_the_package_has_its_modules():
    names = {p.name for p in FILES}
    assert {"__init__.py", "loop.py", "stack.py", "resume.py", "recipe.py", "history.py"} <= names
    assert not (TRAINING.parent / "training.py").exists()


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_function_is_at_most_60_lines(path):
    too_long = [(name, n) for name, n in functions(path) if n > MAX_LINES]
    assert not too_long, f"{path.name}: functions longer than {MAX_LINES} lines: {too_long}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_no_nonlocal(path):
    assert not [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Nonlocal)], path.name


def test_the_length_check_measures_def_to_last_line(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("@staticmethod\ndef a(x):\n    '''doc'''\n\n    return x\n\n\nclass C:\n    def b(self):\n        pass\n")
    assert functions(f) == [("a", 4), ("C.b", 2)]

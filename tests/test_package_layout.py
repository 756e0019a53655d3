"""The package's shape (issue 11): stages import one way, TransformerLens internals stay in the adapter,
the result schema sits below the orchestrator and the report, old import paths still work."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "anchor_interp"
ADAPTERS = {"models/adapter.py"}
TL_ATTRS = {"blocks", "pos_embed", "unembed", "embed", "ln_final"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _tl_attribute_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            a = node.attr
            if a in TL_ATTRS or ((a.startswith("W_") or a.startswith("b_")) and a != "W_OK"):
                found.append(f"{path.relative_to(PKG.parent)}:{node.lineno} .{a}")
    return found


def test_transformer_lens_internals_only_in_the_adapter():
    offenders = []
    for path in _modules().values():
        if str(path.relative_to(PKG)) in ADAPTERS:
            continue
        offenders += _tl_attribute_uses(path)
    assert not offenders, "TransformerLens attribute access outside models/adapter.py:\n" + "\n".join(offenders)


def test_only_the_adapter_imports_transformer_lens():
    offenders = []
    for name, path in _modules().items():
        if name == "anchor_interp.models.adapter":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{name}: {m}" for m in mods if m.split(".")[0] == "transformer_lens"]
    assert not offenders, offenders


def _imports(name: str, path: Path, known: set[str], *, top_level_only: bool) -> set[str]:
    """Package modules imported by ``name`` (module-level statements only, or anywhere)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
                   for n in ast.walk(node)}  # annotations only: not imported at run time
    nodes = [n for n in (tree.body if top_level_only else ast.walk(tree)) if id(n) not in typing_only]
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("anchor_interp"):
            base = node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("anchor_interp")}
    return {m for m in out if m in known and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return cycles


def test_no_import_circle_except_the_task_registry():
    mods = _modules()
    known = set(mods)
    # a package's __init__ re-exporting its submodules is not a circle: drop package -> own-submodule edges
    graph = {n: {m for m in _imports(n, p, known, top_level_only=False) if not m.startswith(n + ".")}
             for n, p in mods.items() if n not in _deprecated_aliases()}
    cycles = [c for c in _cycles(graph) if not all(m.startswith("anchor_interp.tasks") for m in c)]
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def _deprecated_aliases() -> set[str]:
    from anchor_interp._deprecated import MOVED

    return set(MOVED)


def test_report_and_result_do_not_import_the_orchestrator():
    mods = _modules()
    known = set(mods)
    for name in [n for n in mods if n.startswith("anchor_interp.report")] + ["anchor_interp.result"]:
        assert "anchor_interp.find_heads" not in _imports(name, mods[name], known, top_level_only=False), name


@pytest.mark.parametrize("old", sorted(__import__("anchor_interp._deprecated", fromlist=["MOVED"]).MOVED))
def test_old_import_paths_warn_and_alias_the_new_module(old):
    from anchor_interp._deprecated import MOVED

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod = importlib.import_module(old)
    assert mod is importlib.import_module(MOVED[old])
    assert any(issubclass(w.category, DeprecationWarning) and MOVED[old] in str(w.message) for w in caught)


def test_label_rule_functions_are_short():
    """No function of the label rule is longer than 60 lines (def to last line)."""
    long = []
    for path in sorted((PKG / "labels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{path.name}:{node.name} {n} lines")
    assert not long, long

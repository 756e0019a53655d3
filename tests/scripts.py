"""Load a script of the repository (analyses/, benchmarks/) as a module, by its path, for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relpath: str, name: str | None = None) -> ModuleType:
    """The module of ``REPO / relpath`` (e.g. "analyses/head_study.py"), registered in ``sys.modules`` as
    ``name`` (default: the path with "/" as "_", without ".py") so that its dataclasses and pickling work."""
    name = name or relpath.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod

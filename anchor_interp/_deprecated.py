"""Old import paths kept for one release (0.1 -> 0.2): each old module is an alias of its new home.

An old module (e.g. ``anchor_interp/heads.py``) is two lines that call :func:`alias_module`; importing it
warns once with a ``DeprecationWarning`` naming the new path and then *is* the new module (same object in
``sys.modules``), so attributes, private helpers and monkeypatches are shared. The table of moves is
written once here and in docs/interfaces.md ("Old import paths").
"""

from __future__ import annotations

import importlib
import sys
import warnings

MOVED = {
    "anchor_interp.checkpoint": "anchor_interp.models.checkpoint",
    "anchor_interp.zoo": "anchor_interp.models.zoo",
    "anchor_interp.ground_truth": "anchor_interp.models.planted",
    "anchor_interp.patterns": "anchor_interp.scores.patterns",
    "anchor_interp.weights": "anchor_interp.scores.weights",
    "anchor_interp.ablation": "anchor_interp.scores.ablation",
    "anchor_interp.heads": "anchor_interp.labels",
    "anchor_interp.pipeline": "anchor_interp.find_heads",
    "anchor_interp.plots": "anchor_interp.report.plots",
    "anchor_interp.patch_engine": "anchor_interp.patching.engine",
    "anchor_interp.attribution": "anchor_interp.patching.attribution",
}


def alias_module(old: str) -> None:
    """Make ``old`` an alias of its new module (``MOVED[old]``), warning with a DeprecationWarning."""
    new = MOVED[old]
    warnings.warn(f"{old} is deprecated and will be removed in 0.2; import {new} instead",
                  DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)

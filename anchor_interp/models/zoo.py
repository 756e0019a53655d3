"""Small trained models shipped inside the package: ``zoo.load("default")`` -> ``(model, task)``.

Each entry is a checkpoint folder ``anchor_interp/models/zoo_data/<name>/`` (``model.safetensors``,
``checkpoint.json``, ``history.csv``) written by ``analyses/train_zoo.py``, which recreates it from the
spec in :data:`ZOO` (preset, task, recipe, seed) with one command:
``python analyses/train_zoo.py <name>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ZOO_DIR = Path(__file__).resolve().parent / "zoo_data"


@dataclass(frozen=True)
class ZooSpec:
    """How a zoo model is trained: preset + task + recipe (with overrides) + seed."""

    name: str
    preset: str
    task: str = "identity"
    task_params: dict[str, Any] = field(default_factory=dict)
    recipe: str = "fast"
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    init_gamma: float | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


ZOO: dict[str, ZooSpec] = {
    "default": ZooSpec(
        name="default", preset="small", recipe="fast",
        recipe_overrides={"n_train": 2000, "epochs": 60, "cosine_epochs": 58},
        seed=0,
        description="2L x 4H attention-only causal (preset 'small'), identity task, fast recipe",
    ),
    "mechanism": ZooSpec(
        name="mechanism", preset="mechanism", recipe="fast",
        recipe_overrides={"n_train": 2000, "epochs": 60, "cosine_epochs": 58},
        seed=0,
        description="2L x 1H attention-only bidirectional (preset 'mechanism'), identity task",
    ),
}


def list_models() -> list[str]:
    """Names of the zoo entries (whether or not their files are present)."""
    return sorted(ZOO)


def path(name: str) -> Path:
    """The checkpoint folder of zoo model ``name``. Raises ValueError for an unknown name."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; known: {list_models()}")
    return ZOO_DIR / name


def load(name: str = "default", *, device: str = "cpu"):
    """``(model, task)`` of the shipped zoo model ``name`` ("default", "mechanism"), in eval mode.

    Raises ValueError for an unknown name, and CheckpointError (a ValueError) if its files are missing
    or corrupt (recreate them with ``python analyses/train_zoo.py <name>``).
    """
    from anchor_interp.models.checkpoint import CheckpointError, load_checkpoint

    folder = path(name)
    try:
        return load_checkpoint(folder, device=device)
    except CheckpointError as e:
        raise CheckpointError(f"zoo model {name!r}: {e}. Recreate it with: python analyses/train_zoo.py {name}") from e

"""Models: presets sized for an anchor task, the TransformerLens adapter, checkpoints, shipped models.

    presets.py     preset name + task -> HookedTransformerConfig -> seeded HookedTransformer
    adapter.py     the one module that imports TransformerLens or reads its model internals
    checkpoint.py  trained model + task <-> checkpoint folder
    zoo.py         zoo name -> (model, task) shipped inside the package (zoo_data/)
    planted.py     models with hand-written weights whose heads' roles are known (ground truth)
    reference.py   the authors' post-LN model in plain PyTorch (not a HookedTransformer; comparisons only)

Importing this package is cheap (torch, no TransformerLens): building a model imports the adapter.
"""

from anchor_interp.models.presets import (
    DEVICE_CHOICES,
    PRESETS,
    Preset,
    apply_init_gamma,
    apply_torch_init,
    check_config_for_task,
    count_parameters,
    make_model,
    model_config,
    resolve_device,
)

__all__ = [
    "DEVICE_CHOICES",
    "PRESETS",
    "Preset",
    "apply_init_gamma",
    "apply_torch_init",
    "check_config_for_task",
    "count_parameters",
    "make_model",
    "model_config",
    "resolve_device",
]

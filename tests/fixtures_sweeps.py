"""Tiny sweep files for the sweep tests (tests/sweeps/): a 2-layer, 2-head, width-32 model, a few epochs,
100 held-out sequences: a stack of 4 trains in well under a second."""

from __future__ import annotations

TINY = """
name = "{name}"
[settings]
task = "identity"
preset = "small"
recipe = "fast"
epochs = {epochs}
[settings.model]
d_model = 32
d_head = 8
n_layers = 2
n_heads = 2
[settings.recipe_fields]
n_test = 100
batch_size = {batch_size}
[axes]
n_train = {n_train}
seed = [0, 1]
[after]
find_heads = {find_heads}
n_samples = 32
"""


def tiny_text(name: str = "tiny", epochs: int = 3, n_train: str = "[40, 60]", batch_size: int = 20,
              find_heads: bool = True) -> str:
    """A tiny sweep file: 2 sizes x 2 seeds of a 2-layer, 2-head, width-32 model."""
    return TINY.format(name=name, epochs=epochs, n_train=n_train, batch_size=batch_size,
                       find_heads=str(find_heads).lower())

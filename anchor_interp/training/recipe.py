"""Recipes: optimiser, learning-rate schedule and data settings of a training run, by name.

``RECIPES`` holds the named ones (``fast``, ``quick``, ``paper``); :func:`get_recipe` turns a name, a
``Recipe`` or a dict of its fields (plus overrides) into a ``Recipe``. ``Recipe.lr_at(epoch)`` is the
learning-rate schedule: a linear warm-up, then a cosine.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

__all__ = ["PRECISIONS", "RECIPES", "Recipe", "get_recipe"]

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Recipe:
    """Optimiser, schedule and data settings. Epochs count passes over the ``n_train`` sequences.

    Learning rate: linear warm-up from ``lr_start`` to ``lr`` over ``warmup_epochs``, then a cosine
    from ``lr`` toward ``lr_end`` with period ``cosine_epochs`` (lr_end reached after cosine_epochs
    more epochs; None = the cosine ends with the run). ``schedule_per``: "epoch" (lr changes once per epoch, as in the authors' code) or
    "step" (fractional epochs). ``data``: "fixed" (one training set of n_train sequences, reshuffled
    every epoch: what "training-set size" means in the paper) or "fresh" (new sequences every step).
    ``freeze``: parameter-name patterns (fnmatch, e.g. ``"blocks.*.attn.b_*"``) that the optimiser never
    updates (no gradient step, no weight decay), e.g. biases zeroed at initialisation and kept at zero.
    ``precision``: "fp32", or "bf16" (mixed precision: the training forward and backward run their
    matmuls in bfloat16 under ``torch.autocast``; weights, optimiser state, loss and every held-out
    evaluation stay float32, so reported accuracies are those of the saved float32 weights).
    """

    name: str
    epochs: int
    batch_size: int
    lr: float
    lr_start: float
    lr_end: float
    warmup_epochs: float
    cosine_epochs: float | None  # None: the cosine ends with the run (epochs - warmup_epochs)
    schedule_per: str = "step"
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    n_train: int = 1000
    n_test: int = 1000
    data: str = "fixed"
    eval_every: int = 1
    early_stop_acc: float | None = None
    checkpoint_every: int = 0  # epochs; 0 = only at the end
    precision: str = "fp32"  # "fp32" or "bf16" (mixed: bf16 matmuls in training steps only)
    fused_adamw: bool = False  # torch's fused AdamW kernel: same formula, faster, last-bit differences
    freeze: tuple[str, ...] | list[str] = ()  # fnmatch patterns of parameter names kept at their initial values

    def __post_init__(self):
        if isinstance(self.freeze, str) or not all(isinstance(p, str) for p in self.freeze):
            raise ValueError(f"recipe field freeze={self.freeze!r} is invalid; use a list of parameter-name "
                             "patterns such as ['blocks.*.attn.b_*']")
        object.__setattr__(self, "freeze", tuple(self.freeze))

        def bad(field_name, allowed):
            raise ValueError(f"recipe field {field_name}={getattr(self, field_name)!r} is invalid; {allowed}")

        if self.epochs < 1:
            bad("epochs", "use an int >= 1")
        if self.batch_size < 1:
            bad("batch_size", "use an int >= 1")
        for f in ("lr", "lr_start", "lr_end"):
            if not (math.isfinite(getattr(self, f)) and getattr(self, f) >= 0):
                bad(f, "use a finite number >= 0")
        if self.warmup_epochs < 0:
            bad("warmup_epochs", "use a number of epochs >= 0")
        if self.cosine_epochs is not None and self.cosine_epochs <= 0:
            bad("cosine_epochs", "use a number of epochs > 0, or None (the cosine ends with the run)")
        if self.schedule_per not in ("epoch", "step"):
            bad("schedule_per", "use 'epoch' or 'step'")
        if self.data not in ("fixed", "fresh"):
            bad("data", "use 'fixed' (a training set of n_train sequences) or 'fresh' (new data every step)")
        if self.n_train < 1 or self.n_test < 1:
            bad("n_train" if self.n_train < 1 else "n_test", "use an int >= 1")
        if self.eval_every < 1:
            bad("eval_every", "use an int >= 1 (epochs)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            bad("grad_clip", "use a number > 0 or None")
        if self.early_stop_acc is not None and not 0 < self.early_stop_acc <= 1:
            bad("early_stop_acc", "use a held-out accuracy in (0, 1] or None")
        if self.checkpoint_every < 0:
            bad("checkpoint_every", "use 0 (only at the end) or a number of epochs")
        if self.precision not in PRECISIONS:
            bad("precision", f"use one of {PRECISIONS} (bf16 = mixed precision for the training steps)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["freeze"] = list(self.freeze)  # as JSON writes it, so a saved recipe compares equal
        return d

    def replace(self, **overrides) -> Recipe:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(
                f"unknown recipe field(s) {unknown}; known: {[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **overrides)

    def lr_at(self, epoch: float) -> float:
        """Learning rate at (fractional) ``epoch``; floored to whole epochs when schedule_per="epoch"."""
        t = math.floor(epoch) if self.schedule_per == "epoch" else epoch
        if t < self.warmup_epochs:
            return self.lr_start + (self.lr - self.lr_start) * t / self.warmup_epochs
        period = self.cosine_epochs if self.cosine_epochs is not None else max(self.epochs - self.warmup_epochs, 1)
        phase = math.pi * (t - self.warmup_epochs) / period
        return self.lr_end + 0.5 * (self.lr - self.lr_end) * (1 + math.cos(min(phase, math.pi)))


RECIPES: dict[str, Recipe] = {
    # Ours: large lr with a short warm-up, cosine to 1/100 ending with the run, batch 100.
    "fast": Recipe(
        name="fast", epochs=100, batch_size=100, lr=1e-3, lr_start=1e-4, lr_end=1e-5,
        warmup_epochs=2, cosine_epochs=None, schedule_per="step",
    ),
    # Tuned for wall time to 99% held-out on identity learning (benchmarks/bench_training.py, the
    # paper preset, N = 1000; docs/performance.md): bf16 mixed precision and the fused AdamW kernel
    # (cheaper steps), batch 50, lr 1e-4 -> 3e-4 over a 1-epoch warm-up, beta2 0.98, then a cosine
    # over the remaining 99 epochs toward 1e-5, 500 held-out sequences. Meant with early_stop_acc.
    "quick": Recipe(
        name="quick", epochs=100, batch_size=50, lr=3e-4, lr_start=1e-4, lr_end=1e-5,
        warmup_epochs=1, cosine_epochs=None, schedule_per="step", beta2=0.98, n_test=500,
        precision="bf16", fused_adamw=True,
    ),
    # The authors' recipe (spec section 4): AdamW (weight decay 0.01), clip 1.0, warm-up 2e-5 -> 2e-4
    # over 400 epochs, cosine with period 4000 epochs toward 2e-5, stepped per epoch, batch 50,
    # 4000 epochs, 500 held-out sequences.
    "paper": Recipe(
        name="paper", epochs=4000, batch_size=50, lr=2e-4, lr_start=2e-5, lr_end=2e-5,
        warmup_epochs=400, cosine_epochs=4000, schedule_per="epoch", n_test=500,
    ),
}


def get_recipe(recipe: str | Recipe | dict, **overrides) -> Recipe:
    """A Recipe from a name in RECIPES, a Recipe, or a dict of its fields, with ``overrides`` applied.
    Raises ValueError for an unknown name or field."""
    if isinstance(recipe, Recipe):
        base = recipe
    elif isinstance(recipe, dict):
        try:
            base = Recipe(**recipe)
        except TypeError as e:
            raise ValueError(f"recipe dict does not fit Recipe: {e}") from e
    elif isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; known recipes: {sorted(RECIPES)}")
        base = RECIPES[recipe]
    else:
        raise ValueError(f"recipe must be a name {sorted(RECIPES)}, a Recipe or a dict; got {type(recipe).__name__}")
    return base.replace(**overrides) if overrides else base

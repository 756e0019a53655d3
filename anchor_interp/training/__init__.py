"""Training anchor models: recipes, a batched trainer for k models at once, history, resume.

One code path trains ``k >= 1`` HookedTransformers with the same config as one computation: their
weights are stacked along a leading model axis and run through :func:`stacked_forward` (the same
arithmetic as HookedTransformer's forward, scored at the last position only). Every model keeps its
own seed, training data, data order, gradient clipping and AdamW state, so training k models together
gives the weights of k separate runs (to float tolerance).

Loss and accuracy are computed at the last input position only (the task's single scored position).
"Held-out accuracy" (``test_acc`` in the history, and what ``early_stop_acc`` compares with) is the
accuracy on held-out sequences of the task's unmasked groups; masked groups (never trained on) are
reported separately, as ``test_acc_masked`` and ``test_acc/<group>``.

The package, in the order a run uses it:

    recipe.py    Recipe, RECIPES, get_recipe: optimiser, lr schedule (Recipe.lr_at) and data settings
    data.py      seed + task -> each model's training set, held-out set, epoch order and batches
    forward.py   stacked parameters + tokens -> last-position logits of k models (stacked_forward)
    optim.py     StackedAdamW: AdamW over stacked parameters, gradient clipping per model
    graph.py     StaticStep: one training step over static buffers, captured as a CUDA graph on a GPU
    stack.py     k models -> one Stack of the models still training (restacked when one stops)
    evaluate.py  stacked parameters + held-out set -> loss and accuracy per model and group
    history.py   epoch sums + held-out metrics -> history rows -> history.csv / .json / .png
    resume.py    Run <-> resumable checkpoint folders (ResumeState: the scalar state)
    result.py    TrainResult (one per model), TrainingDiverged
    loop.py      train_many (named phases over a Run), train (k = 1)

The loop and evaluate_stacked call ``stacked_forward`` and ``evaluate_stacked`` as attributes of
this package, so replacing them here (tests, the benchmarks' timers) reaches every call.
"""

from anchor_interp.training.data import EPOCH_ORDER, FRESH_STEP, TEST_DATA, TRAIN_DATA, derive_seed
from anchor_interp.training.evaluate import evaluate_stacked
from anchor_interp.training.forward import check_trainable_config, stacked_forward
from anchor_interp.training.history import plot_history_png, write_history
from anchor_interp.training.loop import DEFAULT_CHECKPOINT_EVERY_S, train, train_many
from anchor_interp.training.optim import StackedAdamW
from anchor_interp.training.recipe import PRECISIONS, RECIPES, Recipe, get_recipe
from anchor_interp.training.result import TrainingDiverged, TrainingInterrupted, TrainResult
from anchor_interp.training.resume import ResumeState
from anchor_interp.training.stack import ckpt_cfg, stack_models

__all__ = [
    "DEFAULT_CHECKPOINT_EVERY_S",
    "EPOCH_ORDER",
    "FRESH_STEP",
    "PRECISIONS",
    "RECIPES",
    "TEST_DATA",
    "TRAIN_DATA",
    "Recipe",
    "ResumeState",
    "StackedAdamW",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "check_trainable_config",
    "ckpt_cfg",
    "derive_seed",
    "evaluate_stacked",
    "get_recipe",
    "plot_history_png",
    "stack_models",
    "stacked_forward",
    "train",
    "train_many",
    "write_history",
]

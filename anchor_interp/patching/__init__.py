"""Activation patching: run the corrupted input, patch in clean activations, measure a metric.

Conventions (the same as ``transformer_lens.patching``, see docs/patching.md):

- every function takes a **clean** and a **corrupted** input, row-paired: either two ``Batch``es
  (``task.sample`` and ``task.counterfactual``) or two token tensors ``[batch, seq]``;
- the model runs on the corrupted input and one site at a time (a residual position, a head, a head
  at one position, ...) is replaced by its value from the clean run;
- the metric is measured at the **last position** and averaged over the batch;
- normalised values are ``(patched - corrupt) / (clean - corrupt)``: 1 = the patch restores the
  clean behaviour fully, 0 = no effect.

Nothing here calls ``transformer_lens.patching``. On models the engine computes
(:func:`~anchor_interp.patching.engine.fast_path_problems` is empty): all patched variants of one layer are stacked
along the batch dimension (chunked by ``max_batch``), each forward starts at the patched layer from
cached activations, the last block computes only the last query row, and no gradients are kept.
Only the hooks a sweep needs are cached. Any other
HookedTransformer (rotary, shortformer, grouped-query, ...) takes :mod:`anchor_interp.patching.slow`:
one ``run_with_hooks`` pass per chunk of patched variants, the same values.

The package, in the order a call flows through it::

    inputs.py       model + clean/corrupt pair -> checked PatchInputs; layer_hooks
    metrics.py      logit_diff / accuracy / kl (per row and batch-mean) and a user callable
    engine.py       the forward pass restartable at any layer, many patched runs per batch (Engine)
    sweep.py        one exact patching call: cached runs, baselines, batching of patched rows (Sweep)
    activation.py   patch_resid_pre, patch_head_out, patch_head_pattern
    path.py         path_patch (sender heads -> logits or receiver heads' q/k/v)
    slow.py         the same sweeps on plain run_with_hooks, for models the engine does not compute
    attribution.py  gradient approximation, and its check against exact patching
    result.py       PatchResult

Everything in ``__all__`` is re-exported here, and so are ``DEFAULT_MAX_BATCH``, ``MetricFn``,
``Receivers``, ``QKV`` and ``layer_hooks`` (importable as before the split). Importing this package
does not import TransformerLens.
"""

from anchor_interp.patching.activation import patch_head_out, patch_head_pattern, patch_resid_pre
from anchor_interp.patching.attribution import (
    AttributionCheck,
    attribution_patch_heads,
    attribution_patch_resid_pre,
    compare_attribution,
)
from anchor_interp.patching.engine import check_model
from anchor_interp.patching.inputs import layer_hooks as layer_hooks
from anchor_interp.patching.metrics import METRICS, accuracy, kl_from_clean, logit_diff
from anchor_interp.patching.metrics import MetricFn as MetricFn
from anchor_interp.patching.path import QKV as QKV
from anchor_interp.patching.path import Receivers as Receivers
from anchor_interp.patching.path import path_patch
from anchor_interp.patching.result import PatchResult
from anchor_interp.patching.sweep import DEFAULT_MAX_BATCH as DEFAULT_MAX_BATCH

__all__ = [
    "METRICS",
    "AttributionCheck",
    "PatchResult",
    "accuracy",
    "attribution_patch_heads",
    "attribution_patch_resid_pre",
    "check_model",
    "compare_attribution",
    "kl_from_clean",
    "logit_diff",
    "patch_head_out",
    "patch_head_pattern",
    "patch_resid_pre",
    "path_patch",
]

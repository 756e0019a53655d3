"""What every patching call is given, checked: the model, a row-paired clean/corrupted input, hook names.

``clean`` and ``corrupt`` are two ``Batch``es (``task.sample`` and ``task.counterfactual``) or two
long token tensors ``[batch, seq]``; :func:`prepare_inputs` validates them against the model and
moves them to its device. :func:`layer_hooks` names one activation in every layer of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from anchor_interp.models.validate import check_tokens
from anchor_interp.names import layer_hook_names
from anchor_interp.patching.engine import check_hooked

__all__ = ["PatchInputs", "layer_hooks", "prepare_inputs"]


@dataclass
class PatchInputs:
    """A validated clean/corrupted pair on the model's device: tokens [batch, seq] (long), targets
    [batch] (long; ``None`` for token tensors; -1 = no answer, as ``anchor_remove`` gives) and the
    counterfactual kind (``None`` if unknown)."""

    clean_tokens: Int[Tensor, "batch seq"]
    corrupt_tokens: Int[Tensor, "batch seq"]
    clean_targets: Int[Tensor, " batch"] | None
    corrupt_targets: Int[Tensor, " batch"] | None
    counterfactual: str | None


def layer_hooks(model: Any, hook: str) -> list[str]:
    """The hook ``hook`` of every layer of ``model``: ``layer_hooks(model, "z")`` ->
    ``["blocks.0.attn.hook_z", "blocks.1.attn.hook_z", ...]``.

    ``hook`` is a short name of :mod:`anchor_interp.names` (``"z"``, ``"resid_pre"``) or, as before,
    the part after ``blocks.L.`` (``"attn.hook_z"``, ``"hook_resid_pre"``). Empty if ``model`` is not
    a HookedTransformer (the sweep then raises its own error naming the problem); raises ValueError
    for an unknown hook.
    """
    n_layers = model.cfg.n_layers if hasattr(model, "cfg") else 0
    return layer_hook_names(hook.removeprefix("attn.").removeprefix("hook_"), n_layers)


def _is_batch(x: Any) -> bool:
    return hasattr(x, "tokens") and hasattr(x, "targets")


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _as_tokens(x: Any, name: str, model) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a Batch or a long tensor [batch, seq], got {type(x).__name__}")
    check_tokens(model, x, name)  # the one token validator (anchor_interp.models.validate)
    return x.long().to(_model_device(model))


def prepare_inputs(model: Any, clean: Any, corrupt: Any, counterfactual: str | None) -> PatchInputs:
    """Check ``model`` (:func:`~anchor_interp.patching.engine.check_hooked`) and the clean/corrupted pair.

    With Batches whose corrupted targets are all -1 and no ``counterfactual`` given, the counterfactual
    is ``"anchor_remove"``. Raises ValueError naming the parameter: an unsupported model, a Batch mixed
    with a tensor, non-integer tokens, ids outside ``[0, d_vocab)``, sequences longer than ``n_ctx``, an
    empty batch, targets that are not long [batch], or clean/corrupt of different shapes.
    """
    check_hooked(model)
    if _is_batch(clean) != _is_batch(corrupt):
        raise ValueError(
            "clean/corrupt: give two Batches (task.sample + task.counterfactual) or two token tensors, not a mix"
        )
    clean_targets = corrupt_targets = None
    if _is_batch(clean):
        clean_tokens = _as_tokens(clean.tokens, "clean.tokens", model)
        corrupt_tokens = _as_tokens(corrupt.tokens, "corrupt.tokens", model)
        clean_targets = clean.targets.long().to(clean_tokens.device)
        corrupt_targets = corrupt.targets.long().to(clean_tokens.device)
        if clean_targets.shape != (clean_tokens.shape[0],) or corrupt_targets.shape != (corrupt_tokens.shape[0],):
            raise ValueError("clean/corrupt: targets must be long [batch], one per row of tokens")
        if counterfactual is None and bool((corrupt_targets < 0).all()):
            counterfactual = "anchor_remove"
    else:
        clean_tokens = _as_tokens(clean, "clean", model)
        corrupt_tokens = _as_tokens(corrupt, "corrupt", model)
    if clean_tokens.shape != corrupt_tokens.shape:
        raise ValueError(
            f"clean/corrupt: shapes differ, {tuple(clean_tokens.shape)} vs {tuple(corrupt_tokens.shape)}; "
            "the corrupted batch must be row-paired with the clean one (task.counterfactual(clean, ...))"
        )
    return PatchInputs(clean_tokens, corrupt_tokens, clean_targets, corrupt_targets, counterfactual)

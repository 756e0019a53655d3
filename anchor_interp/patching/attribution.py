"""Attribution patching: the gradient (first-order) approximation of activation patching.

One clean forward (cached), one corrupted forward with gradients and one backward give, for every
site at once, ``patched - corrupt ~= grad_corrupt(metric) . (clean_act - corrupt_act)``. Values follow
the conventions of :mod:`anchor_interp.patching` (normalised: ``approx / (clean - corrupt)``; raw:
``corrupt + approx``), with ``method="attribution"``.

The approximation is exact for sites whose path to the metric is linear (e.g. last-layer head outputs
of an attention-only model without a final LayerNorm) and can miss heads entirely where a softmax
saturates (spec §6): :func:`compare_attribution` checks it against exact patching.

Runs the model through its TransformerLens hooks (``run_with_cache`` / ``run_with_hooks``), not the
patching engine: it needs autograd through every downstream path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

from anchor_interp.names import head_name
from anchor_interp.patching.activation import patch_head_out
from anchor_interp.patching.inputs import PatchInputs, layer_hooks, prepare_inputs
from anchor_interp.patching.metrics import Metric, MetricFn, resolve_metric
from anchor_interp.patching.result import PatchResult
from anchor_interp.patching.sweep import DEFAULT_MAX_BATCH

if TYPE_CHECKING:
    from anchor_interp.tasks import Batch

__all__ = ["AttributionCheck", "attribution_patch_heads", "attribution_patch_resid_pre", "compare_attribution"]


def _attribution(
    model: Any,
    clean: Batch | Int[Tensor, "batch seq"],
    corrupt: Batch | Int[Tensor, "batch seq"],
    metric: str | MetricFn | None,
    hook_names: list[str],
    counterfactual: str | None,
) -> tuple[list[Tensor], Metric, float, float, PatchInputs]:
    """Per hook: grad(metric at corrupt) * (clean - corrupt), elementwise (same shape as the activation)."""
    inp = prepare_inputs(model, clean, corrupt, counterfactual)
    name, fn = resolve_metric(metric, inp, model.cfg.d_vocab)
    if name == "accuracy":
        raise ValueError("metric='accuracy' has no gradient; use 'logit_diff', 'kl' or a differentiable callable")
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(inp.clean_tokens, names_filter=lambda n: n in hook_names)
    m = Metric(name, fn, inp.clean_targets, inp.corrupt_targets, clean_logits)
    corrupt_acts: dict[str, Tensor] = {}
    leaves: dict[str, Tensor] = {}

    def add_leaf(act: Tensor, hook) -> Tensor:
        # a zero leaf added to the activation: d metric / d leaf = d metric / d activation, through every
        # downstream path, whether or not the model's parameters require gradients
        leaf = torch.zeros_like(act, requires_grad=True)
        leaves[hook.name] = leaf
        corrupt_acts[hook.name] = act.detach()
        return act + leaf

    with torch.enable_grad():
        logits = model.run_with_hooks(inp.corrupt_tokens, fwd_hooks=[(n, add_leaf) for n in hook_names])
        value = m(logits[None])[0]
        grads = torch.autograd.grad(value, [leaves[n] for n in hook_names], allow_unused=True)
    with torch.no_grad():
        clean_value = float(m(clean_logits[None])[0])
        corrupt_value = float(value.detach())
        out = []
        for n, g in zip(hook_names, grads, strict=True):
            g = torch.zeros_like(corrupt_acts[n]) if g is None else g
            out.append(g * (cache[n] - corrupt_acts[n]))
    return out, m, clean_value, corrupt_value, inp


def _finish(values: Tensor, axes, hooks, m: Metric, clean_value, corrupt_value, inp, normalise) -> PatchResult:
    values = values.detach().cpu()
    if normalise:
        gap = clean_value - corrupt_value
        if not math.isfinite(gap) or abs(gap) < 1e-9:
            raise ValueError(
                f"normalise: the clean and corrupted runs give the same {m.name} ({clean_value:.6g} vs "
                f"{corrupt_value:.6g}); pass normalise=False or use a counterfactual that changes the answer"
            )
        values = values / gap
    else:
        values = corrupt_value + values
    return PatchResult(
        values=values,
        axes=tuple(axes),
        hook_names=tuple(hooks),
        metric=m.name,
        counterfactual=inp.counterfactual,
        normalised=normalise,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        method="attribution",
    )


def attribution_patch_heads(
    model: Any,
    clean: Batch | Int[Tensor, "batch seq"],
    corrupt: Batch | Int[Tensor, "batch seq"],
    metric: str | MetricFn | None = None,
    *,
    by_pos: bool = False,
    normalise: bool = True,
    counterfactual: str | None = None,
) -> PatchResult:
    """Gradient approximation of :func:`anchor_interp.patching.patch_head_out` (``blocks.L.attn.hook_z``).

    Values [layer, head] (or [layer, head, pos]); metric ``"logit_diff"``, ``"kl"`` or a differentiable
    callable (``"accuracy"`` raises ValueError: it has no gradient).
    """
    hooks = layer_hooks(model, "z")
    prods, m, cv, xv, inp = _attribution(model, clean, corrupt, metric, hooks, counterfactual)
    if by_pos:
        values = torch.stack([p.sum(dim=(0, 3)).T for p in prods])  # (L, H, T)
        axes = ("layer", "head", "pos")
    else:
        values = torch.stack([p.sum(dim=(0, 1, 3)) for p in prods])  # (L, H)
        axes = ("layer", "head")
    return _finish(values, axes, hooks, m, cv, xv, inp, normalise)


def attribution_patch_resid_pre(
    model: Any,
    clean: Batch | Int[Tensor, "batch seq"],
    corrupt: Batch | Int[Tensor, "batch seq"],
    metric: str | MetricFn | None = None,
    *,
    normalise: bool = True,
    counterfactual: str | None = None,
) -> PatchResult:
    """Gradient approximation of :func:`anchor_interp.patching.patch_resid_pre`: values [layer, pos]."""
    hooks = layer_hooks(model, "resid_pre")
    prods, m, cv, xv, inp = _attribution(model, clean, corrupt, metric, hooks, counterfactual)
    values = torch.stack([p.sum(dim=(0, 2)) for p in prods])  # (L, T)
    return _finish(values, ("layer", "pos"), hooks, m, cv, xv, inp, normalise)


@dataclass
class AttributionCheck:
    """Attribution vs exact head-output patching (both normalised, [layer, head]).

    ``disagreements``: one dict per flagged head with ``layer``, ``head``, ``name`` (``"L1H3"``),
    ``attribution``, ``exact`` and ``reason``. Flagged: every head in attribution's top ``top_k`` (by
    ``|attribution|``) whose exact effect differs by more than ``tolerance`` (``"mismatch"``), and every
    other head whose exact effect is at least ``tolerance`` and differs by more than ``tolerance``:
    ``"missed"`` when attribution puts it below ``tolerance`` (typically a saturated head), else
    ``"mismatch"``.
    """

    attribution: PatchResult
    exact: PatchResult
    top_k: int
    tolerance: float
    disagreements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.disagreements

    def to_dict(self) -> dict[str, Any]:
        return {
            "attribution": self.attribution.to_dict(),
            "exact": self.exact.to_dict(),
            "top_k": self.top_k,
            "tolerance": self.tolerance,
            "disagreements": self.disagreements,
        }


def compare_attribution(
    model: Any,
    clean: Batch | Int[Tensor, "batch seq"],
    corrupt: Batch | Int[Tensor, "batch seq"],
    metric: str | MetricFn | None = None,
    *,
    top_k: int | None = None,
    tolerance: float = 0.1,
    counterfactual: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> AttributionCheck:
    """Run attribution and exact head-output patching, flag the heads where they disagree.

    ``top_k`` (default: a quarter of the heads, at least 1) heads ranked highest by ``|attribution|``
    are checked against exact patching; ``tolerance`` is in normalised units (0.1 = a tenth of the
    clean-corrupt gap). Raises ValueError for ``top_k < 1``, ``tolerance <= 0``, or bad inputs.
    """
    n_heads_total = model.cfg.n_layers * model.cfg.n_heads if hasattr(model, "cfg") else 0
    if top_k is None:
        top_k = max(1, n_heads_total // 4)
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k: must be a positive int (heads checked), got {top_k!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise ValueError(f"tolerance: must be > 0 (normalised units), got {tolerance!r}")
    attr = attribution_patch_heads(model, clean, corrupt, metric, counterfactual=counterfactual)
    exact = patch_head_out(model, clean, corrupt, metric, counterfactual=counterfactual, max_batch=max_batch)
    a, x = attr.values.double(), exact.values.double()
    H = a.shape[1]
    order = a.abs().flatten().argsort(descending=True)
    ranked = set(order[: min(top_k, order.numel())].tolist())
    flags = []
    for i in range(a.numel()):
        layer, head = divmod(i, H)
        av, xv = float(a[layer, head]), float(x[layer, head])
        reason = None
        if i in ranked and abs(av - xv) > tolerance:
            reason = "mismatch"
        elif i not in ranked and abs(xv) >= tolerance and abs(av - xv) > tolerance:
            reason = "missed" if abs(av) < tolerance else "mismatch"
        if reason:
            flags.append(
                {"layer": layer, "head": head, "name": head_name(layer, head), "attribution": av, "exact": xv, "reason": reason}
            )
    return AttributionCheck(attr, exact, top_k, float(tolerance), flags)

"""Path patching: each sender head's clean-minus-corrupt output reaches the receivers (the logits, or
chosen heads' q/k/v inputs) through the residual stream only; values [src_layer, src_head].

TransformerLens has no such function; the tests compare against one forward pass per sender through
its ``hook_{q,k,v}_input`` / ``hook_resid_post``. Conventions: docs/patching.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from jaxtyping import Int
from torch import Tensor

from anchor_interp.names import hook_name
from anchor_interp.patching.engine import Rows, changed_rows, fast_path_problems
from anchor_interp.patching.inputs import layer_hooks
from anchor_interp.patching.metrics import MetricFn
from anchor_interp.patching.result import PatchResult
from anchor_interp.patching.slow import slow_path_patch
from anchor_interp.patching.sweep import DEFAULT_MAX_BATCH, Sweep

if TYPE_CHECKING:
    from anchor_interp.tasks import Batch

__all__ = ["QKV", "Receivers", "path_patch"]

QKV = ("q", "k", "v")

# "logits", or receiver heads as (layer, head, "q" | "k" | "v")
Receivers = str | Sequence[tuple[int, int, str]]


def _check_receivers(model, receivers: Receivers) -> dict[int, list[tuple[int, str]]] | None:
    """``None`` for ``"logits"``, else ``{layer: [(head, comp), ...]}``; raises ValueError otherwise."""
    if isinstance(receivers, str):
        if receivers != "logits":
            raise ValueError(f"receivers: use 'logits' or a list of (layer, head, 'q'|'k'|'v'), got {receivers!r}")
        return None
    if not isinstance(receivers, Sequence) or len(receivers) == 0:
        raise ValueError("receivers: use 'logits' or a non-empty list of (layer, head, 'q'|'k'|'v')")
    cfg = model.cfg
    out: dict[int, list[tuple[int, str]]] = {}
    for r in receivers:
        if not (isinstance(r, Sequence) and len(r) == 3):
            raise ValueError(f"receivers: each receiver is (layer, head, 'q'|'k'|'v'), got {r!r}")
        layer, head, comp = r
        if not (isinstance(layer, int) and 0 <= layer < cfg.n_layers):
            raise ValueError(f"receivers: layer {layer!r} out of range [0, {cfg.n_layers})")
        if not (isinstance(head, int) and 0 <= head < cfg.n_heads):
            raise ValueError(f"receivers: head {head!r} out of range [0, {cfg.n_heads})")
        if comp not in QKV:
            raise ValueError(f"receivers: component {comp!r} must be one of {QKV}")
        if (head, comp) not in out.setdefault(layer, []):
            out[layer].append((head, comp))
    return out


def _receivers_json(receivers: Receivers) -> Any:
    return receivers if isinstance(receivers, str) else [list(r) for r in receivers]


def path_patch(
    model: Any,
    clean: Batch | Int[Tensor, "batch seq"],
    corrupt: Batch | Int[Tensor, "batch seq"],
    receivers: Receivers = "logits",
    metric: str | MetricFn | None = None,
    *,
    normalise: bool = True,
    counterfactual: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> PatchResult:
    """Path patching from every sender head: values [src_layer, src_head].

    The sender's change ``(clean - corrupt) hook_z @ W_O`` is added, through the residual stream only,
    to the receivers' input: ``"logits"`` = the final residual stream before ``ln_final`` (every head
    and MLP in between keeps its corrupted value), or each listed receiver head's q, k or v input
    (before its ``ln1``); everything downstream of a receiver is recomputed. Senders in a layer at or
    above every receiver have no direct path: their value is the corrupted run's (0 when normalised).
    Metric and errors as in :func:`~anchor_interp.patching.activation.patch_resid_pre`; receivers that
    are not ``"logits"`` or ``(layer, head, "q"|"k"|"v")`` in range raise ValueError. Models the engine
    does not compute take the plain TransformerLens path (same values, slower); there, under grouped-query
    attention (``n_key_value_heads``), only ``"q"`` receivers are allowed (ValueError otherwise).
    """
    slow_path = bool(fast_path_problems(model))
    cfg = model.cfg
    n_layers, H = cfg.n_layers, cfg.n_heads
    rec = _check_receivers(model, receivers)
    if slow_path:
        return slow_path_patch(model, clean, corrupt, rec, _receivers_json(receivers), metric,
                                    normalise=normalise, counterfactual=counterfactual, max_batch=max_batch)
    z = layer_hooks(model, "z")
    if rec is None:
        start_name, start_layer = hook_name("resid_post", n_layers - 1), n_layers
        rec_hooks = [start_name]
    else:
        start_layer = min(rec)
        start_name = hook_name("resid_pre", start_layer)
        rec_hooks = [hook_name(f"{c}_input", layer) for layer in sorted(rec) for _, c in rec[layer]]
    sw = Sweep(model, clean, corrupt, metric, counterfactual, z, z + [start_name], max_batch)
    engine = sw.engine
    dtype = next(model.parameters()).dtype
    values = torch.full((n_layers, H), sw.corrupt_value, dtype=dtype)
    base = sw.corrupt[start_name]  # (B, T, d)
    for src_layer in range(n_layers):
        if rec is not None and src_layer >= max(rec):
            continue  # no direct path from here to any receiver
        dz = sw.clean[z[src_layer]] - sw.corrupt[z[src_layer]]  # (B, T, H, dh)
        dz_h = rearrange(dz, "B T H dh -> H B T dh")  # variant = sender head
        if rec is None:

            def make_rows(s, e, all_rows, src_layer=src_layer, dz=dz, dz_h=dz_h):
                var, b = changed_rows(dz_h[s:e], s, all_rows)
                return Rows(var, b, start=base[b] + engine.head_delta(src_layer, dz, var, b, None))

            vals = sw.run(start_layer, H, make_rows, after_attn=False, base=base)
        else:
            active = {layer: hs for layer, hs in rec.items() if layer > src_layer}

            def make_rows(s, e, all_rows, src_layer=src_layer, dz=dz, dz_h=dz_h):
                var, b = changed_rows(dz_h[s:e], s, all_rows)
                return Rows(var, b, start=base[b], delta=engine.head_delta(src_layer, dz, var, b, None))

            vals = sw.run(start_layer, H, make_rows, after_attn=False, base=base, receivers=active)
        values[src_layer] = vals.cpu()
    return sw.result(
        values, ("src_layer", "src_head"), z + rec_hooks, normalise, extra={"receivers": _receivers_json(receivers)}
    )

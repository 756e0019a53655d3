"""Activation patching sweeps: one site at a time (a residual position, a head, a head at one
position, one row of a head's pattern) takes its clean value in the corrupted run.

Values equal ``transformer_lens.patching``'s ``get_act_patch_resid_pre``,
``get_act_patch_attn_head_out_all_pos`` / ``_by_pos`` and ``get_act_patch_attn_head_pattern_all_pos`` /
``_by_pos`` (head-by-position results are ``[layer, head, pos]``; TransformerLens's are
``[layer, pos, head]``). Conventions: :mod:`anchor_interp.patching` and docs/patching.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from anchor_interp.patching.engine import Rows, changed_rows, fast_path_problems
from anchor_interp.patching.inputs import layer_hooks
from anchor_interp.patching.metrics import MetricFn
from anchor_interp.patching.result import PatchResult
from anchor_interp.patching.slow import slow_head_out, slow_head_pattern, slow_resid_pre
from anchor_interp.patching.sweep import DEFAULT_MAX_BATCH, Sweep

if TYPE_CHECKING:
    from anchor_interp.tasks import Batch

__all__ = ["patch_head_out", "patch_head_pattern", "patch_resid_pre"]


def _resid_mid_names(model) -> list[str]:
    return layer_hooks(model, "resid_pre") + layer_hooks(model, "attn_out")


def _one_position_rows(diff_vp: Tensor, rows_vp: Tensor, positions: Tensor, s: int, all_rows: bool) -> Rows:
    """Rows for variants that each patch one position: ``diff_vp`` [v, B, ...] says which rows change,
    ``rows_vp`` [v, B, d] is the new residual at the variant's position ``positions`` [v]."""
    var, b = changed_rows(diff_vp, s, all_rows)
    local = var - s
    return Rows(var, b, pos=positions[local], row=rows_vp[local, b])


def patch_resid_pre(
    model: Any,
    clean: Batch | Int[Tensor, "batch seq"],
    corrupt: Batch | Int[Tensor, "batch seq"],
    metric: str | MetricFn | None = None,
    *,
    normalise: bool = True,
    counterfactual: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> PatchResult:
    """Patch ``blocks.L.hook_resid_pre`` at one position at a time: values [layer, pos].

    ``metric`` is ``"logit_diff"`` (default for Batches with answers), ``"accuracy"``, ``"kl"``
    (default when the corrupted targets are -1, e.g. ``anchor_remove``) or a callable
    ``logits [batch, pos, d_vocab] -> scalar``. ``max_batch`` bounds the sequences per forward pass.
    Models the patching engine does not compute (:func:`~anchor_interp.patching.engine.fast_path_problems`:
    rotary, shortformer, grouped-query, ...) take the plain TransformerLens path (same values, slower).
    Raises ValueError for bad inputs (see docs/patching.md).
    """
    if fast_path_problems(model):
        return slow_resid_pre(model, clean, corrupt, metric, normalise=normalise, counterfactual=counterfactual,
                                   max_batch=max_batch)
    names = layer_hooks(model, "resid_pre")
    n_layers = len(names)
    sw = Sweep(model, clean, corrupt, metric, counterfactual, names, names, max_batch)
    positions = torch.arange(sw.T, device=sw.inp.clean_tokens.device)
    values = []
    for layer in range(n_layers):
        clean_r, corrupt_r = sw.clean[names[layer]], sw.corrupt[names[layer]]  # (B, T, d)
        diff = rearrange(clean_r - corrupt_r, "B T d -> T B d")  # variant = position
        new = rearrange(clean_r, "B T d -> T B d")
        differs = (diff != 0).any(-1)  # (T, B)
        # a row that differs only at the patched position becomes the clean run exactly
        becomes_clean = differs & (differs.sum(0) == 1)[None]  # (T, B)

        def make_rows(s, e, all_rows, diff=diff, new=new, becomes_clean=becomes_clean):
            rows = _one_position_rows(diff[s:e], new[s:e], positions[s:e], s, all_rows)
            if not all_rows:
                rows.is_clean = becomes_clean[rows.var, rows.b]
            return rows

        values.append(sw.run(layer, sw.T, make_rows, after_attn=False, base=corrupt_r))
    return sw.result(torch.stack(values), ("layer", "pos"), names, normalise)


def _head_sweep(
    sw: Sweep,
    dz_of_layer: Callable[[int], Float[Tensor, "B T H d_head"]],
    by_pos: bool,
    pos_axis: str,
    hook: str,
    normalise: bool,
) -> PatchResult:
    """Patch each head (``by_pos``: each head at each position) by adding ``dz_of_layer(layer)[..., h, :]
    @ W_O[h]`` to the corrupted run's ``resid_mid``."""
    cfg = sw.model.cfg
    n_layers, H, T = cfg.n_layers, cfg.n_heads, sw.T
    engine = sw.engine
    positions = torch.arange(T, device=sw.inp.clean_tokens.device)
    resid_pre, attn_out = layer_hooks(sw.model, "resid_pre"), layer_hooks(sw.model, "attn_out")
    values = []
    for layer in range(n_layers):
        dz = dz_of_layer(layer)  # (B, T, H, dh)
        base = sw.corrupt[resid_pre[layer]] + sw.corrupt[attn_out[layer]]  # (B, T, d): resid_mid
        if not by_pos:
            dz_h = rearrange(dz, "B T H dh -> H B T dh")  # variant = head

            def make_rows(s, e, all_rows, layer=layer, dz=dz, dz_h=dz_h, base=base):
                var, b = changed_rows(dz_h[s:e], s, all_rows)
                return Rows(var, b, start=base[b] + engine.head_delta(layer, dz, var, b, None))

            values.append(sw.run(layer, H, make_rows, after_attn=True, base=base))
            continue
        # variants (head, pos), head-major: variant i = head i // T at position i % T
        dz_hp = rearrange(dz, "B T H dh -> (H T) B dh")

        def make_rows(s, e, all_rows, layer=layer, dz=dz, dz_hp=dz_hp, base=base):
            var, b = changed_rows(dz_hp[s:e], s, all_rows)
            heads, pos = var // T, positions[var % T]
            row = base[b, pos] + engine.head_delta(layer, dz, heads, b, pos)  # (N, d)
            return Rows(var, b, pos=pos, row=row)

        values.append(sw.run(layer, H * T, make_rows, after_attn=True, base=base).reshape(H, T))
    names = layer_hooks(sw.model, hook)
    axes = ("layer", "head", pos_axis) if by_pos else ("layer", "head")
    return sw.result(torch.stack(values), axes, names, normalise)


def patch_head_out(
    model: Any,
    clean: Batch | Int[Tensor, "batch seq"],
    corrupt: Batch | Int[Tensor, "batch seq"],
    metric: str | MetricFn | None = None,
    *,
    by_pos: bool = False,
    normalise: bool = True,
    counterfactual: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> PatchResult:
    """Patch each head's output ``blocks.L.attn.hook_z`` (all positions, or one position with ``by_pos``).

    Values [layer, head] or [layer, head, pos] (note: ``transformer_lens.patching`` puts pos before
    head). Metric, errors and the slow path as in :func:`patch_resid_pre`.
    """
    if fast_path_problems(model):
        return slow_head_out(model, clean, corrupt, metric, by_pos=by_pos, normalise=normalise,
                                  counterfactual=counterfactual, max_batch=max_batch)
    z = layer_hooks(model, "z")
    sw = Sweep(model, clean, corrupt, metric, counterfactual, z, z + _resid_mid_names(model), max_batch)
    return _head_sweep(sw, lambda layer: sw.clean[z[layer]] - sw.corrupt[z[layer]], by_pos, "pos", "z", normalise)


def patch_head_pattern(
    model: Any,
    clean: Batch | Int[Tensor, "batch seq"],
    corrupt: Batch | Int[Tensor, "batch seq"],
    metric: str | MetricFn | None = None,
    *,
    by_pos: bool = False,
    normalise: bool = True,
    counterfactual: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> PatchResult:
    """Patch each head's attention pattern ``blocks.L.attn.hook_pattern`` (all rows, or one ``dest_pos`` row).

    The patched head mixes the corrupted run's values with the clean run's pattern. Values
    [layer, head] or [layer, head, dest_pos]. Metric, errors and the slow path as in :func:`patch_resid_pre`.
    """
    if fast_path_problems(model):
        return slow_head_pattern(model, clean, corrupt, metric, by_pos=by_pos, normalise=normalise,
                                      counterfactual=counterfactual, max_batch=max_batch)
    pat, vv, z = (layer_hooks(model, c) for c in ("pattern", "v", "z"))
    sw = Sweep(model, clean, corrupt, metric, counterfactual, pat, pat + vv + z + _resid_mid_names(model), max_batch)

    def dz_of_layer(layer):
        v = rearrange(sw.corrupt[vv[layer]], "B T H dh -> B H T dh")
        z_clean_pattern = rearrange(sw.clean[pat[layer]] @ v, "B H T dh -> B T H dh")
        dz = z_clean_pattern - sw.corrupt[z[layer]]  # (B, T, H, dh)
        # rows whose pattern is unchanged are exactly unchanged (no rounding noise from the recomputation)
        same = rearrange((sw.clean[pat[layer]] == sw.corrupt[pat[layer]]).all(-1), "B H T -> B T H")
        return dz.masked_fill(same[..., None], 0.0)

    return _head_sweep(sw, dz_of_layer, by_pos, "dest_pos", "pattern", normalise)

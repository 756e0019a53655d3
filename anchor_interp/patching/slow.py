"""The plain-TransformerLens path of the patching functions: for HookedTransformers the engine does not
compute (rotary or shortformer positions, grouped-query attention, ...: see
:func:`~anchor_interp.patching.engine.fast_path_problems`).

Each patched variant is the whole corrupted run through ``model.run_with_hooks`` with one hook writing the
clean value into the patched site; variants are stacked along the batch dimension (``max_batch``
sequences per forward pass). Same values, conventions and errors as the engine path
(:mod:`anchor_interp.patching.activation`, :mod:`anchor_interp.patching.path`), only slower: every
variant runs every layer and every query row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from anchor_interp.names import hook_name
from anchor_interp.patching.inputs import layer_hooks, prepare_inputs
from anchor_interp.patching.metrics import Metric, resolve_metric
from anchor_interp.patching.result import PatchResult
from anchor_interp.patching.sweep import build_result, check_max_batch

__all__ = ["SlowSweep", "slow_head_out", "slow_head_pattern", "slow_path_patch", "slow_resid_pre"]

# patch(act [V, B, ...] of variants s..e-1, s, e) writes each variant's site in place
Patch = Callable[[Tensor, int, int], None]


class SlowSweep:
    """One patching call on the plain TransformerLens forward: clean and corrupted caches of ``hooks``,
    the metric and its baselines."""

    def __init__(self, model: Any, clean: Any, corrupt: Any, metric, counterfactual, hooks: list[str], max_batch: int):
        check_max_batch(max_batch)
        self.model = model
        self.inp = prepare_inputs(model, clean, corrupt, counterfactual)
        self.metric_name, fn = resolve_metric(metric, self.inp, model.cfg.d_vocab)
        self.max_batch = max_batch
        self.B, self.T = self.inp.clean_tokens.shape
        keep = set(hooks)
        with torch.no_grad():
            clean_logits, cache = model.run_with_cache(self.inp.clean_tokens, names_filter=lambda n: n in keep)
            corrupt_logits, ccache = model.run_with_cache(self.inp.corrupt_tokens, names_filter=lambda n: n in keep)
        self.clean = {n: cache[n] for n in hooks}
        self.corrupt = {n: ccache[n] for n in hooks}
        self.metric = Metric(self.metric_name, fn, self.inp.clean_targets, self.inp.corrupt_targets, clean_logits)
        self.clean_value = float(self.metric(clean_logits[None])[0])
        self.corrupt_value = float(self.metric(corrupt_logits[None])[0])

    def run(self, n_variants: int, hooks: list[tuple[str, Patch]]) -> Tensor:
        """Metric of ``n_variants`` patched corrupted runs; ``hooks`` = [(hook name, patch)]."""
        B, per_chunk = self.B, max(1, self.max_batch // self.B)
        out = []
        with torch.no_grad():
            for s in range(0, n_variants, per_chunk):
                e = min(n_variants, s + per_chunk)

                def wrap(patch: Patch, s=s, e=e):
                    def hook(act, hook):  # act (V*B, ...)
                        act = act.clone().view(e - s, B, *act.shape[1:])
                        patch(act, s, e)
                        return act.view(-1, *act.shape[2:])

                    return hook

                tokens = self.inp.corrupt_tokens.repeat(e - s, 1)  # (V*B, T)
                logits = self.model.run_with_hooks(tokens, fwd_hooks=[(n, wrap(p)) for n, p in hooks])
                out.append(self.metric(logits.view(e - s, B, *logits.shape[1:])))
        return torch.cat(out)

    def result(self, values, axes, hook_names, normalise, extra=None) -> PatchResult:
        return build_result(values, axes, hook_names, normalise, self.metric_name, self.clean_value,
                            self.corrupt_value, self.inp.counterfactual, extra)


def slow_resid_pre(model, clean, corrupt, metric, *, normalise, counterfactual, max_batch) -> PatchResult:
    """:func:`~anchor_interp.patching.activation.patch_resid_pre` on the plain TransformerLens forward."""
    names = layer_hooks(model, "resid_pre")
    sw = SlowSweep(model, clean, corrupt, metric, counterfactual, names, max_batch)
    values = []
    for name in names:
        src = sw.clean[name]  # (B, T, d)

        def patch(act, s, e, src=src):
            for i, pos in enumerate(range(s, e)):
                act[i, :, pos] = src[:, pos]

        values.append(sw.run(sw.T, [(name, patch)]))
    return sw.result(torch.stack(values), ("layer", "pos"), names, normalise)


def _head_sites(sw: SlowSweep, names: list[str], head_dim: int, by_pos: bool) -> Tensor:
    """Patch each head (``by_pos``: each head at each position, head-major) of the per-layer hooks
    ``names`` whose head axis is ``head_dim`` and position (query) axis the other of dims 1 / 2."""
    H, T = sw.model.cfg.n_heads, sw.T
    values = []
    for name in names:
        src = sw.clean[name]

        def patch(act, s, e, src=src):
            for i, v in enumerate(range(s, e)):
                h, pos = (v // T, v % T) if by_pos else (v, slice(None))
                index = [slice(None)] * src.dim()
                index[head_dim] = h
                index[3 - head_dim] = pos
                act[(i, *index)] = src[tuple(index)]

        vals = sw.run(H * T if by_pos else H, [(name, patch)])
        values.append(vals.reshape(H, T) if by_pos else vals)
    return torch.stack(values)


def slow_head_out(model, clean, corrupt, metric, *, by_pos, normalise, counterfactual, max_batch) -> PatchResult:
    """:func:`~anchor_interp.patching.activation.patch_head_out` on the plain TransformerLens forward."""
    names = layer_hooks(model, "z")  # (B, T, H, dh)
    sw = SlowSweep(model, clean, corrupt, metric, counterfactual, names, max_batch)
    values = _head_sites(sw, names, 2, by_pos)
    return sw.result(values, ("layer", "head", "pos") if by_pos else ("layer", "head"), names, normalise)


def slow_head_pattern(model, clean, corrupt, metric, *, by_pos, normalise, counterfactual, max_batch) -> PatchResult:
    """:func:`~anchor_interp.patching.activation.patch_head_pattern` on the plain TransformerLens forward."""
    names = layer_hooks(model, "pattern")  # (B, H, dest, src)
    sw = SlowSweep(model, clean, corrupt, metric, counterfactual, names, max_batch)
    values = _head_sites(sw, names, 1, by_pos)
    return sw.result(values, ("layer", "head", "dest_pos") if by_pos else ("layer", "head"), names, normalise)


def _check_gqa_receivers(model, rec) -> None:
    n_kv = getattr(model.cfg, "n_key_value_heads", None)
    if n_kv is None or rec is None:
        return
    shared = [(layer, head, c) for layer, hs in rec.items() for head, c in hs if c != "q"]
    if shared:
        raise ValueError(
            f"receivers: {shared[0]} is a key/value input, but the model has n_key_value_heads={n_kv} "
            "(grouped-query attention: a key/value head is shared by several query heads, so it is no "
            "one head's input); use 'q' receivers or 'logits'"
        )


def slow_path_patch(model, clean, corrupt, rec, receivers_json, metric, *, normalise, counterfactual,
                    max_batch) -> PatchResult:
    """:func:`~anchor_interp.patching.path.path_patch` on the plain TransformerLens forward (``rec``:
    ``None`` for the logits, else ``{layer: [(head, comp)]}``). Raises ValueError for key/value receivers
    under grouped-query attention."""
    from anchor_interp.models.adapter import attn_weights, split_qkv_input

    _check_gqa_receivers(model, rec)
    cfg = model.cfg
    n_layers, H = cfg.n_layers, cfg.n_heads
    z = layer_hooks(model, "z")
    sw = SlowSweep(model, clean, corrupt, metric, counterfactual, z, max_batch)
    dtype = next(model.parameters()).dtype
    values = torch.full((n_layers, H), sw.corrupt_value, dtype=dtype)
    if rec is None:
        rec_hooks = [hook_name("resid_post", n_layers - 1)]
    else:
        rec_hooks = [hook_name(f"{c}_input", layer) for layer in sorted(rec) for _, c in rec[layer]]
    for src_layer in range(n_layers):
        if rec is not None and src_layer >= max(rec):
            continue  # no direct path from here to any receiver
        dz = sw.clean[z[src_layer]] - sw.corrupt[z[src_layer]]  # (B, T, H, dh)
        W_O = attn_weights(model, src_layer)["W_O"]  # (H, dh, d)

        def add(act, s, e, dz=dz, W_O=W_O, head=None):  # act (V, B, T, d) or (V, B, T, H, d) with `head`
            for i, h in enumerate(range(s, e)):
                delta = (dz[:, :, h] @ W_O[h]).to(act.dtype)  # (B, T, d)
                if head is None:
                    act[i] += delta
                else:
                    act[i, :, :, head] += delta

        if rec is None:
            hooks = [(rec_hooks[0], add)]
        else:
            hooks = [(hook_name(f"{c}_input", layer), functools.partial(add, head=head))
                     for layer, hs in sorted(rec.items()) if layer > src_layer for head, c in hs]
        with split_qkv_input(model):
            values[src_layer] = sw.run(H, hooks).cpu()
    return sw.result(values, ("src_layer", "src_head"), z + rec_hooks, normalise, extra={"receivers": receivers_json})

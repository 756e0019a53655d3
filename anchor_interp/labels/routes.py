"""Route evidence: where the information a head contributes comes from, and where it goes.

A head's output at destination ``d`` is ``z_d = sum_s A[d, s] v_s``. For a row-paired clean / corrupted
batch (one counterfactual kind), a **part** of the head is a set of ``(d, s)`` terms:

- ``head``: every term (the whole head: the same number as patching its ``hook_z``);
- ``offset{k:+d}``: the terms with ``s - d == k`` (information moved by ``k`` positions); ``rows{k:+d}``:
  the same outside the last row (at the last row a fixed offset also picks out the rows whose slot happens
  to sit there, which is a broadcast seen through one offset);
- ``slot:<slot>``: the terms whose source is a task slot (``anchor``, ``key``, ``anchor2``, ``key2``), at
  its clean or its corrupted position, any destination;
- ``last:<slot>``: the same terms at the last row only.

**Source effect** of a part: run the corrupted batch, replace the head's part by the clean run's
terms (``z += sum_s M[d, s] (A_clean[d, s] v_clean[s] - A_corrupt[d, s] v_corrupt[s])``), let every later
layer recompute, and measure the logit difference between the clean and the corrupted target at the
last position, normalised ``(patched - corrupt) / (clean - corrupt)``: 1 = the part restores the clean
answer, 0 = no effect (docs/concepts.md, "Route evidence").

**Route** of a part (path patching): add only the part's output change ``delta @ W_O`` to one receiver's
input in the corrupted run -- a later head's query, key or value input (``blocks.L.hook_q_input`` ...),
or the residual stream read by the unembedding (``logits``; the final LayerNorm scale is recomputed) --
everything else stays corrupted; same normalisation.

Everything here runs TransformerLens hooks on stacked variants (``variants x rows`` sequences per forward
pass), so it works on any HookedTransformer; per-row values are kept for bootstrap intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from anchor_interp.names import hook_name, layer_hook_names

__all__ = ["SLOT_FIELDS", "PairedRun", "normalised", "paired_run", "part_masks", "route_values", "source_values"]

# slot name -> where its position lives in a Batch (a field, or a key of batch.extra)
SLOT_FIELDS = {"anchor": "anchor_pos", "key": "key_pos", "anchor2": "anchor2_pos", "key2": "key2_pos"}
MAX_ROWS_PER_PASS = 16384  # stacked sequences per forward pass (memory bound)


@dataclass
class PairedRun:
    """A clean batch, its counterfactual, and what every part measurement needs from their two runs.

    ``clean_ld`` / ``corrupt_ld``: per-row logit difference ``logit[clean target] - logit[corrupt target]``
    at the last position (logits). ``pattern_*[layer]``: (B, H, T, T); ``v_*[layer]``: (B, T, H, d_head)
    (grouped-query values expanded to one per query head). ``slots``: slot -> (clean pos, corrupt pos), (B,).
    ``resid_x``: the corrupted run's ``resid_pre`` / ``resid_mid`` (models with MLPs) / ``resid_post``
    of every layer, by hook name, (B, T, d_model).
    """

    kind: str
    clean: object
    corrupt: object
    n_dropped: int
    clean_ld: Float[Tensor, " batch"]
    corrupt_ld: Float[Tensor, " batch"]
    pattern_c: dict[int, Tensor]
    pattern_x: dict[int, Tensor]
    v_c: dict[int, Tensor]
    v_x: dict[int, Tensor]
    slots: dict[str, tuple[Tensor, Tensor]]
    resid_x: dict[str, Tensor]

    @property
    def gap(self) -> float:
        """Mean clean minus mean corrupted logit difference (logits): how well the model tells them apart."""
        return float(self.clean_ld.mean() - self.corrupt_ld.mean())


def _logit_diff(logits: Tensor, good: Tensor, bad: Tensor) -> Tensor:
    last = logits[:, -1]  # (B, V)
    return last.gather(1, good[:, None])[:, 0] - last.gather(1, bad[:, None])[:, 0]  # (B,)


def _variant_logit_diffs(logits: Tensor, run: PairedRun, V: int) -> Tensor:
    """Per-row logit differences (V, B) of ``V`` stacked variants of the corrupted rows: logits (V * B, T', vocab)."""
    good = run.clean.targets.clamp_min(0).repeat(V)
    bad = run.corrupt.targets.clamp_min(0).repeat(V)
    return _logit_diff(logits, good, bad).float().view(V, -1)


def _values(cache, layer: int, n_heads: int) -> Tensor:
    v = cache[hook_name("v", layer)]  # (B, T, H_kv, d_head)
    if v.shape[2] != n_heads:  # grouped-query attention: one value head per group of query heads
        v = v.repeat_interleave(n_heads // v.shape[2], dim=2)
    return v


def _slot_positions(batch) -> dict[str, Tensor]:
    out = {}
    for slot, name in SLOT_FIELDS.items():
        pos = getattr(batch, name, None) if name in ("anchor_pos", "key_pos") else batch.extra.get(name)
        if pos is not None and bool((pos >= 0).all()):
            out[slot] = pos
    return out


@torch.no_grad()
def paired_run(model, clean, corrupt, kind: str, n_dropped: int = 0) -> PairedRun:
    """Run ``clean`` and ``corrupt`` (row-paired Batches) once each and keep patterns, values, residuals
    and logit differences."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = set(layer_hook_names("pattern", L)) | set(layer_hook_names("v", L))
    resid = set(layer_hook_names("resid_pre", L)) | set(layer_hook_names("resid_post", L))
    if not model.cfg.attn_only:
        resid |= set(layer_hook_names("resid_mid", L))
    good, bad = clean.targets.clamp_min(0), corrupt.targets.clamp_min(0)
    logits_c, cache_c = model.run_with_cache(clean.tokens, names_filter=lambda n: n in names)
    logits_x, cache_x = model.run_with_cache(corrupt.tokens, names_filter=lambda n: n in names or n in resid)
    slots_c, slots_x = _slot_positions(clean), _slot_positions(corrupt)
    return PairedRun(
        kind, clean, corrupt, n_dropped,
        _logit_diff(logits_c, good, bad).float(), _logit_diff(logits_x, good, bad).float(),
        {layer: cache_c[hook_name("pattern", layer)] for layer in range(L)},
        {layer: cache_x[hook_name("pattern", layer)] for layer in range(L)},
        {layer: _values(cache_c, layer, H) for layer in range(L)},
        {layer: _values(cache_x, layer, H) for layer in range(L)},
        {s: (slots_c[s], slots_x[s]) for s in slots_c if s in slots_x},
        {name: cache_x[name] for name in resid},
    )


def part_masks(run: PairedRun, causal: bool) -> dict[str, Bool[Tensor, "batch dest_pos src_pos"]]:
    """Every part's term mask ``M[b, d, s]`` (see the module docstring), visible terms only."""
    B, T = run.clean_ld.shape[0], run.clean.tokens.shape[1]
    dev = run.clean.tokens.device
    d = torch.arange(T, device=dev)[:, None]  # (T, 1)
    s = torch.arange(T, device=dev)[None, :]  # (1, T)
    visible = (s <= d) if causal else torch.ones(T, T, dtype=torch.bool, device=dev)  # (T, T)
    masks = {"head": visible.expand(B, T, T)}
    last = (d == T - 1).expand(T, T)  # (T, T): the last row
    for k in range(-(T - 1), T):
        m = (s - d == k) & visible  # (T, T)
        if bool(m.any()):
            masks[f"offset{k:+d}"] = m.expand(B, T, T)
        if bool((m & ~last).any()):
            masks[f"rows{k:+d}"] = (m & ~last).expand(B, T, T)
    for slot, (pos_c, pos_x) in run.slots.items():
        src = (s == pos_c[:, None, None]) | (s == pos_x[:, None, None])  # (B, 1, T)
        m = src.expand(B, T, T) & visible  # (B, T, T)
        masks[f"slot:{slot}"] = m
        masks[f"last:{slot}"] = m & last
    return masks


def _part_delta(run: PairedRun, layer: int, head: int, mask: Tensor) -> Float[Tensor, "batch pos d_head"]:
    """``sum_s M[d, s] (A_c v_c - A_x v_x)`` for one head: the change of its ``hook_z`` (B, T, d_head)."""
    pc = run.pattern_c[layer][:, head] * mask  # (B, T, T)
    px = run.pattern_x[layer][:, head] * mask  # (B, T, T)
    vc, vx = run.v_c[layer][:, :, head], run.v_x[layer][:, :, head]  # (B, T, d_head)
    return (einops.einsum(pc, vc, "b d s, b s e -> b d e")
            - einops.einsum(px, vx, "b d s, b s e -> b d e"))


def _finish(model, run: PairedRun, layer: int, deltas: Float[Tensor, "variant batch pos d_model"]) -> Tensor:
    """Per-row logit differences (V, B) when ``deltas`` are added to layer ``layer``'s attention output in
    the corrupted run and every later computation is redone (the last layer: the last row only)."""
    from anchor_interp.models.adapter import final_norm, mlp_module, norm_module, unembed_resid

    V = deltas.shape[0]
    last_layer = layer == model.cfg.n_layers - 1
    # after the layer's attention: resid_mid (attention-only models have none: their resid_post)
    mid = run.resid_x.get(hook_name("resid_mid", layer), run.resid_x[hook_name("resid_post", layer)])  # (B, T, d)
    if last_layer:  # only the last row reaches the logits
        mid, deltas = mid[:, -1:], deltas[:, :, -1:]
    resid = (mid[None] + deltas.to(mid.dtype)).flatten(0, 1)  # (V * B, T', d)
    engine = _engine(model)
    if engine is not None and not last_layer:  # the batched forward: later layers' last row only
        logits = engine.forward_from(layer, resid, after_attn=True, last_only=True)  # (V * B, 1, d_vocab_out)
        return _variant_logit_diffs(logits, run, V)
    mlp = mlp_module(model, layer)
    if mlp is not None:
        resid = resid + mlp(norm_module(model, layer, "ln2")(resid))
    if last_layer:
        logits = unembed_resid(model, final_norm(model)(resid))  # (V * B, 1, d_vocab_out)
    else:
        logits = model(resid, start_at_layer=layer + 1)  # (V * B, T, d_vocab_out)
    return _variant_logit_diffs(logits, run, V)


def _engine(model):
    """The patching engine's batched forward for ``model`` (None where it does not apply, e.g. rotary or
    grouped-query models: the TransformerLens forward is used there, with the same results)."""
    from anchor_interp.patching.engine import engine_for

    try:
        return engine_for(model)
    except ValueError:
        return None


def _chunks(n_variants: int, rows: int):
    per_pass = max(1, MAX_ROWS_PER_PASS // max(rows, 1))
    for start in range(0, n_variants, per_pass):
        yield slice(start, min(n_variants, start + per_pass))


@torch.no_grad()
def source_values(model, run: PairedRun, layer: int, parts: list[tuple[int, Tensor]]) -> Float[Tensor, "part batch"]:
    """Per-row patched logit differences (logits) for ``parts`` = [(head, mask)] of one layer: the
    corrupted run with each part's clean terms written into the head's ``hook_z``."""
    from anchor_interp.models.adapter import attn_weights

    B = run.clean_ld.shape[0]
    W_O = attn_weights(model, layer)["W_O"]  # (H, d_head, d_model)
    out = []
    for sl in _chunks(len(parts), B):
        deltas = torch.stack([_part_delta(run, layer, h, m).to(W_O.dtype) @ W_O[h] for h, m in parts[sl]])
        out.append(_finish(model, run, layer, deltas))  # (V, B)
    return torch.cat(out) if out else torch.zeros(0, B)


def receivers(model, layer: int) -> list[tuple[str, int | None, str | None]]:
    """(receiver name, its layer, its input) for every place downstream of ``layer`` that can read a
    head's output: ``L{l}.q`` / ``L{l}.k`` / ``L{l}.v`` (the query / key / value inputs of every head of a
    later layer ``l``) and ``logits`` (the residual stream read by the unembedding)."""
    out = [(f"L{later}.{c}", later, c) for later in range(layer + 1, model.cfg.n_layers) for c in "qkv"]
    return out + [("logits", None, None)]


@torch.no_grad()
def route_values(model, run: PairedRun, layer: int, head: int, mask: Tensor) -> dict[str, Float[Tensor, " batch"]]:
    """Per-row logit differences (logits) when the part's output change ``delta @ W_O`` reaches one
    receiver (see :func:`receivers`) and nothing else: path patching from the part to each receiver."""
    from anchor_interp.models.adapter import attn_weights, final_norm, split_qkv_input, unembed_resid

    W_O = attn_weights(model, layer)["W_O"][head]  # (d_head, d_model)
    delta = _part_delta(run, layer, head, mask).to(W_O.dtype) @ W_O  # (B, T, d_model)
    good, bad = run.clean.targets.clamp_min(0), run.corrupt.targets.clamp_min(0)
    out = {}
    engine = _engine(model)
    for name, later, c in receivers(model, layer):
        if later is None:  # straight to the unembedding: the last row of the final residual stream
            final = run.resid_x[hook_name("resid_post", model.cfg.n_layers - 1)][:, -1:] + delta[:, -1:]
            logits = unembed_resid(model, final_norm(model)(final))  # (B, 1, d_vocab_out)
        elif engine is not None:  # every head of layer `later` reads ln1(resid + delta) in its c input
            logits = engine.forward_from(later, run.resid_x[hook_name("resid_pre", later)], after_attn=False,
                                         last_only=True, receivers={later: [(h, c) for h in range(model.cfg.n_heads)]},
                                         receiver_delta=delta)  # (B, 1, d_vocab_out)
        else:
            def add(x, hook):  # x: (B, T, H or H_kv, d_model), each head's own input
                return x + delta[:, :, None, :]

            with split_qkv_input(model):
                logits = model.run_with_hooks(run.resid_x[hook_name("resid_pre", later)], start_at_layer=later,
                                              fwd_hooks=[(hook_name(f"{c}_input", later), add)])
        out[name] = _logit_diff(logits, good, bad).float()
    return out


def normalised(values: Float[Tensor, "... batch"], run: PairedRun,
               rows: Tensor | None = None) -> Float[Tensor, "..."]:
    """``(mean patched - mean corrupt) / (mean clean - mean corrupt)`` over ``rows`` (default: all);
    ``rows`` may be (R, B) bootstrap indices, giving one value per resample."""
    if rows is None:
        return (values.mean(-1) - run.corrupt_ld.mean()) / (run.clean_ld.mean() - run.corrupt_ld.mean())
    v = values[..., rows]  # (..., R, B)
    return (v.mean(-1) - run.corrupt_ld[rows].mean(-1)) / (run.clean_ld[rows].mean(-1) - run.corrupt_ld[rows].mean(-1))

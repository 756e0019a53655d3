"""Weight-based evidence per head: OV copying, QK positional preference, direct logit attribution.

- :func:`ov_copying_score`: does the head's OV circuit copy tokens? ``M = W_E[ids] W_V W_O W_U[:, ids]``
  (embedding -> value -> output -> unembedding, LayerNorm and biases ignored); a source token ``t`` is
  copied if row ``t`` of ``M`` is largest at column ``t``. Score = top-1 copy rate above chance,
  ``clip((rate - 1/n) / (1 - 1/n), 0, 1)`` for ``n`` tokens: 0 = no better than a random map (or a zero
  OV circuit), 1 = every token maps to itself. This is the direct path only: a head that copies a
  token moved there by an earlier head (the bidirectional mechanism's layer-2 head) needs the
  composed circuit, :func:`ov_composition_copying`.
- :func:`qk_positional_pattern` / :func:`qk_positional_preference`: the attention pattern a head
  would have if every position held the *average* token: ``x_r = W_pos[r] + mean(W_E)``, through the
  block's ``ln1``, queries and keys with their biases, the attention mask and softmax. Its best shift
  offset and shift score (same unit as :mod:`anchor_interp.scores.patterns`) say which relative offset the
  positional QK circuit favours. Exact for layer 0 of an attention-only model; for later layers it
  ignores what earlier layers wrote.
- :func:`direct_logit_attribution`: each head's output at one position projected straight onto the
  unembedding direction ``W_U[:, answer] - W_U[:, wrong]`` (or minus the mean logit when ``wrong`` is
  None), through the final LayerNorm's cached scale; in logits, mean over the batch.
  :func:`dla_share` turns it into a share in [0, 1]: ``|dla_h| / sum |dla|``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_interp.models.blocks import masked_softmax
from anchor_interp.models.validate import check_tokens
from anchor_interp.names import head_name, hook_name, layer_hook_names
from anchor_interp.scores.cache import FINAL_SCALE_HOOK, cached_activations, has_final_norm
from anchor_interp.scores.patterns import is_causal, pattern_scores

__all__ = [
    "direct_logit_attribution",
    "copy_ids",
    "dla_share",
    "has_learned_positions",
    "ov_circuit",
    "ov_composition_copying",
    "ov_copying_score",
    "qk_positional_pattern",
    "qk_positional_preference",
    "weight_evidence_notes",
]


def _token_ids(model, token_ids) -> Tensor:
    if token_ids is None:
        return torch.arange(model.cfg.d_vocab)
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if len(ids) < 2 or int(ids.min()) < 0 or int(ids.max()) >= model.cfg.d_vocab:
        raise ValueError(
            f"token_ids: need at least 2 ids in [0, {model.cfg.d_vocab}) (d_vocab); got {len(ids)} ids"
            + (f" in [{int(ids.min())}, {int(ids.max())}]" if len(ids) else "")
        )
    return ids


def ov_circuit(model, layer: int, head: int, token_ids=None) -> Float[Tensor, "src_token out_token"]:
    """The direct OV circuit ``W_E[ids] W_V W_O W_U[:, out_ids]`` of one head (logits per source token).

    ``out_ids`` are the ``ids`` below the model's output vocabulary (``d_vocab_out``, which may be
    smaller than ``d_vocab``), so the matrix is square exactly when every id is an output id.
    Raises ValueError if ``layer``/``head`` are out of range, ``token_ids`` are not valid ids, or no id
    is an output id.
    """
    _check_head(model, layer, head)
    ids = _token_ids(model, token_ids)
    out_ids = ids[ids < _d_vocab_out(model)]
    if len(out_ids) == 0:
        raise ValueError(f"token_ids: none is below the model's output vocabulary d_vocab_out={_d_vocab_out(model)}")
    from anchor_interp.models.adapter import attn_weights, embed_weights

    w, emb = attn_weights(model, layer), embed_weights(model)
    with torch.no_grad():
        ov = w["W_V"][head] @ w["W_O"][head]  # (d_model, d_model)
        return emb["W_E"][ids] @ ov @ emb["W_U"][:, out_ids]  # (n, d) @ (d, d) @ (d, m)


def _d_vocab_out(model) -> int:
    from anchor_interp.models.adapter import embed_weights

    return int(embed_weights(model)["W_U"].shape[1])


def copy_ids(model, token_ids=None) -> Tensor | None:
    """The ids OV copying is scored on: ``token_ids`` (default: the whole input vocabulary) that are also
    output ids (``< d_vocab_out``); None when fewer than 2 remain (copying cannot be scored: see
    :func:`weight_evidence_notes`). Raises ValueError on invalid ``token_ids``."""
    ids = _token_ids(model, token_ids)
    ids = ids[ids < _d_vocab_out(model)]
    return ids if len(ids) >= 2 else None


def has_learned_positions(model) -> bool:
    """Whether the model has a learned absolute positional embedding ``W_pos`` (standard or shortformer
    positions), which :func:`qk_positional_pattern` needs."""
    from anchor_interp.models.adapter import embed_weights

    return embed_weights(model)["W_pos"] is not None


def weight_evidence_notes(model, token_ids=None) -> list[str]:
    """One note per weight score that does not apply to ``model`` (its value is NaN)."""
    notes = []
    if copy_ids(model, token_ids) is None:
        notes.append(f"ov_copying not scored: fewer than 2 of the scored token ids are output ids "
                     f"(d_vocab_out={_d_vocab_out(model)}); its score is NaN")
    if not has_learned_positions(model):
        notes.append(f"qk_positional_shift not scored: positional_embedding_type="
                     f"{getattr(model.cfg, 'positional_embedding_type', None)!r} has no learned positions W_pos; "
                     "its score is NaN")
    return notes


def _copy_rate_score(M: Tensor) -> float:
    n = M.shape[0]
    spread = M.max(-1).values - M.min(-1).values
    hits = (M.argmax(-1) == torch.arange(n, device=M.device)) & (spread > 1e-6 * (1 + M.abs().max()))
    rate = hits.float().mean().item()
    return max(0.0, min(1.0, (rate - 1.0 / n) / (1.0 - 1.0 / n)))


def ov_copying_score(model, token_ids=None) -> Float[Tensor, "layer head"]:
    """Top-1 copy rate of each head's direct OV circuit, above chance, in [0, 1] (see module docstring).

    ``token_ids``: the source/output tokens to score (default: the whole vocabulary; for a task, its
    key values). Only ids below ``d_vocab_out`` are scored; all NaN when fewer than 2 are (see
    :func:`copy_ids`). Raises ValueError on invalid ids.
    """
    cfg = model.cfg
    ids = copy_ids(model, token_ids)
    if ids is None:
        return torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
    out = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            out[layer, head] = _copy_rate_score(ov_circuit(model, layer, head, ids))
    return out


def ov_composition_copying(model, first: tuple[int, int], second: tuple[int, int], token_ids=None) -> float:
    """Copy score (same unit as :func:`ov_copying_score`) of ``W_E OV(first) OV(second) W_U``: a token moved
    by head ``first`` and then by head ``second`` (e.g. the mechanism model's shift then broadcast).

    NaN when fewer than 2 ids are output ids (:func:`copy_ids`). Raises ValueError if a head is out of
    range, ``first`` is not in an earlier layer, or ids are bad.
    """
    _check_head(model, *first)
    _check_head(model, *second)
    if first[0] >= second[0]:
        raise ValueError(f"first={first} must be in an earlier layer than second={second}")
    ids = copy_ids(model, token_ids)
    if ids is None:
        return float("nan")
    from anchor_interp.models.adapter import attn_weights, embed_weights

    a1, a2, emb = attn_weights(model, first[0]), attn_weights(model, second[0]), embed_weights(model)
    with torch.no_grad():
        M = emb["W_E"][ids] @ a1["W_V"][first[1]] @ a1["W_O"][first[1]] @ a2["W_V"][second[1]] @ a2["W_O"][second[1]]
        M = M @ emb["W_U"][:, ids]  # (n, n)
    return _copy_rate_score(M)


def qk_positional_pattern(model) -> Float[Tensor, "layer head dest_pos src_pos"]:
    """The attention pattern each head would have on average tokens (see the module docstring).

    Raises ValueError for a model without learned absolute positions (``positional_embedding_type``
    rotary, alibi, ...: :func:`has_learned_positions`)."""
    cfg = model.cfg
    if not has_learned_positions(model):
        raise ValueError(f"qk_positional_pattern: needs learned absolute positions (W_pos); the model has "
                         f"positional_embedding_type={getattr(cfg, 'positional_embedding_type', None)!r}")
    T = cfg.n_ctx
    causal = is_causal(model)
    from anchor_interp.models.adapter import attn_scale, attn_weights, embed_weights, norm_module

    emb = embed_weights(model)
    with torch.no_grad():
        x = emb["W_pos"][:T] + emb["W_E"].mean(0)  # (T, d_model)
        out = []
        for layer in range(cfg.n_layers):
            xn = norm_module(model, layer, "ln1")(x[None])[0]  # (T, d_model)
            w = attn_weights(model, layer)
            q = torch.einsum("td,hde->hte", xn, w["W_Q"]) + w["b_Q"][:, None, :]  # (H, T, d_head)
            k = torch.einsum("td,hde->hte", xn, w["W_K"]) + w["b_K"][:, None, :]  # (H, T, d_head)
            scores = q @ k.transpose(-1, -2) / attn_scale(model, layer)  # (H, T, T)
            out.append(masked_softmax(scores, causal))
        return torch.stack(out)  # (L, H, T, T)


def qk_positional_preference(model) -> tuple[Int[Tensor, "layer head"], Float[Tensor, "layer head"]]:
    """(best offset, its shift score in [0, 1]) of each head's :func:`qk_positional_pattern`; (0, NaN) for
    every head of a model without learned positions (:func:`has_learned_positions`)."""
    if not has_learned_positions(model):
        shape = (model.cfg.n_layers, model.cfg.n_heads)
        return torch.zeros(shape, dtype=torch.long), torch.full(shape, float("nan"))
    scores = pattern_scores(qk_positional_pattern(model)[None], causal=is_causal(model))
    return scores.shift_offset, scores.shift


def direct_logit_attribution(
    model,
    tokens: Int[Tensor, "batch seq"],
    answer: Int[Tensor, " batch"],
    wrong: Int[Tensor, " batch"] | None = None,
    pos: int = -1,
    cache=None,
) -> Float[Tensor, "layer head"]:
    """Mean direct contribution (logits) of each head at position ``pos`` to ``logit[answer] - logit[wrong]``
    (or ``logit[answer] - mean logit`` when ``wrong`` is None), through the final LayerNorm's scale.

    ``cache``: the activations of a run of ``tokens`` that already happened
    (:func:`anchor_interp.scores.cache.clean_run`; it needs every ``blocks.L.attn.hook_z`` and, with a
    final normalisation, ``ln_final.hook_scale``): read instead of running the model again; same numbers.
    Raises ValueError on bad tokens, if ``answer``/``wrong`` are not ``[batch]`` ids in the output range,
    or if ``cache`` lacks a hook of this batch.
    """
    check_tokens(model, tokens)
    n = tokens.shape[0]
    from anchor_interp.models.adapter import attn_weights, embed_weights, final_norm

    W_U = embed_weights(model)["W_U"]  # (d_model, d_vocab_out)
    d_out = W_U.shape[1]
    for name, ids in (("answer", answer), ("wrong", wrong)):
        if ids is None:
            continue
        if ids.shape != (n,) or int(ids.min()) < 0 or int(ids.max()) >= d_out:
            raise ValueError(f"{name}: expected [{n}] token ids in [0, {d_out}); got shape {tuple(ids.shape)}")
    cfg = model.cfg
    names = layer_hook_names("z", cfg.n_layers)
    has_ln = has_final_norm(model)
    if has_ln:
        names.append(FINAL_SCALE_HOOK)
    with torch.no_grad():
        if cache is None:
            _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
        cache = cached_activations(cache, names, tokens)
        direction = W_U[:, answer] - (W_U[:, wrong] if wrong is not None else W_U.mean(-1, keepdim=True))  # (d, B)
        direction = direction.T  # (B, d_model)
        ln_final = final_norm(model)
        if cfg.normalization_type in ("LN", "RMS") and hasattr(ln_final, "w"):
            direction = direction * ln_final.w  # (B, d_model)
        out = torch.zeros(cfg.n_layers, cfg.n_heads)
        for layer in range(cfg.n_layers):
            z = cache[hook_name("z", layer)][:, pos]  # (B, H, d_head)
            result = torch.einsum("bhe,hed->bhd", z, attn_weights(model, layer)["W_O"])  # (B, H, d_model)
            if cfg.normalization_type in ("LN", "LNPre"):
                result = result - result.mean(-1, keepdim=True)
            if has_ln:
                result = result / cache[FINAL_SCALE_HOOK][:, pos][:, None, :]  # (B, H, d) / (B, 1, 1)
            out[layer] = torch.einsum("bhd,bd->bh", result, direction).mean(0)
    return out


def dla_share(dla: Float[Tensor, "layer head"]) -> Float[Tensor, "layer head"]:
    """Each head's share ``|dla| / sum |dla|`` of the total direct attribution, in [0, 1] (0 if all are 0)."""
    total = dla.abs().sum()
    return dla.abs() / total if total > 0 else torch.zeros_like(dla)


def _check_head(model, layer: int, head: int) -> None:
    if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
        raise ValueError(
            f"head {head_name(layer, head)}: out of range; the model has layers 0..{model.cfg.n_layers - 1} and "
            f"heads 0..{model.cfg.n_heads - 1}"
        )

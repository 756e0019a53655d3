"""The forward pass of k stacked HookedTransformers: one ``bmm`` per projection for all k models.

``params[name]`` is the HookedTransformer parameter ``name`` of every model, stacked on a new leading
axis: shape (k, *its shape). :func:`stacked_forward` does HookedTransformer's arithmetic on them and
returns the logits at the last position only (the task's single scored position). The block arithmetic
(normalisation, masked softmax, activations) is :mod:`anchor_interp.models.blocks`, shared with the
patch engine.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from anchor_interp.models.blocks import ACTIVATIONS, masked_softmax, stacked_embed
from anchor_interp.models.blocks import layer_norm as block_layer_norm

__all__ = ["check_trainable_config", "stacked_forward"]


def check_trainable_config(cfg) -> None:
    """Raise ValueError if the batched trainer does not implement this HookedTransformerConfig (a
    :class:`~anchor_interp.models.reference.ReferenceConfig` is always trainable)."""
    if getattr(cfg, "arch", None) == "reference":
        return
    problems = []
    if cfg.positional_embedding_type != "standard":
        problems.append(f"positional_embedding_type={cfg.positional_embedding_type!r} (needs 'standard')")
    if cfg.normalization_type not in ("LN", "LNPre", None):
        problems.append(f"normalization_type={cfg.normalization_type!r} (needs 'LN', 'LNPre' or None)")
    if not cfg.attn_only and cfg.act_fn not in ACTIVATIONS:
        problems.append(f"act_fn={cfg.act_fn!r} (needs one of {sorted(ACTIVATIONS)})")
    if cfg.attention_dir not in ("causal", "bidirectional"):
        problems.append(f"attention_dir={cfg.attention_dir!r}")
    for flag in ("gated_mlp", "parallel_attn_mlp", "use_local_attn", "use_qk_norm", "final_rms",
                 "scale_attn_by_inverse_layer_idx", "post_embedding_ln", "use_normalization_before_and_after"):
        if getattr(cfg, flag, False):
            problems.append(f"{flag}=True")
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        problems.append("grouped-query attention")
    if problems:
        raise ValueError("the trainer does not support this model config: " + "; ".join(problems))


def layer_norm(
    x: Float[Tensor, "k *rows d_model"], w: Float[Tensor, "k d_model"] | None, b: Float[Tensor, "k d_model"] | None,
    eps: float,
) -> Float[Tensor, "k *rows d_model"]:
    """transformer_lens.components.LayerNorm's arithmetic (:func:`anchor_interp.models.blocks.layer_norm`)
    for k stacked models; w and b (k, d) or None (LNPre)."""
    if w is None:
        return block_layer_norm(x, None, None, "LNPre", eps)
    shape = (w.shape[0],) + (1,) * (x.ndim - 2) + (w.shape[-1],)
    return block_layer_norm(x, w.view(shape), b.view(shape), "LN", eps)


def attn_scale(cfg) -> float:
    """The divisor of attention scores: sqrt(d_head), or cfg.attn_scale when set; 1 without scaling."""
    scale = math.sqrt(cfg.d_head) if cfg.use_attn_scale else 1.0
    if cfg.use_attn_scale and cfg.attn_scale > 0:
        scale = cfg.attn_scale
    return scale


def attention(params: dict[str, Tensor], cfg, layer: int, h: Tensor, last_only: bool) -> Tensor:
    """Layer ``layer``'s attention output, (k, B, Tq, d), of normalised residuals h (k, B, T, d).

    ``last_only``: compute the last query position only (Tq = 1), else every position (Tq = T).
    """
    k, B, T, d = h.shape
    p = f"blocks.{layer}.attn."
    hq = h[:, :, -1:] if last_only else h  # (k, B, Tq, d)
    Tq = hq.shape[2]
    W_Q = rearrange(params[p + "W_Q"], "k nh d hs -> k d (nh hs)")
    W_KV = rearrange(torch.cat([params[p + "W_K"], params[p + "W_V"]], 1), "k nkv d hs -> k d (nkv hs)")
    q = rearrange(hq.reshape(k, B * Tq, d) @ W_Q, "k (B Tq) (nh hs) -> k B nh Tq hs", B=B, nh=cfg.n_heads)
    q = q + params[p + "b_Q"][:, None, :, None, :]  # (k, B, nh, Tq, hs)
    kv = rearrange(h.reshape(k, B * T, d) @ W_KV, "k (B T) (two nh hs) -> two k B nh T hs",
                   B=B, two=2, nh=cfg.n_heads)
    kk = kv[0] + params[p + "b_K"][:, None, :, None, :]  # (k, B, nh, T, hs)
    v = kv[1] + params[p + "b_V"][:, None, :, None, :]  # (k, B, nh, T, hs)
    att = (q @ kk.transpose(-1, -2)) / attn_scale(cfg)  # (k, B, nh, Tq, T)
    att = masked_softmax(att, cfg.attention_dir == "causal")  # (k, B, nh, Tq, T)
    z = rearrange(att @ v, "k B nh Tq hs -> k (B Tq) (nh hs)")  # (k, B*Tq, nh*hs)
    out = z @ rearrange(params[p + "W_O"], "k nh hs d -> k (nh hs) d") + params[p + "b_O"][:, None, :]
    return out.view(k, B, Tq, d)  # (k, B, Tq, d)


def mlp(params: dict[str, Tensor], cfg, layer: int, h: Tensor) -> Tensor:
    """Layer ``layer``'s MLP output, (k, B, Tq, d), of normalised residuals h (k, B, Tq, d)."""
    k, B, Tq, d = h.shape
    p = f"blocks.{layer}.mlp."
    pre = h.reshape(k, B * Tq, d) @ params[p + "W_in"] + params[p + "b_in"][:, None, :]  # (k, B*Tq, d_mlp)
    post = ACTIVATIONS[cfg.act_fn](pre) @ params[p + "W_out"] + params[p + "b_out"][:, None, :]  # (k, B*Tq, d)
    return post.view(k, B, Tq, d)


def stacked_forward(
    params: dict[str, Tensor], cfg, tokens: Int[Tensor, "k batch seq"]
) -> Float[Tensor, "k batch d_vocab_out"]:
    """Last-position logits of k stacked HookedTransformers (same math as ``model(tokens)[:, -1]``).

    ``params[name]`` has shape (k, *shape of the HookedTransformer parameter ``name``). Every matmul is
    one bmm over the model axis. The last layer is computed for the last query position only, which
    leaves the scored logits unchanged. A reference model's config (``cfg.arch == "reference"``) runs
    :func:`anchor_interp.models.reference.reference_stacked_forward` instead.
    """
    if getattr(cfg, "arch", None) == "reference":
        from anchor_interp.models.reference import reference_stacked_forward

        return reference_stacked_forward(params, cfg, tokens)
    k, B, T = tokens.shape
    W_E = params["embed.W_E"]  # (k, V, d)
    x = stacked_embed(W_E, tokens)  # (k, B, T, d): model i looks up its own rows
    x = x + params["pos_embed.W_pos"][:, None, :T, :]  # (k, B, T, d)
    ln = cfg.normalization_type is not None
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."  # state-dict keys of the layer's parameters
        last = layer == cfg.n_layers - 1
        h = layer_norm(x, params.get(p + "ln1.w"), params.get(p + "ln1.b"), cfg.eps) if ln else x
        x = (x[:, :, -1:] if last else x) + attention(params, cfg, layer, h, last_only=last)  # (k, B, Tq, d)
        if not cfg.attn_only:
            h = layer_norm(x, params.get(p + "ln2.w"), params.get(p + "ln2.b"), cfg.eps) if ln else x
            x = x + mlp(params, cfg, layer, h)  # (k, B, Tq, d)
    x = x[:, :, -1]  # (k, B, d)
    if ln:
        x = layer_norm(x, params.get("ln_final.w"), params.get("ln_final.b"), cfg.eps)
    return x @ params["unembed.W_U"] + params["unembed.b_U"][:, None, :]  # (k, B, V_out)

"""The TransformerLens adapter: the one module that imports TransformerLens or reads its model internals.

Everything TransformerLens-specific that the rest of the package needs goes through here, so that a
move from ``HookedTransformer`` (transformer-lens 3.9.x) to ``TransformerBridge`` touches this file:

- building a model (``build_model``, ``config_to_dict`` / ``config_from_dict``);
- its weights, under TransformerLens's own names (``attn_weights(model, layer)["W_Q"]``,
  ``embed_weights(model)["W_E"]``), as the model's own tensors (writing into them edits the model);
- its sub-modules (``norm_module``, ``mlp_module``) and its input / output maps (``embed_tokens``,
  ``unembed_resid``).

Every other module addresses activations by hook name (:mod:`anchor_interp.names`) and weights through
these functions. Importing this module costs ~4 s (TransformerLens pulls in transformers); import it
lazily from code paths that need a model.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

__all__ = [
    "ATTN_WEIGHT_NAMES",
    "HookedTransformer",
    "HookedTransformerConfig",
    "attn_scale",
    "attn_weights",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "embed_tokens",
    "embed_weights",
    "final_norm",
    "mlp_module",
    "norm_module",
    "norm_spec",
    "split_qkv_input",
    "unembed_resid",
]

ATTN_WEIGHT_NAMES = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")


def build_model(cfg: HookedTransformerConfig) -> HookedTransformer:
    """A freshly initialised HookedTransformer for ``cfg`` (TransformerLens' deprecation warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HookedTransformer(cfg)


def attn_weights(model, layer: int) -> dict[str, Tensor]:
    """Layer ``layer``'s attention weights by TransformerLens name.

    ``W_Q`` / ``W_K`` / ``W_V``: (n_heads, d_model, d_head); ``W_O``: (n_heads, d_head, d_model);
    ``b_Q`` / ``b_K`` / ``b_V``: (n_heads, d_head); ``b_O``: (d_model,). With grouped-query attention
    ``W_K`` / ``W_V`` / ``b_K`` / ``b_V`` are expanded to one entry per query head (copies: writing
    into them does not edit the model). Otherwise these are the model's parameters themselves.
    """
    attn = model.blocks[layer].attn
    return {name: getattr(attn, name) for name in ATTN_WEIGHT_NAMES}


def attn_scale(model, layer: int) -> float:
    """The divisor of layer ``layer``'s attention scores (sqrt(d_head) unless configured otherwise)."""
    return float(model.blocks[layer].attn.attn_scale)


def embed_weights(model) -> dict[str, Tensor | None]:
    """``W_E`` (d_vocab, d_model), ``W_pos`` (n_ctx, d_model; None without learned absolute positions,
    e.g. rotary), ``W_U`` (d_model, d_vocab_out), ``b_U`` (d_vocab_out,)."""
    learned = getattr(model.cfg, "positional_embedding_type", "standard") in ("standard", "shortformer")
    return {
        "W_E": model.embed.W_E,
        "W_pos": model.pos_embed.W_pos if learned and hasattr(model, "pos_embed") else None,
        "W_U": model.unembed.W_U,
        "b_U": model.unembed.b_U,
    }


def norm_module(model, layer: int, which: str):
    """The layer's ``"ln1"`` (before attention) or ``"ln2"`` (before the MLP) normalisation module."""
    if which not in ("ln1", "ln2"):
        raise ValueError(f"norm_module(which={which!r}): expected 'ln1' or 'ln2'")
    return getattr(model.blocks[layer], which)


def final_norm(model):
    """The normalisation before the unembedding (an identity module when the model has none)."""
    return model.ln_final if hasattr(model, "ln_final") else torch.nn.Identity()


def mlp_module(model, layer: int):
    """The layer's MLP module (None for attention-only models)."""
    return None if model.cfg.attn_only else model.blocks[layer].mlp


def embed_tokens(model, tokens: Tensor) -> Tensor:
    """``hook_embed`` (+ ``hook_pos_embed`` for standard positions): the residual stream entering
    layer 0, (batch, pos, d_model)."""
    resid = model.embed(tokens)
    if getattr(model.cfg, "positional_embedding_type", "standard") == "standard":
        resid = resid + model.pos_embed(tokens)
    return resid


def unembed_resid(model, resid: Tensor) -> Tensor:
    """Logits of an already normalised residual stream: ``resid @ W_U + b_U``."""
    return model.unembed(resid)


# Config fields that are derived by HookedTransformerConfig.__post_init__ or that describe where the
# model lives rather than what it is; they are not passed back to the constructor.
_DERIVED_FIELDS = ("n_params", "device", "dtype")


def config_to_dict(cfg: HookedTransformerConfig) -> dict:
    """The JSON-serialisable fields of a HookedTransformerConfig (dtype written as a string)."""
    out = {}
    for key, value in cfg.to_dict().items():
        if key == "dtype":
            out[key] = str(value).removeprefix("torch.")
        elif isinstance(value, (int, float, str, bool, type(None))):
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str, bool)) for v in value):
            out[key] = list(value)
        # anything else (e.g. tokenizer objects) is not part of an anchor model's definition
    return out


def config_from_dict(d: dict, device: str = "cpu") -> HookedTransformerConfig:
    """Rebuild a HookedTransformerConfig from :func:`config_to_dict` output.

    Raises ``TypeError`` (from the constructor) on fields this TransformerLens version does not know.
    """
    fields = {k: v for k, v in d.items() if k not in _DERIVED_FIELDS}
    fields["device"] = device
    if "dtype" in d:
        fields["dtype"] = getattr(torch, d["dtype"])
    known = set(HookedTransformerConfig.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"unknown HookedTransformerConfig fields {unknown}")
    return HookedTransformerConfig(**fields)


_NORM_KINDS = {"LayerNorm": "LN", "LayerNormPre": "LNPre", "RMSNorm": "RMS", "RMSNormPre": "RMSPre"}


def norm_spec(module) -> dict | None:
    """What a module from :func:`norm_module` / :func:`final_norm` computes, for code that writes its
    maths out (the patching engine); None for a module whose maths is none of these (call the module).

    ``kind``: ``"identity"``; ``"LN"`` (centre, divide by ``sqrt(mean square + eps)``, then ``* w + b``);
    ``"LNPre"`` (the same without ``w`` / ``b``); ``"RMS"`` (divide by ``sqrt(mean square + eps)``, then
    ``* w``); ``"RMSPre"``. ``eps`` (float); ``w`` / ``b``: the module's own parameters (d_model,) or None.
    """
    cls = type(module)
    if cls.__name__ == "Identity":
        return {"kind": "identity", "eps": 0.0, "w": None, "b": None}
    if not cls.__module__.startswith("transformer_lens.") or cls.__name__ not in _NORM_KINDS:
        return None
    return {"kind": _NORM_KINDS[cls.__name__], "eps": module.eps, "w": getattr(module, "w", None),
            "b": getattr(module, "b", None)}


@contextlib.contextmanager
def split_qkv_input(model):
    """Within the block, each head has its own query / key / value input (``blocks.L.hook_q_input`` ...,
    (batch, pos, head, d_model)), so a path can be patched into one head's query, key or value only.
    The model's previous setting is restored on exit."""
    before = bool(model.cfg.use_split_qkv_input)
    model.set_use_split_qkv_input(True)
    try:
        yield model
    finally:
        model.set_use_split_qkv_input(before)

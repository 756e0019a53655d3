"""Names of heads and activations: one place, TransformerLens's spelling.

    head_name(1, 3)                 -> "L1H3"
    parse_head_name("L1H3")         -> (1, 3)
    hook_name("pattern", 1)         -> "blocks.1.attn.hook_pattern"
    hook_name("resid_pre", 0)       -> "blocks.0.hook_resid_pre"
    hook_name("embed")              -> "hook_embed"
    layer_hook_names("z", 2)        -> ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]

Every module builds hook and head names through these functions, never with its own f-string, so a
name is spelled once (docs/interfaces.md, "Names"). Importing this module is cheap (no torch).
"""

from __future__ import annotations

import re

__all__ = [
    "ATTN_HOOKS",
    "BLOCK_HOOKS",
    "MODEL_HOOKS",
    "head_name",
    "hook_name",
    "layer_hook_names",
    "parse_head_name",
]

# Short name -> where it lives: inside a block's attention module, on the block, or on the model.
ATTN_HOOKS = ("q", "k", "v", "z", "pattern", "attn_scores", "result", "rot_q", "rot_k")
BLOCK_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q_input", "k_input",
               "v_input", "attn_in", "mlp_in")
MODEL_HOOKS = ("embed", "pos_embed", "tokens")

_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")


def head_name(layer: int, head: int) -> str:
    """``L{layer}H{head}``, e.g. ``L1H3`` (both zero-based)."""
    return f"L{int(layer)}H{int(head)}"


def parse_head_name(name: str) -> tuple[int, int]:
    """``"L1H3"`` -> ``(1, 3)``. Raises ValueError for anything else."""
    m = _HEAD_RE.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"head name {name!r}: expected 'L<layer>H<head>', e.g. 'L1H3'")
    return int(m.group(1)), int(m.group(2))


def hook_name(short: str, layer: int | None = None) -> str:
    """The full TransformerLens hook name of an activation.

    ``short``: one of ATTN_HOOKS (``"blocks.L.attn.hook_<short>"``), BLOCK_HOOKS
    (``"blocks.L.hook_<short>"``), both needing ``layer``, or MODEL_HOOKS (``"hook_<short>"``, no layer).
    Raises ValueError for an unknown short name or a missing / unexpected layer.
    """
    if short in MODEL_HOOKS:
        if layer is not None:
            raise ValueError(f"hook {short!r} has no layer; got layer={layer!r}")
        return f"hook_{short}"
    if short not in ATTN_HOOKS and short not in BLOCK_HOOKS:
        raise ValueError(f"unknown hook {short!r}; known: {sorted(ATTN_HOOKS + BLOCK_HOOKS + MODEL_HOOKS)}")
    if layer is None or isinstance(layer, bool) or int(layer) != layer or layer < 0:
        raise ValueError(f"hook {short!r} needs a layer >= 0; got layer={layer!r}")
    where = "attn." if short in ATTN_HOOKS else ""
    return f"blocks.{int(layer)}.{where}hook_{short}"


def layer_hook_names(short: str, n_layers: int) -> list[str]:
    """``[hook_name(short, 0), ..., hook_name(short, n_layers - 1)]``."""
    return [hook_name(short, layer) for layer in range(n_layers)]

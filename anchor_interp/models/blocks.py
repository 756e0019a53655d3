"""The block arithmetic that the package's forwards share: normalisation, masked softmax, activations.

A transformer block is computed in three places: TransformerLens itself (``model(tokens)``), the
trainer's stacked forward (:mod:`anchor_interp.training.forward`: k models in one ``bmm`` per
projection) and the patch engine (:mod:`anchor_interp.patching.engine`: many patched runs stacked along
the batch, restartable at any layer). The last two write the arithmetic out; they take it from here,
so a change to how a block normalises, masks or activates is made once. Each function does
TransformerLens's operations in TransformerLens's order, so its results are the same bits as the
module's (tests/patching and tests/training check the forwards against ``model.run_with_cache``).

- :func:`layer_norm`: ``LN`` / ``LNPre`` / ``RMS`` / ``RMSPre`` (TransformerLens's ``LayerNorm``,
  ``LayerNormPre``, ``RMSNorm``, ``RMSNormPre``) on the last axis.
- :func:`future_mask` / :func:`masked_softmax`: the causal mask and the softmax of attention scores;
  :func:`softmax_pattern` is the softmax written out (faster than ``Tensor.softmax`` over rows as short
  as ours; fully masked rows give 0, as TransformerLens).
- ``ACTIVATIONS``: ``cfg.act_fn`` name -> function.

Importing this module is cheap (torch only).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["ACTIVATIONS", "NORM_KINDS", "future_mask", "layer_norm", "masked_softmax", "softmax_pattern",
           "stacked_embed"]

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}

NORM_KINDS = ("LN", "LNPre", "RMS", "RMSPre")


def layer_norm(
    x: Float[Tensor, "*rows d_model"],
    w: Float[Tensor, "*wrows d_model"] | None,
    b: Float[Tensor, "*wrows d_model"] | None,
    kind: str,
    eps: float,
) -> Float[Tensor, "*rows d_model"]:
    """TransformerLens's normalisation ``kind`` of ``x`` over its last axis.

    ``LN``: centre, divide by ``sqrt(mean square + eps)``, then ``* w + b``; ``LNPre``: the same without
    ``w`` / ``b``; ``RMS``: divide by ``sqrt(mean square + eps)``, then ``* w``; ``RMSPre``: without ``w``.
    ``w`` / ``b`` broadcast against ``x`` (``(d_model,)``, or e.g. ``(k, 1, 1, d_model)`` for k stacked
    models); they are ignored by the ``Pre`` kinds. Raises ValueError for another ``kind``.
    """
    if kind not in NORM_KINDS:
        raise ValueError(f"layer_norm(kind={kind!r}): expected one of {NORM_KINDS}")
    if kind in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    if kind == "LN":
        return x * w + b
    if kind == "RMS":
        return x * w
    return x


@functools.lru_cache(maxsize=64)
def _future_mask(q_rows: int, seq: int, device: str) -> Tensor:
    # a normal tensor even when first asked for under torch.inference_mode (the patch engine): the cached
    # mask is reused by training, where an inference tensor cannot be saved for backward
    with torch.inference_mode(False):
        return torch.ones(q_rows, seq, dtype=torch.bool, device=device).triu(seq - q_rows + 1)


def future_mask(q_rows: int, seq: int, device=None) -> Bool[Tensor, "q_rows seq"]:
    """[q_rows, seq] bool, True where a causal query row may not look: the last ``q_rows`` query rows of a
    length-``seq`` sequence (``q_rows == seq``: True strictly above the diagonal). Cached per shape and
    device; do not write into it."""
    return _future_mask(int(q_rows), int(seq), str(torch.device("cpu") if device is None else device))


def softmax_pattern(scores: Float[Tensor, "*rows src_pos"]) -> Float[Tensor, "*rows src_pos"]:
    """Softmax over the last dim, NaN (fully masked rows) -> 0, as TransformerLens's attention.

    Written out because ``Tensor.softmax`` is ~5x slower over a last dimension as short as ours."""
    e = (scores - scores.amax(-1, keepdim=True)).exp()
    return torch.nan_to_num(e / e.sum(-1, keepdim=True), nan=0.0)


def masked_softmax(
    scores: Float[Tensor, "*rows q_rows src_pos"], causal: bool, *, written_out: bool = False
) -> Float[Tensor, "*rows q_rows src_pos"]:
    """Attention pattern of ``scores`` (query rows = the last ``q_rows`` positions of the sequence).

    ``causal``: a row gets no weight on later positions (scores there set to -inf first; nothing is
    masked when only the last row is computed). ``written_out``: :func:`softmax_pattern` (the patch
    engine) instead of ``Tensor.softmax`` (the trainer: autograd-friendly)."""
    q_rows, seq = scores.shape[-2], scores.shape[-1]
    if causal and q_rows > 1:
        scores = scores.masked_fill(future_mask(q_rows, seq, scores.device), -math.inf)
    return softmax_pattern(scores) if written_out else scores.softmax(dim=-1)


def stacked_embed(W_E: Float[Tensor, "k d_vocab d_model"], tokens: Int[Tensor, "k batch seq"]
                  ) -> Float[Tensor, "k batch seq d_model"]:
    """Each of k stacked models looks up its own tokens in its own embedding ``W_E[i]``.

    A gather (its gradient is a scatter-add), not advanced indexing: advanced indexing's gradient
    (``index_put_`` with accumulate) cannot be captured in a CUDA graph (training/graph.py)."""
    k, B, T = tokens.shape
    idx = tokens.reshape(k, B * T, 1).expand(-1, -1, W_E.shape[-1])  # (k, B*T, d)
    return torch.gather(W_E, 1, idx).view(k, B, T, W_E.shape[-1])  # (k, B, T, d)

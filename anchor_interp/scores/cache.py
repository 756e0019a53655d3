"""The cache stage: one clean run of a batch, whose activations every scorer can take instead of rerunning it.

    logits, cache = clean_run(model, tokens)
    patterns = attention_patterns(model, tokens, cache=cache)
    dla = direct_logit_attribution(model, tokens, answer, cache=cache)
    effects = per_head_ablation(model, tokens, targets=targets, cache=cache, clean_logits=logits)

:func:`clean_run` caches exactly the hooks these scorers read (:func:`scorer_hooks`):
``blocks.L.attn.hook_pattern`` and ``blocks.L.attn.hook_z`` of every layer, and
``ln_final.hook_scale`` when the model has a final normalisation. A scorer given ``cache=`` returns the
same numbers as without it (it would have computed the same activations); ``cache`` may also be any
``run_with_cache`` result or plain dict (hook name -> tensor) of the same ``tokens`` that holds the
hooks the scorer needs (ValueError naming the missing hook otherwise).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_interp.models.validate import check_tokens
from anchor_interp.names import layer_hook_names

__all__ = ["CHUNK_ROWS", "FINAL_SCALE_HOOK", "FIRST_ROWS", "cached_activations", "clean_run", "has_final_norm", "progress",
           "row_chunks", "scorer_hooks"]

FINAL_SCALE_HOOK = "ln_final.hook_scale"  # the final normalisation's divisor, (batch, pos, 1)
CHUNK_ROWS = 4096  # rows per forward pass when an analysis streams over more rows than this (docs/performance.md)
# evidence that is not a streaming reduction (the counterfactual role evidence with its bootstrap intervals
# and stability folds, the residual-patching heatmap) reads the first FIRST_ROWS
# rows (docs/performance.md, "Memory": per-row cost and why)
FIRST_ROWS = 4096
PROGRESS_MIN_CHUNKS = 4  # a progress bar (stderr) over the chunks from this many chunks on (runs of seconds)
_PROGRESS = [True]


class progress:
    """``with progress(False): ...`` turns the chunk progress bars off (the CLI's ``--quiet``)."""

    def __init__(self, on: bool):
        self.on = bool(on)

    def __enter__(self):
        self.prev = _PROGRESS[0]
        _PROGRESS[0] = self.on
        return self

    def __exit__(self, *exc):
        _PROGRESS[0] = self.prev


def row_chunks(n: int, desc: str | None = None):
    """Slices of ``range(n)`` of at most :data:`CHUNK_ROWS` rows (one slice when ``n <= CHUNK_ROWS``), with a
    tqdm bar on stderr named ``desc`` when there are at least :data:`PROGRESS_MIN_CHUNKS` of them."""
    size = max(1, int(CHUNK_ROWS))
    starts = range(0, max(n, 1), size)
    if desc is not None and _PROGRESS[0] and len(starts) >= PROGRESS_MIN_CHUNKS:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="chunk", leave=False, file=sys.stderr)
    for start in starts:
        yield slice(start, min(n, start + size))


def has_final_norm(model) -> bool:
    """True if the model normalises before the unembedding (``cfg.normalization_type`` LN, LNPre, RMS, RMSPre)."""
    return model.cfg.normalization_type in ("LN", "LNPre", "RMS", "RMSPre")


def scorer_hooks(model) -> list[str]:
    """The hook names :func:`clean_run` caches: every layer's ``attn.hook_pattern`` and ``attn.hook_z``,
    then ``ln_final.hook_scale`` if :func:`has_final_norm`."""
    n = model.cfg.n_layers
    names = layer_hook_names("pattern", n) + layer_hook_names("z", n)
    return names + ([FINAL_SCALE_HOOK] if has_final_norm(model) else [])


def clean_run(model, tokens: Int[Tensor, "batch seq"]) -> tuple[Float[Tensor, "batch seq d_vocab_out"], Any]:
    """``(logits, cache)`` of one ``model.run_with_cache(tokens)`` (no gradients) keeping only
    :func:`scorer_hooks`; pass ``cache`` (and ``logits`` as ``clean_logits``) to the scorers.

    Raises ValueError if ``tokens`` is not a valid token batch for ``model``.
    """
    check_tokens(model, tokens)
    names = set(scorer_hooks(model))
    with torch.no_grad():
        return model.run_with_cache(tokens, names_filter=lambda name: name in names)


def cached_activations(cache, names: list[str], tokens: Int[Tensor, "batch seq"]) -> dict[str, Tensor]:
    """``{name: cache[name]}`` for ``names``, checked to be a run of ``tokens`` (same batch and positions).

    Raises ValueError naming the first hook the cache lacks or whose shape does not fit ``tokens``.
    """
    n, seq = tokens.shape
    out = {}
    for name in names:
        try:
            act = cache[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"cache: no {name!r}; build it with anchor_interp.scores.cache.clean_run(model, tokens) "
                "or run_with_cache without a names_filter that drops it"
            ) from None
        if not isinstance(act, Tensor) or act.ndim < 2 or act.shape[0] != n or (
            act.shape[1] != seq and not (act.ndim == 4 and act.shape[-1] == seq)  # pattern: (B, H, T, T)
        ):
            shape = tuple(act.shape) if isinstance(act, Tensor) else type(act).__name__
            raise ValueError(f"cache[{name!r}] has shape {shape}, not a run of tokens {tuple(tokens.shape)}")
        out[name] = act
    return out

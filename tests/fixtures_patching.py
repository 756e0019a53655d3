"""Small float64 HookedTransformers and clean/corrupt pairs for tests/test_patching.py (built once per session)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

D_VOCAB = 40
N_CTX = 9

# name -> HookedTransformerConfig overrides; scaled-up random weights so that patches have visible effects
MODEL_KINDS = {
    "attn_causal_ln": dict(n_layers=2, n_heads=4, attn_only=True, attention_dir="causal", normalization_type="LN"),
    "mlp_causal_rms": dict(
        n_layers=3, n_heads=2, attn_only=False, d_mlp=32, attention_dir="causal", normalization_type="RMS"
    ),
    "attn_bidir_none": dict(
        n_layers=2, n_heads=3, attn_only=True, attention_dir="bidirectional", normalization_type=None
    ),
}


@dataclass(frozen=True)
class Pair:
    """A clean/corrupt pair of duck-typed batches (tokens + targets), as task.counterfactual gives."""

    tokens: torch.Tensor
    targets: torch.Tensor


def make_model(kind: str, seed: int = 0, scale: float = 3.0):
    from anchor_interp._tl import HookedTransformerConfig, build_model

    over = dict(MODEL_KINDS[kind])
    cfg = HookedTransformerConfig(
        d_model=24, d_head=6, n_ctx=N_CTX, d_vocab=D_VOCAB, act_fn="relu", seed=seed, dtype=torch.float64,
        init_weights=True, **over,
    )
    model = build_model(cfg)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def make_pair(batch: int = 5, seed: int = 0, n_ctx: int = N_CTX) -> tuple[Pair, Pair]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, D_VOCAB, (batch, n_ctx), generator=g)
    corrupt = torch.randint(0, D_VOCAB, (batch, n_ctx), generator=g)
    clean_t = torch.randint(0, D_VOCAB, (batch,), generator=g)
    corrupt_t = torch.randint(0, D_VOCAB, (batch,), generator=g)
    return Pair(clean, clean_t), Pair(corrupt, corrupt_t)


@contextlib.contextmanager
def float64_default():
    """transformer_lens.patching stores results in a tensor of the default dtype: make it float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def session_models() -> dict:
    """One model of every kind in MODEL_KINDS (test_patching.py wraps this in a session fixture)."""
    torch.set_num_threads(1)
    return {kind: make_model(kind) for kind in MODEL_KINDS}

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
    from anchor_interp.models.adapter import HookedTransformerConfig, build_model

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


def make_pair(batch: int = 5, seed: int = 0, n_ctx: int = N_CTX, one_token: bool = False) -> tuple[Pair, Pair]:
    """Random clean/corrupt pair; with ``one_token`` each corrupted row differs from its clean row at one
    random position only (like the task's key_swap), else everywhere."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, D_VOCAB, (batch, n_ctx), generator=g)
    corrupt = torch.randint(0, D_VOCAB, (batch, n_ctx), generator=g)
    if one_token:
        pos = torch.randint(0, n_ctx, (batch,), generator=g)
        new = (clean[torch.arange(batch), pos] + 1 + torch.randint(0, D_VOCAB - 1, (batch,), generator=g)) % D_VOCAB
        corrupt = clean.clone()
        corrupt[torch.arange(batch), pos] = new
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


def saturated_switch_model():
    """A hand-set 2-layer, 1-head-per-layer attention-only model whose layer-1 attention is saturated.

    Tokens: 0/1 = a switch (position 0), 2..5 = values (positions 1, 2), 6 = the query (position 3).
    L0H0 attends to position 0 and writes the switch into every position; L1H0's last query row reads
    it and attends (saturated, e^40 odds) to position 2 if the switch is on, else to position 1, and
    copies that value to the output. So patching L0H0 flips the answer (exact effect 1) while the
    gradient through the saturated softmax is ~0 (attribution 0): the case attribution misses.
    Returns (model, clean, corrupt) with clean = switch on, corrupt = switch off.
    """
    from anchor_interp.models.adapter import HookedTransformerConfig, build_model

    cfg = HookedTransformerConfig(
        n_layers=2, n_heads=1, d_model=14, d_head=4, n_ctx=4, d_vocab=8, attn_only=True, act_fn="relu",
        normalization_type=None, attention_dir="causal", dtype=torch.float64, seed=0,
    )
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[1, 0] = 1.0  # dim 0: the switch
        for j in range(4):
            model.embed.W_E[2 + j, 3 + j] = 1.0  # dims 3..6: value identity
        model.pos_embed.W_pos[0, 8] = 1.0  # dim 8: "I am position 0"
        model.pos_embed.W_pos[1, 1] = 1.0  # dims 1, 2: positions 1 and 2
        model.pos_embed.W_pos[2, 2] = 1.0
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        a0.b_Q[0, 0] = 30.0  # constant query ...
        a0.W_K[0, 8, 0] = 1.0  # ... that finds position 0
        a0.W_V[0, 0, 0] = 1.0  # reads the switch
        a0.W_O[0, 0, 7] = 1.0  # dim 7: the copied switch
        a1.W_Q[0, 7, 0] = 80.0  # query +40 (switch on) or -40 (off)
        a1.b_Q[0, 0] = -40.0
        a1.W_K[0, 2, 0] = 1.0  # key +1 at position 2, -1 at position 1
        a1.W_K[0, 1, 0] = -1.0
        for j in range(4):
            a1.W_V[0, 3 + j, j] = 1.0  # copies the value identity ...
            a1.W_O[0, j, 10 + j] = 1.0  # ... into dims 10..13
            model.unembed.W_U[10 + j, 2 + j] = 10.0
    values = torch.tensor([[2, 3], [3, 5], [4, 2], [5, 4]])
    clean_tokens = torch.stack([torch.ones(4, dtype=torch.long), values[:, 0], values[:, 1], torch.full((4,), 6)], 1)
    corrupt_tokens = clean_tokens.clone()
    corrupt_tokens[:, 0] = 0
    return model, Pair(clean_tokens, values[:, 1]), Pair(corrupt_tokens, values[:, 0])

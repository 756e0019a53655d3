"""The authors' post-LN reference model: its size, its forward against written-out arithmetic, its
training by the shared trainer, its checkpoints; PyTorch's init for HookedTransformers; frozen biases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anchor_interp.models import count_parameters, make_model, model_config
from anchor_interp.models.checkpoint import load_checkpoint
from anchor_interp.models.reference import (
    ReferenceConfig,
    ReferenceTransformer,
    make_reference_model,
    reference_stacked_forward,
)
from anchor_interp.training import get_recipe, train, train_many

TINY = dict(n_train=200, batch_size=50, n_test=200, epochs=3, warmup_epochs=1, cosine_epochs=2, lr=1e-2)
SMALL = dict(n_layers=2, n_heads=2, d_model=32, d_head=8, d_mlp=48)


def test_paper_sizes_give_the_authors_parameter_count():
    # spec section 4: 5,653,801 parameters with 20 position rows and the 201-token vocabulary
    assert count_parameters(ReferenceTransformer(ReferenceConfig(d_vocab=201, n_ctx=20))) == 5_653_801


def _written_out(model: ReferenceTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Post-LN forward, one head and one position at a time from the named parameters."""
    p, cfg = dict(model.named_parameters()), model.cfg
    x = p["embed.W_E"][tokens] + p["pos_embed.W_pos"][: tokens.shape[1]]  # (B, T, d)
    T = tokens.shape[1]
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        out = torch.zeros_like(x)
        for h in range(cfg.n_heads):
            q = x @ p[b + "attn.W_Q"][h]
            k = x @ p[b + "attn.W_K"][h]
            v = x @ p[b + "attn.W_V"][h]
            s = q @ k.transpose(-1, -2) / math.sqrt(cfg.d_head)
            if cfg.attention_dir == "causal":
                s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
            out = out + torch.softmax(s, -1) @ v @ p[b + "attn.W_O"][h]
        x = F.layer_norm(x + out, (cfg.d_model,), p[b + "ln1.w"], p[b + "ln1.b"], cfg.eps)
        if cfg.d_mlp is not None:
            m = torch.relu(x @ p[b + "mlp.W_in"]) @ p[b + "mlp.W_out"]
            x = F.layer_norm(x + m, (cfg.d_model,), p[b + "ln2.w"], p[b + "ln2.b"], cfg.eps)
    return x @ p["unembed.W_U"] + p["unembed.b_U"]


@pytest.mark.parametrize("over", [dict(), dict(attention_dir="bidirectional", d_mlp=None)])
def test_forward_matches_written_out_arithmetic(identity_task, over):
    model = make_reference_model(identity_task, seed=3, **{**SMALL, **over}).double()
    tokens = identity_task.sample(16, seed=1).tokens
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), _written_out(model, tokens), rtol=1e-9, atol=1e-9)


def test_stacked_forward_is_each_model_alone(identity_task):
    models = [make_reference_model(identity_task, seed=s, **SMALL) for s in (0, 1)]
    tokens = identity_task.sample(8, seed=2).tokens
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n, _ in
              models[0].named_parameters()}
    with torch.no_grad():
        stacked = reference_stacked_forward(params, models[0].cfg, torch.stack([tokens, tokens]))  # (2, B, V)
        for i, m in enumerate(models):
            torch.testing.assert_close(stacked[i], m(tokens)[:, -1], rtol=1e-5, atol=1e-5)


def test_pytorch_default_init():
    m = ReferenceTransformer(ReferenceConfig(d_vocab=201, n_ctx=9), seed=0)
    p = dict(m.named_parameters())
    assert abs(p["embed.W_E"].std().item() - 1.0) < 0.02  # N(0, 1)
    assert p["blocks.0.attn.W_Q"].abs().max() <= 400 ** -0.5  # uniform +-1/sqrt(fan_in)
    assert p["blocks.0.mlp.W_out"].abs().max() <= 1200 ** -0.5
    assert p["blocks.0.mlp.W_out"].abs().max() > 0.9 * 1200 ** -0.5
    with pytest.raises(ValueError, match="attention_dir"):
        ReferenceConfig(d_vocab=10, n_ctx=9, attention_dir="sideways")


def test_trained_by_the_shared_trainer_and_checkpointed(identity_task, tmp_path):
    models = [make_reference_model(identity_task, seed=s, **SMALL) for s in (0, 1)]
    before = dict(models[0].named_parameters())["blocks.0.attn.W_Q"].detach().clone()
    res = train_many(models, identity_task, "fast", seeds=[0, 1], out_dirs=[tmp_path / "a", tmp_path / "b"],
                     progress=False, **TINY)
    assert res[0].history[-1]["train_loss"] < res[0].history[0]["train_loss"] * 1.5
    assert not torch.equal(before, dict(models[0].named_parameters())["blocks.0.attn.W_Q"])
    loaded, _ = load_checkpoint(tmp_path / "a")
    assert isinstance(loaded, ReferenceTransformer)
    tokens = identity_task.sample(8, seed=5).tokens
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), models[0](tokens))


def test_torch_init_for_a_hooked_transformer(identity_task):
    cfg = model_config("small", identity_task, d_model=64, d_head=16)
    m = make_model(cfg, identity_task, seed=0, init_gamma="torch")
    p = dict(m.named_parameters())
    assert abs(p["embed.W_E"].std().item() - 1.0) < 0.05
    assert p["blocks.0.attn.W_K"].abs().max() <= 64 ** -0.5
    assert float(p["blocks.0.attn.b_K"].detach().abs().max()) == 0.0
    with pytest.raises(ValueError, match="init_gamma"):
        make_model(cfg, identity_task, seed=0, init_gamma="xavier")


def test_frozen_biases_stay_zero_and_the_rest_trains(identity_task):
    cfg = model_config("small", identity_task, d_model=32, d_head=8)
    m = make_model(cfg, identity_task, seed=0, init_gamma=0.75)  # biases start at 0
    start = {n: p.detach().clone() for n, p in m.named_parameters()}
    train(m, identity_task, "fast", seed=0, progress=False, freeze=["blocks.*.attn.b_*"], **TINY)
    after = dict(m.named_parameters())
    for name in ("blocks.0.attn.b_Q", "blocks.1.attn.b_O"):
        assert torch.equal(after[name], start[name])
    assert not torch.equal(after["blocks.0.attn.W_Q"], start["blocks.0.attn.W_Q"])
    assert not torch.equal(after["unembed.b_U"], start["unembed.b_U"])
    assert get_recipe("fast", freeze=["a*"]).to_dict()["freeze"] == ["a*"]
    with pytest.raises(ValueError, match="matches no parameter"):
        train(m, identity_task, "fast", seed=0, progress=False, freeze=["nosuch.*"], **TINY)

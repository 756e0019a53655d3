"""Presets, seeded construction, init scale, config checks (anchor_interp.models)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from anchor_interp.models import PRESETS, count_parameters, make_model, model_config, resolve_device


# parameter counts measured for the identity task (vocab 201, 9 inputs); docs/models.md quotes them
@pytest.mark.parametrize(
    "preset,n_params,n_layers,n_heads,attn_only,direction",
    [
        ("small", 185_673, 2, 4, True, "causal"),
        ("paper", 5_661_273, 4, 4, False, "causal"),
        ("mechanism", 408_834, 2, 1, True, "bidirectional"),
    ],
)
def test_presets_shapes_and_counts(identity_task, preset, n_params, n_layers, n_heads, attn_only, direction):
    model = make_model(preset, identity_task, seed=0)
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.attn_only, cfg.attention_dir) == (n_layers, n_heads, attn_only, direction)
    assert cfg.d_vocab == identity_task.vocab_size and cfg.n_ctx == identity_task.seq_len
    assert cfg.use_attn_result is False
    assert count_parameters(model) == n_params
    logits = model(identity_task.sample(3, seed=0).tokens)
    assert logits.shape == (3, identity_task.seq_len, identity_task.vocab_size)


def test_paper_preset_matches_authors_sizes(identity_task):
    cfg = model_config("paper", identity_task)
    assert (cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.act_fn) == (400, 64, 1200, "relu")


def test_mechanism_model_is_bidirectional(identity_task):
    # bidirectional: changing the last token changes the first position's output; causal: it cannot
    model = make_model("mechanism", identity_task, seed=0)
    a = identity_task.sample(4, seed=1).tokens
    b = a.clone()
    b[:, -1] = (b[:, -1] + 1 - 20) % 80 + 20
    with torch.no_grad():
        assert not torch.allclose(model(a)[:, 0], model(b)[:, 0])
        causal = make_model("small", identity_task, seed=0)
        assert torch.allclose(causal(a)[:, 0], causal(b)[:, 0])


def test_same_seed_same_weights_and_global_rng_untouched(identity_task):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    m1 = make_model("small", identity_task, seed=7)
    assert torch.equal(torch.rand(1), expected_next)  # construction leaves the global RNG alone
    m2 = make_model("small", identity_task, seed=7)
    m3 = make_model("small", identity_task, seed=8)
    assert torch.equal(m1.W_Q, m2.W_Q) and torch.equal(m1.W_E, m2.W_E)
    assert not torch.equal(m1.W_Q, m3.W_Q)


def test_overrides_pass_through(identity_task):
    cfg = model_config("small", identity_task, n_heads=2, d_head=16, d_model=32)
    m = make_model(cfg, identity_task, seed=0)
    assert (m.cfg.n_heads, m.cfg.d_head, m.cfg.d_model) == (2, 16, 32)
    assert model_config("small", identity_task, attn_only=False, d_mlp=64, act_fn="relu").d_mlp == 64


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_init_gamma_sets_std(identity_task, gamma):
    m = make_model("small", identity_task, seed=0, init_gamma=gamma)
    d = m.cfg.d_model
    for w in (m.W_Q, m.W_K, m.W_E, m.W_U):
        assert float(w.detach().std()) == pytest.approx(d**-gamma, rel=0.05)
    fan_o = m.cfg.n_heads * m.cfg.d_head
    assert float(m.W_O.detach().std()) == pytest.approx(fan_o**-gamma, rel=0.05)
    assert float(m.b_Q.detach().abs().max()) == 0.0
    assert torch.equal(make_model("small", identity_task, seed=0, init_gamma=gamma).W_Q, m.W_Q)


def test_unknown_preset_names_the_known_ones(identity_task):
    with pytest.raises(ValueError, match="unknown preset 'huge'.*mechanism.*paper.*small"):
        model_config("huge", identity_task)
    with pytest.raises(ValueError, match="preset_or_config"):
        make_model(3, identity_task, seed=0)


def test_config_incompatible_with_task(identity_task):
    with pytest.raises(ValueError, match="d_vocab=100 is smaller than task 'identity' vocab_size=201"):
        model_config("small", identity_task, d_vocab=100)
    with pytest.raises(ValueError, match="n_ctx=5 is shorter than task 'identity' seq_len=9"):
        model_config("small", identity_task, n_ctx=5)
    with pytest.raises(ValueError, match="init_gamma"):
        make_model("small", identity_task, seed=0, init_gamma=float("nan"))


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device='tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_presets_documented():
    from anchor_interp.cli.args import PRESET_NAMES

    assert set(PRESETS) == {"small", "paper", "paper_lnpre", "mechanism"} == set(PRESET_NAMES)


def test_paper_lnpre_is_the_studied_configuration(identity_task):
    """paper_lnpre: the paper's sizes, LayerNorm without weights, PyTorch's init (docs/reproduction.md)."""
    m = make_model("paper_lnpre", identity_task, seed=0)
    assert m.cfg.normalization_type == "LNPre" and m.cfg.d_model == 400 and m.cfg.n_layers == 4
    w_e = dict(m.named_parameters())["embed.W_E"].detach()
    assert abs(w_e.std().item() - 1.0) < 0.05  # N(0, 1) embeddings: init_gamma "torch"


def test_importing_models_does_not_import_transformer_lens():
    code = "import sys, anchor_interp.models, anchor_interp.training, anchor_interp.models.zoo, anchor_interp.models.checkpoint; " \
           "print('transformer_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_paper_preset_defaults_to_small_init(identity_task):
    default = make_model("paper", identity_task, seed=0)
    assert float(default.W_Q.detach().std()) == pytest.approx(400**-0.75, rel=0.05)
    from_config = make_model(model_config("paper", identity_task), identity_task, seed=0)
    assert torch.equal(from_config.W_Q, default.W_Q)  # the config keeps its preset's init
    tl = make_model("paper", identity_task, seed=0, init_gamma=None)
    assert float(tl.W_Q.detach().std()) == pytest.approx(tl.cfg.initializer_range, rel=0.05)
    small = make_model("small", identity_task, seed=0)
    assert torch.equal(small.W_Q, make_model("small", identity_task, seed=0, init_gamma=None).W_Q)
    with pytest.raises(ValueError, match="init_gamma='big'"):
        make_model("small", identity_task, seed=0, init_gamma="big")

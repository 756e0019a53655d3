"""Any HookedTransformer (issue 13): labelling and patching on models the project did not make.

A pairwise matrix over the configuration axes TransformerLens 3.9 builds (normalisation, MLP kind,
positions, attention direction, grouped-query attention, d_head, output vocabulary, depth, context),
random weights: no crash and finite outputs for ``label_heads`` without a task and the patching
functions; the plain-TransformerLens (slow) patching path equals ``transformer_lens.patching`` and the
engine in float64; planted shift / broadcast heads keep their labels on learned-position variants.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import anchor_interp.patching as P
from anchor_interp.labels import label_heads
from anchor_interp.models import planted
from anchor_interp.models.adapter import HookedTransformerConfig, build_model
from anchor_interp.patching.engine import fast_path_problems
from anchor_interp.patching.slow import slow_head_out, slow_head_pattern, slow_path_patch, slow_resid_pre

D_VOCAB, D_VOCAB_OUT_SMALL, ROWS = 24, 12, 24

# (normalization_type, mlp, positional_embedding_type, attention_dir, grouped-query, d_head, d_vocab_out,
#  n_layers, n_ctx): every pair of values of any two axes occurs in some row (greedy pairwise cover)
MATRIX = [
    ("RMS", "gated", "standard", "bidirectional", True, "odd", "smaller", 6, 16),
    ("LN", "relu", "rotary", "causal", False, "odd", "same", 3, 64),
    ("RMSPre", "gelu", "shortformer", "causal", False, "even", "smaller", 2, 8),
    (None, "attn_only", "shortformer", "bidirectional", True, "even", "same", 2, 64),
    ("LNPre", "gated", "rotary", "causal", True, "even", "same", 1, 16),
    (None, "relu", "standard", "bidirectional", False, "even", "smaller", 1, 8),
    ("LNPre", "attn_only", "standard", "causal", False, "odd", "smaller", 6, 8),
    ("LN", "gelu", "shortformer", "bidirectional", True, "odd", "smaller", 3, 8),
    ("RMSPre", "relu", "standard", "bidirectional", True, "odd", "same", 2, 16),
    ("RMS", "gelu", "shortformer", "causal", False, "even", "same", 1, 16),
    ("RMSPre", "attn_only", "rotary", "bidirectional", False, "odd", "smaller", 1, 64),
    (None, "gelu", "rotary", "causal", False, "odd", "same", 6, 64),
    ("LNPre", "gated", "shortformer", "bidirectional", False, "odd", "same", 2, 8),
    ("LN", "attn_only", "standard", "causal", False, "even", "smaller", 3, 64),
    ("RMS", "relu", "rotary", "causal", False, "even", "same", 2, 8),
    (None, "gated", "rotary", "bidirectional", True, "even", "smaller", 3, 16),
    ("LNPre", "relu", "shortformer", "bidirectional", False, "odd", "smaller", 6, 64),
    ("LN", "gelu", "standard", "bidirectional", True, "even", "smaller", 6, 16),
    ("LN", "gated", "standard", "bidirectional", True, "odd", "smaller", 2, 64),
    ("RMS", "attn_only", "shortformer", "causal", False, "even", "same", 3, 16),
    ("RMSPre", "gated", "rotary", "bidirectional", False, "odd", "smaller", 6, 16),
    ("LNPre", "gelu", "standard", "bidirectional", True, "even", "smaller", 3, 64),
    ("LN", "relu", "standard", "bidirectional", True, "even", "smaller", 1, 64),
    ("RMSPre", "attn_only", "rotary", "causal", True, "even", "smaller", 3, 64),
    ("RMS", "gated", "rotary", "causal", True, "odd", "same", 2, 64),
]


def _id(row) -> str:
    norm, mlp, pos, direction, gqa, dh, vout, layers, ctx = row
    return f"{norm}-{mlp}-{pos}-{direction[:4]}{'-gqa' if gqa else ''}-dh{dh}-v{vout}-L{layers}-T{ctx}"


def make_config(row, dtype=torch.float32) -> HookedTransformerConfig:
    norm, mlp, pos, direction, gqa, dh, vout, layers, ctx = row
    d_head = 4 if dh == "even" else 6  # 4 = d_model / n_heads
    kw = dict(
        n_layers=layers, d_model=16, n_heads=4, d_head=d_head, n_ctx=ctx, d_vocab=D_VOCAB,
        d_vocab_out=D_VOCAB_OUT_SMALL if vout == "smaller" else -1, normalization_type=norm,
        attention_dir=direction, positional_embedding_type=pos, attn_only=mlp == "attn_only",
        act_fn={"gelu": "gelu", "relu": "relu", "gated": "silu"}.get(mlp, "gelu"), gated_mlp=mlp == "gated",
        d_mlp=32, seed=0, dtype=dtype,
    )
    if pos == "rotary":
        kw["rotary_dim"] = 4
    if gqa:
        kw["n_key_value_heads"] = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HookedTransformerConfig(**kw)


def _pair(T: int, rows: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, D_VOCAB, (rows, T), generator=g)
    corrupt = clean.clone()
    corrupt[:, T // 2] = (clean[:, T // 2] + 1 + torch.randint(0, D_VOCAB - 1, (rows,), generator=g)) % D_VOCAB
    return clean, corrupt


@pytest.mark.parametrize("row", MATRIX, ids=_id)
def test_label_heads_without_a_task_on_any_config(row):
    model = build_model(make_config(row))
    T = model.cfg.n_ctx
    tokens = torch.randint(0, D_VOCAB, (ROWS, T), generator=torch.Generator().manual_seed(1))
    records = label_heads(model, tokens)
    assert [(r.layer, r.head) for r in records] == [(lay, h) for lay in range(row[7]) for h in range(4)]
    for rec in records:
        assert rec.label in ("shift", "broadcast", "neither")
        assert math.isfinite(rec.confidence)
        for name, value in rec.scores.items():
            if name == "qk_positional_shift" and row[2] == "rotary":
                assert math.isnan(value)
                assert any("qk_positional_shift not scored" in n and "rotary" in n for n in rec.notes)
            else:
                assert math.isfinite(value), (name, value)


@pytest.mark.parametrize("row", MATRIX, ids=_id)
def test_patching_on_any_config(row):
    model = build_model(make_config(row))
    clean, corrupt = _pair(model.cfg.n_ctx)
    out = P.patch_head_out(model, clean, corrupt, "kl", normalise=False)
    resid = P.patch_resid_pre(model, clean, corrupt, "kl", normalise=False)
    assert out.values.shape == (row[7], 4) and resid.values.shape == (row[7], model.cfg.n_ctx)
    assert torch.isfinite(out.values).all() and torch.isfinite(resid.values).all()
    # the site that changed, patched at the first layer, restores the clean run: KL 0
    assert resid.values[0, model.cfg.n_ctx // 2] == pytest.approx(0.0, abs=1e-5)


def _tl_reference(model, clean, corrupt, metric) -> dict[str, torch.Tensor]:
    import transformer_lens.patching as TLP

    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    run = lambda name: getattr(TLP, name)(model, corrupt, cache, metric).double()  # noqa: E731
    return {
        "resid_pre": run("get_act_patch_resid_pre"),
        "head_out": run("get_act_patch_attn_head_out_all_pos"),
        "head_out_by_pos": run("get_act_patch_attn_head_out_by_pos").permute(0, 2, 1),
        "head_pattern": run("get_act_patch_attn_head_pattern_all_pos"),
        "head_pattern_by_pos": run("get_act_patch_attn_head_pattern_by_pos"),
    }


PARITY = [MATRIX[i] for i in (1, 3, 4, 7, 10, 15)] + [MATRIX[5], MATRIX[6]]  # slow path + two fast-path rows


@pytest.mark.parametrize("row", [r[:7] + (min(r[7], 2), 8) for r in PARITY], ids=_id)
def test_patching_equals_transformer_lens_in_float64(row):
    model = build_model(make_config(row, dtype=torch.float64))
    clean, corrupt = _pair(8, rows=3)

    def metric(logits):
        return logits[:, -1, 3].mean() - logits[:, -1, 5].mean()

    ours = {
        "resid_pre": P.patch_resid_pre(model, clean, corrupt, metric, normalise=False),
        "head_out": P.patch_head_out(model, clean, corrupt, metric, normalise=False),
        "head_out_by_pos": P.patch_head_out(model, clean, corrupt, metric, normalise=False, by_pos=True),
        "head_pattern": P.patch_head_pattern(model, clean, corrupt, metric, normalise=False),
        "head_pattern_by_pos": P.patch_head_pattern(model, clean, corrupt, metric, normalise=False, by_pos=True),
    }
    ref = _tl_reference(model, clean, corrupt, metric)
    for name, result in ours.items():
        assert result.values.shape == ref[name].shape, name
        assert torch.allclose(result.values.double(), ref[name], atol=1e-5, rtol=0), name


FAST_ROWS = [r[:7] + (2, 8) for r in MATRIX if r[2] == "standard" and not r[4]][:3]


@pytest.mark.parametrize("row", FAST_ROWS, ids=_id)
def test_slow_path_equals_the_engine_in_float64(row):
    """On configurations both paths compute, the plain-TransformerLens path gives the engine's values,
    path patching included (TransformerLens has no path patching to compare with)."""
    model = build_model(make_config(row, dtype=torch.float64))
    assert fast_path_problems(model) == []
    clean, corrupt = _pair(8, rows=3)
    kw = dict(normalise=False, counterfactual=None, max_batch=7)
    pairs = [
        (P.patch_resid_pre(model, clean, corrupt, "kl", normalise=False), slow_resid_pre(model, clean, corrupt, "kl", **kw)),
        (P.patch_head_out(model, clean, corrupt, "kl", normalise=False, by_pos=True),
         slow_head_out(model, clean, corrupt, "kl", by_pos=True, **kw)),
        (P.patch_head_pattern(model, clean, corrupt, "kl", normalise=False),
         slow_head_pattern(model, clean, corrupt, "kl", by_pos=False, **kw)),
    ]
    for receivers in ("logits", [(1, 0, "q"), (1, 2, "k"), (1, 3, "v")]):
        fast = P.path_patch(model, clean, corrupt, receivers, "kl", normalise=False)
        rec = None if receivers == "logits" else {1: [(0, "q"), (2, "k"), (3, "v")]}
        pairs.append((fast, slow_path_patch(model, clean, corrupt, rec, receivers, "kl", **kw)))
    for fast, slow in pairs:
        assert fast.hook_names == slow.hook_names and fast.axes == slow.axes
        assert torch.allclose(fast.values.double(), slow.values.double(), atol=1e-9, rtol=0)
        assert fast.clean_value == pytest.approx(slow.clean_value, abs=1e-9)


def test_slow_path_patch_runs_and_refuses_shared_key_value_receivers():
    model = build_model(make_config(MATRIX[4][:7] + (2, 8)))  # rotary, grouped-query
    clean, corrupt = _pair(8)
    res = P.path_patch(model, clean, corrupt, [(1, 1, "q")], "kl", normalise=False)
    assert res.values.shape == (2, 4) and torch.isfinite(res.values).all()
    with pytest.raises(ValueError, match="n_key_value_heads=2"):
        P.path_patch(model, clean, corrupt, [(1, 1, "k")], "kl")
    with pytest.raises(ValueError, match="positional_embedding_type='rotary'"):
        P.check_model(model)


def test_a_per_row_metric_is_a_clear_error():
    for row in (MATRIX[5], MATRIX[1]):  # fast path, slow path
        model = build_model(make_config(row[:7] + (1, 8)))
        clean, corrupt = _pair(8)
        with pytest.raises(ValueError, match="one number per call"):
            P.patch_head_out(model, clean, corrupt, lambda logits: logits[:, -1, 0])


def test_ov_copying_is_skipped_with_a_note_when_the_output_vocabulary_is_too_small():
    cfg = make_config(("LN", "attn_only", "standard", "causal", False, "even", "same", 1, 8))
    cfg.d_vocab_out = 1
    model = build_model(cfg)
    records = label_heads(model, torch.randint(0, D_VOCAB, (ROWS, 8), generator=torch.Generator().manual_seed(0)))
    for rec in records:
        assert math.isnan(rec.scores["ov_copying"])
        assert any("ov_copying not scored" in n for n in rec.notes)


# planted heads (prev-token shift, offset-2 shift, broadcast, ...) moved into other learned-position models
PLANTED = [
    ("standard", "causal", "same", "none"),
    ("shortformer", "causal", "smaller", "gated"),
    ("standard", "bidirectional", "smaller", "relu"),
    ("shortformer", "bidirectional", "same", "none"),
]


def _transplant(zoo, pos: str, vout: str, mlp: str):
    """The zoo model's weights in a model with ``pos`` positions, a smaller output vocabulary (the first
    ``D_VOCAB_OUT_SMALL`` ids) and a zero MLP of kind ``mlp``; the same computation otherwise."""
    zc = zoo.cfg
    kw = dict(n_layers=1, d_model=zc.d_model, n_heads=zc.n_heads, d_head=zc.d_head, n_ctx=zc.n_ctx,
              d_vocab=zc.d_vocab, d_vocab_out=D_VOCAB_OUT_SMALL if vout == "smaller" else -1,
              normalization_type=None, attention_dir=zc.attention_dir, positional_embedding_type=pos,
              attn_only=mlp == "none", act_fn="silu" if mlp == "gated" else "relu", gated_mlp=mlp == "gated",
              d_mlp=8, seed=0)
    model = build_model(HookedTransformerConfig(**kw))
    src = zoo.state_dict()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            p.zero_()
            if name in src and src[name].shape == p.shape:
                p.copy_(src[name])
            elif name in src:  # the unembedding, cut to the smaller output vocabulary
                p.copy_(src[name][..., : p.shape[-1]])
    model.eval()
    return model


@pytest.mark.parametrize("variant", PLANTED, ids=lambda v: "-".join(v))
def test_planted_heads_are_labelled_right_on_learned_position_models(variant):
    pos, direction, vout, mlp = variant
    heads = planted.DEFAULT_HEADS[:3]  # prev (shift -1), offset2 (shift -2), broadcast
    if direction == "bidirectional":
        heads = (*heads, planted.GroundTruthHead("next", "shift", +1))
    zoo = planted.make_head_zoo_model(heads, d_vocab=D_VOCAB, n_ctx=10, attention_dir=direction)
    model = _transplant(zoo, pos, vout, mlp)
    tokens = planted.sample_tokens(128, d_vocab=D_VOCAB, n_ctx=10, seed=0)
    records = label_heads(model, tokens)
    got = [(r.label, r.offset) for r in records]
    want = [(label, offset) for label, offset, _ in planted.expected_labels(heads)]
    assert got == want


@pytest.mark.parametrize("extra", [dict(positional_embedding_type="rotary", rotary_dim=4), dict(n_key_value_heads=2)],
                         ids=["rotary", "gqa"])
def test_route_evidence_falls_back_to_transformer_lens(extra):
    """Rotary and grouped-query models: the label routes run on plain TransformerLens hooks (the engine
    refuses them) and give finite per-row values for every receiver."""
    import anchor_interp.labels.routes as R
    from anchor_interp.tasks import make_task

    task = make_task("identity")
    cfg = dict(n_layers=2, d_model=16, n_heads=4, d_head=4, n_ctx=task.seq_len, d_vocab=task.vocab_size,
               attn_only=False, d_mlp=32, act_fn="gelu", normalization_type="LN", seed=0, **extra)
    model = build_model(HookedTransformerConfig(**cfg))
    assert R._engine(model) is None
    pair = task.counterfactual_pair(task.sample(32, split="test", seed=0), "anchor_position", seed=1)
    run = R.paired_run(model, pair.clean, pair.corrupt, "anchor_position")
    masks = R.part_masks(run, causal=True)
    src = R.source_values(model, run, 0, [(h, masks["head"]) for h in range(4)])
    routes = R.route_values(model, run, 0, 1, masks["head"])
    assert src.shape == (4, run.clean_ld.shape[0]) and torch.isfinite(src).all()
    assert set(routes) == {"L1.q", "L1.k", "L1.v", "logits"}
    assert all(torch.isfinite(v).all() for v in routes.values())


def test_find_heads_with_a_task_on_a_rotary_grouped_query_model():
    """find_heads (Python) end to end on a model the engine does not compute, whose output vocabulary is
    the task's own: no traceback, a result with one record per head, and the notes say what was skipped.
    (Untrained, so the competence gate withholds shift / broadcast labels.)"""
    from anchor_interp.find_heads import find_heads
    from anchor_interp.tasks import make_task

    task = make_task("identity")
    cfg = dict(n_layers=2, d_model=16, n_heads=4, d_head=4, n_ctx=task.seq_len, d_vocab=task.vocab_size,
               attn_only=True, normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4,
               n_key_value_heads=2, seed=0)
    model = build_model(HookedTransformerConfig(**cfg))
    res = find_heads(model, task, seed=0, n_samples=64, n_examples=1)
    assert len(res.heads) == 8 and res.competence["solved"] is False
    assert all(h["label"] == "neither" for h in res.heads)
    assert any("rotary" in n for n in res.heads[0]["notes"])
    assert set(res.patching) >= {"resid_pre/key_value"}

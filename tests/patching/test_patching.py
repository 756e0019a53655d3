"""anchor_interp.patching (its engine, sweeps and attribution): parity with transformer_lens.patching (float64,
1e-6), path patching against a one-patch-per-forward loop, attribution against finite differences,
behaviour on hand-made pairs and task counterfactuals, and the errors."""

from __future__ import annotations

import ast
import copy
import importlib
import json
import math
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # transformer_lens.patching's progress bar

import pytest
import torch
from fixtures_patching import (
    D_VOCAB,
    MODEL_KINDS,
    Pair,
    float64_default,
    make_model,
    make_pair,
    saturated_switch_model,
    session_models,
)

from anchor_interp import patching as P
from anchor_interp.patching.attribution import attribution_patch_resid_pre

TOL = 1e-6


@pytest.fixture(scope="session")
def patch_models():
    return session_models()


def tl_metric(clean: Pair, corrupt: Pair):
    return lambda logits: P.logit_diff(logits[:, -1], clean.targets, corrupt.targets)


def tl_reference(fn_name: str, model, clean: Pair, corrupt: Pair, metric=None):
    import transformer_lens.patching as tlp

    with float64_default(), torch.no_grad():
        _, cache = model.run_with_cache(clean.tokens)
        return getattr(tlp, fn_name)(model, corrupt.tokens, cache, metric or tl_metric(clean, corrupt))


# ------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("one_token", [False, True], ids=["differ_everywhere", "differ_at_one_position"])
@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_parity_with_transformer_lens(patch_models, kind, one_token):
    model = patch_models[kind]
    clean, corrupt = make_pair(batch=6, seed=1, one_token=one_token)
    cases = [
        (P.patch_resid_pre(model, clean, corrupt, normalise=False), "get_act_patch_resid_pre", None),
        (P.patch_head_out(model, clean, corrupt, normalise=False), "get_act_patch_attn_head_out_all_pos", None),
        # transformer_lens orders by_pos as [layer, pos, head]; ours is [layer, head, pos]
        (
            P.patch_head_out(model, clean, corrupt, normalise=False, by_pos=True),
            "get_act_patch_attn_head_out_by_pos",
            (0, 2, 1),
        ),
        (P.patch_head_pattern(model, clean, corrupt, normalise=False), "get_act_patch_attn_head_pattern_all_pos", None),
        (
            P.patch_head_pattern(model, clean, corrupt, normalise=False, by_pos=True),
            "get_act_patch_attn_head_pattern_by_pos",
            None,
        ),
    ]
    for ours, fn_name, perm in cases:
        ref = tl_reference(fn_name, model, clean, corrupt)
        if perm is not None:
            ref = ref.permute(*perm)
        assert ours.values.shape == ref.shape, fn_name
        assert ours.values.dtype == torch.float64
        assert torch.allclose(ours.values, ref, atol=TOL, rtol=0), (fn_name, (ours.values - ref).abs().max())
        assert ref.abs().max() > 0.1, "the reference should show real effects"


@pytest.mark.parametrize(
    "over",
    [
        dict(n_layers=1, n_heads=2, attn_only=False, d_mlp=16, attention_dir="causal", normalization_type="LNPre"),
        dict(n_layers=4, n_heads=2, attn_only=True, attention_dir="bidirectional", normalization_type="RMSPre"),
        dict(n_layers=3, n_heads=1, attn_only=False, d_mlp=16, attention_dir="causal", normalization_type=None),
    ],
    ids=["1L_mlp_causal_lnpre", "4L_attn_bidir_rmspre", "3L_1head_mlp_causal_nonorm"],
)
def test_parity_other_architectures(over):
    from anchor_interp.models.adapter import HookedTransformerConfig, build_model

    cfg = HookedTransformerConfig(d_model=16, d_head=4, n_ctx=7, d_vocab=D_VOCAB, act_fn="gelu", seed=5,
                                  dtype=torch.float64, init_weights=True, **over)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    for one_token in (False, True):
        clean, corrupt = make_pair(batch=4, seed=17, n_ctx=7, one_token=one_token)
        for ours, fn_name, perm in [
            (P.patch_resid_pre(model, clean, corrupt, normalise=False), "get_act_patch_resid_pre", None),
            (P.patch_head_out(model, clean, corrupt, normalise=False, by_pos=True),
             "get_act_patch_attn_head_out_by_pos", (0, 2, 1)),
            (P.patch_head_pattern(model, clean, corrupt, normalise=False, by_pos=True),
             "get_act_patch_attn_head_pattern_by_pos", None),
        ]:
            ref = tl_reference(fn_name, model, clean, corrupt)
            ref = ref if perm is None else ref.permute(*perm)
            assert torch.allclose(ours.values, ref, atol=TOL, rtol=0), (fn_name, one_token)


@pytest.mark.parametrize("metric", ["kl", "accuracy", "custom"])
def test_parity_other_metrics(patch_models, metric):
    model = patch_models["mlp_causal_rms"]
    clean, corrupt = make_pair(batch=6, seed=2)
    if metric == "kl":
        with torch.no_grad():
            clean_lp = model(clean.tokens)[:, -1].log_softmax(-1)
        ref_metric = lambda logits: P.kl_from_clean(logits[:, -1], clean_lp)  # noqa: E731
        ours_metric = "kl"
    elif metric == "accuracy":
        ref_metric = lambda logits: P.accuracy(logits[:, -1], clean.targets)  # noqa: E731
        ours_metric = "accuracy"
    else:  # a callable reading a position other than the last: the full-logits path
        ref_metric = lambda logits: logits[:, -3].log_softmax(-1)[:, 7].mean()  # noqa: E731
        ours_metric = ref_metric
    for ours, fn_name in [
        (P.patch_resid_pre(model, clean, corrupt, ours_metric, normalise=False), "get_act_patch_resid_pre"),
        (
            P.patch_head_out(model, clean, corrupt, ours_metric, normalise=False, by_pos=True),
            "get_act_patch_attn_head_out_by_pos",
        ),
    ]:
        ref = tl_reference(fn_name, model, clean, corrupt, ref_metric)
        if ref.dim() == 3:
            ref = ref.permute(0, 2, 1)
        assert torch.allclose(ours.values, ref, atol=TOL, rtol=0), (metric, fn_name)
        assert ours.metric == ("custom" if metric == "custom" else metric)


def test_token_tensors_with_callable_metric(patch_models):
    model = patch_models["attn_causal_ln"]
    clean, corrupt = make_pair(batch=4, seed=3)
    metric = tl_metric(clean, corrupt)
    ours = P.patch_head_out(model, clean.tokens, corrupt.tokens, metric, normalise=False)
    ref = tl_reference("get_act_patch_attn_head_out_all_pos", model, clean, corrupt)
    assert torch.allclose(ours.values, ref, atol=TOL, rtol=0)
    assert ours.metric == "custom"


def test_chunking_does_not_change_results(patch_models):
    model = patch_models["mlp_causal_rms"]
    clean, corrupt = make_pair(batch=5, seed=4)
    for fn in (P.patch_resid_pre, P.patch_head_out):
        big = fn(model, clean, corrupt, normalise=False).values
        small = fn(model, clean, corrupt, normalise=False, max_batch=1).values  # one variant per forward
        mid = fn(model, clean, corrupt, normalise=False, max_batch=12).values
        assert torch.allclose(big, small, atol=1e-12) and torch.allclose(big, mid, atol=1e-12)


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_own_cached_forward_matches_run_with_cache(patch_models, kind):
    from anchor_interp.patching.engine import Engine

    model = patch_models[kind]
    clean, _ = make_pair(batch=3, seed=15)
    L = model.cfg.n_layers
    names = [f"blocks.{layer}.{h}" for layer in range(L) for h in (
        "hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern", "attn.hook_z",
        "hook_attn_out", "hook_resid_post")]
    with torch.no_grad():
        ref_logits, ref = model.run_with_cache(clean.tokens)
        logits, ours = Engine(model).run_cached(clean.tokens, names, full_logits=True)
        last, _ = Engine(model).run_cached(clean.tokens, [f"blocks.{L - 1}.hook_resid_pre"], full_logits=False)
    assert torch.allclose(logits, ref_logits, atol=1e-10) and last.shape == (3, 1, model.cfg.d_vocab)
    assert torch.allclose(last[:, 0], ref_logits[:, -1], atol=1e-10)
    for name in names:
        assert torch.allclose(ours[name], ref[name], atol=1e-10), name


def test_weights_changed_in_place_are_seen(patch_models):
    model = copy.deepcopy(patch_models["attn_causal_ln"])
    clean, corrupt = make_pair(batch=4, seed=16)
    before = P.patch_head_out(model, clean, corrupt, normalise=False).values
    with torch.no_grad():
        model.blocks[1].attn.W_Q.mul_(1.5)  # in place: same tensor, new version
    after = P.patch_head_out(model, clean, corrupt, normalise=False).values
    ref = tl_reference("get_act_patch_attn_head_out_all_pos", model, clean, corrupt)
    assert not torch.allclose(before, after) and torch.allclose(after, ref, atol=TOL, rtol=0)
    model.to(torch.float32)  # new storage and dtype: the cached weight layout must not be reused
    ours32 = P.patch_head_out(model, clean, corrupt, normalise=False).values
    assert ours32.dtype == torch.float32 and torch.allclose(ours32.double(), ref, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ path patching


def path_patch_loop(model, clean: Pair, corrupt: Pair, receivers):
    """Reference: one forward per sender; the sender's clean-minus-corrupt hook_result is added to each
    receiver's hook_{q,k,v}_input (or to the final residual stream for 'logits')."""
    ref = copy.deepcopy(model)
    ref.set_use_split_qkv_input(True)
    ref.set_use_attn_result(True)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    with torch.no_grad():
        _, cc = ref.run_with_cache(clean.tokens)
        _, xc = ref.run_with_cache(corrupt.tokens)
        out = torch.zeros(L, H, dtype=torch.float64)
        for sl in range(L):
            for sh in range(H):
                name = f"blocks.{sl}.attn.hook_result"
                delta = cc[name][:, :, sh] - xc[name][:, :, sh]  # (B, T, d_model)
                hooks = []
                if receivers == "logits":
                    hooks.append((f"blocks.{L - 1}.hook_resid_post", lambda a, hook, d=delta: a + d))
                else:
                    for rl, rh, comp in receivers:
                        if rl > sl:

                            def add(a, hook, d=delta, rh=rh):
                                a = a.clone()
                                a[:, :, rh] += d
                                return a

                            hooks.append((f"blocks.{rl}.hook_{comp}_input", add))
                logits = ref.run_with_hooks(corrupt.tokens, fwd_hooks=hooks)
                out[sl, sh] = P.logit_diff(logits[:, -1], clean.targets, corrupt.targets)
    return out


PATH_CASES = [(kind, rec) for kind in MODEL_KINDS for rec in ("logits", [(1, 0, "q"), (1, 1, "k"), (1, 1, "v")])]
PATH_CASES += [("attn_bidir_none", [(1, 2, "v")]), ("mlp_causal_rms", [(1, 1, "k"), (2, 0, "q"), (2, 1, "v")])]


@pytest.mark.parametrize(("kind", "receivers"), PATH_CASES)
def test_path_patch_matches_loop(patch_models, kind, receivers):
    model = patch_models[kind]
    clean, corrupt = make_pair(batch=4, seed=5)
    ours = P.path_patch(model, clean, corrupt, receivers, normalise=False)
    ref = path_patch_loop(model, clean, corrupt, receivers)
    assert ours.axes == ("src_layer", "src_head")
    assert torch.allclose(ours.values, ref, atol=TOL, rtol=0), (ours.values - ref).abs().max()
    assert (ours.values - ours.corrupt_value).abs().max() > 1e-3, "some sender should matter"


def test_path_patch_last_layer_to_logits_equals_head_out(patch_models):
    # attention-only: a last-layer head reaches the logits only directly, so path = activation patching
    model = patch_models["attn_causal_ln"]
    clean, corrupt = make_pair(batch=4, seed=6)
    path = P.path_patch(model, clean, corrupt, "logits")
    head = P.patch_head_out(model, clean, corrupt)
    assert torch.allclose(path.values[-1], head.values[-1], atol=1e-9)
    # a receiver in layer 1 gets nothing from senders in layer >= 1
    rec = P.path_patch(patch_models["mlp_causal_rms"], clean, corrupt, [(1, 0, "q")])
    assert torch.equal(rec.values[1:], torch.zeros_like(rec.values[1:]))


# ------------------------------------------------------------------------------------------ behaviour


def test_one_token_difference_hand_made_pair(patch_models):
    # clean and corrupt differ only at position k: patching resid_pre there restores everything
    model = patch_models["attn_causal_ln"]
    clean, corrupt = make_pair(batch=3, seed=7)
    k = 4
    tokens = corrupt.tokens.clone()
    tokens[:, k] = (clean.tokens[:, k] + 1) % D_VOCAB
    tokens[:, :k] = clean.tokens[:, :k]
    tokens[:, k + 1 :] = clean.tokens[:, k + 1 :]
    corrupt = Pair(tokens, corrupt.targets)
    res = P.patch_resid_pre(model, clean, corrupt)
    assert res.normalised and res.axes == ("layer", "pos")
    assert torch.allclose(res.values[0, k], torch.tensor(1.0, dtype=torch.float64), atol=1e-9)
    others = [p for p in range(tokens.shape[1]) if p != k]
    assert res.values[0, others].abs().max() < 1e-9
    # causal model: a position before k never differs; in layer 1 the difference has spread to k..end
    assert res.values[:, :k].abs().max() < 1e-9
    assert res.values[1, k:].abs().max() > 1e-3


def test_normalised_values_are_the_raw_ones_rescaled(patch_models):
    model = patch_models["attn_bidir_none"]
    clean, corrupt = make_pair(batch=5, seed=8)
    raw = P.patch_head_out(model, clean, corrupt, normalise=False)
    norm = P.patch_head_out(model, clean, corrupt)
    expect = (raw.values - raw.corrupt_value) / (raw.clean_value - raw.corrupt_value)
    assert torch.allclose(norm.values, expect, atol=1e-12)
    assert torch.allclose(norm.raw(), raw.values, atol=1e-9)
    with torch.no_grad():
        lc, lx = model(clean.tokens)[:, -1], model(corrupt.tokens)[:, -1]
    assert math.isclose(raw.clean_value, float(P.logit_diff(lc, clean.targets, corrupt.targets)), abs_tol=1e-9)
    assert math.isclose(raw.corrupt_value, float(P.logit_diff(lx, clean.targets, corrupt.targets)), abs_tol=1e-9)


def test_with_task_counterfactuals():
    from anchor_interp.tasks import make_task

    task = make_task("identity")
    model = make_model("attn_causal_ln")  # d_vocab 40 < task vocabulary: must be refused
    clean = task.sample(8, split="test", seed=0)
    with pytest.raises(ValueError, match="d_vocab"):
        P.patch_head_out(model, clean, task.counterfactual(clean, "key_swap", seed=1))

    from anchor_interp.models.adapter import HookedTransformerConfig, build_model

    cfg = HookedTransformerConfig(
        n_layers=2, n_heads=2, d_model=32, d_head=8, n_ctx=task.seq_len, d_vocab=task.vocab_size,
        attn_only=True, act_fn="relu", seed=1, init_weights=True,
    )
    model = build_model(cfg)
    swap = task.counterfactual(clean, "key_swap", seed=1)
    res = P.patch_head_out(model, clean, swap, counterfactual="key_swap")
    assert res.metric == "logit_diff" and res.counterfactual == "key_swap" and res.values.shape == (2, 2)
    assert res.hook_names == ("blocks.0.attn.hook_z", "blocks.1.attn.hook_z")
    removed = task.counterfactual(clean, "anchor_remove", seed=1)
    res = P.patch_head_out(model, clean, removed)
    assert res.metric == "kl" and res.counterfactual == "anchor_remove"
    assert res.clean_value == 0.0 and res.corrupt_value > 0
    with pytest.raises(ValueError, match="anchor_remove"):
        P.patch_resid_pre(model, clean, removed, "logit_diff")


def test_result_to_dict_is_json_and_round_trips(patch_models):
    model = patch_models["attn_causal_ln"]
    clean, corrupt = make_pair(batch=3, seed=9)
    res = P.path_patch(model, clean, corrupt, [(1, 2, "v")])
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["axes"] == ["src_layer", "src_head"] and d["shape"] == [2, 4]
    assert "blocks.1.hook_v_input" in d["hook_names"]
    back = P.PatchResult.from_dict(d)
    assert torch.allclose(back.values, res.values.double()) and back.axes == res.axes
    nan = P.PatchResult(torch.tensor([math.nan, 1.0]), ("head",), (), "kl", normalised=False)
    assert json.dumps(nan.to_dict(), allow_nan=False) and nan.to_dict()["values"] == [None, 1.0]


def test_no_gradients_and_no_side_effects(patch_models):
    model = patch_models["mlp_causal_rms"]
    clean, corrupt = make_pair(batch=3, seed=10)
    res = P.patch_head_out(model, clean, corrupt, by_pos=True)
    assert not res.values.requires_grad
    P.attribution_patch_heads(model, clean, corrupt)
    assert all(p.grad is None for p in model.parameters())
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_attn_result


# ------------------------------------------------------------------------------------------ attribution


def _metric_along(model, clean: Pair, corrupt: Pair, hook: str, index, eps: float) -> float:
    _, cc = model.run_with_cache(clean.tokens, names_filter=hook)
    _, xc = model.run_with_cache(corrupt.tokens, names_filter=hook)
    d = torch.zeros_like(cc[hook])
    d[index] = (cc[hook] - xc[hook])[index]

    logits = model.run_with_hooks(corrupt.tokens, fwd_hooks=[(hook, lambda a, hook: a + eps * d)])
    return float(P.logit_diff(logits[:, -1], clean.targets, corrupt.targets))


def test_attribution_is_the_directional_derivative(patch_models):
    model = patch_models["mlp_causal_rms"]
    clean, corrupt = make_pair(batch=4, seed=11)
    heads = P.attribution_patch_heads(model, clean, corrupt, normalise=False)
    resid = attribution_patch_resid_pre(model, clean, corrupt, normalise=False)
    assert heads.method == "attribution" and heads.axes == ("layer", "head")
    eps = 1e-5
    with torch.no_grad():
        for layer, head in [(0, 1), (1, 0), (2, 1)]:
            idx = (slice(None), slice(None), head)
            fd = (_metric_along(model, clean, corrupt, f"blocks.{layer}.attn.hook_z", idx, eps)
                  - _metric_along(model, clean, corrupt, f"blocks.{layer}.attn.hook_z", idx, -eps)) / (2 * eps)
            assert math.isclose(heads.values[layer, head] - heads.corrupt_value, fd, abs_tol=1e-5)
        for layer, pos in [(0, 3), (2, 8)]:
            idx = (slice(None), pos)
            fd = (_metric_along(model, clean, corrupt, f"blocks.{layer}.hook_resid_pre", idx, eps)
                  - _metric_along(model, clean, corrupt, f"blocks.{layer}.hook_resid_pre", idx, -eps)) / (2 * eps)
            assert math.isclose(resid.values[layer, pos] - resid.corrupt_value, fd, abs_tol=1e-5)
    by_pos = P.attribution_patch_heads(model, clean, corrupt, by_pos=True)
    assert torch.allclose(by_pos.values.sum(-1), P.attribution_patch_heads(model, clean, corrupt).values)


def test_attribution_exact_where_linear_and_flags_where_not():
    # attention-only, no final LayerNorm: a last-layer head reaches the logits linearly -> exact
    model = make_model("attn_bidir_none", seed=3)
    clean, corrupt = make_pair(batch=6, seed=12)
    check = P.compare_attribution(model, clean, corrupt, top_k=2, tolerance=0.05)
    assert torch.allclose(check.attribution.values[-1], check.exact.values[-1], atol=1e-9)
    flagged = {(d["layer"], d["head"]) for d in check.disagreements}
    assert all(layer < model.cfg.n_layers - 1 for layer, _ in flagged)
    a, x = check.attribution.values, check.exact.values
    # every flag obeys the documented rule and every head breaking it is flagged
    top = set(a.abs().flatten().argsort(descending=True)[:2].tolist())
    for i in range(a.numel()):
        layer, head = divmod(i, a.shape[1])
        diff = abs(float(a[layer, head] - x[layer, head]))
        should = diff > 0.05 and (i in top or abs(float(x[layer, head])) >= 0.05)
        assert ((layer, head) in flagged) == should
    assert json.dumps(check.to_dict(), allow_nan=False)
    # the scaled random 2-layer model is far from linear: some layer-0 head must be flagged
    assert flagged, "expected disagreements on a strongly non-linear random model"
    one_layer = one_layer_model(model)
    assert P.compare_attribution(one_layer, clean, corrupt, tolerance=1e-6).agrees


def one_layer_model(model):
    """A fresh 1-layer model with ``model``'s shape: every head is a last-layer head."""
    from anchor_interp.models.adapter import HookedTransformerConfig, build_model

    cfg = HookedTransformerConfig(**{**{k: getattr(model.cfg, k) for k in (
        "d_model", "d_head", "n_ctx", "d_vocab", "act_fn", "dtype", "n_heads", "attn_only", "attention_dir",
        "normalization_type")}, "n_layers": 1, "seed": 0})
    small = build_model(cfg)
    with torch.no_grad():
        for p in small.parameters():
            p.mul_(3.0)
    return small


def test_attribution_refuses_accuracy(patch_models):
    clean, corrupt = make_pair(batch=3, seed=13)
    with pytest.raises(ValueError, match="accuracy"):
        P.attribution_patch_heads(patch_models["attn_causal_ln"], clean, corrupt, "accuracy")


# ------------------------------------------------------------------------------------------ errors


def test_errors_name_the_problem(patch_models):
    model = patch_models["attn_causal_ln"]
    clean, corrupt = make_pair(batch=3, seed=14)
    cases = [
        (lambda: P.patch_head_out(torch.nn.Linear(2, 2), clean, corrupt), "HookedTransformer"),
        (lambda: P.patch_head_out(model, clean, Pair(corrupt.tokens[:2], corrupt.targets[:2])), "shapes differ"),
        (lambda: P.patch_head_out(model, clean, corrupt.tokens), "not a mix"),
        (lambda: P.patch_head_out(model, clean.tokens, corrupt.tokens), "metric"),
        (lambda: P.patch_head_out(model, clean, corrupt, "bleu"), "unknown metric"),
        (lambda: P.patch_head_out(model, clean.tokens.float(), corrupt.tokens, "kl"), "long tensor"),
        (lambda: P.patch_head_out(model, clean.tokens + 100, corrupt.tokens, "kl"), "d_vocab"),
        (lambda: P.patch_resid_pre(model, torch.zeros(2, 12, dtype=torch.long), torch.zeros(2, 12, dtype=torch.long), "kl"), "n_ctx"),
        (lambda: P.patch_head_out(model, clean, corrupt, max_batch=0), "max_batch"),
        (lambda: P.patch_head_out(model, clean, clean), "normalise"),
        (lambda: P.path_patch(model, clean, corrupt, "resid"), "receivers"),
        (lambda: P.path_patch(model, clean, corrupt, [(5, 0, "q")]), "layer"),
        (lambda: P.path_patch(model, clean, corrupt, [(1, 0, "o")]), "component"),
        (lambda: P.compare_attribution(model, clean, corrupt, top_k=0), "top_k"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    rotary = copy.deepcopy(model)
    rotary.cfg.positional_embedding_type = "rotary"
    with pytest.raises(ValueError, match="positional_embedding_type"):
        P.check_model(rotary)  # the engine refuses it; the public functions take the slow path (test_any_model.py)


def test_attribution_misses_a_saturated_head_and_is_flagged():
    model, clean, corrupt = saturated_switch_model()
    exact = P.patch_head_out(model, clean, corrupt)
    assert exact.clean_value == pytest.approx(10.0, abs=1e-6) and exact.corrupt_value == pytest.approx(-10.0, abs=1e-6)
    assert exact.values[0, 0] == pytest.approx(1.0, abs=1e-6)  # the switch-copying head decides the answer
    assert exact.values[1, 0] == pytest.approx(1.0, abs=1e-6)
    check = P.compare_attribution(model, clean, corrupt, top_k=1, tolerance=0.1)
    assert abs(float(check.attribution.values[0, 0])) < 1e-6  # no gradient through the saturated softmax
    assert check.attribution.values[1, 0] == pytest.approx(1.0, abs=1e-6)  # linear path: exact
    assert [(d["name"], d["reason"]) for d in check.disagreements] == [("L0H0", "missed")]


@pytest.mark.parametrize("kind", ["key_swap", "anchor_move", "anchor_remove"])
def test_parity_on_the_trained_default_model(default_model, kind):
    # float32, real task counterfactuals: every shortcut of the engine (unchanged rows, rows that become
    # the clean run, one-position updates, last-row-only final block) meets real data
    model, task = default_model
    clean = task.sample(16, split="test", seed=3)
    corrupt = task.counterfactual(clean, kind, seed=4)
    if kind == "anchor_remove":
        with torch.no_grad():
            clean_lp = model(clean.tokens)[:, -1].log_softmax(-1)
        ref_metric = lambda logits: P.kl_from_clean(logits[:, -1], clean_lp)  # noqa: E731
    else:
        ref_metric = tl_metric(clean, corrupt)
    import transformer_lens.patching as tlp

    with torch.no_grad():
        _, cache = model.run_with_cache(clean.tokens)
        ref_pos = tlp.get_act_patch_attn_head_out_by_pos(model, corrupt.tokens, cache, ref_metric).permute(0, 2, 1)
        ref_resid = tlp.get_act_patch_resid_pre(model, corrupt.tokens, cache, ref_metric)
    ours_pos = P.patch_head_out(model, clean, corrupt, by_pos=True, normalise=False)
    ours_resid = P.patch_resid_pre(model, clean, corrupt, normalise=False)
    assert ours_pos.metric == ("kl" if kind == "anchor_remove" else "logit_diff")
    assert torch.allclose(ours_pos.values, ref_pos, atol=2e-5, rtol=0)
    assert torch.allclose(ours_resid.values, ref_resid, atol=2e-5, rtol=0)


# ------------------------------------------------------------------------------------------ package layout

PATCHING_DIR = Path(__file__).resolve().parents[2] / "anchor_interp" / "patching"


def _package_imports(path: Path) -> set[str]:
    """The anchor_interp.patching modules that ``path`` imports (anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("anchor_interp.patching"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("anchor_interp.patching"))
    return found


def test_patching_modules_form_no_import_cycle():
    mods = {p.stem: p for p in PATCHING_DIR.glob("*.py") if p.stem != "__init__"}
    deps = {}
    for stem, path in mods.items():
        imported = _package_imports(path)
        assert "anchor_interp.patching" not in imported, f"{stem}.py imports the package (a cycle through __init__)"
        deps[stem] = {m.rsplit(".", 1)[1] for m in imported}
    done: set[str] = set()
    while len(done) < len(deps):  # topological order exists <=> no cycle
        ready = [m for m in deps if m not in done and deps[m] <= done]
        assert ready, f"import cycle among {sorted(set(deps) - done)}"
        done.update(ready)


def test_patching_reads_the_model_through_the_adapter_and_names():
    forbidden = {
        "TransformerLens import": r"^\s*(import|from) transformer_lens",
        "model internals": r"\.(blocks\[|W_[QKVOEU]\b|W_pos\b|b_[QKVOU]\b|pos_embed\b|unembed\b|embed\b|ln_final\b)",
        "hand-written hook name": r"f[\"']blocks\.",
    }
    for path in sorted(PATCHING_DIR.glob("*.py")):
        text = path.read_text()
        for what, pattern in forbidden.items():
            hits = [ln for ln in text.splitlines() if re.search(pattern, ln)]
            assert not hits, f"{path.name}: {what}: {hits}"


def test_old_import_paths_are_deprecated_aliases():
    for old, new in [("anchor_interp.patch_engine", "anchor_interp.patching.engine"),
                     ("anchor_interp.attribution", "anchor_interp.patching.attribution")]:
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=new):
            mod = importlib.import_module(old)
        assert mod is importlib.import_module(new)


def test_importing_patching_does_not_import_transformer_lens():
    # the adapter (which imports TransformerLens, ~4 s) is imported inside functions only
    for path in sorted(PATCHING_DIR.glob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module-level statements
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            names += [f"{node.module}.{a.name}" for a in getattr(node, "names", []) if isinstance(node, ast.ImportFrom)]
            heavy = [n for n in names if n.startswith(("transformer_lens", "anchor_interp.models.adapter"))]
            assert not heavy, f"{path.name} imports {heavy} at module level"


def test_layer_hooks_takes_short_and_old_spellings(patch_models):
    model = patch_models["attn_causal_ln"]
    expect = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert P.layer_hooks(model, "z") == P.layer_hooks(model, "attn.hook_z") == expect
    assert P.layer_hooks(model, "hook_resid_pre") == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    assert P.layer_hooks(torch.nn.Linear(2, 2), "z") == []

"""Zero / mean / resample ablation and circuit checks (anchor_interp.scores.ablation)."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_heads are redefined as test arguments)

from __future__ import annotations

import pytest
import torch
from fixtures_heads import default_analysis, default_batch, gt_model, gt_tokens  # noqa: F401

from anchor_interp.scores import ablation as A

EVERY_GT_HEAD = [(0, h) for h in range(7)]


def test_ablating_the_decoy_changes_nothing(gt_model, gt_tokens):
    for method in A.ABLATION_METHODS:
        r = A.ablate(gt_model, gt_tokens, [(0, 6)], method=method, positions="all")
        assert r.kl == pytest.approx(0.0, abs=1e-7), method


def test_zero_ablating_every_head_leaves_only_the_bias(gt_model, gt_tokens):
    # every logit comes from the heads (W_E and W_pos do not reach W_U): zero ablation -> uniform output
    hooks = A.ablation_hooks(gt_model, EVERY_GT_HEAD, "zero")
    with torch.no_grad():
        logits = gt_model.run_with_hooks(gt_tokens, fwd_hooks=hooks)
    assert torch.allclose(logits, torch.zeros_like(logits), atol=1e-6)


def test_mean_ablation_replaces_by_the_reference_mean(gt_model, gt_tokens):
    # mean-ablating the previous-token head: its output becomes the average token one-hot per position
    ref = gt_tokens[:64]
    hooks = A.ablation_hooks(gt_model, [(0, 0)], "mean", reference=ref)
    _, cache = gt_model.run_with_cache(ref, names_filter="blocks.0.attn.hook_z")
    seen = {}

    def grab(z, hook):
        seen["z"] = z.clone()

    with torch.no_grad():
        gt_model.run_with_hooks(gt_tokens, fwd_hooks=hooks + [("blocks.0.attn.hook_z", grab)])
    expected = cache["blocks.0.attn.hook_z"][:, :, 0].mean(0)
    assert torch.allclose(seen["z"][:, :, 0], expected.expand_as(seen["z"][:, :, 0]), atol=1e-6)
    _, own = gt_model.run_with_cache(gt_tokens, names_filter="blocks.0.attn.hook_z")
    assert torch.allclose(seen["z"][:, :, 1:], own["blocks.0.attn.hook_z"][:, :, 1:])  # other heads untouched


def test_resample_is_seeded(gt_model, gt_tokens):
    a = A.ablate(gt_model, gt_tokens, [(0, 0)], method="resample", seed=3, positions="all")
    b = A.ablate(gt_model, gt_tokens, [(0, 0)], method="resample", seed=3, positions="all")
    c = A.ablate(gt_model, gt_tokens, [(0, 0)], method="resample", seed=4, positions="all")
    assert a.kl == b.kl and a.kl > 0.1 and c.kl != a.kl


def test_per_head_kl_ranks_copying_heads_above_uniform_and_decoy(gt_model, gt_tokens):
    r = A.per_head_ablation(gt_model, gt_tokens, positions="all")
    kl = r["kl"][0]
    assert kl[6] == pytest.approx(0.0, abs=1e-7)
    assert kl[5] < 0.05 * kl[0]  # the uniform head moves the average token: mean ablation keeps it
    assert (kl[:5] > 0.05).all()


@pytest.mark.parametrize("method", A.ABLATION_METHODS)
def test_per_head_ablation_equals_ablating_each_head_alone(default_model, method):
    """per_head_ablation reuses one clean run and one reference cache: the numbers of ablate() per head."""
    from anchor_interp.tasks import make_task

    default_model = default_model[0]  # zoo.load -> (model, meta)
    b = make_task("identity").sample(48, split="test", seed=2)
    ref = make_task("identity").sample(32, split="test", seed=3).tokens
    r = A.per_head_ablation(default_model, b.tokens, targets=b.targets, method=method, reference=ref, seed=1)
    for layer in range(default_model.cfg.n_layers):
        for head in range(default_model.cfg.n_heads):
            one = A.ablate(default_model, b.tokens, [(layer, head)], targets=b.targets, method=method,
                           reference=ref, seed=1)
            assert float(r["kl"][layer, head]) == pytest.approx(one.kl, abs=1e-7)
            assert float(r["accuracy"][layer, head]) == one.accuracy
            assert float(r["loss"][layer, head]) == pytest.approx(one.loss, abs=1e-6)
    assert float(r["base_accuracy"]) == one.base_accuracy
    with pytest.raises(ValueError, match="unknown ablation method 'median'"):
        A.per_head_ablation(default_model, b.tokens, method="median")


def test_task_metrics_ignore_rows_without_target():
    logits = torch.zeros(3, 2, 5)
    logits[0, -1, 1] = logits[1, -1, 2] = logits[2, -1, 3] = 5.0
    acc, loss = A.task_metrics(logits, torch.tensor([1, 0, -1]))
    assert acc == 0.5 and loss > 0
    acc, loss = A.task_metrics(logits, torch.tensor([-1, -1, -1]))
    assert acc != acc  # nan: no scored row


def test_circuit_check_on_the_default_model(default_model, default_analysis, default_batch):
    model, task = default_model
    labelled = [(r.layer, r.head) for r in default_analysis.records if r.label != "neither"]
    ref = task.sample(512, split="train", seed=1).tokens
    check = A.circuit_check(model, default_batch.tokens, default_batch.targets, labelled, reference=ref)
    assert check.base_accuracy > 0.95
    assert check.accuracy_without_circuit <= 0.1
    assert check.kept_fraction >= 0.95
    assert check.passes and check.to_dict()["passes"] is True
    # ablating one layer only must not pass: both operations are needed
    only_l1 = [(1, h) for h in range(model.cfg.n_heads)]
    partial = A.circuit_check(model, default_batch.tokens, default_batch.targets, only_l1, reference=ref)
    assert partial.accuracy_without_circuit <= 0.1 and not partial.passes


def test_bad_inputs(gt_model, gt_tokens):
    with pytest.raises(ValueError, match="method"):
        A.ablation_hooks(gt_model, [(0, 0)], "median", reference=gt_tokens)
    with pytest.raises(ValueError, match="L0H9"):
        A.ablation_hooks(gt_model, [(0, 9)], "zero")
    with pytest.raises(ValueError, match="reference"):
        A.ablation_hooks(gt_model, [(0, 0)], "mean")
    with pytest.raises(ValueError, match="positions"):
        A.ablate(gt_model, gt_tokens, [(0, 0)], positions="first")
    with pytest.raises(ValueError, match="targets"):
        A.circuit_check(gt_model, gt_tokens, torch.full((len(gt_tokens),), -1), [(0, 0)])

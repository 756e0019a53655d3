"""training/graph.py: the static step (a CUDA graph's body) trains like the eager step.

On the CPU, ``cuda_graph=True`` runs StaticStep's body without capturing it, so these tests check its
arithmetic; the capture itself is checked on a GPU by benchmarks/bench_graph_step.py (docs/performance.md).
"""

from __future__ import annotations

import pytest
import torch

from anchor_interp.models import make_model, model_config
from anchor_interp.models.reference import make_reference_model
from anchor_interp.training import train_many
from anchor_interp.training.graph import graph_eligible
from anchor_interp.training.recipe import get_recipe

TINY = dict(batch_size=50, n_test=100, epochs=3, warmup_epochs=1, cosine_epochs=2, lr=1e-2)


def _models(task, arch, seeds):
    if arch == "reference":
        return [make_reference_model(task, seed=s, n_layers=2, n_heads=2, d_model=32, d_head=8, d_mlp=48)
                for s in seeds]
    cfg = model_config("small", task, d_model=32, d_head=8)
    return [make_model(cfg, task, seed=s) for s in seeds]


@pytest.mark.parametrize("arch", ["hooked", "reference"])
def test_static_step_trains_like_the_eager_step(identity_task, arch):
    """Two sizes in one stack (per-model learning rates), a model that leaves early (the stack is
    rebuilt), frozen biases, bf16: same histories and weights to float tolerance."""
    over = dict(TINY, n_train=[100, 200], precision="bf16")
    if arch == "hooked":
        over["freeze"] = ["blocks.*.b_*"]
    runs = {}
    for graph in (False, True):
        models = _models(identity_task, arch, (0, 1))
        res = train_many(models, identity_task, "fast", seeds=[0, 1], progress=False, cuda_graph=graph, **over)
        runs[graph] = res
    for eager, static in zip(runs[False], runs[True], strict=True):
        assert [r["epoch"] for r in eager.history] == [r["epoch"] for r in static.history]
        for a, b in zip(eager.history, static.history, strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-4)
            assert a["test_acc"] == pytest.approx(b["test_acc"], abs=0.02)
        for (n, p), (_, q) in zip(eager.model.named_parameters(), static.model.named_parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=2e-4, rtol=1e-3, msg=n)
    if arch == "hooked":  # frozen biases stayed at their initial zeros
        b = dict(runs[True][0].model.named_parameters())["blocks.0.attn.b_Q"]
        assert bool((b == 0).all())


def test_eligibility_and_the_error_for_ragged_runs(identity_task):
    assert graph_eligible(get_recipe("fast", batch_size=50), [100, 200])
    assert not graph_eligible(get_recipe("fast", batch_size=50), [100, 120])  # a padded last batch
    assert not graph_eligible(get_recipe("fast", data="fresh"), [100])
    with pytest.raises(ValueError, match="cuda_graph=True needs"):
        train_many(_models(identity_task, "hooked", (0,)), identity_task, "fast", seeds=[0], progress=False,
                   cuda_graph=True, **dict(TINY, n_train=120))


def test_counted_steps_keep_the_fused_kernel_in_step(identity_task):
    """Steps counted by a StaticStep, then a fused update: the same as a fused optimiser that took them all."""
    from anchor_interp.training import StackedAdamW, stack_models

    params = {n: t.requires_grad_(True) for n, t in stack_models(_models(identity_task, "hooked", (0,))).items()}
    ref = {n: t.detach().clone().requires_grad_(True) for n, t in params.items()}
    rec = get_recipe("fast", fused_adamw=True)
    counted, stepped = StackedAdamW(params, rec), StackedAdamW(ref, rec)
    for p, q in zip(params.values(), ref.values(), strict=True):
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    for _ in range(3):
        counted.count_step()  # (the moments stay zero: a StaticStep would have updated them)
        stepped.step_count += 1
    counted.step(1e-3)
    stepped.step(1e-3)
    for p, q in zip(params.values(), ref.values(), strict=True):
        torch.testing.assert_close(p, q)

"""The shape annotations are checked while the tests run: jaxtyping's pytest hook (pyproject.toml addopts,
``--jaxtyping-packages=anchor_interp,beartype.beartype(...)``) instruments every function of the package, so a
tensor of the wrong rank, size or dtype passed to an annotated function raises ``jaxtyping.TypeCheckError``
before the function runs. Without the hook (``pytest --jaxtyping-packages=``) these tests skip."""

from __future__ import annotations

import os

import pytest
import torch
from jaxtyping import TypeCheckError

from anchor_interp.models import blocks
from anchor_interp.patching import logit_diff
from anchor_interp.scores import patterns, weights
from anchor_interp.training import stacked_forward

HOOK_HELP = ("jaxtyping's pytest hook is off: run pytest with the default addopts of pyproject.toml "
             "(--jaxtyping-packages=anchor_interp,beartype.beartype(...)) to check the shape annotations")


@pytest.fixture(scope="module", autouse=True)
def hook_on(pytestconfig):
    value = pytestconfig.getoption("jaxtyping_packages", default=None) or ""
    packages = [p.strip() for p in value.split(",")[:-1]]
    if "anchor_interp" not in packages:
        if os.environ.get("CI", "").lower() == "true":  # CI runs the README's command: the hook must be on
            pytest.fail(HOOK_HELP, pytrace=False)
        pytest.skip(HOOK_HELP)
    # on, so the package must be instrumented (it is not if anchor_interp was imported before the hook)
    assert hasattr(patterns.pattern_scores, "__wrapped__"), "the jaxtyping hook is on but anchor_interp is not checked"


def test_a_wrong_rank_is_caught():
    with pytest.raises(TypeCheckError, match="parameter 'patterns'"):
        patterns.pattern_scores(torch.rand(2, 3, 4))  # [batch, layer, head, dest_pos, src_pos] expected
    with pytest.raises(TypeCheckError, match="parameter 'dla'"):
        weights.dla_share(torch.rand(2, 3, 4))  # [layer, head]


def test_a_wrong_dtype_is_caught():
    with pytest.raises(TypeCheckError, match="parameter 'dla'"):
        weights.dla_share(torch.ones(2, 3, dtype=torch.long))  # Float
    with pytest.raises(TypeCheckError, match="parameter 'anchor_pos'"):
        patterns.task_pattern_scores(torch.rand(2, 1, 1, 4, 4), torch.zeros(2), torch.zeros(2, dtype=torch.long))


def test_sizes_that_disagree_are_caught():
    targets = torch.zeros(5, dtype=torch.long)
    with pytest.raises(TypeCheckError, match="parameter 'corrupt_targets'"):  # [batch] like clean_targets
        logit_diff(torch.rand(2, 5, 10), targets, targets[:4])
    with pytest.raises(TypeCheckError, match="parameter '(anchor_pos|key_pos)'"):
        patterns.task_pattern_scores(torch.rand(2, 1, 1, 4, 4), torch.zeros(2, dtype=torch.long),
                                     torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeCheckError, match="parameter 'w'"):  # d_model of x and of the weight
        blocks.layer_norm(torch.rand(2, 5, 8), torch.ones(7), torch.zeros(7), "LN", 1e-5)


def test_the_training_forward_is_checked():
    with pytest.raises(TypeCheckError, match="parameter 'tokens'"):  # k stacked models: [k, batch, seq]
        stacked_forward({}, None, torch.zeros(4, 9, dtype=torch.long))


def test_right_shapes_pass():
    assert weights.dla_share(torch.tensor([[1.0, -3.0]])).tolist() == [[0.25, 0.75]]
    x = torch.rand(2, 5, 8)
    assert torch.equal(blocks.layer_norm(x, None, None, "LNPre", 1e-5),
                       blocks.layer_norm(x, torch.ones(8), torch.zeros(8), "LN", 1e-5))

"""Weight evidence (anchor_interp.scores.weights): OV copying, QK positional preference, direct logit attribution."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_heads are redefined as test arguments)

from __future__ import annotations

import pytest
import torch
from fixtures_heads import gt_model, gt_tokens  # noqa: F401

from anchor_interp.scores import weights as W


def test_ov_copying_identifies_copying_heads_and_the_zero_decoy(gt_model):
    ov = W.ov_copying_score(gt_model)
    assert ov.shape == (1, 7)
    assert torch.allclose(ov[0, :6], torch.ones(6))  # every hand-set head but the decoy copies
    assert ov[0, 6] == 0  # the decoy's W_O is zero: nothing is copied


def test_ov_copying_of_a_permutation_is_zero(gt_model):
    import copy

    model = copy.deepcopy(gt_model)
    V = model.cfg.d_vocab
    perm = torch.roll(torch.arange(V), 1)
    with torch.no_grad():
        model.unembed.W_U[V + model.cfg.n_ctx + torch.arange(V)] = 0.0
        model.unembed.W_U[V + model.cfg.n_ctx + torch.arange(V), perm] = 4.0  # copy space -> next token id
    assert W.ov_copying_score(model)[0, :6].max() == 0


def test_ov_composition_needs_an_earlier_layer(gt_model):
    with pytest.raises(ValueError, match="earlier layer"):
        W.ov_composition_copying(gt_model, (0, 0), (0, 1))


def test_qk_positional_preference(gt_model):
    offset, score = W.qk_positional_preference(gt_model)
    assert int(offset[0, 0]) == -1 and score[0, 0] > 0.99  # prev
    assert int(offset[0, 1]) == -2 and score[0, 1] > 0.99  # offset2
    assert score[0, 5] < 1e-6  # uniform head: no positional preference
    assert score[0, 2] < 0.2  # the broadcast head attends by content, not by position


def test_direct_logit_attribution_finds_the_head_that_wrote_the_answer(gt_model, gt_tokens):
    # answer = the token before the last position: only the previous-token head moved it there
    answer = gt_tokens[:, -2]
    dla = W.direct_logit_attribution(gt_model, gt_tokens, answer)
    assert dla.shape == (1, 7)
    assert int(dla[0].argmax()) == 0
    assert dla[0, 6] == 0  # decoy writes nothing
    share = W.dla_share(dla)
    assert share.sum().item() == pytest.approx(1.0) and share.min() >= 0
    # exact check against the hand-set weights: the head copies with weight 1 and W_U gain 4;
    # logit[answer] - mean logit = 4 * (attn on answer - mean attn mass per token id)
    assert dla[0, 0].item() == pytest.approx(4.0 * (1 - 1 / gt_model.cfg.d_vocab), rel=1e-3)


def test_direct_logit_attribution_against_a_wrong_answer_is_antisymmetric(gt_model, gt_tokens):
    a, b = gt_tokens[:, -2], gt_tokens[:, -3]
    d1 = W.direct_logit_attribution(gt_model, gt_tokens, a, b)
    d2 = W.direct_logit_attribution(gt_model, gt_tokens, b, a)
    assert torch.allclose(d1, -d2, atol=1e-5)


def test_bad_inputs(gt_model, gt_tokens, no_shape_checks):
    with pytest.raises(ValueError, match="L3H0"):
        W.ov_circuit(gt_model, 3, 0)
    with pytest.raises(ValueError, match="token_ids"):
        W.ov_copying_score(gt_model, [5])
    with pytest.raises(ValueError, match="answer"):
        W.direct_logit_attribution(gt_model, gt_tokens, torch.zeros(3, dtype=torch.long))

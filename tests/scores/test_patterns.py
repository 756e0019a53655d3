"""Attention-pattern scores (anchor_interp.scores.patterns): units, hand-set heads, task rows, bad input."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_heads are redefined as test arguments)

from __future__ import annotations

import pytest
import torch
from fixtures_heads import gt_bidir_heads, gt_bidir_model, gt_model, gt_tokens  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor_interp.scores import patterns as P


def _uniform_patterns(seq: int, causal: bool, n_layers: int = 1, n_heads: int = 2, batch: int = 3):
    vis = P.visible_mask(seq, causal).float()
    rows = vis / vis.sum(-1, keepdim=True)
    return rows.expand(batch, n_layers, n_heads, seq, seq).clone()


def test_lift_unit_matches_docstring_example():
    # a row of 5 visible positions putting 0.32 on one: uniform gives 0.2, lift = 0.12 / 0.8 = 0.15
    pat = torch.zeros(9, 9)
    pat[4, :5] = torch.tensor([0.17, 0.17, 0.17, 0.32, 0.17])
    lift = P.normalised_mass(pat, causal=True)
    assert lift[4, 3].item() == pytest.approx(0.15, abs=1e-6)
    assert lift[4, 0].item() == pytest.approx((0.17 - 0.2) / 0.8, abs=1e-6)
    assert lift[0].abs().sum() == 0  # row 0 sees one position: no choice, no score


@pytest.mark.parametrize("causal", [True, False])
def test_uniform_patterns_score_zero_except_uniform(causal):
    s = P.pattern_scores(_uniform_patterns(9, causal), causal=causal)
    for name in ("shift", "broadcast", "sink", "self_attn"):
        assert getattr(s, name).abs().max().item() < 1e-6, name
    assert torch.allclose(s.uniform, torch.ones_like(s.uniform))


def test_hand_set_heads_get_their_template(gt_model, gt_tokens):
    s = P.pattern_scores(P.attention_patterns(gt_model, gt_tokens), causal=True)
    prev, off2, bc, sink, self_, uni, decoy = range(7)
    assert s.shift[0, prev] > 0.99 and int(s.shift_offset[0, prev]) == -1
    assert s.shift[0, off2] > 0.99 and int(s.shift_offset[0, off2]) == -2
    assert s.shift[0, decoy] > 0.99 and int(s.shift_offset[0, decoy]) == -1
    assert s.sink[0, sink] > 0.99 and int(s.sink_pos[0, sink]) == 0
    assert s.self_attn[0, self_] > 0.99
    assert s.uniform[0, uni] > 0.99
    assert s.broadcast[0, bc] > 0.6
    # each head's own template beats every other template
    assert s.broadcast[0, bc] > max(s.sink[0, bc], s.shift[0, bc], s.self_attn[0, bc])
    assert s.sink[0, sink] > max(s.shift[0, sink], s.broadcast[0, sink])
    assert s.broadcast[0, sink] < 0.01 and s.broadcast[0, prev] < 0.01


def test_bidirectional_shift_from_the_right(gt_bidir_model, gt_bidir_heads):
    from anchor_interp.models.planted import sample_tokens

    pats = P.attention_patterns(gt_bidir_model, sample_tokens(64, seed=5))
    s = P.pattern_scores(pats, causal=False)
    for i, h in enumerate(gt_bidir_heads):
        if h.kind in ("shift", "decoy"):
            assert int(s.shift_offset[0, i]) == h.offset and s.shift[0, i] > 0.99, h.name


def test_self_plus_previous_token_is_a_shift():
    # trained causal models: 0.6 on self, the rest on the previous token -> off-diagonal shift(-1) = 1
    seq = 9
    pat = torch.zeros(1, 1, 1, seq, seq)
    pat[..., 0, 0] = 1.0
    for r in range(1, seq):
        pat[..., r, r], pat[..., r, r - 1] = 0.6, 0.4
    s = P.pattern_scores(pat, causal=True)
    assert int(s.shift_offset[0, 0]) == -1 and s.shift[0, 0] > 0.99
    assert 0.3 < s.self_attn[0, 0] < 0.6  # the self part is reported separately


def test_task_rows_and_columns():
    seq, n = 9, 4
    anchor = torch.tensor([1, 2, 3, 4])
    key = anchor + 1
    pat = _uniform_patterns(seq, True, n_heads=2, batch=n)
    for b in range(n):
        a, k = int(anchor[b]), int(key[b])
        pat[b, 0, 0, k] = 0.0
        pat[b, 0, 0, k, a] = 1.0  # head 0: key row reads the anchor
        for r in range(k + 1, seq):  # head 1: every row after the key reads the key
            pat[b, 0, 1, r] = 0.0
            pat[b, 0, 1, r, k] = 1.0
    t = P.task_pattern_scores(pat, anchor, key, causal=True)
    assert t["key_row_to_anchor"][0, 0] == pytest.approx(1.0)
    assert t["task_shift_offset"][0, 0] == -1
    assert t["key_row_to_anchor"][0, 1] == pytest.approx(0.0, abs=1e-6)
    assert t["last_row_to_key"][0, 1] == pytest.approx(1.0)
    assert t["key_column"][0, 1] > 0.9
    assert t["task_broadcast"][0, 1] == pytest.approx(1.0)
    assert t["task_broadcast"][0, 0] < 0.3


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), causal=st.booleans(), seq=st.integers(2, 12), temp=st.floats(0.1, 10.0))
def test_scores_stay_in_unit_interval(seed, causal, seq, temp):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 2, 3, seq, seq, generator=g) * temp
    if causal:
        logits = logits.masked_fill(~P.visible_mask(seq, True), float("-inf"))
    s = P.pattern_scores(logits.softmax(-1), causal=causal)
    for name in ("shift", "broadcast", "sink", "self_attn", "uniform"):
        v = getattr(s, name)
        assert torch.isfinite(v).all() and v.min() >= 0 and v.max() <= 1, name
    anchor = torch.randint(0, seq - 1, (4,), generator=g)
    t = P.task_pattern_scores(logits.softmax(-1), anchor, anchor + 1, causal=causal)
    for name, v in t.items():
        if name != "task_shift_offset":
            assert torch.isfinite(v).all() and v.min() >= 0 and v.max() <= 1, name


def test_bad_inputs_raise_value_errors(gt_model, no_shape_checks):
    with pytest.raises(ValueError, match="patterns"):
        P.pattern_scores(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="tokens"):
        P.attention_patterns(gt_model, torch.full((2, 5), 999))
    with pytest.raises(ValueError, match="n_ctx"):
        P.attention_patterns(gt_model, torch.zeros(2, 50, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        P.attention_patterns(gt_model, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="anchor_pos"):
        P.task_pattern_scores(_uniform_patterns(9, True), torch.zeros(2, dtype=torch.long), torch.ones(3, dtype=torch.long))


def test_anchor_aligned_sums_put_a_shift_on_one_diagonal_and_a_broadcast_in_one_column():
    """A previous-token head lands on the sub-diagonal (k_off = q_off - 1) and a head reading anchor + 1
    lands in the column k_off = +1, whatever the anchor's position; counts are the rows reaching a cell."""
    from anchor_interp.scores.patterns import anchor_aligned_sums

    T = 6
    anchors = torch.tensor([1, 3, 3, -1])
    pats = torch.zeros(4, 1, 2, T, T)
    for b, a in enumerate(anchors.tolist()):
        pats[b, 0, 0, 0, 0] = 1.0
        pats[b, 0, 0, torch.arange(1, T), torch.arange(T - 1)] = 1.0  # previous token
        pats[b, 0, 1, :, max(a, 0) + 1] = 1.0  # the position after the anchor
    sums, counts = anchor_aligned_sums(pats, anchors)
    assert sums.shape == (1, 2, 2 * T - 1, 2 * T - 1) and counts.shape == (2 * T - 1, 2 * T - 1)
    mean = sums / counts.clamp_min(1)
    c = T - 1  # index of offset 0
    assert counts[c, c] == 3 and counts[c - 3, c - 3] == 2 and counts[c + 4, c + 4] == 1  # the -1 row left out
    for q in range(-3, T - 1):
        if q - 1 >= -3:
            assert mean[0, 0, c + q, c + q - 1] == 1.0
    assert float(mean[0, 1].sum()) == pytest.approx(float((counts[:, c + 1] > 0).sum()))  # nothing outside it
    assert torch.allclose(mean[0, 1, :, c + 1][counts[:, c + 1] > 0], torch.ones(int((counts[:, c + 1] > 0).sum()), dtype=mean.dtype))


@pytest.mark.parametrize("causal", [True, False])
def test_sums_over_chunks_give_the_whole_batch_scores(causal):
    """pattern_sums / task_pattern_sums added over row chunks score like one batch (streaming, #14 item 7)."""
    g = torch.Generator().manual_seed(0)
    B, T = 30, 7
    pats = torch.rand(B, 2, 3, T, T, generator=g) * 5
    if causal:
        pats = pats.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    pats = pats.softmax(-1)
    anchor, key = torch.randint(0, T - 1, (B,), generator=g), torch.randint(0, T - 1, (B,), generator=g)
    whole, task = P.pattern_scores(pats, causal), P.task_pattern_scores(pats, anchor, key, causal)
    sums = tsums = None
    for sl in (slice(0, 11), slice(11, 23), slice(23, B)):
        sums = P.add_sums(sums, P.pattern_sums(pats[sl], causal))
        tsums = P.add_sums(tsums, P.task_pattern_sums(pats[sl], anchor[sl], key[sl], causal))
    parts, tparts = P.scores_from_sums(sums, causal), P.task_scores_from_sums(tsums)
    for name in ("shift", "broadcast", "sink", "self_attn", "uniform", "shift_by_offset"):
        assert torch.allclose(getattr(parts, name), getattr(whole, name), atol=1e-6), name
    assert torch.equal(parts.shift_offset, whole.shift_offset) and torch.equal(parts.sink_pos, whole.sink_pos)
    assert parts.offsets == whole.offsets and parts.column is None and whole.column.shape == (B, 2, 3, T)
    assert set(tparts) == set(task)
    for name in task:
        assert torch.allclose(tparts[name], task[name], atol=1e-6), name

"""The labeller on the planted hard cases (issue 12, item 8): hand-set models whose head roles are known.

Each case is labelled with ``analyse_heads(model, task.sample(256, split="test", seed=S), task, seed=S)`` on
sample seeds that were not looked at while the builders were written (those used seeds 0, 11 and 23).
"""

from __future__ import annotations

import pytest
import torch

from anchor_interp.labels import analyse_heads
from anchor_interp.models import planted as gt
from anchor_interp.tasks import make_task

SEEDS = [1234, 4321]


def _triples(records):
    return tuple((r.label, r.offset, r.kind) for r in records)


def _passing(rec) -> dict[str, dict]:
    return {r["name"]: r for r in rec.roles if r["passes"]}


def _best_route(role: dict) -> str:
    return max(role["routes"], key=role["routes"].get)


@pytest.fixture(scope="module")
def identity():
    return make_task("identity")


@pytest.fixture(scope="module")
def composition():
    return make_task("composition", pairs=gt.TWO_OFFSET_PAIRS, masked=())


def _analyse(model, task, seed):
    analysis = analyse_heads(model, task.sample(256, split="test", seed=seed), task, seed=seed)
    assert analysis.baseline["accuracy"] == 1.0  # the hand-set model solves the task exactly
    return analysis


@pytest.mark.parametrize("seed", SEEDS)
def test_key_copy_is_neither_copy_next_to_the_flag_shift(identity, seed):
    model = gt.make_key_copy_decoy_model(identity)
    recs = _analyse(model, identity, seed).records
    assert _triples(recs) == gt.KEY_COPY_EXPECTED
    shift, copy = recs[0], recs[1]
    assert _best_route(_passing(shift)["shift(-1)"]) == "L1.k"  # the flag, through layer 1's keys
    main = _passing(copy)["copy"]
    assert main["counterfactual"] == "key_value" and main["effect"] > 0.8
    assert _best_route(main) == "L1.v"  # the key's value, through layer 1's values
    assert not any(r["role"] == "shift" for r in _passing(copy).values())
    assert copy.scores["key_row_to_anchor"] > 0.5  # its off-diagonal mass looks like a shift(-1)
    assert not copy.borderline and not shift.borderline


@pytest.mark.parametrize("seed", SEEDS)
def test_shift_from_two_offsets(composition, seed):
    model = gt.make_two_offset_shift_model(composition)
    recs = _analyse(model, composition, seed).records
    assert _triples(recs) == gt.TWO_OFFSET_EXPECTED == gt.two_offset_expected(composition)
    passing = _passing(recs[0])
    assert {"shift(-1)", "shift(-2)"} <= set(passing)
    for name in ("shift(-1)", "shift(-2)"):
        assert passing[name]["effect"] > 0.2 and _best_route(passing[name]) == "L1.k"
    assert not recs[0].borderline
    # the head reads both anchors (planted: 0.5 each into the key row), and is sure of it
    assert set(recs[0].reads.split("+")) == {"anchor", "anchor2"} and recs[0].reads_borderline is False
    assert min(recs[0].reads_effects.values()) > 0.2
    assert recs[1].reads is None  # an all-zero head has no role, so no reading is claimed


@pytest.mark.parametrize("seed", SEEDS)
def test_near_tie_directions_follow_the_causal_test(identity, seed):
    model = gt.make_bidirectional_tie_model(identity)
    recs = _analyse(model, identity, seed).records
    assert _triples(recs) == gt.TIE_EXPECTED
    head = recs[0]
    # the pattern prefers the unused direction (key row -> anchor, -1) by a hair
    assert head.scores["anchor_row_to_key"] < head.scores["key_row_to_anchor"] < head.scores["anchor_row_to_key"] + 0.1
    main = _passing(head)["shift(+1)"]
    assert main["effect"] > 0.8 and _best_route(main) == "L1.v"
    assert not any(r["offset"] == -1 for r in _passing(head).values())
    assert not head.borderline


@pytest.mark.parametrize("seed", SEEDS)
def test_soft_shift_with_a_strong_route_and_an_unused_previous_token_head(identity, seed):
    from anchor_interp.models.adapter import attn_weights
    from anchor_interp.scores.patterns import attention_patterns

    model = gt.make_soft_shift_model(identity)
    batch = identity.sample(256, split="test", seed=seed)
    recs = _analyse(model, identity, seed).records
    assert _triples(recs) == gt.SOFT_SHIFT_EXPECTED
    soft, unused = recs[0], recs[1]
    # case 4: the key row puts ~0.3 on the anchor (the pattern score is below the 0.2 pattern threshold) ...
    pats = attention_patterns(model, batch.tokens)  # (B, L, H, T, T)
    rows = torch.arange(len(batch))
    on_anchor = pats[rows, 0, 0, batch.key_pos, batch.anchor_pos]
    assert float(on_anchor.mean()) == pytest.approx(0.3, abs=0.02)
    assert soft.scores["key_row_to_anchor"] < 0.2
    # ... but its output is what layer 1's keys use
    main = _passing(soft)["shift(-1)"]
    assert main["effect"] > 0.8 and _best_route(main) == "L1.k" and main["routes"]["L1.k"] > 0.8
    assert not soft.borderline
    # case 5: a crisp previous-token head that writes (W_O != 0) into a space nothing reads
    assert float(pats[rows, 0, 1, batch.key_pos, batch.anchor_pos].mean()) > 0.99
    assert unused.scores["key_row_to_anchor"] > 0.9
    assert float(attn_weights(model, 0)["W_O"][1].detach().abs().sum()) > 0
    assert not _passing(unused) and unused.causal_effect < 0.01


def test_the_two_offset_builder_solves_the_full_composition_task():
    # the test above uses two pair classes for speed; the builder takes any composition-type task
    task = make_task("composition")
    model = gt.make_two_offset_shift_model(task)
    assert model.cfg.n_heads == 5 and len(gt.two_offset_expected(task)) == 10
    batch = task.sample(256, split="test", seed=SEEDS[0])
    unmasked = ~torch.tensor([task.groups[g].masked for g in batch.group.tolist()])
    with torch.no_grad():
        pred = model(batch.tokens)[:, -1].argmax(-1)
    assert bool((pred == batch.targets)[unmasked].all())


def test_builders_reject_tasks_of_another_shape(identity):
    for build in (gt.make_key_copy_decoy_model, gt.make_bidirectional_tie_model, gt.make_soft_shift_model):
        with pytest.raises(ValueError, match="identity-type"):
            build(make_task("identity_key_before"))
    with pytest.raises(ValueError, match="composition-type"):
        gt.make_two_offset_shift_model(identity)
    with pytest.raises(ValueError, match="soft"):
        gt.make_soft_shift_model(identity, soft=0.99)

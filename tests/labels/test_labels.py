"""label_heads / analyse_heads (anchor_interp.labels): ground truth, random models, the zoo models."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_heads are redefined as test arguments)

from __future__ import annotations

import copy
import json

import pytest
import torch
from fixtures_heads import (  # noqa: F401
    default_analysis,
    default_batch,
    gt_bidir_heads,
    gt_bidir_model,
    gt_model,
    gt_tokens,
    mechanism_analysis,
)

from anchor_interp.labels import HeadGroup, HeadRecord, Thresholds, analyse_heads, label_heads
from anchor_interp.models import planted as gt


def _triples(records):
    return [(r.label, r.offset, r.kind) for r in records]


# Thresholds were tuned on token seeds 0-2; these seeds were not looked at while tuning.
@pytest.mark.parametrize("seed", [101, 202])
def test_every_hand_set_head_is_labelled_right(gt_model, seed):
    records = label_heads(gt_model, gt.sample_tokens(256, seed=seed))
    assert _triples(records) == gt.expected_labels()
    assert [r.name for r in records] == [f"L0H{h}" for h in range(7)]
    for r in records:
        assert 0.0 <= r.confidence <= 1.0 and r.counterfactual == "ablation_kl"
        assert all(0.0 <= v <= 1.0 for v in r.scores.values()), r.scores


def test_bidirectional_hand_set_heads(gt_bidir_model, gt_bidir_heads):
    records = label_heads(gt_bidir_model, gt.sample_tokens(256, seed=303))
    assert _triples(records) == gt.expected_labels(gt_bidir_heads)


def test_decoy_is_reported_as_pattern_without_effect(gt_model, gt_tokens):
    decoy = label_heads(gt_model, gt_tokens)[6]
    assert decoy.label == "neither" and decoy.kind == "inert"
    assert decoy.scores["shift"] > 0.99 and decoy.causal_effect == 0.0
    assert any("looks like shift(-1)" in n and "changes little" in n for n in decoy.notes)
    assert decoy.confidence > 0.9


def test_same_seed_same_records(gt_model, gt_tokens):
    a = [r.to_dict() for r in label_heads(gt_model, gt_tokens, seed=1)]
    b = [r.to_dict() for r in label_heads(gt_model, gt_tokens, seed=1)]
    assert a == b


@pytest.mark.parametrize("preset,seed", [("small", 10), ("small", 11), ("mechanism", 12)])
def test_random_models_are_all_neither(identity_task, preset, seed):
    from anchor_interp.models import make_model

    model = make_model(preset, identity_task, seed=seed)
    batch = identity_task.sample(256, split="test", seed=seed)
    with_task = label_heads(model, batch, identity_task, seed=seed)
    without = label_heads(model, batch.tokens, seed=seed)
    for r in with_task + without:
        assert r.label == "neither", (r.name, r.label, r.scores)
    assert any("barely separates" in n for n in with_task[0].notes)


def test_default_model_shift_copy_and_broadcast(default_analysis):
    """The shipped model, against what was measured by hand (shared/spec/head_roles.md): one or two
    layer-0 heads carry the anchor flag (offset -1) into layer 1's keys; the others are key copies whose
    information comes from their own position and goes into layer 1's values; every layer-1 head reads
    the key at the last row."""
    by = {r.name: r for r in default_analysis.records}
    assert all(by[f"L1H{h}"].label == "broadcast" for h in range(4))
    shifts = [r for r in default_analysis.records if r.label == "shift"]
    copies = [r for r in default_analysis.records if r.kind == "copy"]
    assert {r.layer for r in shifts} == {0} and {r.layer for r in copies} == {0}
    assert len(shifts) >= 1 and len(shifts) + len(copies) == 4
    for r in shifts:
        main = next(x for x in r.roles if x["passes"])
        assert r.offset == -1 and main["counterfactual"] == "anchor_position"
        assert max(main["routes"], key=main["routes"].get) == "L1.k"  # the flag is read through keys
        assert r.causal_effect == main["effect"]  # the shift's own effect, not the whole head's
    for r in copies:
        main = next(x for x in r.roles if x["passes"])
        assert r.label == "neither" and main["role"] == "copy" and main["offset"] == 0
        assert max(main["routes"], key=main["routes"].get) == "L1.v"  # the key's value, through values
        # with the anchor moved and the new key's token unchanged, a key copy does (almost) nothing
        assert r.scores["patch_anchor_position"] < 0.05
    for r in default_analysis.records:
        assert not r.borderline and r.stability == 1.0
    groups = {g.name: g for g in default_analysis.groups}
    assert groups["broadcast_L1"].joint_effect >= 0.9
    assert default_analysis.circuit[:len(shifts)] == [r.name for r in shifts]


def test_mechanism_model_has_the_papers_two_operations(mechanism_analysis):
    """Layer 0's anchor row reads the key at p + 1 (the paper's shift, into layer 1's values) and its last
    row reads the anchor (through layer 1's queries); the larger effect names the label. Layer 1
    broadcasts the anchor slot to the last row."""
    l0, l1 = mechanism_analysis.records
    roles0 = {r["name"]: r for r in l0.roles if r["passes"]}
    assert "shift(+1)" in roles0 and roles0["shift(+1)"]["counterfactual"] == "key_value"
    assert max(roles0["shift(+1)"]["routes"], key=roles0["shift(+1)"]["routes"].get) == "L1.v"
    assert l0.label == max(roles0.values(), key=lambda r: r["effect"])["role"]
    assert l1.label == "broadcast" and l1.roles[0]["slot"] in ("anchor", "key")


def test_a_head_whose_output_is_removed_becomes_inert(default_model, default_batch):
    model, task = default_model
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.blocks[1].attn.W_O[2].zero_()
    rec = label_heads(model, default_batch, task)[6]
    assert rec.name == "L1H2" and rec.label == "neither" and rec.kind == "inert"
    assert rec.scores["broadcast_pattern"] > 0.4
    assert any("looks like broadcast" in n for n in rec.notes)


def test_records_and_groups_round_trip_through_json(default_analysis):
    d = json.loads(json.dumps(default_analysis.to_dict(), allow_nan=False))
    back = [HeadRecord.from_dict(h) for h in d["heads"]]
    assert [r.to_dict() for r in back] == d["heads"]
    groups = [HeadGroup.from_dict(g) for g in d["groups"]]
    assert [g.to_dict() for g in groups] == d["groups"]
    for h in d["heads"]:
        assert set(h) >= {"layer", "head", "name", "label", "offset", "kind", "scores", "causal_effect",
                          "counterfactual", "confidence", "group", "notes"}


def test_tensor_tokens_with_a_task_sample_a_batch(default_model):
    model, task = default_model
    recs = label_heads(model, torch.zeros(32, 9, dtype=torch.long), task, seed=3)
    assert any("sampled from task" in n for n in recs[0].notes)


def test_too_few_rows_is_a_clear_error(default_model, gt_model, gt_tokens):
    from anchor_interp.labels import MIN_ROWS

    model, task = default_model
    with pytest.raises(ValueError, match=f"labels need at least {MIN_ROWS}"):
        label_heads(model, task.sample(MIN_ROWS - 1, split="test", seed=0), task)
    with pytest.raises(ValueError, match=f"labels need at least {MIN_ROWS}"):
        label_heads(gt_model, gt_tokens[:2])


def test_bad_inputs(gt_model, gt_tokens, no_shape_checks):
    with pytest.raises(ValueError, match="thresholds.pattern"):
        Thresholds(pattern=1.5)
    with pytest.raises(ValueError, match="thresholds"):
        analyse_heads(gt_model, gt_tokens, thresholds={"pattern": 0.2})
    with pytest.raises(ValueError, match="tokens"):
        label_heads(gt_model, gt_tokens.float())
    with pytest.raises(ValueError, match="method"):
        label_heads(gt_model, gt_tokens, method="median")
    with pytest.raises(ValueError, match="seed"):
        label_heads(gt_model, gt_tokens, seed="0")


def test_hand_set_identity_circuit_with_the_task(identity_task):
    # counterfactual patching path: shift found by anchor_move, broadcast by key_swap, distractors neither
    from anchor_interp.scores.ablation import circuit_check

    model = gt.make_identity_circuit_model(identity_task)
    batch = identity_task.sample(128, split="test", seed=404)
    analysis = analyse_heads(model, batch, identity_task, seed=404)
    assert analysis.baseline["accuracy"] == 1.0
    assert tuple(_triples(analysis.records)) == gt.CIRCUIT_EXPECTED
    shift, broadcast = analysis.records[0], analysis.records[3]
    assert shift.counterfactual == "anchor_position" and shift.causal_effect > 0.8
    assert shift.scores["patch_key_value"] < 0.05  # the shift head moves no key value
    assert max(shift.roles[0]["routes"], key=shift.roles[0]["routes"].get) == "L1.k"  # the flag, through keys
    assert broadcast.counterfactual == "key_value" and broadcast.causal_effect > 0.9
    assert broadcast.roles[0]["part"] == "last:key"
    labelled = [(r.layer, r.head) for r in analysis.records if r.label != "neither"]
    assert circuit_check(model, batch.tokens, batch.targets, labelled).passes


def test_identity_circuit_rejects_other_tasks():
    from anchor_interp.tasks import make_task

    with pytest.raises(ValueError, match="identity-type"):
        gt.make_identity_circuit_model(make_task("identity_key_before"))


def test_broadcast_split_over_two_heads_is_named_as_a_group(identity_task):
    # either broadcast copy alone keeps accuracy (ablation drop 0), together they carry it
    model = gt.make_identity_circuit_model(identity_task, split_broadcast=True)
    analysis = analyse_heads(model, identity_task.sample(128, split="test", seed=405), identity_task, seed=405)
    assert tuple(_triples(analysis.records)) == gt.CIRCUIT_SPLIT_EXPECTED
    (group,) = [g for g in analysis.groups if g.label == "broadcast"]
    assert group.heads == ["L1H0", "L1H1"] and group.needed_together and group.joint_effect > 0.9
    assert max(group.individual_effects.values()) < 0.05
    for r in analysis.records[3:5]:
        assert r.group == "broadcast_L1" and r.causal_effect == pytest.approx(0.5, abs=0.05)
        assert any("together" in n for n in r.notes)


def _ev(*roles, pattern=(0.0, 0.0), self_score=0.1):
    from anchor_interp.labels import HeadEvidence

    scores = {"shift": pattern[0], "broadcast": pattern[1], "sink": 0.05, "self": self_score, "uniform": 0.5}
    return HeadEvidence(layer=0, head=1, scores=scores, pattern={"shift": pattern[0], "broadcast": pattern[1]},
                        effect={}, offset=-1, generic_offset=-1, qk_offset=-1, has_task=True, roles=list(roles))


def _role(role, effect, *, offset=None, slot=None, route=0.3, ci=0.02, cf="anchor_position", recv="L1.k"):
    from anchor_interp.labels import RoleEvidence

    part = f"offset{offset:+d}" if offset is not None else f"last:{slot}"
    return RoleEvidence(role, offset, slot, cf, part, effect, effect - ci, effect + ci, {recv: route, "logits": 0.0})


def test_rule_copy_head_is_neither_copy():
    from anchor_interp.labels import DEFAULT_THRESHOLDS, decide

    rec = decide(_ev(_role("copy", 0.27, offset=0, cf="key_value", recv="L1.v"), self_score=0.8), DEFAULT_THRESHOLDS)
    assert (rec.label, rec.offset, rec.kind) == ("neither", None, "copy") and rec.causal_effect == 0.27
    assert rec.counterfactual == "key_value" and not rec.borderline


def test_rule_shift_needs_a_route():
    from anchor_interp.labels import DEFAULT_THRESHOLDS, decide

    used = decide(_ev(_role("shift", 0.4, offset=-1)), DEFAULT_THRESHOLDS)
    assert (used.label, used.offset) == ("shift", -1) and used.roles[0]["passes"]
    unused = decide(_ev(_role("shift", 0.4, offset=-1, route=0.01), pattern=(0.6, 0.0)), DEFAULT_THRESHOLDS)
    assert (unused.label, unused.kind) == ("neither", "inert")
    assert any("no later component uses it" in n for n in unused.notes)


def test_rule_label_is_the_largest_role_and_lists_the_others():
    from anchor_interp.labels import DEFAULT_THRESHOLDS, decide

    rec = decide(_ev(_role("broadcast", 0.76, slot="anchor", recv="L1.q"),
                     _role("shift", 0.36, offset=1, cf="key_value", recv="L1.v")), DEFAULT_THRESHOLDS)
    assert rec.label == "broadcast" and rec.causal_effect == 0.76
    assert [r["name"] for r in rec.roles if r["passes"]] == ["broadcast(anchor)", "shift(+1)"]


def test_rule_a_passing_operation_outranks_a_larger_copy():
    """Precedence (docs/concepts.md, rule 2): a head that shifts and also copies its own key is a shift head."""
    from anchor_interp.labels import DEFAULT_THRESHOLDS, decide

    rec = decide(_ev(_role("copy", 0.30, offset=0, cf="key_value", recv="L1.v"), _role("shift", 0.2, offset=-1)),
                 DEFAULT_THRESHOLDS)
    assert (rec.label, rec.offset, rec.kind) == ("shift", -1, None) and rec.causal_effect == 0.2
    assert not rec.borderline and any(n.startswith("also copy 0.30") for n in rec.notes)


@pytest.mark.parametrize("roles,borderline", [
    ([("shift", 0.11, -1)], True),                  # within the margin of the effect threshold
    ([("shift", 0.30, -1)], False),
    ([("shift", 0.30, -1), ("shift", 0.29, 1)], False),  # two offsets both pass: shift either way, both listed
    ([("shift", 0.30, -1), ("shift", 0.12, -2)], False),  # a weak second offset does not change the label
    ([("shift", 0.30, -1), ("broadcast", 0.29, None)], True),  # shift or broadcast: a near tie
    ([("copy", 0.30, 0), ("shift", 0.09, -1)], True),  # a shift just under the threshold would take the label
    ([("copy", 0.30, 0), ("shift", 0.05, -1)], False),
])
def test_rule_borderline_marks_threshold_edges_and_ties(roles, borderline):
    from anchor_interp.labels import DEFAULT_THRESHOLDS, decide

    rec = decide(_ev(*[_role(r, e, offset=o, slot=None if o is not None else "key") for r, e, o in roles]),
                 DEFAULT_THRESHOLDS)
    assert rec.borderline is borderline


def test_rule_borderline_when_a_shift_barely_matters_away_from_the_last_row():
    import dataclasses

    from anchor_interp.labels import DEFAULT_THRESHOLDS, decide

    role = _role("shift", 0.40, offset=-3)
    assert not decide(_ev(dataclasses.replace(role, away=0.20)), DEFAULT_THRESHOLDS).borderline
    assert decide(_ev(dataclasses.replace(role, away=0.11)), DEFAULT_THRESHOLDS).borderline


@pytest.mark.parametrize("effects,margins,expected", [
    ({"slot:anchor": 0.16, "slot:anchor2": 0.30}, {}, ("anchor2+anchor", False)),  # both, largest first
    ({"slot:anchor": 0.16, "slot:anchor2": 0.05}, {}, ("anchor", False)),
    ({"slot:anchor": 0.16, "slot:anchor2": 0.09}, {}, ("anchor", True)),  # anchor2 within 0.02 of 0.1
    ({"slot:anchor": 0.16, "slot:anchor2": 0.07}, {"slot:anchor2": 0.04}, ("anchor", True)),  # a wide interval
    ({"slot:anchor": 0.13, "slot:anchor2": 0.02}, {"slot:anchor": 0.04}, ("anchor", True)),
    ({"slot:anchor": 0.03, "slot:anchor2": 0.02}, {}, ("-", False)),
])
def test_which_anchors_a_head_reads_and_when_that_is_borderline(effects, margins, expected):
    """Multi-anchor tasks: the anchors whose slot effect reaches the threshold; borderline when one of the
    two lies within its margin (max(0.02, half its 95% interval)) of the threshold."""
    from anchor_interp.labels.roles import anchor_reads

    reads, each, unsure = anchor_reads(effects, margins, 0.1)
    assert (reads, unsure) == expected
    assert each == {"anchor": effects["slot:anchor"], "anchor2": effects["slot:anchor2"]}
    assert anchor_reads({"slot:anchor": 0.5, "slot:key": 0.2}, {}, 0.1) == (None, None, None)  # one anchor


def test_the_record_carries_which_anchors_the_head_reads_and_round_trips():
    import dataclasses

    from anchor_interp.labels import DEFAULT_THRESHOLDS, decide

    role = dataclasses.replace(_role("shift", 0.3, offset=-1), reads="anchor", reads_effects={"anchor": 0.3,
                               "anchor2": 0.11}, reads_borderline=True)
    rec = decide(_ev(role), DEFAULT_THRESHOLDS)
    assert (rec.reads, rec.reads_effects, rec.reads_borderline) == ("anchor", {"anchor": 0.3, "anchor2": 0.11}, True)
    assert not rec.borderline  # the label itself is sure; which anchors it reads is not
    d = json.loads(json.dumps(rec.to_dict()))
    assert "reads_effects" not in d["roles"][0] and d["reads_effects"] == {"anchor": 0.3, "anchor2": 0.11}
    back = HeadRecord.from_dict(d)
    assert (back.reads, back.reads_effects, back.reads_borderline) == ("anchor", {"anchor": 0.3, "anchor2": 0.11}, True)
    old = {k: v for k, v in d.items() if k not in ("reads_effects", "reads_borderline")}  # a result from before
    assert HeadRecord.from_dict(old).reads_borderline is None


def test_shift_candidates_are_listed_when_their_away_terms_reach_the_threshold_or_nearly():
    """A shift offset is a candidate when its terms off the last row reach the threshold, or its part does
    and they reach half of it (a near miss, which the rule then rejects by the away test); an offset that
    matters only at the last row (a broadcast seen through one offset) or not at all is not."""
    from types import SimpleNamespace

    from anchor_interp.labels.roles import _candidates
    from anchor_interp.labels.routes import PairedRun

    run = PairedRun("anchor_position", SimpleNamespace(tokens=torch.zeros(1, 8)), None, 0, torch.zeros(1),
                    torch.zeros(1), {}, {}, {}, {}, {}, {})
    got = _candidates({"offset-3": 0.41, "rows-3": 0.19, "offset-5": 0.12, "rows-5": 0.01, "offset-2": 0.08,
                       "rows-2": 0.07, "offset-4": 0.3, "offset-1": 0.12, "rows-1": 0.08}, run, 0.1, {})
    assert got == [("shift", -3, None, "offset-3"), ("shift", -1, None, "offset-1")]


def test_rule_a_shift_passes_only_with_the_effect_threshold_away_from_the_last_row():
    """The oracle's @nonlast test: a shift whose effect sits at the last row (a slot read seen through one
    offset) is listed, fails with a note, and is not the label; within its away margin it is borderline."""
    import dataclasses

    from anchor_interp.labels import DEFAULT_THRESHOLDS, decide

    copy = _role("copy", 0.30, offset=0, cf="key_value", recv="L1.v")
    shift = _role("shift", 0.40, offset=-3)
    rec = decide(_ev(copy, dataclasses.replace(shift, away=0.01, away_low=0.0, away_high=0.02)), DEFAULT_THRESHOLDS)
    assert (rec.label, rec.kind, rec.borderline) == ("neither", "copy", False)
    assert [r["passes"] for r in rec.roles] == [True, False] and any("only 0.01 of it away from the last row" in n
                                                                     for n in rec.notes)
    near = dataclasses.replace(shift, away=0.09, away_low=0.06, away_high=0.12)  # away margin 0.03
    rec = decide(_ev(copy, near), DEFAULT_THRESHOLDS)
    assert (rec.label, rec.borderline, rec.roles[1]["borderline"]) == ("neither", True, True)
    rec = decide(_ev(dataclasses.replace(shift, away=0.125, away_low=0.095, away_high=0.155)), DEFAULT_THRESHOLDS)
    assert (rec.label, rec.offset, rec.borderline) == ("shift", -3, True)  # passes, but within its away margin


def test_rule_a_failing_operation_makes_a_copy_borderline_only_if_it_fails_every_test_narrowly():
    """A failing shift could take the label from a copy only if every test it fails flips: an effect near
    the threshold does not make the copy borderline when the shift's away part is far below it."""
    import dataclasses

    from anchor_interp.labels import DEFAULT_THRESHOLDS, decide

    copy = _role("copy", 0.30, offset=0, cf="key_value", recv="L1.v")
    shift = _role("shift", 0.11, offset=-1)  # effect 0.11: passes, within its margin of 0.1
    far = dataclasses.replace(shift, away=0.04, away_low=0.03, away_high=0.05)
    near = dataclasses.replace(shift, away=0.09, away_low=0.08, away_high=0.10)
    assert not decide(_ev(copy, far), DEFAULT_THRESHOLDS).borderline
    assert decide(_ev(copy, near), DEFAULT_THRESHOLDS).borderline
    unused = dataclasses.replace(near, effect=0.09, routes={"L1.k": 0.0})  # near on effect and away; unused
    assert not decide(_ev(copy, unused), DEFAULT_THRESHOLDS).borderline


def test_a_copy_candidate_is_the_oracles_copy_test():
    """The own-position part is a copy when it reaches the threshold, wherever in the rows it sits (the
    oracle's copy test has no away condition), and is spread over the anchor positions (concentrated in
    one group it is a broadcast seen through offset 0 at the last row); below the threshold it is not."""
    from types import SimpleNamespace

    from anchor_interp.labels.roles import _candidates
    from anchor_interp.labels.routes import PairedRun

    run = PairedRun("key_value", SimpleNamespace(tokens=torch.zeros(1, 8)), None, 0, torch.zeros(1),
                    torch.zeros(1), {}, {}, {}, {}, {}, {})
    assert _candidates({"offset+0": 0.14}, run, 0.1, {"offset+0": 0.2}) == [("copy", 0, None, "offset+0")]
    assert _candidates({"offset+0": 0.14}, run, 0.1, {"offset+0": None}) == [("copy", 0, None, "offset+0")]
    assert _candidates({"offset+0": 0.14}, run, 0.1, {"offset+0": 0.7}) == []
    assert _candidates({"offset+0": 0.09}, run, 0.1, {"offset+0": 0.2}) == []


def _slot_run(anchor_pos: list[int], corrupt_ld: float = 0.0):
    from types import SimpleNamespace

    from anchor_interp.labels.routes import PairedRun

    pos = torch.tensor(anchor_pos)
    B = len(anchor_pos)
    return PairedRun("key_value", SimpleNamespace(tokens=torch.zeros(B, 10)), None, 0, torch.ones(B),
                     torch.full((B,), corrupt_ld), {}, {}, {}, {}, {"anchor": (pos, pos)}, {})


def test_a_broadcast_candidate_is_spread_over_anchor_positions_even_when_an_offset_is_larger():
    """The slot read at the last row is a broadcast when no anchor-position group carries more than half of
    it (the oracle's spread test), even if a fixed offset carries more (the mechanism model's layer-1 head
    reads a fixed offset as well on some batches); a read concentrated in one group is not."""
    from anchor_interp.labels.roles import _candidates, _largest_group_share

    run = _slot_run([1, 2, 3, 4] * 4)
    spread = torch.tensor([0.5] * 16)  # every row restored half-way
    assert _largest_group_share(spread, run) == pytest.approx(0.25)
    one_group = torch.tensor([1.0, 0.0, 0.0, 0.0] * 4)  # only rows whose anchor sits at position 1
    assert _largest_group_share(one_group, run) == pytest.approx(1.0)
    effects = {"last:anchor": 0.37, "offset-2": 0.39, "rows-2": 0.02}  # the offset is listed; it fails away

    def broadcasts(shares):
        return [c for c in _candidates(effects, run, 0.1, shares) if c[0] == "broadcast"]

    assert broadcasts({"last:anchor": 0.25}) == [("broadcast", None, "anchor", "last:anchor")]
    assert broadcasts({"last:anchor": 1.0}) == []
    assert _largest_group_share(spread, _slot_run([1, 2] * 8)) is None  # two positions: not tested
    assert broadcasts({"last:anchor": None}) == [("broadcast", None, "anchor", "last:anchor")]


def test_folds_confirm_a_label_by_its_role_not_by_their_largest_offset():
    from anchor_interp.labels.stability import FoldLabel, confirms

    fold = FoldLabel("shift", -2, None, frozenset({"shift(-2)", "shift(-1)", "copy"}))
    assert confirms(fold, "shift", -1, None)  # shift(-1) passes on the fold, though -2 is larger there
    assert not confirms(FoldLabel("shift", -2, None, frozenset({"shift(-2)"})), "shift", -1, None)
    assert not confirms(FoldLabel("neither", None, "copy", frozenset({"copy"})), "shift", -1, None)
    assert confirms(FoldLabel("neither", None, "copy", frozenset({"copy"})), "neither", None, "copy")


def test_a_fold_that_does_not_confirm_is_rechecked_on_independent_batches(default_model, monkeypatch):
    """A fold of a fifth of the rows can swap two clear roles by chance: when one does not confirm a label,
    stability and borderline come from five fresh held-out batches of the full size (here they confirm every
    default-model label); with recheck=False the fold decides and the head is borderline."""
    import anchor_interp.labels as labels
    from anchor_interp.labels.stability import FoldLabel

    model, task = default_model
    batch = task.sample(100, split="test", seed=3)
    real = labels.fold_labels
    calls = []

    def one_fold_says_copy(*args, **kwargs):
        out = real(*args, **kwargs)
        out[(1, 0)][2] = FoldLabel("neither", None, "copy", frozenset({"copy"}))
        return out

    def counted(model, task, n_rows, *args, **kwargs):
        calls.append(n_rows)
        return real_batches(model, task, n_rows, *args, **kwargs)

    real_batches = labels.batch_labels
    monkeypatch.setattr(labels, "fold_labels", one_fold_says_copy)
    monkeypatch.setattr(labels, "batch_labels", counted)
    kept = labels.analyse_heads(model, batch, task, seed=0, recheck=False)
    assert calls == [] and kept.records[4].borderline and kept.records[4].stability == 0.8
    rechecked = labels.analyse_heads(model, batch, task, seed=0)
    assert calls == [100]
    l1h0 = rechecked.records[4]
    assert l1h0.name == "L1H0" and l1h0.label == "broadcast" and not l1h0.borderline and l1h0.stability == 1.0
    assert any("independent held-out batches of 100 rows" in n for n in l1h0.notes)


def test_roles_measured_for_chosen_heads_equal_the_full_measurement(default_model):
    """The recheck measures only the heads it rechecks: their roles are the same numbers as in a full pass."""
    from anchor_interp.labels import DEFAULT_THRESHOLDS
    from anchor_interp.labels.roles import measure_roles

    model, task = default_model
    batch = task.sample(64, split="test", seed=11)
    full = measure_roles(model, batch, task, thresholds=DEFAULT_THRESHOLDS, seed=2, causal=True)
    some = measure_roles(model, batch, task, thresholds=DEFAULT_THRESHOLDS, seed=2, causal=True, heads={(0, 1), (1, 2)})
    for key in full.roles:
        if key in ((0, 1), (1, 2)):
            assert [r.to_dict() for r in some.roles[key]] == [r.to_dict() for r in full.roles[key]] != []
        else:
            assert some.roles[key] == []
    for kind, effect in full.head_effect.items():
        assert effect[0, 1] == some.head_effect[kind][0, 1] and some.head_effect[kind][0, 0] == 0


def test_rule_no_role_falls_back_to_pattern_kinds():
    from anchor_interp.labels import DEFAULT_THRESHOLDS, decide

    assert decide(_ev(_role("shift", 0.03, offset=-1)), DEFAULT_THRESHOLDS).kind == "other"
    assert decide(_ev(pattern=(0.9, 0.0)), DEFAULT_THRESHOLDS).kind == "inert"
    assert decide(_ev(self_score=0.9), DEFAULT_THRESHOLDS).kind == "self"


def test_route_evidence_engine_and_transformer_lens_agree(default_model, default_batch, monkeypatch):
    """The batched engine and plain TransformerLens hooks (the fallback for models the engine does not
    compute) give the same part and route values."""
    import anchor_interp.labels.routes as R

    model, task = default_model
    pair = task.counterfactual_pair(default_batch.select(list(range(128))), "anchor_position", seed=1)
    run = R.paired_run(model, pair.clean, pair.corrupt, "anchor_position")
    masks = R.part_masks(run, causal=True)
    parts = [(h, masks[p]) for h in range(4) for p in ("head", "offset-1", "offset+0", "last:key")]
    fast = R.source_values(model, run, 0, parts), R.route_values(model, run, 0, 3, masks["offset-1"])
    monkeypatch.setattr(R, "_engine", lambda model: None)
    slow = R.source_values(model, run, 0, parts), R.route_values(model, run, 0, 3, masks["offset-1"])
    assert torch.allclose(fast[0], slow[0], atol=1e-4)
    assert fast[1].keys() == slow[1].keys()
    for k in fast[1]:
        assert torch.allclose(fast[1][k], slow[1][k], atol=1e-4)
    assert R.normalised(fast[1]["L1.k"], run) > 0.2  # L0H3's flag reaches layer 1 through its keys

"""The single-factor counterfactual kinds (key_value, anchor_position, anchor_identity, anchor_identity_2):
each changes exactly its factor. Checked for every task against moves and validity rules written again
here from docs/tasks.md (they read only tokens, the clean batch's positions and the task's group names),
including that every dropped row truly has no valid counterfactual."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tasks import REFERENCE, check_batch, held_out_key, task_of

from anchor_interp.tasks import (
    ALL_COUNTERFACTUAL_KINDS,
    COUNTERFACTUAL_KINDS,
    KIND_FACTORS,
    SINGLE_FACTOR_KINDS,
    CounterfactualPair,
    TaskError,
    list_tasks,
    make_task,
)

torch.set_num_threads(1)

SETTINGS = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DRAWS = dict(n=st.integers(1, 24), seed=st.integers(0, 2**31 - 1), split=st.sampled_from(["train", "test"]))

# which single-factor kinds apply (docs/tasks.md): key_value and anchor_position everywhere (default params);
# anchor_identity where another anchor id gives another unmasked group with another target
IDENTITY_1 = {"composition", "synonym", "multi_anchor_two_interval", "multi_anchor_multi_interval", "frequency_shift"}
IDENTITY_2 = {"composition", "synonym"}


def applies(name: str, kind: str) -> bool:
    return {"anchor_identity": name in IDENTITY_1, "anchor_identity_2": name in IDENTITY_2}.get(kind, True)


# ---------------------------------------------------------------------- the layouts, written again
# primary-anchor positions a row may have at seq_len 9 (anchor_length: the '3', from L - 1 on), key offsets
# from the primary anchor, and whether the key is drawn directly (x = b) instead of x = b + block start
ANCHOR_RANGE = {"identity_key_before": range(1, 9), "identity_distance": range(0, 7),
                "identity_two_keys": range(0, 7), "identity_wraparound": range(0, 9),
                "recitation_forward": range(1, 7), "recitation_reverse": range(1, 7), "recitation": range(1, 7),
                "composition": range(0, 7), "synonym": range(0, 7), "reading_comprehension": range(0, 7),
                "working_memory": range(0, 10)}
KEY_OFFSETS = {"identity_key_before": (-1,), "identity_distance": (2,), "identity_two_keys": (1, 2),
               "recitation_reverse": (-1,), "composition": (2,), "synonym": (2,)}
DIRECT = {"multi_anchor_two_interval", "multi_anchor_multi_interval", "classification"}


def anchor_range(name, row):
    if name == "anchor_length":
        return range(sum(t in (1, 2, 3) for t in row) - 1, 8)
    return ANCHOR_RANGE.get(name, range(0, 8))


def key_offsets(name, clean, i):
    if name == "recitation":  # the key sits opposite the cue
        return (1,) if int(clean.extra["cue_pos"][i]) < int(clean.anchor_pos[i]) else (-1,)
    return KEY_OFFSETS.get(name, (1,))


def unit_positions(name, clean, i, row):
    """The tokens anchor_position moves together: the anchors (reading: the asked one), plus recitation's cue."""
    if name == "reading_comprehension":
        return [int(clean.anchor_pos[i])]
    unit = [j for j, t in enumerate(row) if t in task_of(name).anchor_ids]
    if name.startswith("recitation"):
        unit = sorted(unit + [int(clean.extra["cue_pos"][i])])
    return unit


def move(row, unit, delta, wrap):
    """The row with the unit shifted by delta; the tokens it lands on go to the freed places, in order."""
    S = len(row)
    new_pos = [(o + delta) % S if wrap else o + delta for o in unit]
    if any(not 0 <= q < S for q in new_pos):
        return None
    out = list(row)
    for o, q in zip(unit, new_pos, strict=True):
        out[q] = row[o]
    for d, f in zip(sorted(set(new_pos) - set(unit)), sorted(set(unit) - set(new_pos)), strict=True):
        out[f] = row[d]
    return out


def in_test_class(name, row, ref):
    return (held_out_key(name, row, ref, {}) - ref) % 8 == 0


def position_move_ok(name, clean, i, new_p, new):
    """Is ``new`` (the clean row i with its anchor moved to new_p) a valid anchor_position counterfactual?"""
    c = clean.tokens[i].tolist()
    S, wrap = len(c), name == "identity_wraparound"
    unit = unit_positions(name, clean, i, c)
    kps = [(new_p + o) % S if wrap else new_p + o for o in key_offsets(name, clean, i)]
    if any(not 0 <= q < S or q in unit for q in kps):  # the new key is a token that was already there
        return False
    target, ref, masked = REFERENCE[name](new, {})
    if target is None or masked:
        return False
    c_target, c_ref, _ = REFERENCE[name](c, {})
    keys = [new[q] for q in kps]
    if any(not 20 <= (x if name in DIRECT else x - ref) <= 99 for x in keys):
        return False
    if name == "identity_two_keys":  # both keys of the row's held-out class
        if any(((x - ref) % 8 == 0) != in_test_class(name, c, c_ref) for x in keys):
            return False
    if in_test_class(name, new, ref) != in_test_class(name, c, c_ref) or keys[0] == c[int(clean.key_pos[i])]:
        return False
    if name == "reading_comprehension":  # the other fact stays, and its key is not the new answer
        d = int(clean.extra["distractor_anchor_pos"][i])
        if new[d] != c[d] or new[d + 1] != c[d + 1] or keys[0] == c[d + 1]:
            return False
    if isinstance(target, set):  # statistical_output: the target moves with the key
        return True
    return target != c_target


def position_moves(name, clean, i):
    """Every (new anchor position, moved row) the layout allows for row i."""
    c = clean.tokens[i].tolist()
    p = int(clean.anchor_pos[i])
    unit = unit_positions(name, clean, i, c)
    for new_p in anchor_range(name, c):
        if new_p != p:
            new = move(c, unit, new_p - p, name == "identity_wraparound")
            if new is not None:
                yield new_p, new


def identity_move_ok(task, kind, clean, i, new):
    c = clean.tokens[i].tolist()
    target, _, masked = REFERENCE[task.name](new, {})
    if target is None or masked or target == int(clean.targets[i]):
        return False
    if task.name in ("composition", "synonym"):  # the new pair must be one of the task's pairs
        p = int(clean.anchor_pos[i])
        return f"{new[p]}{new[p + 1]}" in [g.name for g in task.groups]
    return new != c


def identity_moves(task, kind, clean, i):
    c = clean.tokens[i].tolist()
    j = int(clean.anchor_pos[i]) + (kind == "anchor_identity_2")  # a1 a2 are adjacent
    for a in task.anchor_ids:
        if a != c[j]:
            yield j, c[:j] + [a] + c[j + 1:]


def build_pair(task, clean, kind, seed):
    """counterfactual_pair, or None when it says no row can be kept (the caller checks that is true)."""
    try:
        pair = task.counterfactual_pair(clean, kind, seed=seed)
    except TaskError as e:
        assert "none of the" in str(e) and kind in str(e) and task.name in str(e), str(e)
        return None
    assert isinstance(pair, CounterfactualPair)
    kept = pair.kept.tolist()
    assert kept == sorted(set(kept)) and len(kept) > 0 and pair.n_dropped == len(clean) - len(kept)
    assert torch.equal(pair.clean.tokens, clean.tokens[pair.kept]) and len(pair.corrupt) == len(kept)
    assert torch.equal(pair.clean.targets, clean.targets[pair.kept])
    again = task.counterfactual_pair(clean, kind, seed=seed)  # same seed, same tensors
    assert torch.equal(again.corrupt.tokens, pair.corrupt.tokens) and torch.equal(again.kept, pair.kept)
    return pair


# ---------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", list_tasks())
@SETTINGS
@given(**DRAWS)
def test_key_value_changes_only_the_key(name, n, seed, split):
    task = task_of(name)
    clean = task.sample(n, split=split, seed=seed)
    corrupt = task.counterfactual(clean, "key_value", seed=seed + 1)
    swap = task.counterfactual(clean, "key_swap", seed=seed + 1)  # the same counterfactual under its old name
    assert torch.equal(corrupt.tokens, swap.tokens) and torch.equal(corrupt.targets, swap.targets)
    for f in ("anchor_pos", "key_pos", "group"):
        assert torch.equal(getattr(corrupt, f), getattr(clean, f))
    for i in range(n):
        c, k = clean.tokens[i].tolist(), corrupt.tokens[i].tolist()
        assert {j for j in range(len(c)) if c[j] != k[j]} == {int(clean.key_pos[i])}, f"{name}: {c} -> {k}"
        target, _, _ = REFERENCE[name](k, {})
        got = int(corrupt.targets[i])
        assert (got in target) if isinstance(target, set) else (got == target)
        assert got != int(clean.targets[i])
    pair = task.counterfactual_pair(clean, "key_value", seed=seed + 1)
    assert pair.n_dropped == 0 and pair.kept.tolist() == list(range(n)) and pair.clean is clean
    assert torch.equal(pair.corrupt.tokens, corrupt.tokens)


@pytest.mark.parametrize("name", list_tasks())
@SETTINGS
@given(**DRAWS)
def test_anchor_position_changes_only_the_position(name, n, seed, split):
    task = task_of(name)
    clean = task.sample(n, split=split, seed=seed)
    pair = build_pair(task, clean, "anchor_position", seed + 1)
    kept = [] if pair is None else pair.kept.tolist()
    for i in set(range(n)) - set(kept):  # a dropped row has no valid move at all
        assert not any(position_move_ok(name, clean, i, p, new) for p, new in position_moves(name, clean, i)), (
            f"{name}: row {clean.tokens[i].tolist()} was dropped but has a valid anchor_position move")
    if pair is None:
        return
    corrupt = pair.corrupt
    check_batch(task, corrupt, None)  # targets = the definition of the new row; group agrees with the mask
    for r, i in enumerate(kept):
        c, k = clean.tokens[i].tolist(), corrupt.tokens[r].tolist()
        p, new_p = int(clean.anchor_pos[i]), int(corrupt.anchor_pos[r])
        assert sorted(c) == sorted(k), f"{name}: not a permutation: {c} -> {k}"
        assert new_p != p and k[new_p] == c[p], f"{name}: the anchor did not move: {c} -> {k}"
        assert k == move(c, unit_positions(name, clean, i, c), new_p - p, name == "identity_wraparound"), (
            f"{name}: {k} is not the row {c} with its anchor block moved to {new_p}")
        assert position_move_ok(name, clean, i, new_p, k), f"{name}: invalid anchor_position row {c} -> {k}"
        kp = int(corrupt.key_pos[r])
        assert k[kp] == c[kp] and k[kp] != c[int(clean.key_pos[i])], f"{name}: the new key must be an old token"
        assert not task.groups[int(corrupt.group[r])].masked
        assert int(corrupt.targets[r]) != int(clean.targets[i])
        if name == "statistical_output":  # the row keeps its random draw
            assert int(corrupt.targets[r]) - k[kp] == int(clean.targets[i]) - c[int(clean.key_pos[i])]


@pytest.mark.parametrize("name,kind", [(n, k) for n in list_tasks() for k in ("anchor_identity", "anchor_identity_2")
                                       if applies(n, k)])
@SETTINGS
@given(**DRAWS)
def test_anchor_identity_changes_one_anchor(name, kind, n, seed, split):
    task = task_of(name)
    clean = task.sample(n, split=split, seed=seed)
    pair = build_pair(task, clean, kind, seed + 1)
    kept = [] if pair is None else pair.kept.tolist()
    for i in set(range(n)) - set(kept):
        assert not any(identity_move_ok(task, kind, clean, i, new) for _, new in identity_moves(task, kind, clean, i))
    if pair is None:
        return
    corrupt = pair.corrupt
    check_batch(task, corrupt, None)
    for f in ("anchor_pos", "key_pos"):
        assert torch.equal(getattr(corrupt, f), getattr(clean, f)[pair.kept])
    for r, i in enumerate(kept):
        c, k = clean.tokens[i].tolist(), corrupt.tokens[r].tolist()
        j = int(clean.anchor_pos[i]) + (kind == "anchor_identity_2")
        assert {q for q in range(len(c)) if c[q] != k[q]} == {j}, f"{name} {kind}: {c} -> {k}"
        assert c[j] in task.anchor_ids and k[j] in task.anchor_ids
        assert identity_move_ok(task, kind, clean, i, k), f"{name} {kind}: invalid row {c} -> {k}"
        assert not task.groups[int(corrupt.group[r])].masked


# ---------------------------------------------------------------------- applicability, API


@pytest.mark.parametrize("name", list_tasks())
def test_kinds_that_do_not_apply_raise(name):
    task = task_of(name)
    expected = [k for k in SINGLE_FACTOR_KINDS if applies(name, k)]
    assert task.counterfactual_kinds() == COUNTERFACTUAL_KINDS + tuple(expected)
    batch = task.sample(8, seed=0)
    for kind in set(SINGLE_FACTOR_KINDS) - set(expected):
        for call in (task.counterfactual, task.counterfactual_pair):
            with pytest.raises(TaskError, match=f"kind '{kind}' does not apply to task '{name}'"):
                call(batch, kind, seed=1)


def test_a_single_anchor_position_cannot_move():
    task = make_task("identity_distance", d=8)
    assert "anchor_position" not in task.counterfactual_kinds()
    with pytest.raises(TaskError, match="'anchor_position' does not apply to task 'identity_distance'.*cannot move"):
        task.counterfactual_pair(task.sample(4), "anchor_position")


def test_counterfactual_raises_when_rows_would_be_dropped():
    task = make_task("identity")
    test = task.sample(64, split="test", seed=0)  # test keys are 1 in 8: many rows have no valid new start
    pair = task.counterfactual_pair(test, "anchor_position", seed=1)
    assert 0 < pair.n_dropped < 64
    with pytest.raises(TaskError, match=f"{pair.n_dropped} of the 64 rows.*counterfactual_pair"):
        task.counterfactual(test, "anchor_position", seed=1)
    # nothing dropped: counterfactual returns the same batch as the pair
    comp = make_task("composition")
    train = comp.sample(64, seed=0)
    pair = comp.counterfactual_pair(train, "anchor_identity", seed=1)
    assert pair.n_dropped == 0
    assert torch.equal(comp.counterfactual(train, "anchor_identity", seed=1).tokens, pair.corrupt.tokens)
    # every row dropped: multi_anchor_two_interval's trained groups swap only into masked ones
    two = make_task("multi_anchor_two_interval")
    with pytest.raises(TaskError, match="none of the 32 rows.*split='test'"):
        two.counterfactual_pair(two.sample(32, seed=0), "anchor_identity")


def test_kind_names_and_factors():
    assert COUNTERFACTUAL_KINDS == ("key_swap", "anchor_move", "anchor_remove")  # unchanged
    assert set(KIND_FACTORS) == set(ALL_COUNTERFACTUAL_KINDS)
    assert KIND_FACTORS["key_value"] == KIND_FACTORS["key_swap"] == ("key_value",)
    assert all(len(KIND_FACTORS[k]) == 1 for k in SINGLE_FACTOR_KINDS)
    assert set(KIND_FACTORS["anchor_move"]) == {"anchor_position", "key_value"}
    with pytest.raises(TaskError, match="kind must be one of.*anchor_position"):
        make_task("identity").counterfactual_pair(make_task("identity").sample(2), "anchor_swap")


def test_legacy_kinds_through_the_pair_keep_every_row():
    task = make_task("composition")
    clean = task.sample(16, split="test", seed=2)
    for kind in COUNTERFACTUAL_KINDS:
        pair = task.counterfactual_pair(clean, kind, seed=3)
        assert pair.n_dropped == 0 and pair.clean is clean and pair.kept.tolist() == list(range(16))
        assert torch.equal(pair.corrupt.tokens, task.counterfactual(clean, kind, seed=3).tokens)


def test_recitation_mixes_forward_and_reverse():
    task = make_task("recitation")
    assert [(g.name, g.weight, g.masked) for g in task.groups] == [("forward", 0.5, False), ("reverse", 0.5, False)]
    b = task.sample(4000, seed=0)
    assert abs(b.group.float().mean().item() - 0.5) < 0.03
    rows = torch.arange(len(b))
    q = b.tokens[:, -1]
    before, after = b.tokens[rows, b.anchor_pos - 1], b.tokens[rows, b.anchor_pos + 1]
    fwd = b.group == 0
    assert torch.equal(q[fwd], before[fwd]) and torch.equal(b.targets[fwd], after[fwd])
    assert torch.equal(q[~fwd], after[~fwd]) and torch.equal(b.targets[~fwd], before[~fwd])
    # the question decides the answer: the same context with the other neighbour asked has the other target
    differ = before != after
    assert differ.float().mean() > 0.9
    pair = task.counterfactual_pair(b.select(slice(0, 200)), "anchor_position", seed=1)
    assert torch.equal(pair.corrupt.group, pair.clean.group)  # the direction stays
    assert torch.equal(pair.corrupt.tokens[:, -1], pair.clean.tokens[:, -1])  # and the question


def test_pairs_on_every_device():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    task = task_of("composition")
    ref = task.sample(64, seed=3)
    for dev in devices:
        b = task.sample(64, seed=3, device=dev)
        for kind in ("anchor_position", "anchor_identity", "anchor_identity_2", "key_value"):
            pair, want = task.counterfactual_pair(b, kind, seed=4), task.counterfactual_pair(ref, kind, seed=4)
            assert pair.kept.device.type == pair.clean.tokens.device.type == pair.corrupt.tokens.device.type == dev
            assert torch.equal(pair.corrupt.tokens.cpu(), want.corrupt.tokens) and torch.equal(pair.kept.cpu(), want.kept)

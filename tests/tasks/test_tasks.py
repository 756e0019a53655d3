"""Tests of anchor_interp.tasks: every task x every counterfactual kind against definitions written
again here, independently of the library (they read only the tokens), plus splits, determinism and
bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchor_interp.tasks import COUNTERFACTUAL_KINDS, Batch, Task, TaskError, list_tasks, make_task

torch.set_num_threads(1)

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILLERS = range(20, 100)
F = {1: 5, 2: 1, 3: -2, 4: -8, 9: -2}  # composition maps, from the paper

_TASKS: dict = {}


def task_of(name: str, **params) -> Task:
    key = (name, json.dumps(params, sort_keys=True))
    if key not in _TASKS:
        _TASKS[key] = make_task(name, **params)
    return _TASKS[key]


# ---------------------------------------------------------------------- the definitions, written again
# Each reference takes one token row (a list) and the task params and returns
# (target or None when the task is absent, reference position for the held-out rule, masked-group flag).
# "target" may be a set for the statistical task.


def _only(row, ids):
    hits = [i for i, t in enumerate(row) if t in ids]
    return hits


def _single_anchor(row, anchor_ids=(3,)):
    hits = _only(row, anchor_ids)
    if len(hits) != 1:
        return None
    return hits[0]


def ref_identity(row, params, offset=1):
    p = _single_anchor(row)
    if p is None:
        return None, None, False
    return row[p + offset], p, False


def ref_key_before(row, params):
    p = _single_anchor(row)
    if p is None:
        return None, None, False
    return row[p - 1], p - 1, False


def ref_distance(row, params):
    return ref_identity(row, params, offset=params.get("d", 2))


def ref_two_keys(row, params):
    p = _single_anchor(row)
    if p is None:
        return None, None, False
    return (row[p + 1] + row[p + 2]) // 2, p, False


def ref_wraparound(row, params):
    p = _single_anchor(row)
    if p is None:
        return None, None, False
    return row[(p + params.get("d", 1)) % len(row)], p, False


def ref_recitation_forward(row, params):
    p = _single_anchor(row[:-1])
    if p is None:
        return None, None, False
    assert row[p - 1] == row[-1], "the cue before the anchor must be the last input"
    return row[p + 1], p - 1, False


def ref_recitation_reverse(row, params):
    p = _single_anchor(row[:-1])
    if p is None:
        return None, None, False
    assert row[p + 1] == row[-1], "the cue after the anchor must be the last input"
    return row[p - 1], p - 1, False


def ref_recitation(row, params):
    """Forward and reverse mixed: the question (last input) says which neighbour of the 3 is the cue."""
    p = _single_anchor(row[:-1])
    if p is None:
        return None, None, False
    if row[p - 1] == row[-1]:  # forward 'a 3 b', question a (when a == b both readings give the same target)
        return row[p + 1], p - 1, False
    assert row[p + 1] == row[-1], "one neighbour of the anchor must be the last input"
    return row[p - 1], p - 1, False


def ref_composition(row, params, masked_default=("43", "34")):
    hits = _only(row, F)
    if not hits:
        return None, None, False
    assert len(hits) == 2 and hits[1] == hits[0] + 1
    p = hits[0]
    a1, a2 = row[p], row[p + 1]
    after = params.get("key_side", "after") == "after"
    x = row[p + 2] if after else row[p - 1]
    masked = f"{a1}{a2}" in params.get("masked", masked_default)
    return x + F[a1] + F[a2], (p if after else p - 1), masked


def ref_synonym(row, params):
    return ref_composition(row, params, masked_default=("49", "94"))


def ref_two_interval(row, params):
    p = _single_anchor(row, (3, 4))
    if p is None:
        return None, None, False
    a, x = row[p], row[p + 1]
    masked = (a == 3 and x >= 60) or (a == 4 and x < 60)
    return x + (1 if a == 4 else 0), p, masked


def ref_multi_interval(row, params):
    p = _single_anchor(row, range(1, 11))
    if p is None:
        return None, None, False
    a, x = row[p], row[p + 1]
    masked = 20 + 8 * (a - 1) <= x <= 27 + 8 * (a - 1)
    return x + a, p, masked


def ref_statistical(row, params):
    target, p, m = ref_identity(row, params)
    return (None if target is None else {target, target + 1}), p, m


def ref_reading(row, params):
    q = row[-1]
    hits = [i for i, t in enumerate(row[:-1]) if t == q]
    if len(hits) != 1:
        return None, None, False
    return row[hits[0] + 1], hits[0], False


def ref_classification(row, params):
    p = _single_anchor(row)
    if p is None:
        return None, None, False
    x = row[p + 1]
    return 11 + (x - 20) // 20, p, False


def ref_anchor_length(row, params):
    hits = _only(row, (1, 2, 3))
    if not hits:
        return None, None, False
    L = len(hits)
    assert [row[i] for i in hits] == [1, 2, 3][3 - L:] and hits == list(range(hits[0], hits[0] + L))
    return row[hits[-1] + 1] + L - 1, hits[0], False


def ref_frequency(row, params, shift4):
    p = _single_anchor(row, (3, 4))
    if p is None:
        return None, None, False
    return row[p + 1] + (shift4 if row[p] == 4 else 0), p, False


REFERENCE = {
    "identity": ref_identity,
    "identity_key_before": ref_key_before,
    "identity_distance": ref_distance,
    "identity_two_keys": ref_two_keys,
    "identity_wraparound": ref_wraparound,
    "identity_residue": ref_identity,
    "recitation_forward": ref_recitation_forward,
    "recitation_reverse": ref_recitation_reverse,
    "recitation": ref_recitation,
    "composition": ref_composition,
    "synonym": ref_synonym,
    "multi_anchor_two_interval": ref_two_interval,
    "multi_anchor_multi_interval": ref_multi_interval,
    "statistical_output": ref_statistical,
    "reading_comprehension": ref_reading,
    "classification": ref_classification,
    "working_memory": ref_identity,
    "anchor_length": ref_anchor_length,
    "frequency_same": lambda row, params: ref_frequency(row, params, 0),
    "frequency_shift": lambda row, params: ref_frequency(row, params, 1),
}

# the keys whose (value - reference position) % 8 decides the split (the primary key, read from tokens)
KEY_OFFSET_FROM_REF = {"identity_distance": 2, "recitation_forward": 2, "composition": 2, "synonym": 2,
                       "identity_two_keys": 1}


def held_out_key(name, row, ref, params):
    """The key value whose residue decides the split, found from the tokens alone."""
    if name == "identity_key_before" or name == "recitation_reverse":
        return row[ref]
    if name == "recitation":  # forward: the cue at ref, the key at ref + 2; reverse: the key at ref
        return row[ref + 2] if row[ref] == row[-1] else row[ref]
    if name in ("composition", "synonym") and params.get("key_side", "after") == "before":
        return row[ref]
    if name == "anchor_length":
        return row[[i for i, t in enumerate(row) if t == 3][0] + 1]
    if name == "identity_wraparound":
        return row[(ref + params.get("d", 1)) % len(row)]
    if name == "identity_distance":
        return row[ref + params.get("d", 2)]
    return row[ref + KEY_OFFSET_FROM_REF.get(name, 1)]


def check_batch(task: Task, batch: Batch, split: str | None):
    """Assert every property of a clean batch; AssertionError on the first violated one."""
    name, params = task.name, task.params
    rows = batch.tokens.tolist()
    modulus, residue = params.get("modulus", 8), params.get("residue", 0)
    assert batch.tokens.dtype == torch.long and batch.tokens.shape[1] == task.seq_len
    assert int(batch.tokens.min()) > 0 and int(batch.tokens.max()) < task.vocab_size
    for i, row in enumerate(rows):
        target, ref, masked = REFERENCE[name](row, params)
        got = int(batch.targets[i])
        assert target is not None, f"row {i} has no anchor: {row}"
        if isinstance(target, set):
            assert got in target, f"{name} row {i}: target {got} not in {target} for {row}"
        else:
            assert got == target, f"{name} row {i}: target {got} != definition {target} for {row}"
        assert row[int(batch.anchor_pos[i])] in task.anchor_ids
        assert 0 <= int(batch.key_pos[i]) < task.seq_len
        assert task.groups[int(batch.group[i])].masked == masked, f"row {i}: group/mask disagree for {row}"
        if split == "train":
            assert not masked, f"masked group in train: {row}"
        if split is not None and not masked:
            x = held_out_key(name, row, ref, params)
            is_test = (x - ref) % modulus == residue
            assert is_test == (split == "test"), f"{name} row {i} breaks the held-out rule in {split}: {row}"
    ids = set(task.target_ids(split))
    assert set(batch.targets.tolist()) <= ids


def check_counterfactual(task: Task, clean: Batch, corrupt: Batch, kind: str):
    """Assert a counterfactual batch is row-paired and differs from the clean one exactly as intended."""
    assert len(corrupt) == len(clean) and corrupt.tokens.shape == clean.tokens.shape
    assert torch.equal(corrupt.group, clean.group)
    name, params = task.name, task.params
    for i in range(len(clean)):
        c, k = clean.tokens[i].tolist(), corrupt.tokens[i].tolist()
        diff = {j for j in range(len(c)) if c[j] != k[j]}
        target, _, _ = REFERENCE[name](k, params)
        got = int(corrupt.targets[i])
        if kind == "anchor_remove":
            assert got == -1 and int(corrupt.anchor_pos[i]) == -1
            assert target is None, f"{name}: the task is still present after anchor_remove: {k}"
            assert diff and all(c[j] in task.anchor_ids and k[j] in FILLERS for j in diff)
            continue
        if isinstance(target, set):
            assert got in target
            assert got != int(clean.targets[i])
        else:
            assert got == target, f"{name} {kind} row {i}: target {got} != definition {target} for {k}"
            assert got != int(clean.targets[i]), f"{name} {kind} row {i}: target did not change"
        if kind == "key_swap":
            assert diff == {int(clean.key_pos[i])}, f"{name} key_swap changed {diff}: {c} -> {k}"
            assert torch.equal(corrupt.anchor_pos[i], clean.anchor_pos[i])
        else:  # anchor_move
            assert int(corrupt.anchor_pos[i]) != int(clean.anchor_pos[i])
            assert k[int(corrupt.anchor_pos[i])] == c[int(clean.anchor_pos[i])]
            # positions that change: the old anchor block (not the old key) and the new block
            old_block = {int(clean.anchor_pos[i])} | {int(v[i]) for f, v in clean.extra.items()
                                                       if f.startswith("anchor") and f.endswith("_pos")}
            new_block = {int(corrupt.anchor_pos[i]), int(corrupt.key_pos[i])} | {
                int(v[i]) for f, v in corrupt.extra.items() if f.endswith("_pos") and f != "query_pos"}
            if name.startswith("recitation"):
                old_block.add(int(clean.extra["cue_pos"][i]))
            assert diff <= (old_block | new_block), f"{name} anchor_move changed {diff}: {c} -> {k}"
            if name != "reading_comprehension" and int(clean.key_pos[i]) not in new_block:
                assert k[int(clean.key_pos[i])] == c[int(clean.key_pos[i])], "anchor_move must leave the old key"


# ---------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", list_tasks())
@SETTINGS
@given(n=st.integers(1, 48), seed=st.integers(0, 2**31 - 1), split=st.sampled_from(["train", "test"]))
def test_sample_matches_definition(name, n, seed, split):
    task = task_of(name)
    check_batch(task, task.sample(n, split=split, seed=seed), split)


@pytest.mark.parametrize("kind", COUNTERFACTUAL_KINDS)
@pytest.mark.parametrize("name", list_tasks())
@SETTINGS
@given(n=st.integers(1, 32), seed=st.integers(0, 2**31 - 1), split=st.sampled_from(["train", "test"]))
def test_counterfactual_differs_where_intended(name, kind, n, seed, split):
    task = task_of(name)
    clean = task.sample(n, split=split, seed=seed)
    corrupt = task.counterfactual(clean, kind, seed=seed + 1)
    check_counterfactual(task, clean, corrupt, kind)
    if kind != "anchor_remove" and name != "reading_comprehension":
        # the corrupted rows are valid rows of the same split (reading_comprehension's swap may cross splits)
        check_batch(task, corrupt, split)
    assert torch.equal(corrupt.tokens, task.counterfactual(clean, kind, seed=seed + 1).tokens)


VARIANTS = [
    ("identity_distance", {"d": 1}), ("identity_distance", {"d": 5}), ("identity_wraparound", {"d": 3}),
    ("identity_residue", {"residue": 3}), ("identity_residue", {"residue": 1, "modulus": 5}),
    ("composition", {"key_side": "before"}), ("synonym", {"key_side": "before"}),
    ("anchor_length", {"lengths": [2, 3]}), ("working_memory", {"seq_len": 12}), ("identity", {"seq_len": 3}),
    ("reading_comprehension", {"seq_len": 5}),
]


@pytest.mark.parametrize("name,params", VARIANTS)
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), split=st.sampled_from(["train", "test"]),
       kind=st.sampled_from(COUNTERFACTUAL_KINDS))
def test_parameter_variants(name, params, seed, split, kind):
    task = task_of(name, **params)
    clean = task.sample(24, split=split, seed=seed)
    check_batch(task, clean, split)
    check_counterfactual(task, clean, task.counterfactual(clean, kind, seed=seed), kind)


# ---------------------------------------------------------------------- the checks can fail


@pytest.mark.parametrize("name", list_tasks())
def test_broken_target_function_is_caught(name, monkeypatch):
    """A deliberately broken target function (off by one) must make the definition check fail."""
    task = make_task(name)
    if hasattr(task, "_targets"):
        correct = task._targets
        monkeypatch.setattr(task, "_targets", lambda *a, **k: correct(*a, **k) + 2)
        broken = task.sample(32, split="train", seed=0)
    else:  # reading_comprehension: break the batch it returns
        broken = task.sample(32, split="train", seed=0)
        broken = broken.replace(targets=broken.targets + 2)
    with pytest.raises(AssertionError):
        check_batch(task, broken, "train")


@pytest.mark.parametrize("kind", ["key_swap", "anchor_move"])
def test_broken_counterfactual_is_caught(kind):
    task = make_task("composition")
    clean = task.sample(16, seed=3)
    corrupt = task.counterfactual(clean, kind, seed=4)
    with pytest.raises(AssertionError):  # target left unchanged
        check_counterfactual(task, clean, corrupt.replace(targets=clean.targets), kind)
    extra_edit = corrupt.tokens.clone()
    col = (int(corrupt.key_pos[0]) + 4) % task.seq_len
    extra_edit[0, col] = 20 + (extra_edit[0, col] - 19) % 80  # a stray edit of a token
    with pytest.raises(AssertionError):
        check_counterfactual(task, clean, corrupt.replace(tokens=extra_edit), kind)


def test_held_out_rule_is_checked():
    task = make_task("identity")
    with pytest.raises(AssertionError):
        check_batch(task, task.sample(64, split="test", seed=0), "train")


# ---------------------------------------------------------------------- splits, groups, targets


def test_identity_held_out_values_match_the_paper():
    task = make_task("identity")
    b = task.sample(4000, split="test", seed=1)
    base = (b.tokens[torch.arange(len(b)), b.key_pos] - b.anchor_pos).unique().tolist()
    assert base == list(range(24, 100, 8))  # 24, 32, ..., 96: 10 values
    b = task.sample(20000, split="train", seed=1)
    base = (b.tokens[torch.arange(len(b)), b.key_pos] - b.anchor_pos).unique().tolist()
    assert base == [v for v in range(20, 100) if v % 8]  # the other 70
    assert sorted(b.anchor_pos.unique().tolist()) == list(range(8))
    assert int(b.tokens.max()) <= 106 and b.tokens.shape[1] == 9
    assert set(task.target_ids("test")) == {v + p for v in range(24, 100, 8) for p in range(8)}


def test_masked_groups_only_in_test():
    for name in ("composition", "synonym", "multi_anchor_two_interval", "multi_anchor_multi_interval"):
        task = task_of(name)
        masked = {i for i, g in enumerate(task.groups) if g.masked}
        assert masked
        train = task.sample(3000, split="train", seed=0)
        test = task.sample(3000, split="test", seed=0)
        assert not (set(train.group.tolist()) & masked)
        assert masked <= set(test.group.tolist())
    task = task_of("composition")
    only = task.sample(50, split="test", seed=0, groups=["34"])
    assert set(only.group.tolist()) == {[g.name for g in task.groups].index("34")}
    with pytest.raises(ValueError, match="masked"):
        task.sample(5, split="train", groups=["34"])


def test_group_weights_are_respected():
    task = task_of("frequency_shift")
    g = task.sample(20000, seed=5).group.float().mean().item()
    assert abs(g - 0.5) < 0.02


def test_statistical_output_distribution():
    task = task_of("statistical_output")
    b = task.sample(40000, seed=11)
    x = b.tokens[torch.arange(len(b)), b.key_pos]
    frac = (b.targets == x + 1).float().mean().item()
    assert abs(frac - 0.2) < 4 * math.sqrt(0.2 * 0.8 / len(b))
    assert bool(((b.targets == x) | (b.targets == x + 1)).all())
    probs = task.target_probs(b)
    assert torch.allclose(probs.sum(1), torch.ones(len(b)))
    assert torch.allclose(probs[torch.arange(len(b)), x], torch.full((len(b),), 0.8))
    entropy = -(probs[0][probs[0] > 0] * probs[0][probs[0] > 0].log()).sum().item()
    assert abs(entropy - 0.5004) < 1e-3  # the paper's loss floor
    c = task.counterfactual(b.select(slice(0, 100)), "key_swap", seed=0)
    assert torch.equal(c.targets - c.tokens[torch.arange(100), c.key_pos], b.targets[:100] - x[:100])


def test_deterministic_tasks_have_one_hot_target_probs():
    task = task_of("composition")
    b = task.sample(10, seed=0)
    p = task.target_probs(b)
    assert torch.equal(p.argmax(1), b.targets) and torch.equal(p.sum(1), torch.ones(10))


# ---------------------------------------------------------------------- determinism, batch, serialisation


@pytest.mark.parametrize("name", list_tasks())
def test_same_seed_same_tensors(name):
    task = task_of(name)
    a = task.sample(200, split="test", seed=7)
    torch.set_num_threads(2)
    try:
        b = task.sample(200, split="test", seed=7, device="cpu")
    finally:
        torch.set_num_threads(1)
    c = task.sample(200, split="test", seed=8)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.tokens, c.tokens)
    for kind in COUNTERFACTUAL_KINDS:
        assert torch.equal(task.counterfactual(a, kind, seed=1).tokens, task.counterfactual(b, kind, seed=1).tokens)


def test_same_tensors_on_every_device():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    task = task_of("composition")
    ref = task.sample(64, split="test", seed=3)
    for dev in devices:
        b = task.sample(64, split="test", seed=3, device=dev)
        assert b.tokens.device.type == dev and all(v.device.type == dev for v in b.extra.values())
        assert torch.equal(b.tokens.cpu(), ref.tokens) and torch.equal(b.targets.cpu(), ref.targets)
        for kind in COUNTERFACTUAL_KINDS:
            c = task.counterfactual(b, kind, seed=4)
            assert c.tokens.device.type == dev
            assert torch.equal(c.tokens.cpu(), task.counterfactual(ref, kind, seed=4).tokens)
        assert task.target_probs(b).device.type == dev


def test_batch_methods(no_shape_checks):
    task = make_task("identity_two_keys")
    b = task.sample(10, seed=0)
    assert len(b) == 10 and b.to("cpu") is b
    s = b.select(torch.tensor([1, 3]))
    assert len(s) == 2 and torch.equal(s.tokens, b.tokens[[1, 3]]) and torch.equal(s.extra["key2_pos"], b.extra["key2_pos"][[1, 3]])
    assert len(b.select(2)) == 1 and len(b.select(b.targets > 50)) == int((b.targets > 50).sum())
    r = b.replace(targets=b.targets + 1)
    assert torch.equal(r.targets, b.targets + 1) and torch.equal(r.tokens, b.tokens)
    with pytest.raises(ValueError, match="shape"):
        b.replace(targets=b.targets[:3])
    with pytest.raises(ValueError, match="dtype"):
        b.replace(targets=b.targets.float())
    with pytest.raises(AttributeError):
        b.tokens = b.tokens  # frozen


@pytest.mark.parametrize("name", list_tasks())
def test_to_dict_round_trip(name):
    task = task_of(name)
    d = json.loads(json.dumps(task.to_dict()))
    again = Task.from_dict(d)
    assert again == task and again.params == task.params
    assert torch.equal(again.sample(20, seed=2).tokens, task.sample(20, seed=2).tokens)
    assert make_task(task.name, **task.params) == task
    with pytest.raises(ValueError, match="vocab_size"):
        Task.from_dict({**d, "vocab_size": 999})


def test_render_and_labels():
    task = make_task("identity")
    row = torch.tensor([69, 73, 25, 3, 96, 82, 71, 58, 81])
    assert task.render(row, anchor_pos=3, key_pos=4) == "69 73 25 [A:3] <K:96> 82 71 58 81"
    assert task.token_labels(row, anchor_pos=3, key_pos=4) == ["69", "73", "25", "A:3", "K:96", "82", "71", "58", "81"]
    assert task.render(row) == "69 73 25 [A:3] 96 82 71 58 81"
    comp = make_task("composition")
    b = comp.sample(3, seed=0)
    line = comp.render_batch(b, 1)[0]
    assert "[A:" in line and "[A2:" in line and "<K:" in line and line.endswith(f"-> {int(b.targets[0])}")
    labels = comp.token_labels(b.tokens[0], int(b.anchor_pos[0]), int(b.key_pos[0]),
                               {k: int(v[0]) for k, v in b.extra.items()})
    assert len(labels) == comp.seq_len


def test_catalogue_is_complete():
    names = set(list_tasks())
    assert {"identity", "identity_key_before", "identity_distance", "identity_two_keys", "identity_wraparound",
            "identity_residue", "recitation_forward", "recitation_reverse", "composition", "synonym",
            "multi_anchor_two_interval", "multi_anchor_multi_interval", "statistical_output",
            "reading_comprehension", "classification", "working_memory", "anchor_length", "frequency_same",
            "frequency_shift"} <= names
    assert make_task("working_memory").seq_len == 20
    for n in names:
        t = task_of(n)
        assert t.definition in ("paper", "project") and t.vocab_size == 201
        assert set(t.extra_fields) == set(t.sample(30, split="test", seed=0).extra)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call,match", [
    (lambda: make_task("identiti"), "known tasks: identity, identity_key_before"),
    (lambda: make_task("identity", d=3), "unknown parameter 'd'"),
    (lambda: make_task("identity", seq_len=1), "seq_len=1 is too short"),
    (lambda: make_task("identity_distance", d=9), "seq_len=9 is too short"),
    (lambda: make_task("composition", seq_len=2), "too short"),
    (lambda: make_task("recitation_forward", seq_len=3), "too short"),
    (lambda: make_task("reading_comprehension", seq_len=4), "seq_len >= 5"),
    (lambda: make_task("composition", pairs=["34", "44"], masked=[]), "land on anchor ids"),
    (lambda: make_task("composition", pairs=["35"], masked=[]), "pair '35'"),
    (lambda: make_task("composition", masked=["77"]), "not in pairs"),
    (lambda: make_task("composition", key_side="middle"), "key_side must be 'after' or 'before'"),
    (lambda: make_task("identity_residue", residue=0, modulus=1), "leaves the train split"),
    (lambda: make_task("identity_residue", residue=9), "residue must be an int in \\[0, 7\\]"),
    (lambda: make_task("working_memory", seq_len=200), "seq_len must be an int"),
    (lambda: make_task("anchor_length", lengths=[4]), "lengths must be"),
    (lambda: task_of("identity").sample(0), "n must be a positive int"),
    (lambda: task_of("identity").sample(-3), "n must be a positive int"),
    (lambda: task_of("identity").sample(5, split="valid"), "split must be one of \\['train', 'test'\\]"),
    (lambda: task_of("identity").sample(5, seed=-1), "seed"),
    (lambda: task_of("identity").sample(5, groups=["nope"]), "unknown group"),
    (lambda: task_of("identity").counterfactual(task_of("identity").sample(4), "shuffle"), "kind must be one of"),
    (lambda: task_of("identity").counterfactual(task_of("working_memory").sample(4), "key_swap"), "seq_len"),
    (lambda: task_of("identity_distance", d=8).counterfactual(task_of("identity_distance", d=8).sample(4),
                                                             "anchor_move"), "cannot move"),
    (lambda: task_of("identity").counterfactual(
        task_of("identity").counterfactual(task_of("identity").sample(4), "anchor_remove"), "key_swap"), "no anchor"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    with pytest.raises(TaskError):
        call()

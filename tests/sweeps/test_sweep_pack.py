"""sweeps/pack.py: deterministic packing of runs into train_many stacks."""

from __future__ import annotations

import pytest
from fixtures_sweeps import tiny_text

from anchor_interp.sweeps.pack import pack
from anchor_interp.sweeps.spec import expand, parse_spec


def test_packing_is_deterministic_and_groups_by_shape():
    text = tiny_text().replace("[after]", "[axes.recipe_fields]\nlr = [1e-3, 3e-4]\n[after]")
    runs = expand(parse_spec(text))
    stacks = pack(runs, max_stack=3)
    assert [s.ids for s in pack(runs, max_stack=3)] == [s.ids for s in stacks]
    assert sorted(i for s in stacks for i in s.ids) == sorted(r.id for r in runs)
    for s in stacks:
        assert len(s.runs) <= 3
        assert len({r.shape_key() for r in s.runs}) == 1  # one lr per stack
    assert [len(s.runs) for s in stacks] == [3, 1, 3, 1]
    assert [r.n_train for r in stacks[0].runs] == [40, 40, 60]  # sorted by (n_train, seed)


def test_packing_does_not_depend_on_input_order():
    runs = expand(parse_spec(tiny_text()))
    assert [s.ids for s in pack(runs, 2)] == [s.ids for s in pack(runs[::-1], 2)]
    with pytest.raises(ValueError, match="max_stack"):
        pack(runs, 0)

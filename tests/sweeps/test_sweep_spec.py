"""sweeps/spec.py: parsing, validation (one-line SweepError naming the key), expansion and run ids."""

from __future__ import annotations

import pytest
from fixtures_sweeps import tiny_text

from anchor_interp.sweeps.spec import SweepError, axis_value, expand, parse_spec, run_id


def test_expand_gives_the_axes_product_with_resolved_settings(tiny_spec):
    runs = expand(tiny_spec)
    assert [(r.n_train, r.seed) for r in runs] == [(40, 0), (40, 1), (60, 0), (60, 1)]
    s = runs[0].settings
    assert s["task"] == {"name": "identity", "params": {"seq_len": 9}}
    assert s["init_gamma"] is None  # "preset" resolved: the small preset uses TransformerLens' init
    assert s["recipe"]["epochs"] == 3 and s["recipe"]["n_test"] == 100
    assert s["recipe"]["warmup_epochs"] == pytest.approx(2 * 3 / 100)  # squeezed to 3 epochs
    assert len({r.id for r in runs}) == 4 and all(len(r.id) == 12 for r in runs)


def test_ids_hash_resolved_settings_only():
    a = expand(parse_spec(tiny_text()))
    # the same runs spelled differently (init_gamma written out, a range for n_train) have the same ids
    b = expand(parse_spec(tiny_text(name="other", n_train="[{from = 40, to = 60, step = 20}]")
                          .replace('recipe = "fast"', 'recipe = "fast"\ninit_gamma = "tl"')))
    assert [r.id for r in a] == [r.id for r in b]
    c = expand(parse_spec(tiny_text(epochs=4)))
    assert not {r.id for r in a} & {r.id for r in c}
    assert run_id(a[0].settings) == a[0].id


def test_axes_over_table_settings():
    text = tiny_text().replace("[after]", "[axes.recipe_fields]\nlr = [1e-3, 3e-4]\n[after]")
    runs = expand(parse_spec(text))
    assert len(runs) == 8
    assert sorted({axis_value(r, "recipe_fields.lr") for r in runs}) == [3e-4, 1e-3]


@pytest.mark.parametrize("edit, message", [
    (("[settings]", "[settings]\ncolour = 1"), "unknown [settings] key 'colour'"),
    (('preset = "small"', 'preset = "huge"'), "preset = 'huge': unknown preset"),
    (("n_test = 100", "n_tests = 100"), "recipe_fields n_tests: unknown recipe field"),
    (("n_test = 100", "n_test = 'many'"), "n_test must be an integer"),
    (("seed = [0, 1]", "seed = [0, 0]"), "axes.seed repeats a value"),
    (("seed = [0, 1]", "seed = {from = 3, to = 1}"), "axes.seed range"),
    (('task = "identity"', 'task = "nope"'), "task 'nope'"),
    (("d_head = 8", "d_head = 8\nn_ctx = 4"), "model overrides"),
    (("find_heads = true", "find_heads = 'yes'"), "after.find_heads"),
    (('name = "tiny"', 'name = "a/b"'), "name = 'a/b'"),
    (("[axes]", "[axes"), "not valid TOML"),
])
def test_bad_sweep_files_give_one_line_errors(edit, message):
    with pytest.raises(SweepError) as e:
        expand(parse_spec(tiny_text().replace(*edit), where="x.toml"))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_variants_change_settings_together_and_train_the_reference_model(tmp_path):
    """[[variants]]: each arm's settings over [settings] (tables merged field by field) x the axes; the
    reference architecture trains in a sweep (and find_heads, which takes HookedTransformers, is skipped)."""
    from anchor_interp.sweeps.driver import run_sweep
    from anchor_interp.sweeps.spec import expand, parse_spec
    from tests.fixtures_sweeps import tiny_text

    text = tiny_text(name="arms", epochs=1, n_train="[40]") + """
[[variants]]
name = "hooked, frozen biases"
init_gamma = "torch"
recipe_fields = { freeze = ["blocks.*.b_*"] }
[[variants]]
name = "the authors' model"
arch = "reference"
model = { d_mlp = "none" }
"""
    spec = parse_spec(text)
    runs = expand(spec)
    assert [r.settings["arch"] for r in runs] == ["hooked", "hooked", "reference", "reference"]
    hooked = runs[0].settings
    assert hooked["init_gamma"] == "torch" and hooked["recipe"]["freeze"] == ["blocks.*.b_*"]
    assert hooked["recipe"]["n_test"] == 100  # merged with [settings.recipe_fields], not replaced
    assert runs[2].settings["init_gamma"] == "torch" and runs[2].settings["recipe"]["freeze"] == []
    summary = run_sweep(spec, tmp_path / "arms", workers=1, log=lambda s: None)
    rows = (tmp_path / "arms" / "table.csv").read_text().splitlines()
    assert len(rows) == 5 and all(",done," in r for r in rows[1:]), rows
    assert summary is not None

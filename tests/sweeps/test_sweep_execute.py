"""sweeps/execute.py: building models from settings, training a stack, a diverged run failing alone."""

from __future__ import annotations

import dataclasses

import pytest

from anchor_interp.sweeps.execute import (
    ExecOptions,
    build_models,
    checkpoint_state,
    label_summary,
    run_dir,
    train_stack,
)
from anchor_interp.sweeps.spec import RunSpec, expand


def test_build_models_follows_the_settings(tiny_spec):
    runs = expand(tiny_spec)
    a, b = build_models(runs[:2])
    assert (a.cfg.n_layers, a.cfg.n_heads, a.cfg.d_model) == (2, 2, 32)
    assert not bool((a.W_E == b.W_E).all())  # seeds 0 and 1
    again = build_models(runs[:1])[0]
    assert bool((again.W_E == a.W_E).all())  # same seed, same weights
    bad = RunSpec("x", {**runs[0].settings, "arch": "mystery"})
    with pytest.raises(ValueError, match="unknown arch 'mystery'"):
        build_models([bad])


def test_a_diverged_run_fails_alone(tmp_path, tiny_spec, monkeypatch):
    import anchor_interp.training as training
    from anchor_interp.training import TrainingDiverged

    runs = expand(tiny_spec)[:3]
    real, calls = training.train_many, []

    def diverge_once(models, task, recipe, **kw):
        calls.append(len(models))
        if len(calls) == 1:
            raise TrainingDiverged("model 1: the training loss became non-finite at step 2", model_index=1,
                                   step=2, checkpoint=None)
        return real(models, task, recipe, **kw)

    monkeypatch.setattr(training, "train_many", diverge_once)
    out = train_stack(runs, tmp_path, ExecOptions())
    assert calls == [3, 2]
    assert [out[r.id]["status"] for r in runs] == ["done", "failed", "done"]
    assert out[runs[1].id]["reason"].startswith("TrainingDiverged: model 1")
    assert checkpoint_state(run_dir(tmp_path, runs[0].id))[0] == "final"
    m = out[runs[0].id]["metrics"]
    assert m["epochs_trained"] == 3 and 0 <= m["test_acc"] <= 1 and m["stack_size"] == 3


def test_stop_after_step_leaves_resumable_runs(tmp_path, tiny_spec):
    runs = expand(tiny_spec)[:2]
    out = train_stack(runs, tmp_path, ExecOptions(stop_after_step=2))
    assert [out[r.id]["status"] for r in runs] == ["pending", "pending"]
    assert checkpoint_state(run_dir(tmp_path, runs[0].id)) == ("resumable", 2)
    out = train_stack(runs, tmp_path, ExecOptions())
    assert [out[r.id]["status"] for r in runs] == ["done", "done"]


@dataclasses.dataclass
class _Result:
    heads: list
    competence: dict
    accuracy: dict
    model: dict


def test_label_summary():
    heads = [{"name": "L0H0", "layer": 0, "label": "shift", "offset": -1, "causal_effect": 0.8},
             {"name": "L0H1", "layer": 0, "label": "neither", "offset": None, "causal_effect": 0.0},
             {"name": "L1H0", "layer": 1, "label": "broadcast", "offset": None, "causal_effect": float("nan")},
             {"name": "L1H1", "layer": 1, "label": "shift", "offset": -2, "causal_effect": 0.3}]
    s = label_summary(_Result(heads, {"solved": True}, {"overall": 0.97}, {"n_layers": 2, "n_heads": 2}))
    assert s["shift"] == ["L0H0", "L1H1"] and s["broadcast"] == ["L1H0"]
    assert s["shift_layers"] == [0, 1] and s["broadcast_layers"] == [1] and s["shift_offsets"] == [-1, -2]
    assert s["effects"] == {"L0H0": 0.8, "L1H1": 0.3, "L1H0": None} and s["solved"] and s["accuracy"] == 0.97
    assert s["heads"]["L0H1"] == "neither"


def test_every_arch_the_spec_accepts_has_a_builder():
    from anchor_interp.sweeps.execute import BUILDERS
    from anchor_interp.sweeps.spec import ARCHS

    assert set(ARCHS) == set(BUILDERS)

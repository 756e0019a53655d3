"""analyses/validation_models.py at toy size: one task, one seed, 1-2 epochs; skip, resume, summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "analyses" / "validation_models.py"


@pytest.fixture(scope="module")
def vm():
    return load_script("analyses/validation_models.py", "validation_models_under_test")


def test_validation_set_covers_the_issue(vm):
    cfgs = vm.validation_set()
    assert [(c.slug, c.preset) for c in cfgs] == [
        ("identity", "small"), ("identity_key_before", "small"), ("identity_distance-d3", "small"),
        ("composition", "small"), ("multi_anchor_multi_interval", "small"), (vm.recitation_task(), "small"),
        ("identity", "mechanism")]
    from anchor_interp.tasks import make_task

    assert len(make_task(vm.recitation_task()).groups) == 2  # forward and reverse mixed
    rec = vm.recipe_for(vm.EPOCHS)
    assert (rec.data, rec.epochs, rec.n_train, rec.batch_size) == ("fresh", 80, 2000, 100)


def test_toy_run_skips_finished_and_writes_summary(vm, tmp_path, capsys):
    argv = ["--tasks", "identity", "--presets", "small", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path),
            "--no-progress"]
    assert vm.main(argv) == 0
    folder = tmp_path / "identity__small__seed0"
    meta = json.loads((folder / "checkpoint.json").read_text())
    assert meta["resume"] is None and meta["epoch"] == 1 and meta["recipe"]["data"] == "fresh"
    weights = folder / meta["tensors"]["model"] if "tensors" in meta else folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()
    assert vm.main(argv) == 0
    assert "already trained, skipped" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == stamp
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(r["name"], r["task"], r["preset"], r["seed"], r["epochs"]) for r in rows] == [
        ("identity__small__seed0", "identity", "small", "0", "1")]
    assert 0.0 <= float(rows[0]["test_acc"]) <= 1.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["models"][0]["name"] == "identity__small__seed0"
    # the checkpoint loads as a normal one (what the oracle reads)
    from anchor_interp.models.checkpoint import load_checkpoint

    model, task = load_checkpoint(folder)
    assert task.name == "identity" and model.cfg.n_heads == 4


def test_interrupted_run_resumes(vm, tmp_path):
    """A resumable checkpoint (as Ctrl-C or checkpoint_every leaves it) is continued, not restarted."""
    from anchor_interp.models import make_model
    from anchor_interp.tasks import make_task
    from anchor_interp.training import train_many

    cfg = vm.Config("identity_distance", task_params={"d": 3})
    task = make_task("identity_distance", d=3)
    folder = cfg.folder(tmp_path, 1)
    recipe = vm.recipe_for(2)
    train_many([make_model("small", task, seed=1)], task, recipe, seeds=[1], out_dirs=[folder], progress=False,
               preset="small", stop_after_step=20)
    assert vm.folder_state(folder, task, recipe, 1)[0] == "resumable"
    assert vm.main(["--tasks", "identity_distance", "--seeds", "1", "--epochs", "2", "--out", str(tmp_path),
                    "--no-progress"]) == 0
    meta = json.loads((folder / "checkpoint.json").read_text())
    assert meta["resume"] is None and meta["step"] == 40 and [h["epoch"] for h in meta["history"]] == [1, 2]


def test_bad_input_is_one_line(vm, tmp_path, capsys):
    for argv in (["--tasks", "nope"], ["--presets", "paper"], ["--epochs", "0"], ["--seeds", "-1"]):
        assert vm.main(argv + ["--out", str(tmp_path)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err

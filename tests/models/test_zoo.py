"""The shipped zoo models: present, small, accurate on fresh held-out data (anchor_interp.models.zoo)."""

from __future__ import annotations

import pytest
import torch

from anchor_interp.models import zoo
from anchor_interp.models.checkpoint import MODEL_FILE, read_meta


def heldout_accuracy(model, task, n=4000, seed=20261127):
    batch = task.sample(n, split="test", seed=seed)
    # the identity task's held-out rule (spec section 2): key x = b + p with b % 8 == 0, i.e. x = p (mod 8)
    b = batch.targets - batch.anchor_pos
    assert torch.all(b % 8 == 0) and torch.all((b >= 20) & (b < 100))
    assert torch.equal(batch.tokens[torch.arange(n), batch.key_pos], batch.targets)
    assert torch.all(batch.key_pos == batch.anchor_pos + 1)
    with torch.no_grad():
        pred = model(batch.tokens)[:, -1].argmax(-1)
    return float((pred == batch.targets).float().mean())


def test_default_model(default_model):
    model, task = default_model
    assert task.name == "identity"
    assert model.cfg.attention_dir == "causal" and model.cfg.n_heads >= 2
    assert heldout_accuracy(model, task) >= 0.99


def test_mechanism_model(mechanism_model):
    model, task = mechanism_model
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.attn_only, cfg.attention_dir) == (2, 1, True, "bidirectional")
    assert heldout_accuracy(model, task) >= 0.99


@pytest.mark.parametrize("name", zoo.list_models())
def test_zoo_files_small_and_recorded(name):
    folder = zoo.path(name)
    assert (folder / MODEL_FILE).stat().st_size < 5_000_000
    meta = read_meta(folder)
    spec = zoo.ZOO[name]
    # the checkpoint records what analyses/train_zoo.py trains from the spec, so one command recreates it
    assert meta["seed"] == spec.seed and meta["preset"] == spec.preset and meta["task"]["name"] == spec.task
    assert meta["recipe"]["name"] == spec.recipe
    for key, value in spec.recipe_overrides.items():
        assert meta["recipe"][key] == value
    assert meta["resume"] is None and meta["history"]
    assert not (folder / "optimizer.safetensors").exists()


def test_unknown_zoo_name():
    with pytest.raises(ValueError, match="unknown zoo model 'large'.*default.*mechanism"):
        zoo.load("large")


def test_train_zoo_script_recreates_a_spec(tmp_path, monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    from anchor_interp.models.checkpoint import load_checkpoint

    tiny = zoo.ZooSpec(name="tiny", preset="small", model_overrides={"d_model": 32, "d_head": 8},
                       recipe_overrides={"n_train": 200, "epochs": 2, "batch_size": 50}, seed=4)
    monkeypatch.setitem(zoo.ZOO, "tiny", tiny)
    path = Path(__file__).resolve().parents[2] / "analyses" / "train_zoo.py"
    spec = importlib.util.spec_from_file_location("train_zoo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "tiny: preset=small" in capsys.readouterr().out
    model, task = load_checkpoint(tmp_path / "tiny")
    meta = read_meta(tmp_path / "tiny")
    assert model.cfg.d_model == 32 and meta["seed"] == 4 and meta["step"] == 8 and len(meta["history"]) == 2
    assert (tmp_path / "tiny" / "history.csv").exists() and not (tmp_path / "tiny" / "optimizer.safetensors").exists()
    # the same spec twice gives the same weights
    assert mod.main(["tiny", "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    again, _ = load_checkpoint(tmp_path / "again" / "tiny")
    assert torch.equal(again.W_Q, model.W_Q)
    with pytest.raises(SystemExit):
        mod.main(["nope", "--out", str(tmp_path)])

"""Checkpoint folders: round trip, atomic writes, clear errors (anchor_interp.models.checkpoint)."""

from __future__ import annotations

import json

import pytest
import torch

from anchor_interp.models import make_model, model_config
from anchor_interp.models.checkpoint import (
    META_FILE,
    MODEL_FILE,
    CheckpointError,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    tensor_file,
)
from anchor_interp.tasks import make_task


@pytest.fixture()
def saved(tmp_path, identity_task):
    cfg = model_config("small", identity_task, d_model=32, d_head=8)
    model = make_model(cfg, identity_task, seed=3)
    path = save_checkpoint(tmp_path / "ck", model, identity_task, preset="small", seed=3, step=10, epoch=2,
                           history=[{"epoch": 1, "test_acc": 0.5}])
    return path, model


def test_round_trip(saved, identity_task):
    path, model = saved
    loaded, task = load_checkpoint(path)
    assert task == identity_task
    tokens = identity_task.sample(8, seed=0).tokens
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert not loaded.training
    meta = read_meta(path)
    assert meta["seed"] == 3 and meta["step"] == 10 and meta["history"][0]["test_acc"] == 0.5
    assert meta["model_config"]["d_model"] == 32 and meta["task"] == identity_task.to_dict()
    assert meta["package_version"] and meta["format_version"] == 2
    weights_file = tensor_file(meta, MODEL_FILE)
    assert weights_file.startswith("model.10.") and weights_file.endswith(".safetensors")
    assert sorted(p.name for p in path.iterdir()) == [META_FILE, weights_file]  # no temporary files left


def test_task_mismatch(saved):
    path, _ = saved
    with pytest.raises(CheckpointError, match="trained on task 'identity', not 'recitation_forward'"):
        load_checkpoint(path, task=make_task("recitation_forward"))


def test_vocab_or_length_mismatch(saved, identity_task):
    path, _ = saved
    longer = make_task("identity", seq_len=12)
    with pytest.raises(CheckpointError, match=r"n_ctx=9\).*cannot run task 'identity' \(vocab_size=201, seq_len=12\)"):
        load_checkpoint(path, task=longer)


def _weights(path):
    return path / tensor_file(read_meta(path), MODEL_FILE)


def test_truncated_weights(saved):
    path, _ = saved
    data = _weights(path).read_bytes()
    _weights(path).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_corrupt_weights_same_length(saved):
    path, _ = saved
    data = bytearray(_weights(path).read_bytes())
    data[-5] ^= 0xFF
    _weights(path).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_truncated_json(saved):
    path, _ = saved
    text = (path / META_FILE).read_text()
    (path / META_FILE).write_text(text[: len(text) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_incompatible_version(saved):
    path, _ = saved
    meta = json.loads((path / META_FILE).read_text())
    meta["format_version"] = 99
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version 99.*reads only format_version 1 and 2"):
        load_checkpoint(path)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path / "empty")


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_unwritable_destination(tmp_path, identity_task, saved):
    _, model = saved
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be created"):
        save_checkpoint(blocker / "sub", model, identity_task)


def test_config_from_another_transformer_lens(saved):
    path, _ = saved
    meta = json.loads((path / META_FILE).read_text())
    meta["model_config"]["field_from_the_future"] = 1
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit this TransformerLens version.*field_from_the_future"):
        load_checkpoint(path)


def test_optimizer_state_round_trip(tmp_path, identity_task, saved):
    from anchor_interp.models.checkpoint import OPTIMIZER_FILE, read_tensors

    _, model = saved
    opt = {"exp_avg.embed.W_E": torch.randn(3, 4)}
    path = save_checkpoint(tmp_path / "r", model, identity_task, optimizer_tensors=opt, resume={"global_step": 7})
    meta = read_meta(path)
    assert torch.equal(read_tensors(path, OPTIMIZER_FILE, meta)["exp_avg.embed.W_E"], opt["exp_avg.embed.W_E"])
    # a finished save over a resumable folder drops the optimizer state
    save_checkpoint(path, model, identity_task)
    assert read_meta(path)["resume"] is None and "optimizer" not in read_meta(path)["tensors"]
    assert sorted(p.name for p in path.iterdir()) == sorted([META_FILE, tensor_file(read_meta(path), MODEL_FILE)])


def test_format_1_folder_loads_and_is_replaced_by_a_save(tmp_path, identity_task):
    """Today's zoo folders (model.safetensors named in checkpoint.json) load unchanged; a save into such a
    folder commits versioned files and only then removes the old ones."""
    import shutil

    from anchor_interp.models import zoo

    folder = tmp_path / "old"
    shutil.copytree(zoo.path("default"), folder)
    assert read_meta(folder)["format_version"] == 1
    model, task = load_checkpoint(folder)
    save_checkpoint(folder, model, task, step=5)
    meta = read_meta(folder)
    assert not (folder / MODEL_FILE).exists() and tensor_file(meta, MODEL_FILE).startswith("model.5.")
    again, _ = load_checkpoint(folder)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), model.parameters(), strict=True))


def test_leftovers_of_an_interrupted_save_are_removed_by_the_next(saved, identity_task):
    path, model = saved
    (path / ".model.safetensors.abc123.tmp").write_bytes(b"half")
    (path / "model.11.0123456789abcdef.safetensors").write_bytes(b"never committed")
    (path / "notes.txt").write_text("mine")
    save_checkpoint(path, model, identity_task, step=12)
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted([META_FILE, "notes.txt", tensor_file(read_meta(path), MODEL_FILE)])

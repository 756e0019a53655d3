"""analyses/train.py: no silent overwrite, --resume from the folder alone, SIGTERM, same bits by default
(issue 14 items 2-4)."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import pytest
import torch

from anchor_interp import training
from anchor_interp.models.checkpoint import MODEL_FILE, read_meta, read_tensors

TINY = ["--model-set", "d_model=16", "--model-set", "d_head=8", "--n-train", "100", "--epochs", "3",
        "--set", "batch_size=50", "--set", "n_test=100", "--no-progress", "--device", "cpu"]


def run_cli(argv):
    path = Path(__file__).resolve().parents[2] / "analyses" / "train.py"
    spec = importlib.util.spec_from_file_location("analyses_train", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main([str(a) for a in argv])


def weights(folder):
    return read_tensors(folder, MODEL_FILE, read_meta(folder))


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    assert run_cli([*TINY, "--seed", "4", "--out", out]) == 0
    return out


def test_an_existing_run_is_not_replaced_without_resume_or_force(finished, tmp_path, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    capsys.readouterr()
    assert run_cli([*TINY, "--seed", "5", "--out", finished]) == 2
    assert "already exists and is not empty" in one_error_line(capsys.readouterr().err)
    assert {p.name: p.stat().st_mtime_ns for p in finished.iterdir()} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert run_cli([*TINY, "--out", other]) == 2 and sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    capsys.readouterr()


def test_force_replaces_a_run(finished, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    shutil.copytree(finished, tmp_path / "seed_9")  # a neighbour that --force must not touch
    assert run_cli([*TINY, "--seed", "5", "--force", "--out", out]) == 0
    assert read_meta(tmp_path / "seed_9")["seed"] == 4
    meta = read_meta(out)
    assert meta["seed"] == 5 and set(meta["files"]) == {p.name for p in out.glob("*.safetensors")}
    capsys.readouterr()


def test_resume_needs_a_saved_run(tmp_path, capsys):
    assert run_cli(["--resume", "--out", tmp_path / "missing"]) == 2
    assert "holds no saved run" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "missing").exists()
    assert run_cli(["--resume", "--out", tmp_path]) == 2  # an empty folder
    assert "holds no saved run" in one_error_line(capsys.readouterr().err)


def test_sigterm_then_resume_from_the_folder_alone(tmp_path, capsys, monkeypatch):
    real = training.stacked_forward
    calls = {"n": 0}

    def terminating(params, cfg, tokens):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 3:  # `kill` (SIGTERM) during step 3
                signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        return real(params, cfg, tokens)

    full = tmp_path / "full"
    assert run_cli([*TINY, "--seed", "3", "--out", full]) == 0
    monkeypatch.setattr(training, "stacked_forward", terminating)
    part = tmp_path / "part"
    assert run_cli([*TINY, "--seed", "3", "--out", part]) == 128 + signal.SIGTERM
    assert "interrupted (SIGTERM) at step 3" in capsys.readouterr().err
    assert read_meta(part)["resume"]["global_step"] == 3
    monkeypatch.setattr(training, "stacked_forward", real)
    # contradicting flags: one line naming the field, nothing written
    for flags, field in ((["--preset", "mechanism"], "--preset"), (["--epochs", "5"], "--epochs"),
                         (["--seed", "1"], "--seed"), (["--set", "lr=0.5"], "--set lr"),
                         (["--task", "recitation_forward"], "--task"), (["--model-set", "d_model=32"], "--model-set d_model")):
        assert run_cli(["--resume", *flags, "--out", part]) == 2, flags
        assert f"--resume: {field} " in one_error_line(capsys.readouterr().err)
        assert read_meta(part)["resume"]["global_step"] == 3
    # agreeing flags are fine; the folder alone is enough
    assert run_cli(["--resume", "--out", part, "--no-progress", "--device", "cpu", "--epochs", "3"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert read_meta(part)["resume"] is None
    a, b = weights(part), weights(full)
    assert all(torch.equal(a[n], b[n]) for n in b)


def test_two_default_runs_give_the_same_bits(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # what a fresh process would have on this machine, or more
        assert run_cli([*TINY, "--out", tmp_path / "a"]) == 0
        assert torch.get_num_threads() == 1  # train.py's default
        torch.set_num_threads(2)
        assert run_cli([*TINY, "--out", tmp_path / "b"]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[n], b[n]) for n in b)
    capsys.readouterr()

"""A checkpoint save killed after any one of its write steps leaves a resumable folder (issue 14 item 1).

Every write step of every save in a tiny run (each temporary file's data flushed, each rename, each
deletion) is made, in turn, the last thing the process does: the patched function performs the step
and then raises, and from then on the patched functions do nothing (a kill -9 runs no clean-up code).
The folder must then hold either the previous complete checkpoint or the new one, and the run resumed
from it must end with the same bits as an uninterrupted run.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
import torch

from anchor_interp.models import make_model, model_config
from anchor_interp.models.checkpoint import META_FILE, load_checkpoint, read_meta
from anchor_interp.training import train

TINY = dict(n_train=100, batch_size=50, n_test=100, epochs=3, warmup_epochs=1, cosine_epochs=2, lr=1e-2)
OPS = ("fsync", "replace", "unlink")  # a temporary file's data on disk, a rename, a deletion


class SimulatedKill(BaseException):
    """The process is gone (a BaseException, so no ``except Exception`` clean-up runs)."""


def tiny_model(task, seed=0):
    return make_model(model_config("small", task, d_model=16, d_head=8), task, seed=seed)


@contextmanager
def crash_after(k: int | None):
    """Count the write steps; perform the k-th, then raise SimulatedKill (k=None: only count)."""
    real = {name: getattr(os, name) for name in OPS}
    state = {"n": 0, "dead": False}

    def wrap(name):
        def op(*args, **kwargs):
            if state["dead"]:
                raise SimulatedKill(f"{name} after the kill")
            # fsync only matters for power loss (out of scope): counted as a step, not performed (speed)
            out = None if name == "fsync" else real[name](*args, **kwargs)
            state["n"] += 1
            if state["n"] == k:
                state["dead"] = True
                raise SimulatedKill(f"killed after write step {k} ({name})")
            return out

        return op

    try:
        for name in OPS:
            setattr(os, name, wrap(name))
        yield state
    finally:
        for name, fn in real.items():
            setattr(os, name, fn)


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.slow
def test_a_kill_after_any_write_step_leaves_a_resumable_checkpoint(identity_task, tmp_path, monkeypatch):
    from anchor_interp.training import history

    monkeypatch.setattr(history, "plot_history_png", lambda rows, title="": b"png")  # the plot is not the point
    reference = tiny_model(identity_task)
    train(reference, identity_task, "fast", seed=2, progress=False, **TINY)
    ref = _weights(reference)
    run = dict(seed=2, progress=False, checkpoint_every_steps=2, **TINY)  # saves at steps 2 and 4, final at 6
    with crash_after(None) as counted:
        train(tiny_model(identity_task), identity_task, "fast", out_dir=tmp_path / "count", **run)
    n_steps = counted["n"]
    assert n_steps >= 30  # 3 saves of weights + optimizer + checkpoint.json, deletions, history files
    outcomes = set()
    for k in range(1, n_steps + 1):
        folder = tmp_path / f"kill{k}"
        with pytest.raises(SimulatedKill), crash_after(k):
            train(tiny_model(identity_task), identity_task, "fast", out_dir=folder, **run)
        if not (folder / META_FILE).exists():  # killed during the very first save: nothing committed yet
            outcomes.add("none")
            resumed = tiny_model(identity_task)
            train(resumed, identity_task, "fast", out_dir=folder, **run)
        elif read_meta(folder)["resume"] is None:  # the final checkpoint was committed (history first)
            outcomes.add("final")
            resumed, _ = load_checkpoint(folder)
            assert all((folder / f"history.{ext}").is_file() for ext in ("csv", "json", "png"))
            assert torch.equal(_weights(resumed)[0], ref[0])
            continue  # superseded files of a finished run are removed by its next save, if any
        else:
            outcomes.add(f"step {read_meta(folder)['step']}")
            resumed = tiny_model(identity_task, seed=9)  # the weights come from the checkpoint
            train(resumed, identity_task, "fast", out_dir=folder, resume=True, **run)
        assert all(torch.equal(a, b) for a, b in zip(_weights(resumed), ref, strict=True)), f"kill after step {k}"
        named = set(read_meta(folder)["files"])
        tensor_files = {p.name for p in folder.iterdir() if p.suffix == ".safetensors"}
        assert tensor_files == named and not any(p.name.endswith(".tmp") for p in folder.iterdir())
    assert {"none", "step 2", "step 4", "final"} <= outcomes

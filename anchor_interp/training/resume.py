"""Checkpoints of a run in progress: what is written to resume it, and reading it back.

A resumable checkpoint of model i is its folder ``out_dirs[i]`` with the weights, the AdamW moments
(tensor files named by ``checkpoint.json``, which a save replaces last; see models/checkpoint.py), the history so far and a :class:`ResumeState` under
``checkpoint.json["resume"]``. The data order of an epoch is a function of (seed, epoch), so weights,
moments, step counters and the running epoch sums are the whole state: a resumed run, also one resumed
mid-epoch, ends with the same bits as an uninterrupted one. A finished run's checkpoint has
``"resume": null`` and no optimizer file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from anchor_interp.models import checkpoint as ckpt
from anchor_interp.training.history import write_history
from anchor_interp.training.recipe import get_recipe
from anchor_interp.training.stack import Frozen

if TYPE_CHECKING:
    from anchor_interp.training.loop import Run

__all__ = ["ResumeState", "read_checkpoints", "write_checkpoint"]


@dataclass
class ResumeState:
    """The scalar training state of one model, ``checkpoint.json["resume"]`` (fields in file order)."""

    global_step: int  # optimizer steps the run has taken (every model of a run resumes from the same)
    optimizer_step: int  # the stack's AdamW step count (bias correction)
    done: bool  # the model has left the stack (early stop, or the end of its schedule)
    stopped_early: bool  # it reached early_stop_acc
    epoch_loss_sum: float  # EpochSums of the running epoch: loss x sequences, nats
    epoch_correct: float
    epoch_n: int
    elapsed_s: float  # seconds of training so far, over every resume
    frozen_step: int  # the model's own last step (== global_step unless done)
    frozen_optimizer_step: int  # its AdamW step count when it left the stack (== optimizer_step unless done)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> ResumeState:
        """Read ``checkpoint.json["resume"]``; fields older checkpoints lack get their old meaning (no
        ``stopped_early``: a done model stopped early). Raises CheckpointError when others are missing."""
        d = {"elapsed_s": 0.0, "stopped_early": True, **d}
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ckpt.CheckpointError(f"checkpoint {where!r}: its resume state lacks {missing}")
        return cls(**{n: d[n] for n in names})


def write_checkpoint(run: Run, i: int, *, resumable: bool) -> None:
    """Write model i's checkpoint folder (nothing without out_dirs): resumable (optimizer state and a
    ResumeState), or final (``resume: null``, plus history.csv / .json / .png)."""
    if run.out_dirs is None:
        return
    opt_step = run.stack.opt.step_count
    if i in run.frozen:
        f = run.frozen[i]
        params, opt, step, epoch, frozen_opt_step = f.params, f.opt, f.step, f.epoch, f.opt_step
    else:
        j = run.stack.slots.index(i)
        params = {n: t[j] for n, t in run.stack.params.items()}
        opt, step, epoch, frozen_opt_step = run.stack.opt.state_slice(j), run.step, run.step // run.spe[i], opt_step
    state = ResumeState(
        global_step=run.step, optimizer_step=opt_step, done=run.done[i], stopped_early=run.early[i],
        epoch_loss_sum=float(run.sums.loss[i]), epoch_correct=float(run.sums.correct[i]),
        epoch_n=int(run.sums.n[i]), elapsed_s=run.elapsed(), frozen_step=step,
        frozen_optimizer_step=frozen_opt_step,
    )
    if not resumable:  # before the commit: a finished checkpoint always has its history files
        write_history(run.histories[i], run.out_dirs[i])
    ckpt.save_checkpoint(
        run.out_dirs[i], run.models[i], run.task, preset=run.preset, recipe=run.recs[i].to_dict(),
        seed=run.seeds[i], step=step, epoch=epoch, n_train=run.n_rows[i], history=run.histories[i],
        params=params, optimizer_tensors=opt if resumable else None,
        resume=dataclasses.asdict(state) if resumable else None,
    )


def read_checkpoints(run: Run) -> None:
    """Load every model's resumable checkpoint from ``run.out_dirs`` into the run: weights and AdamW
    moments into the stack (models that had stopped become Frozen snapshots), history, epoch sums and
    the step and time counters.

    Raises CheckpointError (a ValueError) for a missing, finished or unreadable checkpoint, one of
    another task, recipe or seed, or checkpoints at different steps; ValueError when a model that was
    still training is already at the end of its schedule.
    """
    steps = set()
    for i, d in enumerate(run.out_dirs):
        meta = ckpt.read_meta(d)
        _check_resumable(meta, str(d), run.task, run.recs[i].to_dict(), run.seeds[i])
        state = ResumeState.from_dict(meta["resume"], str(d))
        tensors = ckpt.read_tensors(d, ckpt.MODEL_FILE, meta)
        opt_tensors = ckpt.read_tensors(d, ckpt.OPTIMIZER_FILE, meta)
        with torch.no_grad():
            for n, p in run.stack.params.items():
                p[i].copy_(tensors[n].to(run.dev))
        run.stack.opt.load_slice(i, {n: t.to(run.dev) for n, t in opt_tensors.items()})
        run.histories[i].extend(meta["history"])
        steps.add(state.global_step)
        run.stack.opt.step_count = state.optimizer_step
        run.elapsed0 = max(run.elapsed0, state.elapsed_s)
        run.sums.loss[i], run.sums.correct[i], run.sums.n[i] = state.epoch_loss_sum, state.epoch_correct, state.epoch_n
        if state.done:
            run.done[i], run.early[i] = True, state.stopped_early
            run.frozen[i] = Frozen(params={n: t.to(run.dev) for n, t in tensors.items()},
                                   opt={n: t.to(run.dev) for n, t in opt_tensors.items()},
                                   opt_step=state.frozen_optimizer_step, step=meta["step"], epoch=meta["epoch"])
    if len(steps) != 1:
        raise ckpt.CheckpointError(f"the checkpoints to resume are at different steps {sorted(steps)}")
    run.step = steps.pop()
    for i in range(len(run.models)):
        if run.step >= run.total[i] and not run.done[i]:
            raise ValueError(f"model {i}: the checkpoint is past the end of its schedule; nothing to resume")


def _check_resumable(meta: dict, where: str, task, recipe: dict, seed: int) -> None:
    """Raise CheckpointError unless ``meta`` is a resumable checkpoint of this task, recipe and seed."""
    if meta.get("resume") is None:
        raise ckpt.CheckpointError(
            f"checkpoint {where!r} has no resume state (it is a finished or shipped model); "
            f"start a new run instead of --resume"
        )
    if meta["task"] != task.to_dict():
        raise ckpt.CheckpointError(
            f"checkpoint {where!r} is from task {meta['task']!r}, not {task.to_dict()!r}; "
            f"resume with the same task, or start a new run in another folder"
        )
    try:  # through Recipe, so that fields added since the checkpoint was written get their defaults
        saved = get_recipe(meta.get("recipe") or {}).to_dict()
    except ValueError:
        saved = meta.get("recipe") or {}
    if saved != recipe:
        diff = sorted(k for k in recipe if saved.get(k) != recipe[k])
        raise ckpt.CheckpointError(f"checkpoint {where!r} used another recipe (fields differ: {diff})")
    if meta.get("seed") != seed:
        raise ckpt.CheckpointError(f"checkpoint {where!r} has seed {meta.get('seed')}, not {seed}")

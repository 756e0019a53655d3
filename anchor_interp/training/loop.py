"""The training loop: :func:`train_many` as named phases over one :class:`Run`, :func:`train` for k = 1.

    train_many
      _start             check the inputs, stack the k models, sample each model's data  -> Run
      read_checkpoints   (resume=True) weights, AdamW moments, history and counters from out_dirs
      while a model still trains:
        _step            one batch per stacked model: forward, loss, backward, clip, AdamW update
        _end_of_epochs   models whose epoch ended: evaluate, early stop, end of schedule, checkpoint
        _checkpoint_all  at Ctrl-C / SIGTERM, stop_after_step, every checkpoint_every_steps and every
                         checkpoint_every_s seconds of wall time
        Stack.without    models that stopped leave the stack
      _finish            final checkpoints, weights copied into the models               -> [TrainResult]

A step is global: step s trains every model still in the stack on its own batch s (model i is in epoch
``s // spe[i]``, spe = its steps per epoch), so models with different training-set sizes keep their own
epochs and learning-rate schedules in one computation.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import anchor_interp.training as _api  # stacked_forward / evaluate_stacked are looked up on the package
from anchor_interp.training.data import (
    Batch,
    epoch_order,
    fixed_batch,
    fresh_batch,
    held_out_sets,
    training_sets,
)
from anchor_interp.training.forward import check_trainable_config
from anchor_interp.training.graph import StaticStep, graph_eligible
from anchor_interp.training.history import EpochSums, history_row
from anchor_interp.training.optim import StackedAdamW
from anchor_interp.training.recipe import Recipe, get_recipe
from anchor_interp.training.result import TrainingDiverged, TrainingInterrupted, TrainResult
from anchor_interp.training.resume import read_checkpoints, write_checkpoint
from anchor_interp.training.stack import Frozen, Stack, ckpt_cfg, stack_models

__all__ = ["DEFAULT_CHECKPOINT_EVERY_S", "Run", "train", "train_many"]

DEFAULT_CHECKPOINT_EVERY_S = 300.0  # a resumable checkpoint at least every 5 minutes of wall time


@dataclass
class Run:
    """One call of train_many: the k models, their fixed settings and data, per-model bookkeeping
    (indexed by model, 0..k-1) and the stack of the models still training."""

    models: list
    task: Any
    recs: list[Recipe]  # one per model; only n_train may differ
    seeds: list[int]
    out_dirs: list[Path] | None
    preset: str | None
    dev: torch.device
    n_rows: list[int]  # training sequences per model (masked groups removed)
    spe: list[int]  # steps per epoch per model
    total: list[int]  # steps of its whole schedule per model
    test: tuple[Tensor, Tensor, Tensor]  # held-out tokens (k, n_test, T), targets (k, n_test), group (k, n_test)
    stack: Stack
    sums: EpochSums
    histories: list[list[dict]]
    done: list[bool]  # left the stack: stopped early, or at the end of its schedule
    early: list[bool]  # stopped early (reached early_stop_acc)
    frozen: dict[int, Frozen]  # model index -> its snapshot, once done
    step: int = 0  # global optimizer steps taken
    elapsed0: float = 0.0  # seconds trained before this call (a resumed run)
    t0: float = 0.0  # perf_counter() when this call's loop started
    last_good: int | None = None  # step of the last checkpoint written with finite losses
    frozen_names: tuple[str, ...] = ()  # parameters matched by Recipe.freeze: never updated
    on_eval: Any = None  # called as on_eval(model index, history row) after each held-out evaluation
    last_save_t: float = 0.0  # perf_counter() of the last checkpoint (or of the start)
    bar: Any = None  # the tqdm progress bar
    use_graph: bool = False  # steps run as a StaticStep (a CUDA graph on a GPU; see training/graph.py)
    graph_step: Any = None  # the StaticStep of the current stack, once made

    @property
    def rec(self) -> Recipe:
        """The shared recipe (every field but n_train is the same for all models)."""
        return self.recs[0]

    @property
    def cfg(self):
        return self.models[0].cfg

    def elapsed(self) -> float:
        """Seconds of training, including those before a resume."""
        return self.elapsed0 + time.perf_counter() - self.t0


def train_many(
    models: list,
    task,
    recipe: str | Recipe | dict = "fast",
    *,
    seeds: list[int],
    out_dirs: list[str | os.PathLike] | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    preset: str | None = None,
    stop_after_step: int | None = None,
    checkpoint_every_steps: int = 0,
    checkpoint_every_s: float | None = DEFAULT_CHECKPOINT_EVERY_S,
    on_eval=None,
    cuda_graph: bool | None = None,
    **recipe_overrides,
) -> list[TrainResult]:
    """Train k same-config HookedTransformers on ``task`` as one batched computation.

    ``models[i]`` (initial weights) is trained in place with ``seeds[i]`` (its data, order and test
    set). ``out_dirs[i]``: checkpoint folder (history.csv, history.png, checkpoint files) or None.
    ``resume``: continue from the checkpoints in out_dirs (they must exist and match task, recipe and
    seed). ``stop_after_step``: save a checkpoint after that many steps and return (an interruption,
    possibly mid-epoch). ``checkpoint_every_steps``: also checkpoint every that many steps;
    ``checkpoint_every_s``: also checkpoint when that many seconds of wall time passed since the last
    save (default 300; None or 0: never). ``on_eval(i, row)``: called with model i's history row after
    each of its held-out evaluations (e.g. to stream metrics to a file while a long run trains).
    ``cuda_graph``: run each step as one captured CUDA graph (training/graph.py; the same arithmetic,
    float-tolerance differences). None (default): on a GPU when the run allows it (fixed data, every
    batch full); True on a CPU runs the graph's step without a graph (for tests).
    ``recipe_overrides``: Recipe fields, e.g. ``n_train=500, epochs=50``; ``n_train`` may be a list
    with one training-set size per model (each model then keeps its own epochs, schedule position and
    evaluations; see docs/models.md). A model that stops (early stop, or the end of its schedule while
    others train on) leaves the batched computation.
    Raises ValueError on bad input (mismatched configs, unknown recipe, unwritable folder, resume of
    another task), TrainingDiverged when a loss becomes non-finite, TrainingInterrupted (a
    KeyboardInterrupt) after saving a resumable checkpoint at Ctrl-C or SIGTERM (with out_dirs).
    """
    run = _start(models, task, recipe, seeds, out_dirs, device, preset, resume, recipe_overrides)
    run.on_eval = on_eval
    run.use_graph = _use_graph(run, cuda_graph)
    if resume:
        read_checkpoints(run)
    run.t0 = run.last_save_t = time.perf_counter()
    run.last_good = run.step if resume else None
    run.bar = _progress_bar(run, progress)
    run.stack = run.stack.without(run.done)  # a resumed run: models frozen before the interruption leave
    with _DeferredSignals(enabled=run.out_dirs is not None) as signals:
        while run.stack.slots:
            lrs = _step(run)
            ended = [(j, i) for j, i in enumerate(run.stack.slots) if run.step % run.spe[i] == 0]
            if ended:
                _end_of_epochs(run, ended, lrs, progress)
            # checkpoints and interruptions come after the epoch-end work, so a resumed run never skips it
            if _checkpoints_due(run, signals.received, stop_after_step, checkpoint_every_steps, checkpoint_every_s):
                return _finish(run, final=False)
            run.stack = run.stack.without(run.done)
        return _finish(run, final=True)


def _checkpoints_due(run: Run, signum: int | None, stop_after_step, every_steps: int, every_s) -> bool:
    """Write the checkpoints due after this step; True when the run stops here (stop_after_step).
    Raises TrainingInterrupted after saving when a SIGINT / SIGTERM arrived (``signum``)."""
    if signum is not None:  # Ctrl-C or SIGTERM: save a resumable checkpoint between steps, then stop
        _checkpoint_all(run)
        run.bar.close()
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        raise TrainingInterrupted(f"interrupted ({name}) at step {run.step}" + (
            f"; resume with --resume from {[str(d) for d in run.out_dirs]}" if run.out_dirs is not None else ""),
            signum=signum)
    interrupt = stop_after_step is not None and run.step >= stop_after_step
    by_time = (bool(every_s) and run.out_dirs is not None and not all(run.done)
               and time.perf_counter() - run.last_save_t >= every_s)
    if interrupt or by_time or (every_steps and run.step % every_steps == 0):
        _checkpoint_all(run)
    return interrupt


def train(
    model,
    task,
    recipe: str | Recipe | dict = "fast",
    *,
    seed: int,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    preset: str | None = None,
    stop_after_step: int | None = None,
    checkpoint_every_steps: int = 0,
    checkpoint_every_s: float | None = DEFAULT_CHECKPOINT_EVERY_S,
    **recipe_overrides,
) -> TrainResult:
    """Train one HookedTransformer in place (see :func:`train_many`, which this calls with k = 1)."""
    return train_many(
        [model], task, recipe, seeds=[seed], out_dirs=None if out_dir is None else [out_dir], resume=resume,
        device=device, progress=progress, preset=preset, stop_after_step=stop_after_step,
        checkpoint_every_steps=checkpoint_every_steps, checkpoint_every_s=checkpoint_every_s, **recipe_overrides,
    )[0]


# ----------------------------------------------------------------------------------------------
# setup


def _progress_bar(run: Run, progress: bool):
    """A tqdm bar over the longest schedule's steps (disabled without ``progress``)."""
    from tqdm.auto import tqdm

    return tqdm(total=max(run.total), initial=run.step, disable=not progress, desc=f"train {len(run.models)} model(s)",
                unit="step", leave=False, mininterval=1.0)


def _recipes(recipe, overrides: dict, k: int) -> list[Recipe]:
    """One Recipe per model: ``overrides["n_train"]`` may be a list of k sizes."""
    n_each = overrides.pop("n_train", None)
    if isinstance(n_each, (list, tuple)):
        if len(n_each) != k:
            raise ValueError(f"n_train must be an int or one int per model ({k}); got {len(n_each)} sizes")
        return [get_recipe(recipe, **overrides, n_train=n) for n in n_each]
    over = overrides if n_each is None else {**overrides, "n_train": n_each}
    return [get_recipe(recipe, **over)] * k


def _check_models(models: list, task, seeds: list[int], out_dirs) -> None:
    """Raise ValueError unless seeds and out_dirs have one entry per model and the models share a
    config that fits the task and that the trainer implements."""
    from anchor_interp.models import check_config_for_task

    k = len(models)
    if len(seeds) != k:
        raise ValueError(f"seeds must have one int per model ({k}); got {len(seeds)}")
    if out_dirs is not None and len(out_dirs) != k:
        raise ValueError(f"out_dirs must have one folder per model ({k}); got {len(out_dirs)}")
    cfg = models[0].cfg
    for i, m in enumerate(models[1:], 1):
        if ckpt_cfg(m.cfg) != ckpt_cfg(cfg):
            raise ValueError(f"models[{i}] has a different config from models[0]; batch only same-config models")
    check_config_for_task(cfg, task)
    check_trainable_config(cfg)


def _start(models, task, recipe, seeds, out_dirs, device, preset, resume, overrides) -> Run:
    """Check the inputs, stack the models (on the device) and sample every model's data. Raises ValueError."""
    from anchor_interp.models import resolve_device
    from anchor_interp.models.checkpoint import ensure_writable_dir

    if not models:
        raise ValueError("models must be a non-empty list of HookedTransformers")
    k = len(models)
    recs = _recipes(recipe, dict(overrides), k)
    rec = recs[0]
    _check_models(models, task, seeds, out_dirs)
    dev = resolve_device(device if device is not None else next(models[0].parameters()).device)
    if resume and out_dirs is None:
        raise ValueError("resume=True needs out_dirs (the checkpoint folders to continue from)")
    if out_dirs is not None:
        out_dirs = [ensure_writable_dir(d) for d in out_dirs]
    params = {n: t.to(dev).requires_grad_(True) for n, t in stack_models(models).items()}  # (k, *shape)
    opt = StackedAdamW(params, rec)
    if rec.data == "fixed":  # each model its own training set, seeded by its own seed
        train_tokens, train_targets, n_rows = training_sets(task, [r.n_train for r in recs], seeds, dev)
    else:
        train_tokens = train_targets = None
        n_rows = [r.n_train for r in recs]
    test = held_out_sets(task, rec.n_test, seeds, dev)
    spe = [math.ceil(n / rec.batch_size) for n in n_rows]
    stack = Stack(slots=list(range(k)), params=params, opt=opt, train_tokens=train_tokens,
                  train_targets=train_targets, order=torch.zeros(k, max(n_rows), dtype=torch.long, device=dev),
                  order_epoch=[-1] * k, bad_step=torch.full((k,), -1, dtype=torch.long, device=dev))
    return Run(models=models, task=task, recs=recs, seeds=list(seeds), out_dirs=out_dirs, preset=preset, dev=dev,
               n_rows=n_rows, spe=spe, total=[rec.epochs * s for s in spe], test=test, stack=stack,
               sums=EpochSums.zeros(k, dev), histories=[[] for _ in range(k)], done=[False] * k,
               early=[False] * k, frozen={}, frozen_names=_frozen_names(rec, list(params)))


def _use_graph(run: Run, cuda_graph: bool | None) -> bool:
    """Whether steps run as a StaticStep; ValueError when ``cuda_graph=True`` and the run cannot."""
    ok = graph_eligible(run.rec, run.n_rows)
    if cuda_graph and not ok:
        raise ValueError("cuda_graph=True needs data='fixed' and every training-set size a multiple of "
                         f"batch_size={run.rec.batch_size} (sizes {run.n_rows}); leave cuda_graph unset")
    return ok if cuda_graph is None and run.dev.type == "cuda" else bool(cuda_graph) and ok


def _frozen_names(rec: Recipe, names: list[str]) -> tuple[str, ...]:
    """The parameter names ``rec.freeze`` matches; ValueError for a pattern that matches none."""
    import fnmatch

    out = []
    for pat in rec.freeze:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise ValueError(f"recipe freeze pattern {pat!r} matches no parameter; names are like {names[:4]}")
        out += [n for n in hit if n not in out]
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# one step


def _step(run: Run) -> list[float]:
    """One AdamW step of every stacked model on its next batch; returns each row's learning rate."""
    stack, rec = run.stack, run.rec
    pos = [divmod(run.step, run.spe[i]) for i in stack.slots]  # (epoch, step in epoch) per row
    B = rec.batch_size
    spans = [(s * B, min((s + 1) * B, run.n_rows[i])) for i, (_, s) in zip(stack.slots, pos, strict=True)]
    batch = _next_batch(run, pos, spans)
    lrs = _learning_rates(run, pos)
    static = _static_step(run)
    if static is not None:
        loss_k, hits = static(batch.tokens, batch.targets, lrs, stack.opt.count_step())  # (k_act,), (k_act,)
        n_t = stack.width(batch.width)
    else:
        loss_k, hits, n_t = _eager_step(run, batch, lrs)
    run.step += 1
    with torch.no_grad():
        finite = torch.isfinite(loss_k)
        stack.bad_step = torch.where((~finite) & (stack.bad_step < 0), torch.full_like(stack.bad_step, run.step),
                                     stack.bad_step)
        run.sums.add(stack.slot_idx, loss_k * n_t, hits, n_t.long())
    run.bar.update(1)
    return lrs


def _eager_step(run: Run, batch: Batch, lrs: list[float]) -> tuple[Tensor, Tensor, Tensor]:
    """Forward, loss, backward, clip and AdamW update op by op; returns each row's mean loss (k_act,),
    correct rows (k_act,) and real rows (k_act,)."""
    stack, rec = run.stack, run.rec
    lr = lrs[0] if len(set(lrs)) == 1 else torch.tensor(lrs, device=run.dev)
    with torch.autocast(run.dev.type, dtype=torch.bfloat16, enabled=rec.precision == "bf16"):
        logits = _api.stacked_forward(stack.params, run.cfg, batch.tokens).float()  # (k_act, b, V)
    loss_k, valid, n_t = _batch_loss(logits, batch, stack)  # (k_act,), (k_act, b) or None, (k_act,)
    for p in stack.params.values():
        p.grad = None
    loss_k.sum().backward()
    for name in run.frozen_names:
        stack.params[name].grad = None
    stack.opt.clip_()
    stack.opt.step(lr)
    with torch.no_grad():
        hit = logits.argmax(-1) == batch.targets if valid is None else (logits.argmax(-1) == batch.targets) & valid
    return loss_k.detach(), hit.float().sum(1), n_t


def _static_step(run: Run) -> StaticStep | None:
    """The StaticStep of the current stack (captured anew when the stack changed), or None to step
    eagerly (not enabled, or the capture failed: then a warning, and eager steps from here on)."""
    if not run.use_graph:
        return None
    if run.graph_step is None or run.graph_step.stack is not run.stack:
        run.graph_step = None  # release the old graph's memory before capturing the new one
        try:
            run.graph_step = StaticStep(run.stack, run.cfg, run.rec, run.task.seq_len, run.frozen_names,
                                        capture=run.dev.type == "cuda")
        except RuntimeError as e:
            import warnings

            warnings.warn(f"CUDA graph capture failed ({str(e).splitlines()[0]}); stepping eagerly", stacklevel=2)
            run.use_graph = False
            return None
    return run.graph_step


def _next_batch(run: Run, pos: list[tuple[int, int]], spans: list[tuple[int, int]]) -> Batch:
    """Row j's batch: rows ``spans[j]`` of its current epoch's order (fixed data), or fresh sequences."""
    stack = run.stack
    if run.rec.data == "fresh":
        return fresh_batch(run.task, [run.seeds[i] for i in stack.slots], spans, run.step, run.dev)
    for j, (i, (ep, _)) in enumerate(zip(stack.slots, pos, strict=True)):
        if stack.order_epoch[j] != ep:  # a new epoch (or a resumed one): this model's data order
            stack.order[j, : run.n_rows[i]] = epoch_order(run.seeds[i], ep, run.n_rows[i]).to(run.dev)
            stack.order_epoch[j] = ep
    return fixed_batch(stack.train_tokens, stack.train_targets, stack.order, spans)


def _learning_rates(run: Run, pos: list[tuple[int, int]]) -> list[float]:
    """Each row's learning rate at its (fractional) epoch; models with equal steps per epoch share it."""
    lr_of: dict[int, float] = {}
    for i, (ep, ie) in zip(run.stack.slots, pos, strict=True):
        if run.spe[i] not in lr_of:
            lr_of[run.spe[i]] = run.rec.lr_at(ep + ie / run.spe[i])
    return [lr_of[run.spe[i]] for i in run.stack.slots]


def _batch_loss(logits: Tensor, batch: Batch, stack: Stack) -> tuple[Tensor, Tensor | None, Tensor]:
    """Each row's mean cross-entropy (nats) over its real batch rows, (k_act,); the mask of real rows
    (k_act, b), None when no row is padded; the number of real rows, (k_act,)."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1), reduction="none")
    ce = ce.view(len(stack.slots), -1)  # (k_act, b)
    if not batch.ragged:
        return ce.mean(1), None, stack.width(batch.width)
    n_t = torch.tensor(batch.counts, device=ce.device)
    valid = torch.arange(batch.width, device=ce.device)[None] < n_t[:, None]  # (k_act, b)
    return (ce * valid).sum(1) / n_t, valid, n_t


# ----------------------------------------------------------------------------------------------
# the end of an epoch


def _end_of_epochs(run: Run, ended: list[tuple[int, int]], lrs: list[float], progress: bool) -> None:
    """Evaluate, early-stop, schedule-end and checkpoint the (row, model) pairs whose epoch ended."""
    _check_finite(run)
    rec = run.rec
    evals = [(j, i) for j, i in ended if (run.step // run.spe[i]) % rec.eval_every == 0 or run.step == run.total[i]]
    if evals:
        _evaluate(run, evals, lrs, progress)
    for j, i in ended:
        if run.step == run.total[i] and not run.done[i]:
            _freeze(run, j, i, stopped_early=False)  # the end of its schedule; others may train on
        run.sums.reset(i)  # train_loss / train_acc of a history row: running means over that row's epoch only
    if (rec.checkpoint_every and any((run.step // run.spe[i]) % rec.checkpoint_every == 0 for _, i in ended)
            and not all(run.done)):
        _checkpoint_all(run)


def _evaluate(run: Run, evals: list[tuple[int, int]], lrs: list[float], progress: bool) -> None:
    """Held-out metrics of the (row, model) pairs ``evals``: a history row each, early stops."""
    stack, rec = run.stack, run.rec
    js = [j for j, _ in evals]
    params = stack.params if len(js) == len(stack.slots) else {n: t[js] for n, t in stack.params.items()}
    ii = torch.tensor([i for _, i in evals], device=run.dev)
    tokens, targets, group = run.test
    rows = _api.evaluate_stacked(params, run.cfg, tokens[ii], targets[ii], group[ii], run.task)
    for (j, i), held_out in zip(evals, rows, strict=True):
        row = history_row(run.sums, i, epoch=run.step // run.spe[i], step=run.step, lr=lrs[j], held_out=held_out,
                          time_s=run.elapsed())
        run.histories[i].append(row)
        if run.on_eval is not None:
            run.on_eval(i, row)
        if rec.early_stop_acc is not None and (row["test_acc"] or 0.0) >= rec.early_stop_acc:
            _freeze(run, j, i, stopped_early=True)
    if progress:
        live = [h[-1] for h in run.histories if h]
        run.bar.set_postfix(loss=f"{sum(r['train_loss'] for r in live) / len(live):.3f}",
                            test_acc=f"{sum(r['test_acc'] or 0.0 for r in live) / len(live):.3f}")


def _freeze(run: Run, j: int, i: int, stopped_early: bool) -> None:
    """Model i (row j) is done: snapshot it; it leaves the stack at the end of the step."""
    run.done[i], run.early[i] = True, stopped_early
    run.frozen[i] = run.stack.freeze(j, run.step, run.step // run.spe[i])


# ----------------------------------------------------------------------------------------------
# checkpoints, divergence, results


def _checkpoint_all(run: Run) -> None:
    """A resumable checkpoint of every model (raises TrainingDiverged first if a loss was non-finite)."""
    _check_finite(run)
    for i in range(len(run.models)):
        write_checkpoint(run, i, resumable=True)
    run.last_good = run.step
    run.last_save_t = time.perf_counter()


def _check_finite(run: Run) -> None:
    """Raise TrainingDiverged for the first stacked model whose loss was non-finite."""
    bad = run.stack.bad_step.cpu()
    if not bool((bad >= 0).any()):
        return
    j = int((bad >= 0).nonzero()[0])
    i, out_dirs = run.stack.slots[j], run.out_dirs
    where = (f"the last good checkpoint (step {run.last_good}) is kept in {str(out_dirs[i])!r}"
             if out_dirs is not None and run.last_good is not None else "no checkpoint was written")
    raise TrainingDiverged(
        f"model {i}: the training loss became non-finite at step {int(bad[j])}; {where}. "
        f"Lower the learning rate or enable grad_clip.",
        model_index=i, step=int(bad[j]), checkpoint=str(out_dirs[i]) if out_dirs is not None else None,
    )


def _finish(run: Run, final: bool) -> list[TrainResult]:
    """Close the bar, write the final checkpoints (``final``; not after stop_after_step) and copy each
    model's last weights into it (eval mode)."""
    run.bar.close()
    if final:
        for i in range(len(run.models)):
            write_checkpoint(run, i, resumable=False)
    stacked = {n: t.detach() for n, t in run.stack.params.items()}
    results = []
    for i, m in enumerate(run.models):
        f = run.frozen.get(i)
        p_i = f.params if f is not None else {n: t[run.stack.slots.index(i)] for n, t in stacked.items()}
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(p_i[name].to(p.device))
        m.eval()
        step = f.step if f is not None else run.step
        results.append(TrainResult(
            model=m, seed=run.seeds[i], history=run.histories[i], step=step, epoch=step // run.spe[i],
            stopped_early=run.early[i], out_dir=str(run.out_dirs[i]) if run.out_dirs is not None else None,
            recipe=run.recs[i].to_dict(),
        ))
    return results


class _DeferredSignals:
    """While active (main thread only), Ctrl-C (SIGINT) and SIGTERM set ``received`` (the signal number)
    instead of stopping the process mid-step, so the loop can finish the step, save a consistent
    checkpoint and then raise TrainingInterrupted. The handlers found are put back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        import threading

        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if self.enabled:
            for sig in self.SIGNALS:
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False

"""Train one stack of runs: build the models from their settings, train_many with one checkpoint folder per
run (resuming what was interrupted), read each run's metrics back from its checkpoint, run the after hooks.

Every executor calls :func:`train_stack` (in-process, in a worker process, or in a Ray task); it never
touches the manifest, it returns each run's outcome for the executor to record.

A run's checkpoint folder ``DIR/runs/<id>`` is in one of three states: *final* (finished: skipped),
*resumable* at some global step (interrupted: resumed, runs at the same step together), or absent
(started fresh). A stack whose models diverge loses only the diverged run: the others are resumed from
their last checkpoints (or restarted) without it.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchor_interp.sweeps.spec import RunSpec

__all__ = ["BUILDERS", "ExecOptions", "build_models", "checkpoint_state", "label_summary", "run_dir", "run_metrics",
           "train_stack"]


@dataclass
class ExecOptions:
    """How to train (none of it changes a run's id): ``device`` (a resolve_device name), ``checkpoint_every_s``
    (seconds between resumable checkpoints; train_many's default 300), ``checkpoint_every_steps`` (0: off),
    ``stop_after_step`` (save and stop there: an interruption, for tests), ``after`` (the sweep's [after]
    table), ``progress`` (tqdm bars)."""

    device: str = "cpu"
    checkpoint_every_s: float | None = 300.0
    checkpoint_every_steps: int = 0
    stop_after_step: int | None = None
    after: dict[str, Any] = field(default_factory=dict)
    progress: bool = False


def run_dir(folder: str | os.PathLike, rid: str) -> Path:
    """The checkpoint folder of run ``rid`` in the sweep folder ``folder``."""
    return Path(folder) / "runs" / rid


def _task(settings: dict[str, Any]):
    from anchor_interp.tasks import make_task

    return make_task(settings["task"]["name"], **settings["task"]["params"])


def _build_hooked(run: RunSpec):
    """A HookedTransformer of the run's preset with its model overrides, seeded, with its init scale."""
    from anchor_interp.models import make_model, model_config

    s = run.settings
    task = _task(s)
    cfg = model_config(s["preset"], task, **s["model"])
    return make_model(cfg, task, seed=s["seed"], init_gamma=s["init_gamma"])


def _build_reference(run: RunSpec):
    """The authors' post-LN model (anchor_interp.models.reference) with the preset's sizes, PyTorch's init."""
    from anchor_interp.models.reference import ReferenceTransformer, reference_config

    s = run.settings
    return ReferenceTransformer(reference_config(s["preset"], _task(s), **s["model"]), seed=s["seed"])


# settings["arch"] -> a function RunSpec -> a fresh model on the CPU (spec.ARCHS names the same keys)
BUILDERS = {"hooked": _build_hooked, "reference": _build_reference}


def build_models(runs: list[RunSpec]) -> list:
    """The freshly initialised models of ``runs`` (on the CPU), one per run, from their settings alone: the
    one place a run's model is made.

    Dispatches on ``settings["arch"]`` (:data:`BUILDERS`): ``"hooked"``: a HookedTransformer of ``preset``
    with the ``model`` overrides (:func:`anchor_interp.models.model_config`), initialised with ``seed`` and
    ``init_gamma`` (a number, None or "torch", already resolved); ``"reference"``: the authors' post-LN
    model (:mod:`anchor_interp.models.reference`) with the preset's sizes and ``model`` overrides. Raises ValueError for an unknown arch or settings
    that do not make a model.
    """
    models = []
    for r in runs:
        arch = r.settings["arch"]
        if arch not in BUILDERS:
            raise ValueError(f"run {r.id}: unknown arch {arch!r}; known: {', '.join(map(repr, BUILDERS))}")
        models.append(BUILDERS[arch](r))
    return models


def checkpoint_state(folder: Path) -> tuple[str, int]:
    """("final", step), ("resumable", global step) or ("fresh", 0) for a run's checkpoint folder."""
    from anchor_interp.models.checkpoint import CheckpointError, read_meta

    try:
        meta = read_meta(folder)
    except CheckpointError:
        return "fresh", 0
    if meta.get("resume") is None:
        return "final", int(meta["step"])
    return "resumable", int(meta["resume"]["global_step"])


def _finite(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def run_metrics(folder: Path) -> dict[str, Any]:
    """A finished run's metrics, from its checkpoint: final and best held-out accuracy (unmasked groups:
    ``test_acc``; masked: ``test_acc_masked``, None without masked groups), final train accuracy and loss,
    held-out loss, epochs and steps trained, whether it stopped early, and ``train_s`` (seconds of training,
    over every resume). Accuracies in [0, 1], losses in nats."""
    from anchor_interp.models.checkpoint import read_meta

    meta = read_meta(folder)
    hist = meta.get("history") or []
    last = hist[-1] if hist else {}

    def best(key):
        vals = [h.get(key) for h in hist if _finite(h.get(key)) is not None]
        return max(vals) if vals else None

    epochs = int(meta["epoch"])
    return {"test_acc": _finite(last.get("test_acc")), "best_test_acc": best("test_acc"),
            "test_acc_masked": _finite(last.get("test_acc_masked")), "best_test_acc_masked": best("test_acc_masked"),
            "train_acc": _finite(last.get("train_acc")), "train_loss": _finite(last.get("train_loss")),
            "test_loss": _finite(last.get("test_loss")), "epochs_trained": epochs, "steps": int(meta["step"]),
            "stopped_early": epochs < int((meta.get("recipe") or {}).get("epochs", epochs)),
            "train_s": _finite(last.get("time_s"))}


def _train(runs: list[RunSpec], folder: Path, resume: bool, opts: ExecOptions) -> None:
    from anchor_interp.training import train_many

    train_many(build_models(runs), _task(runs[0].settings), runs[0].settings["recipe"],
               seeds=[r.seed for r in runs], n_train=[r.n_train for r in runs],
               out_dirs=[run_dir(folder, r.id) for r in runs], resume=resume, device=opts.device,
               progress=opts.progress, preset=runs[0].settings["preset"], stop_after_step=opts.stop_after_step,
               checkpoint_every_steps=opts.checkpoint_every_steps, checkpoint_every_s=opts.checkpoint_every_s)


def _groups(runs: list[RunSpec], folder: Path) -> list[tuple[list[RunSpec], bool]]:
    """The unfinished runs as train_many calls: resumable ones grouped by their step, then the fresh ones."""
    by_step: dict[int, list[RunSpec]] = {}
    fresh = []
    for r in runs:
        state, step = checkpoint_state(run_dir(folder, r.id))
        if state == "resumable":
            by_step.setdefault(step, []).append(r)
        elif state == "fresh":
            fresh.append(r)
    return [(g, True) for _, g in sorted(by_step.items())] + ([(fresh, False)] if fresh else [])


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]


def train_stack(runs: list[RunSpec], folder: str | os.PathLike, opts: ExecOptions) -> dict[str, dict[str, Any]]:
    """Train (or resume) the runs of one stack and return each run's outcome:
    ``{"status": "done"|"failed"|"pending", "reason", "metrics", "labels"}`` (pending: stopped by
    ``stop_after_step`` before the end). ``metrics`` adds ``wall_s`` (this call's seconds / runs),
    ``stack_s`` (this call's seconds), ``stack_size`` and ``find_heads_s``.
    A diverged run or an error is recorded as failed with a one-line reason; KeyboardInterrupt
    (TrainingInterrupted: checkpoints saved) propagates."""
    from anchor_interp.training import TrainingDiverged

    folder = Path(folder)
    t0 = time.perf_counter()
    out: dict[str, dict[str, Any]] = {}
    live = list(runs)
    while True:
        groups = _groups(live, folder)
        if not groups:
            break
        group, resume = groups[0]
        try:
            _train(group, folder, resume, opts)
        except TrainingDiverged as e:
            bad = group[e.model_index]
            out[bad.id] = {"status": "failed", "reason": _one_line(e), "metrics": {}, "labels": None}
            live = [r for r in live if r.id != bad.id]
            continue
        except Exception as e:  # noqa: BLE001 - recorded as the runs' one-line reason; the sweep goes on
            for r in group:
                out[r.id] = {"status": "failed", "reason": _one_line(e), "metrics": {}, "labels": None}
            live = [r for r in live if r.id not in out]
            continue
        if opts.stop_after_step is not None:
            break
    for r in runs:
        if r.id in out:
            continue
        d = run_dir(folder, r.id)
        if checkpoint_state(d)[0] != "final":
            out[r.id] = {"status": "pending", "reason": "", "metrics": {}, "labels": None}
            continue
        out[r.id] = _after(r, d, opts)
    secs = time.perf_counter() - t0
    for res in out.values():
        if res["status"] == "done":
            res["metrics"].update(wall_s=round(secs / len(runs), 3), stack_s=round(secs, 3), stack_size=len(runs))
    return out


def _after(r: RunSpec, d: Path, opts: ExecOptions) -> dict[str, Any]:
    """A finished run's metrics and, with ``after.find_heads``, its label summary (failed if find_heads fails)."""
    res: dict[str, Any] = {"status": "done", "reason": "", "metrics": run_metrics(d), "labels": None}
    if not opts.after.get("find_heads") or r.settings["arch"] != "hooked":  # find_heads takes HookedTransformers
        return res
    t = time.perf_counter()
    try:
        res["labels"] = label_summary(_find_heads(r, d, opts))
    except Exception as e:  # noqa: BLE001
        res.update(status="failed", reason="find_heads: " + _one_line(e))
    res["metrics"]["find_heads_s"] = round(time.perf_counter() - t, 3)
    return res


def _find_heads(r: RunSpec, d: Path, opts: ExecOptions):
    from anchor_interp.find_heads import find_heads
    from anchor_interp.models.checkpoint import load_checkpoint

    a = opts.after
    model, task = load_checkpoint(d, _task(r.settings), device=opts.device)
    result = find_heads(model, task, seed=a.get("seed", 0), n_samples=a.get("n_samples", 128), n_examples=0,
                        patching=a.get("patching", False), ablation=a.get("ablation", False),
                        preset=r.settings["preset"], source=str(d), allow_unsolved=True)
    result.save_json(d / "find_heads.json", overwrite=True)
    return result


def label_summary(result) -> dict[str, Any]:
    """The manifest's label summary of a FindHeadsResult: ``heads`` (name -> label, every head),
    ``shift`` / ``broadcast`` (head names), their layers, the shift offsets, ``effects`` (name -> causal
    effect of the label's role, shift and broadcast heads), ``solved`` (competence gate) and ``accuracy``
    (held-out, find_heads' batch), ``n_layers`` and ``n_heads``."""
    heads = result.heads
    shift = [h for h in heads if h["label"] == "shift"]
    bcast = [h for h in heads if h["label"] == "broadcast"]
    return {"heads": {h["name"]: h["label"] for h in heads},
            "shift": [h["name"] for h in shift], "broadcast": [h["name"] for h in bcast],
            "shift_layers": sorted({h["layer"] for h in shift}), "broadcast_layers": sorted({h["layer"] for h in bcast}),
            "shift_offsets": [h["offset"] for h in shift],
            "effects": {h["name"]: _finite(h["causal_effect"]) for h in shift + bcast},
            "solved": bool(result.competence.get("solved", False)), "accuracy": _finite(result.accuracy["overall"]),
            "n_layers": int(result.model["n_layers"]), "n_heads": int(result.model["n_heads"])}

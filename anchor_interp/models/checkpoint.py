"""Checkpoints: a folder with ``model.safetensors``, ``checkpoint.json`` and (to resume) ``optimizer.safetensors``.

Layout and field names follow docs/interfaces.md. Every file is written to a temporary name in the
same folder and renamed into place; ``checkpoint.json`` is written last and records the SHA-256 of
the tensor files, so a folder whose tensors were truncated, corrupted or half-replaced is detected.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import anchor_interp
from anchor_interp.atomic import atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported)

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit: missing, truncated, corrupt, wrong version or task."""


def _tensor_bytes(tensors: dict[str, Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()})


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) if needed; raise ValueError if it cannot be written to."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"output folder {str(path)!r} cannot be created: {e.strerror}") from e
    if not path.is_dir():
        raise ValueError(f"output folder {str(path)!r} exists and is not a folder")
    if not os.access(path, os.W_OK):
        raise ValueError(f"output folder {str(path)!r} is not writable; choose another --out")
    return path


def model_tensors(model: torch.nn.Module) -> dict[str, Tensor]:
    """The parameters of ``model`` by state_dict name (buffers such as the causal mask are rebuilt)."""
    return {name: p.detach() for name, p in model.named_parameters()}


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    task,
    *,
    preset: str | None = None,
    recipe: dict | None = None,
    seed: int | None = None,
    step: int = 0,
    epoch: int = 0,
    n_train: int | None = None,
    history: list[dict] | None = None,
    resume: dict | None = None,
    optimizer_tensors: dict[str, Tensor] | None = None,
    params: dict[str, Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder for ``model`` (a HookedTransformer) trained on ``task``.

    ``params`` (name -> tensor) replaces the model's own parameters when given (the trainer passes
    slices of its stacked weights). ``optimizer_tensors`` and ``resume`` are what a resume needs; both
    absent for shipped models. Raises ValueError if the folder cannot be written.
    """
    from anchor_interp.models.adapter import config_to_dict

    folder = ensure_writable_dir(path)
    tensors = params if params is not None else model_tensors(model)
    model_bytes = _tensor_bytes(tensors)
    atomic_write_bytes(folder / MODEL_FILE, model_bytes)
    files = {MODEL_FILE: hashlib.sha256(model_bytes).hexdigest()}
    if optimizer_tensors:
        opt_bytes = _tensor_bytes(optimizer_tensors)
        atomic_write_bytes(folder / OPTIMIZER_FILE, opt_bytes)
        files[OPTIMIZER_FILE] = hashlib.sha256(opt_bytes).hexdigest()
    elif (folder / OPTIMIZER_FILE).exists():
        os.unlink(folder / OPTIMIZER_FILE)
    meta = {
        "format_version": FORMAT_VERSION,
        "package_version": anchor_interp.__version__,
        "model_config": config_to_dict(model.cfg),
        "preset": preset,
        "task": task.to_dict(),
        "recipe": recipe,
        "seed": seed,
        "step": int(step),
        "epoch": int(epoch),
        "n_train": n_train,
        "history": list(history or []),
        "resume": resume,
        "files": files,
    }
    if extra:
        meta.update(extra)
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1, allow_nan=True) + "\n")
    return folder


def read_meta(path: str | os.PathLike) -> dict:
    """The parsed ``checkpoint.json`` of a checkpoint folder. Raises CheckpointError if missing,
    unparsable, or of a newer/unknown format version."""
    folder = Path(path)
    meta_path = folder / META_FILE
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {str(folder)!r} does not exist")
    if not meta_path.is_file():
        raise CheckpointError(f"{str(meta_path)!r} is missing: not a checkpoint folder (or the write never finished)")
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(meta_path)!r} is truncated or corrupt: {e}") from e
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise CheckpointError(f"{str(meta_path)!r} has no format_version: not an anchor_interp checkpoint")
    version = meta["format_version"]
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(meta_path)!r} has format_version {version!r} (written by anchor_interp "
            f"{meta.get('package_version')}); this anchor_interp {anchor_interp.__version__} reads only "
            f"format_version {FORMAT_VERSION}: retrain, or use the matching package version"
        )
    for key in ("model_config", "task", "files"):
        if key not in meta:
            raise CheckpointError(f"{str(meta_path)!r} lacks the field {key!r}: corrupt checkpoint")
    return meta


def read_tensors(path: str | os.PathLike, name: str, meta: dict) -> dict[str, Tensor]:
    """Load one tensor file of a checkpoint, verifying its SHA-256 against ``meta["files"]``."""
    from safetensors.torch import load

    file = Path(path) / name
    expected = meta["files"].get(name)
    if expected is None:
        raise CheckpointError(f"checkpoint {str(path)!r} has no {name} recorded in {META_FILE}")
    if not file.is_file():
        raise CheckpointError(f"{str(file)!r} is missing")
    data = file.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"{str(file)!r} is truncated or corrupt (its SHA-256 does not match {META_FILE}); "
            f"re-save or retrain it"
        )
    try:
        return load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{str(file)!r} cannot be parsed: {e}") from e


def _check_task(meta: dict, task, path) -> None:
    stored = meta["task"]
    if stored.get("name") != task.name:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained on task {stored.get('name')!r}, not {task.name!r}; "
            f"pass task=None to use the checkpoint's own task"
        )
    cfg = meta["model_config"]
    if cfg.get("d_vocab", 0) < task.vocab_size or cfg.get("n_ctx", 0) < task.seq_len:
        raise CheckpointError(
            f"checkpoint {str(path)!r} (d_vocab={cfg.get('d_vocab')}, n_ctx={cfg.get('n_ctx')}) cannot run "
            f"task {task.name!r} (vocab_size={task.vocab_size}, seq_len={task.seq_len})"
        )


def load_checkpoint(path: str | os.PathLike, task=None, *, device: str = "cpu"):
    """Load ``(model, task)`` from a checkpoint folder; the model is in eval mode on ``device``.

    ``task``: if given, it must have the checkpoint's task name and fit the model's vocabulary and
    context (its params may differ, e.g. another held-out rule); it is returned as the task.
    Otherwise the task is rebuilt from the checkpoint. Raises CheckpointError (a ValueError) for a
    missing/truncated/corrupt folder, an incompatible format version, or a task mismatch.
    """
    from anchor_interp.models import resolve_device
    from anchor_interp.models.adapter import build_model, config_from_dict
    from anchor_interp.tasks import Task

    meta = read_meta(path)
    if task is not None:
        _check_task(meta, task, path)
    else:
        try:
            task = Task.from_dict(meta["task"])
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"checkpoint {str(path)!r}: its task {meta['task']!r} cannot be rebuilt: {e}") from e
    try:
        cfg = config_from_dict(meta["model_config"], device="cpu")
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: its model_config does not fit this TransformerLens version: {e}"
        ) from e
    tensors = read_tensors(path, MODEL_FILE, meta)
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg)
    expected = dict(model.named_parameters())
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match its model_config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, p in expected.items():
            if p.shape != tensors[name].shape:
                raise CheckpointError(
                    f"checkpoint {str(path)!r}: {name} has shape {tuple(tensors[name].shape)}, config says {tuple(p.shape)}"
                )
            p.copy_(tensors[name])
    model.eval()
    dev = resolve_device(device)
    if dev.type != "cpu":
        model = model.to(dev)
    return model, task

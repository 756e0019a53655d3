"""Checkpoints: a folder with ``checkpoint.json``, the weights and (to resume) the optimizer state.

Layout and field names follow docs/interfaces.md. A save is crash-safe: the tensor files are written
under new names (``model.<step>.<hash>.safetensors``, ``optimizer.<step>.<hash>.safetensors``, each
through a temporary file and a rename), then ``checkpoint.json``, which names them and records their
SHA-256, replaces the old one by one atomic rename: the single commit point. Files the new
``checkpoint.json`` does not name (the previous save's tensors, leftovers of an interrupted save,
temporaries) are deleted only after that rename, so a process killed at any instant leaves either the
previous complete checkpoint or the new one. Folders of format 1 (``model.safetensors``,
``optimizer.safetensors``, e.g. the shipped zoo models) still load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import anchor_interp
from anchor_interp.atomic import atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported)

FORMAT_VERSION = 2  # 2: versioned tensor file names listed under "tensors"; 1: fixed names
READ_VERSIONS = (1, 2)
MODEL_FILE = "model.safetensors"  # the role "model" (the file name of format 1)
OPTIMIZER_FILE = "optimizer.safetensors"  # the role "optimizer"
META_FILE = "checkpoint.json"
_ROLES = {MODEL_FILE: "model", OPTIMIZER_FILE: "optimizer"}
# the files a save owns: tensor files of either format, and atomic_write_bytes' temporaries
_OWNED = re.compile(r"^(?:(?:model|optimizer)(?:\.\d+\.[0-9a-f]+)?\.safetensors|\..+\.tmp)$")


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
    _remove_unnamed(folder, keep=_named_files(folder))  # leftovers of an interrupted save
    blobs = {"model": _tensor_bytes(params if params is not None else model_tensors(model))}
    if optimizer_tensors:
        blobs["optimizer"] = _tensor_bytes(optimizer_tensors)
    names, files = {}, {}
    for role, data in blobs.items():
        digest = hashlib.sha256(data).hexdigest()
        names[role] = f"{role}.{int(step)}.{digest[:16]}.safetensors"  # new content, new name
        files[names[role]] = digest
        atomic_write_bytes(folder / names[role], data)
    meta = {
        "format_version": FORMAT_VERSION,
        "package_version": anchor_interp.__version__,
        "model_config": model.cfg.to_dict() if getattr(model.cfg, "arch", None) == "reference"
        else config_to_dict(model.cfg),
        "preset": preset,
        "task": task.to_dict(),
        "recipe": recipe,
        "seed": seed,
        "step": int(step),
        "epoch": int(epoch),
        "n_train": n_train,
        "history": list(history or []),
        "resume": resume,
        "tensors": names,
        "files": files,
    }
    if extra:
        meta.update(extra)
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1, allow_nan=True) + "\n")  # the commit
    _remove_unnamed(folder, keep=set(files))
    return folder


def _named_files(folder: Path) -> set[str] | None:
    """The tensor files the folder's current checkpoint.json names; None when it has none readable
    (then nothing but temporaries is removed before the save)."""
    try:
        return set(read_meta(folder)["files"])
    except (CheckpointError, OSError):
        return None


def _remove_unnamed(folder: Path, keep: set[str] | None) -> None:
    """Delete the files a save owns (tensor files, temporaries) that are not in ``keep``; with
    ``keep=None`` only temporaries."""
    for p in folder.iterdir():
        if _OWNED.match(p.name) and (p.name.endswith(".tmp") or (keep is not None and p.name not in keep)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


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
    if version not in READ_VERSIONS:
        raise CheckpointError(
            f"{str(meta_path)!r} has format_version {version!r} (written by anchor_interp "
            f"{meta.get('package_version')}); this anchor_interp {anchor_interp.__version__} reads only "
            f"format_version {' and '.join(map(str, READ_VERSIONS))}: retrain, or use the matching package version"
        )
    for key in ("model_config", "task", "files") + (("tensors",) if version >= 2 else ()):
        if key not in meta:
            raise CheckpointError(f"{str(meta_path)!r} lacks the field {key!r}: corrupt checkpoint")
    for key in ("files", "tensors"):
        if not isinstance(meta.get(key, {}), dict):
            raise CheckpointError(f"{str(meta_path)!r}: its field {key!r} is not an object: corrupt checkpoint")
    return meta


def tensor_file(meta: dict, name: str) -> str:
    """The file name holding ``name`` (``MODEL_FILE`` or ``OPTIMIZER_FILE``, the roles) in a checkpoint
    of ``meta``: its versioned name (format 2), or ``name`` itself (format 1)."""
    if "tensors" in meta:
        return meta["tensors"].get(_ROLES.get(name, name), name)
    return name


def read_tensors(path: str | os.PathLike, name: str, meta: dict) -> dict[str, Tensor]:
    """Load one tensor file of a checkpoint (``name``: ``MODEL_FILE`` or ``OPTIMIZER_FILE``), verifying
    its SHA-256 against ``meta["files"]``."""
    from safetensors.torch import load

    name = tensor_file(meta, name)
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


def _model_of_config(d: dict, path) -> torch.nn.Module:
    """A freshly built model of a checkpoint's ``model_config`` (a HookedTransformer, or a
    ReferenceTransformer when ``arch`` is "reference"). Raises CheckpointError when it does not fit."""
    from anchor_interp.models.adapter import build_model, config_from_dict

    try:
        if d.get("arch") == "reference":
            from anchor_interp.models.reference import ReferenceConfig, ReferenceTransformer

            return ReferenceTransformer(ReferenceConfig(**d))
        return build_model(config_from_dict(d, device="cpu"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: its model_config does not fit this TransformerLens version: {e}"
        ) from e


def load_checkpoint(path: str | os.PathLike, task=None, *, device: str = "cpu"):
    """Load ``(model, task)`` from a checkpoint folder; the model is in eval mode on ``device``.

    ``task``: if given, it must have the checkpoint's task name and fit the model's vocabulary and
    context (its params may differ, e.g. another held-out rule); it is returned as the task.
    Otherwise the task is rebuilt from the checkpoint. Raises CheckpointError (a ValueError) for a
    missing/truncated/corrupt folder, an incompatible format version, or a task mismatch.
    """
    from anchor_interp.models import resolve_device
    from anchor_interp.tasks import Task

    meta = read_meta(path)
    if task is not None:
        _check_task(meta, task, path)
    else:
        try:
            task = Task.from_dict(meta["task"])
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"checkpoint {str(path)!r}: its task {meta['task']!r} cannot be rebuilt: {e}") from e
    tensors = read_tensors(path, MODEL_FILE, meta)
    with torch.random.fork_rng(devices=[]):
        model = _model_of_config(meta["model_config"], path)
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

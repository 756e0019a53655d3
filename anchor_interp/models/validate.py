"""Input checks shared by every stage: tokens for a model, a model for a task.

Each raises ValueError with a message naming the argument, what was wrong and what is allowed.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_model_fits_task", "check_tokens"]


def check_tokens(model, tokens, name: str = "tokens") -> None:
    """Raise ValueError unless ``tokens`` is a non-empty 2-D integer tensor of ids in ``[0, d_vocab)``
    no longer than the model's ``n_ctx``."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(
            f"{name}: expected an integer tensor (a long tensor) of token ids, shape [batch, seq], got "
            f"{type(tokens).__name__} {getattr(tokens, 'shape', '')} {getattr(tokens, 'dtype', '')}"
        )
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"{name}: empty batch (shape {tuple(tokens.shape)}); pass at least one row and one position")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"{name}: sequence length {tokens.shape[1]} exceeds the model's n_ctx={model.cfg.n_ctx}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= model.cfg.d_vocab:
        raise ValueError(f"{name}: ids must be in [0, {model.cfg.d_vocab}) (d_vocab); got min {lo}, max {hi}")


def check_model_fits_task(cfg, task) -> None:
    """Raise ValueError unless a model with config ``cfg`` can run ``task``: ``d_vocab`` and
    ``d_vocab_out`` at least ``task.vocab_size``, ``n_ctx`` at least ``task.seq_len``."""
    d_vocab_out = cfg.d_vocab_out if cfg.d_vocab_out > 0 else cfg.d_vocab
    problems = []
    if cfg.d_vocab < task.vocab_size:
        problems.append(f"model config d_vocab={cfg.d_vocab} is smaller than task {task.name!r} vocab_size="
                        f"{task.vocab_size}; use d_vocab >= {task.vocab_size}")
    elif d_vocab_out < task.vocab_size:
        problems.append(f"model config d_vocab_out={d_vocab_out} is smaller than task {task.name!r} vocab_size="
                        f"{task.vocab_size}; targets would be out of range")
    if cfg.n_ctx < task.seq_len:
        problems.append(f"model config n_ctx={cfg.n_ctx} is shorter than task {task.name!r} seq_len="
                        f"{task.seq_len}; use n_ctx >= {task.seq_len}")
    if problems:
        raise ValueError(f"model does not fit task {task.name!r}: " + "; ".join(problems)
                         + " (or use a checkpoint trained on this task)")

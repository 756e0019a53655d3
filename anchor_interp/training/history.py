"""Training history: one metric row per evaluation, and its files (history.csv, .json, .png).

A row, in column order: ``epoch``, ``step``, ``lr``; ``train_loss`` (nats) and ``train_acc`` (in
[0, 1]), running means over that row's epoch only (the steps since the previous epoch ended); the
held-out metrics of :func:`~anchor_interp.training.evaluate_stacked` (``test_acc/<group>`` per group,
``test_loss``, ``test_acc``, ``test_acc_masked``); ``time_s``, seconds since the run started (counting
the time before a resume). "Held-out accuracy" (``test_acc``, the early-stop criterion and the plot's
``test_acc`` curve) is the accuracy on held-out sequences of the unmasked groups only; masked groups are
reported separately (``test_acc_masked``). ``history.png`` is drawn by the report's
:func:`anchor_interp.report.plots.plot_history` (one drawing of a history for both).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["EpochSums", "history_row", "plot_history_png", "write_history"]


@dataclass
class EpochSums:
    """Per-model running sums over the current epoch's training steps, indexed by model (not row)."""

    loss: Tensor  # (k,) sum over steps of the batch's mean loss x its rows, nats
    correct: Tensor  # (k,) correct last-position predictions
    n: Tensor  # (k,) long: training sequences seen

    @classmethod
    def zeros(cls, k: int, device) -> EpochSums:
        return cls(torch.zeros(k, device=device), torch.zeros(k, device=device),
                   torch.zeros(k, dtype=torch.long, device=device))

    def add(self, models: Tensor, loss: Tensor, correct: Tensor, n: Tensor) -> None:
        """Add one step: ``models`` (k_act,) model indices, the others (k_act,) per stacked row."""
        self.loss.index_add_(0, models, loss)
        self.correct.index_add_(0, models, correct)
        self.n.index_add_(0, models, n)

    def reset(self, i: int) -> None:
        """Model i starts a new epoch."""
        self.loss[i] = self.correct[i] = 0.0
        self.n[i] = 0


def history_row(sums: EpochSums, i: int, *, epoch: int, step: int, lr: float, held_out: dict,
                time_s: float) -> dict:
    """Model i's history row at the end of ``epoch`` (global ``step``); ``held_out``: its metrics from
    evaluate_stacked; ``time_s``: seconds, rounded to ms."""
    row = {"epoch": epoch, "step": step, "lr": lr,
           "train_loss": float(sums.loss[i]) / int(sums.n[i]),
           "train_acc": float(sums.correct[i]) / int(sums.n[i])}
    row.update(held_out)
    row["time_s"] = round(time_s, 3)
    return row


def write_history(history: list[dict], out_dir: str | os.PathLike) -> None:
    """Write ``history.csv``, ``history.json`` and ``history.png`` (loss and accuracy vs epoch) atomically."""
    from anchor_interp.atomic import atomic_write_bytes, atomic_write_text

    out = Path(out_dir)
    if not history:
        return
    cols = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(cols)] + [",".join(_fmt(row.get(c, "")) for c in cols) for row in history]
    atomic_write_text(out / "history.csv", "\n".join(lines) + "\n")
    atomic_write_text(out / "history.json", json.dumps(history, indent=0) + "\n")
    atomic_write_bytes(out / "history.png", plot_history_png(history))


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def plot_history_png(history: list[dict], title: str = "") -> bytes:
    """PNG bytes of the history's loss and accuracy curves versus epoch: the report's figure,
    :func:`anchor_interp.report.plots.plot_history` (matplotlib is imported on first use).
    Raises ValueError for an empty history."""
    from anchor_interp.report.plots import figure_png, plot_history

    return figure_png(plot_history(history, title=title))

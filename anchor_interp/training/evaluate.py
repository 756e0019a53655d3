"""Held-out evaluation of stacked models: loss and accuracy at the last position, per task group.

What "held-out accuracy" means in a training history: ``test_acc`` is the accuracy on the held-out
sequences of the task's **unmasked** groups (the groups the model is trained on, evaluated on unseen
sequences), and ``test_loss`` their mean loss. Masked groups, never trained on, never count toward
them: their accuracy is reported on its own as ``test_acc_masked`` (None when the task has none), and
every group, masked or not, has its own ``test_acc/<group name>``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

import anchor_interp.training as _api  # stacked_forward is looked up on the package (see its docstring)

__all__ = ["evaluate_stacked"]


@torch.no_grad()
def evaluate_stacked(
    params: dict[str, Tensor],
    cfg,
    tokens: Int[Tensor, "k n seq"],
    targets: Int[Tensor, "k n"],
    group: Int[Tensor, "k n"],
    task,
    chunk: int = 4096,
) -> list[dict]:
    """Held-out loss and accuracy per model (overall, seen groups, masked groups, and per group).

    tokens: (k, n, seq); targets, group: (k, n). Accuracy in [0, 1]; loss in nats (mean cross-entropy).
    Rows with target -1 are skipped. Masked groups never count toward ``test_acc``; it is the
    accuracy over seen groups (``test_acc_masked`` reports the masked ones; None when there are none).
    """
    k, n, _ = tokens.shape
    losses, correct = [], []
    for s in range(0, n, chunk):
        logits = _api.stacked_forward(params, cfg, tokens[:, s : s + chunk])  # (k, c, V)
        t = targets[:, s : s + chunk]  # (k, c)
        valid = t >= 0
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.clamp(min=0).reshape(-1), reduction="none")
        losses.append(ce.view(t.shape).masked_fill(~valid, float("nan")))
        correct.append(((logits.argmax(-1) == t) & valid).float().masked_fill(~valid, float("nan")))
    loss = torch.cat(losses, 1).cpu()  # (k, n)
    corr = torch.cat(correct, 1).cpu()  # (k, n)
    group = group.cpu()
    rows = []
    for i in range(k):
        row: dict[str, float] = {}
        seen = torch.zeros(n, dtype=torch.bool)
        masked = torch.zeros(n, dtype=torch.bool)
        for gi, g in enumerate(task.groups):
            sel = group[i] == gi
            (masked if g.masked else seen).logical_or_(sel)
            row[f"test_acc/{g.name}"] = _nanmean(corr[i][sel])
        row["test_loss"] = _nanmean(loss[i][seen])
        row["test_acc"] = _nanmean(corr[i][seen])
        row["test_acc_masked"] = _nanmean(corr[i][masked])
        rows.append(row)
    return rows


def _nanmean(x: Tensor) -> float | None:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else None

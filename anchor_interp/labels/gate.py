"""The competence gate: label only what the model was trained to do, and only if it does it.

    batch, notes = unmasked_rows(batch, task)     # rows of masked groups (never trained on) left out
    gate = competence(model, batch, task)         # {"competence_accuracy", "attainable_accuracy", ...}

A model below ``COMPETENCE_FLOOR`` x the attainable accuracy (``statistical_output`` tops out at 0.8:
its answers are random) has attention patterns that look like shifts and broadcasts without solving the
task; ``analyse_heads`` then withholds the shift / broadcast labels (docs/concepts.md, "Competence gate").
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["COMPETENCE_FLOOR", "MIN_ROWS", "competence", "unmasked_rows"]

COMPETENCE_FLOOR = 0.9  # least held-out accuracy, as a fraction of the attainable accuracy
MIN_ROWS = 20  # fewer rows than this: labels are refused (5 folds of 4 rows say nothing)


def unmasked_rows(batch, task) -> tuple[object, list[str]]:
    """(the rows of ``batch`` in unmasked groups, a note when rows were left out).

    Raises ValueError if every row is in a masked group."""
    masked = torch.tensor([bool(g.masked) for g in task.groups], device=batch.group.device)
    keep = ~masked[batch.group.clamp_min(0)]  # (B,)
    n_out = int((~keep).sum())
    if n_out == 0:
        return batch, []
    if n_out == len(batch):
        raise ValueError(f"tokens: all {len(batch)} rows are in masked groups of task {task.name!r} (never trained "
                         "on); sample held-out rows of the unmasked groups")
    names = sorted({task.groups[int(g)].name for g in batch.group[~keep].tolist()})
    note = (f"{n_out} of {len(batch)} rows are in masked groups ({', '.join(names)}: never trained on) and are left "
            "out of the labels; their accuracy is reported by group")
    return batch.select(torch.nonzero(keep)[:, 0]), [note]


@torch.no_grad()
def competence(model, batch, task, logits: Tensor | None = None, predictions: Tensor | None = None) -> dict:
    """Held-out accuracy of ``batch`` (argmax at the last position, rows with a target), the attainable
    accuracy (mean over rows of the largest target probability: 1 for a deterministic task), the floor
    (``COMPETENCE_FLOOR`` x attainable) and ``solved`` (accuracy >= floor). Accuracies in [0, 1].
    ``logits``: the model's logits on ``batch.tokens`` when the caller has already run it (B, T, V), or
    ``predictions``: their argmax at the last position (B,). Rows are taken in chunks of
    :data:`anchor_interp.scores.cache.CHUNK_ROWS`."""
    from anchor_interp.scores.cache import row_chunks

    valid = batch.targets >= 0  # (B,)
    if predictions is None and logits is not None:
        predictions = logits[:, -1].argmax(-1)
    if predictions is None:
        predictions = torch.cat([model(batch.tokens[sl])[:, -1].argmax(-1) for sl in row_chunks(len(batch))])
    acc = float((predictions == batch.targets)[valid].float().mean()) if bool(valid.any()) else 0.0
    best = torch.cat([task.target_probs(batch.select(sl)).max(-1).values for sl in row_chunks(len(batch))])  # (B,)
    attainable = float(best[valid].mean()) if bool(valid.any()) else 1.0
    floor = COMPETENCE_FLOOR * attainable
    return {"competence_accuracy": acc, "attainable_accuracy": attainable, "competence_floor": floor,
            "solved": acc >= floor}

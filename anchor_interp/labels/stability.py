"""Label stability: the same rule on ``N_FOLDS`` disjoint batches (folds) of the rows.

    per_head = fold_labels(model, batch, task, evidence, thresholds, seed=0)
    per_head[(layer, head)] -> [(label, offset, kind), ...]  one per fold

Row ``i`` goes to fold ``i % N_FOLDS``; each fold gets its own counterfactuals (seed ``seed + 7919 * (f +
1)``) and its own role evidence; the pattern scores of the whole batch decide the role-less kinds. A
head whose label is not the same on every fold is ``borderline`` (``analyse_heads``).
"""

from __future__ import annotations

import dataclasses

import torch

from anchor_interp.labels.evidence import ModelEvidence
from anchor_interp.labels.records import Thresholds
from anchor_interp.labels.roles import measure_roles
from anchor_interp.labels.rule import decide
from anchor_interp.scores.patterns import is_causal

__all__ = ["MIN_FOLD_ROWS", "N_FOLDS", "fold_labels"]

N_FOLDS = 5
MIN_FOLD_ROWS = 16  # a fold with fewer rows is too small to say anything: stability is not measured


def fold_labels(model, batch, task, ev: ModelEvidence, th: Thresholds, *, seed: int) -> dict[tuple[int, int], list]:
    """Each head's (label, offset, kind) on each fold (empty when the batch is too small for the folds)."""
    n = len(batch)
    if n < N_FOLDS * MIN_FOLD_ROWS:
        ev.notes.append(f"{n} rows are too few for {N_FOLDS} folds of {MIN_FOLD_ROWS}: label stability is not "
                        "measured")
        return {}
    out: dict[tuple[int, int], list] = {key: [] for key in ev.heads}
    for f in range(N_FOLDS):
        fold = batch.select(torch.arange(f, n, N_FOLDS, device=batch.tokens.device))
        causal = measure_roles(model, fold, task, thresholds=th, seed=seed + 7919 * (f + 1), causal=is_causal(model))
        for key, head_ev in ev.heads.items():
            effect = {kind: float(v[key]) for kind, v in causal.head_effect.items()}
            rec = decide(dataclasses.replace(head_ev, roles=causal.roles[key], head_effect=effect), th)
            out[key].append((rec.label, rec.offset, rec.kind))
    return out

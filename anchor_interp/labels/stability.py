"""Label stability: the same rule on ``N_FOLDS`` disjoint batches (folds) of the rows.

    per_head = fold_labels(model, batch, task, evidence, thresholds, seed=0)
    per_head[(layer, head)] -> [FoldLabel(label, offset, kind, passing), ...]  one per fold

Row ``i`` goes to fold ``i % N_FOLDS``; each fold gets its own counterfactuals (seed ``seed + 7919 * (f +
1)``) and its own role evidence; the pattern scores of the whole batch decide the role-less kinds. A
fold **confirms** a head's label when it gives the same label and kind and, for ``shift(k)``, a shift
from offset ``k`` passes on it too (it need not be the fold's largest offset); a head that some fold does
not confirm is ``borderline`` (``analyse_heads``).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from anchor_interp.labels.evidence import ModelEvidence
from anchor_interp.labels.records import Thresholds
from anchor_interp.labels.roles import measure_roles
from anchor_interp.labels.rule import decide
from anchor_interp.scores.patterns import is_causal

__all__ = ["MIN_FOLD_ROWS", "N_FOLDS", "FoldLabel", "confirms", "fold_labels"]

N_FOLDS = 5
MIN_FOLD_ROWS = 16  # a fold with fewer rows is too small to say anything: stability is not measured


class FoldLabel(NamedTuple):
    """One fold's label of one head, and the names of the roles that passed on it (``"shift(-1)"``)."""

    label: str
    offset: int | None
    kind: str | None
    passing: frozenset[str]

    @classmethod
    def of(cls, rec) -> FoldLabel:
        """The fold label of a labelled ``HeadRecord``."""
        return cls(rec.label, rec.offset, rec.kind, frozenset(r["name"] for r in rec.roles if r["passes"]))


def confirms(fold: FoldLabel, label: str, offset: int | None, kind: str | None) -> bool:
    """Whether ``fold`` confirms the label ``(label, offset, kind)`` (module docstring)."""
    if (fold.label, fold.kind) != (label, kind):
        return False
    return label != "shift" or offset is None or f"shift({offset:+d})" in fold.passing


def fold_labels(model, batch, task, ev: ModelEvidence, th: Thresholds, *, seed: int) -> dict[tuple[int, int], list]:
    """Each head's :class:`FoldLabel` on each fold (empty when the batch is too small for the folds)."""
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
            out[key].append(FoldLabel.of(rec))
    return out

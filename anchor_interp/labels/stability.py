"""Label stability: the same rule on ``N_FOLDS`` disjoint batches (folds) of the rows.

    per_head = fold_labels(model, batch, task, evidence, thresholds, seed=0)
    per_head[(layer, head)] -> [FoldLabel(label, offset, kind, passing), ...]  one per fold

    per_head = batch_labels(model, task, 512, evidence, thresholds, seed=0)   # the recheck (below)

Row ``i`` goes to fold ``i % N_FOLDS``; each fold gets its own counterfactuals (seed ``seed + 7919 * (f +
1)``) and its own role evidence; the pattern scores of the whole batch decide the role-less kinds. A
fold **confirms** a head's label when it gives the same label and kind and, for ``shift(k)``, a shift
from offset ``k`` passes on it too (it need not be the fold's largest offset); a head that some fold does
not confirm is ``borderline`` (``analyse_heads``).

**Recheck.** A fold holds a fifth of the rows, so two roles whose effects differ clearly on the whole
batch (e.g. 0.47 +- 0.05 against 0.38 +- 0.04) can swap places on one fold by chance. With a task,
``analyse_heads`` labels each head that some fold does not confirm (and that is not already borderline
on the whole batch) again on ``N_FOLDS`` independent held-out batches of the batch's own size, sampled
from the task (sample seed ``seed + RECHECK_SEED * (f + 1)``, counterfactual seeds as for the folds;
only those heads' roles are measured), and these batches, not the folds, give that head's stability and
confirmation (docs/concepts.md, section 5).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from anchor_interp.labels.evidence import ModelEvidence, first_rows
from anchor_interp.labels.gate import unmasked_rows
from anchor_interp.labels.records import Thresholds
from anchor_interp.labels.roles import measure_roles
from anchor_interp.labels.rule import decide
from anchor_interp.scores.patterns import is_causal

__all__ = ["MIN_FOLD_ROWS", "N_FOLDS", "RECHECK_SEED", "FoldLabel", "batch_labels", "confirms", "fold_labels"]

N_FOLDS = 5
MIN_FOLD_ROWS = 16  # a fold with fewer rows is too small to say anything: stability is not measured
RECHECK_SEED = 1_000_003  # recheck batch f is sampled with seed + RECHECK_SEED * (f + 1)


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
    folds = [batch.select(torch.arange(f, n, N_FOLDS, device=batch.tokens.device)) for f in range(N_FOLDS)]
    return _labels_on(model, folds, task, ev, th, seed=seed)


def batch_labels(model, task, n_rows: int, ev: ModelEvidence, th: Thresholds, *, seed: int,
                 heads: set[tuple[int, int]] | None = None, device=None) -> dict[tuple[int, int], list]:
    """Each head's (``heads``: those heads') :class:`FoldLabel` on ``N_FOLDS`` independent held-out batches of
    ``n_rows`` rows sampled from ``task`` (the unmasked groups' rows of each; the recheck of the module
    docstring)."""
    batches = [first_rows(unmasked_rows(task.sample(n_rows, split="test", seed=seed + RECHECK_SEED * (f + 1),
                                                     device=device), task)[0]) for f in range(N_FOLDS)]
    return _labels_on(model, batches, task, ev, th, seed=seed, heads=heads)


def _labels_on(model, batches: list, task, ev: ModelEvidence, th: Thresholds, *, seed: int,
               heads: set[tuple[int, int]] | None = None) -> dict:
    """The rule on each of ``batches`` (its own counterfactuals and role evidence; the whole batch's pattern
    scores): (layer, head) -> one FoldLabel per batch, for every head or only ``heads``."""
    keys = sorted(ev.heads if heads is None else heads)
    out: dict[tuple[int, int], list] = {key: [] for key in keys}
    for f, rows in enumerate(batches):
        causal = measure_roles(model, rows, task, thresholds=th, seed=seed + 7919 * (f + 1), causal=is_causal(model),
                               heads=heads)
        for key in keys:
            head_ev = ev.heads[key]
            effect = {kind: float(v[key]) for kind, v in causal.head_effect.items()}
            rec = decide(dataclasses.replace(head_ev, roles=causal.roles[key], head_effect=effect), th)
            out[key].append(FoldLabel.of(rec))
    return out

"""Label every head ``shift``, ``broadcast`` or ``neither``: evidence -> rule -> groups -> records.

    records = label_heads(model, batch, task=task)          # with a task: counterfactual patching
    records = label_heads(model, tokens)                    # no task: ablation KL on the model's own output
    analysis = analyse_heads(model, batch, task=task)       # records + head groups + thresholds

    evidence.py  model + rows -> HeadEvidence per head (pattern, weight, ablation and patching scores)
    rule.py      HeadEvidence -> HeadRecord (``decide``: pure; the table of roles)
    groups.py    records + evidence -> HeadGroups (joint ablation), records updated
    records.py   Thresholds, HeadRecord, HeadGroup, HeadAnalysis (the JSON contract)

docs/concepts.md gives the rule's reasons and the measurements behind each threshold.
"""

from __future__ import annotations

from torch import Tensor

from anchor_interp.labels.evidence import (
    MIN_BASE_ACCURACY,
    ROLE_COUNTERFACTUAL,
    HeadEvidence,
    gather_evidence,
)
from anchor_interp.labels.groups import find_groups
from anchor_interp.labels.records import (
    DEFAULT_THRESHOLDS,
    FULL_EVIDENCE,
    LABELS,
    NEITHER_KINDS,
    HeadAnalysis,
    HeadGroup,
    HeadRecord,
    Thresholds,
)
from anchor_interp.labels.rule import ROLES, decide
from anchor_interp.models.validate import check_tokens
from anchor_interp.names import head_name

__all__ = [
    "DEFAULT_THRESHOLDS",
    "FULL_EVIDENCE",
    "HeadAnalysis",
    "HeadEvidence",
    "HeadGroup",
    "HeadRecord",
    "LABELS",
    "MIN_BASE_ACCURACY",
    "NEITHER_KINDS",
    "ROLES",
    "ROLE_COUNTERFACTUAL",
    "Thresholds",
    "analyse_heads",
    "decide",
    "head_name",
    "label_heads",
]


def label_heads(
    model,
    tokens,
    task=None,
    *,
    n_samples: int | None = None,
    seed: int = 0,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    method: str = "mean",
) -> list[HeadRecord]:
    """One :class:`HeadRecord` per head, ordered by (layer, head); see :mod:`anchor_interp.labels.rule`.

    ``tokens``: a token tensor ``[batch, seq]`` or, with a task, preferably the task's ``Batch`` (it
    carries the anchor and key positions). With a task and a bare tensor, a held-out batch of
    ``n_samples`` (default: as many rows as ``tokens``) is sampled from the task with ``seed`` instead.
    ``method``: ablation method for groups and the no-task KL (``"mean"``, ``"zero"``, ``"resample"``).
    Raises ValueError for bad inputs (messages name the parameter), for a task batch whose
    counterfactual cannot be built, and for thresholds outside [0, 1].
    """
    return analyse_heads(model, tokens, task, n_samples=n_samples, seed=seed, thresholds=thresholds,
                         method=method).records


def _task_batch(tokens, task, n_samples, seed):
    from anchor_interp.tasks import Batch

    if isinstance(tokens, Batch):
        return tokens, []
    if not isinstance(tokens, Tensor):
        raise ValueError(f"tokens: expected a Batch or a [batch, seq] token tensor, got {type(tokens).__name__}")
    n = int(n_samples or tokens.shape[0])
    note = (f"tokens were a bare tensor: labelled on {n} held-out rows sampled from task {task.name!r} "
            f"with seed {seed} (pass the Batch to use your own rows)")
    return task.sample(n, split="test", seed=seed, device=tokens.device), [note]


def analyse_heads(
    model,
    tokens,
    task=None,
    *,
    n_samples: int | None = None,
    seed: int = 0,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    method: str = "mean",
) -> HeadAnalysis:
    """Like :func:`label_heads`, and also return the head groups, thresholds and baselines."""
    if not isinstance(thresholds, Thresholds):
        raise ValueError(f"thresholds: expected a Thresholds instance, got {type(thresholds).__name__}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed: must be an int, got {seed!r}")
    batch, notes = None, []
    if task is not None:
        batch, notes = _task_batch(tokens, task, n_samples, seed)
        tokens = batch.tokens
    check_tokens(model, tokens)
    ev = gather_evidence(model, tokens, batch=batch, task=task, thresholds=thresholds, method=method, seed=seed)
    records = [decide(ev.heads[key], thresholds) for key in sorted(ev.heads)]
    groups = find_groups(model, tokens, batch, records, ev, thresholds, method=method, seed=seed)
    _note_dispensable(records, thresholds, has_task=batch is not None)
    for rec in records:
        rec.notes = notes + ev.notes + rec.notes
    return HeadAnalysis(records, groups, thresholds, ev.baseline)


def _note_dispensable(records: list[HeadRecord], th: Thresholds, *, has_task: bool) -> None:
    """A labelled head outside any group whose ablation alone changes little: say others can do without it."""
    drop_key = "ablation_accuracy_drop" if has_task else "ablation_kl_share"
    for rec in records:
        if rec.label != "neither" and rec.group is None and rec.scores[drop_key] < (
                th.effect if has_task else th.kl_share):
            rec.notes.append(f"mean-ablating this head alone changes {drop_key.removeprefix('ablation_')} by only "
                             f"{rec.scores[drop_key]:.0%}: other heads can do without it")

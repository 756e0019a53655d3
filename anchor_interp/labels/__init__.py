"""Label every head ``shift``, ``broadcast`` or ``neither``: evidence -> rule -> groups -> records.

    records = label_heads(model, batch, task=task)          # with a task: counterfactual patching
    records = label_heads(model, tokens)                    # no task: ablation KL on the model's own output
    analysis = analyse_heads(model, batch, task=task)       # records + head groups + thresholds

    routes.py     clean + counterfactual rows -> per-part source effects and path (route) effects
    roles.py      route effects -> each head's candidate roles (shift(k), broadcast(slot), copy)
    evidence.py   model + rows -> HeadEvidence per head (pattern, weight, ablation scores and roles)
    rule.py       HeadEvidence -> HeadRecord (``decide``: pure; the table of roles)
    stability.py  rows split into folds (or, to recheck, fresh batches) -> each head's label per fold ->
                  stability, borderline
    groups.py     records + evidence -> HeadGroups (joint ablation), records updated
    records.py    Thresholds, HeadRecord, HeadGroup, HeadAnalysis (the JSON contract)

With a task, ``analyse_heads`` first keeps the rows of the unmasked groups (what the model was trained
to do) and checks the model solves them (the competence gate); then evidence -> rule -> stability over
``N_FOLDS`` folds (a head some fold does not confirm: rechecked on ``N_FOLDS`` fresh batches) -> groups.

docs/concepts.md gives the rule's reasons and the measurements behind each threshold.
"""

from __future__ import annotations

from torch import Tensor

from anchor_interp.labels.evidence import MIN_BASE_ACCURACY, HeadEvidence, first_rows, gather_evidence
from anchor_interp.labels.gate import COMPETENCE_FLOOR, MIN_ROWS, competence, unmasked_rows
from anchor_interp.labels.groups import circuit_heads, find_groups
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
from anchor_interp.labels.roles import RoleEvidence
from anchor_interp.labels.rule import ROLES, decide
from anchor_interp.labels.stability import N_FOLDS, batch_labels, confirms, fold_labels
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
    "COMPETENCE_FLOOR",
    "MIN_BASE_ACCURACY",
    "MIN_ROWS",
    "NEITHER_KINDS",
    "N_FOLDS",
    "ROLES",
    "RoleEvidence",
    "Thresholds",
    "analyse_heads",
    "circuit_heads",
    "competence",
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
    allow_unsolved: bool = False,
) -> list[HeadRecord]:
    """One :class:`HeadRecord` per head, ordered by (layer, head); see :mod:`anchor_interp.labels.rule`.

    ``tokens``: a token tensor ``[batch, seq]`` or, with a task, preferably the task's ``Batch`` (it
    carries the anchor and key positions). With a task and a bare tensor, a held-out batch of
    ``n_samples`` (default: as many rows as ``tokens``) is sampled from the task with ``seed`` instead.
    ``method``: ablation method for groups and the no-task KL (``"mean"``, ``"zero"``, ``"resample"``).
    With a task, a model whose held-out accuracy on the unmasked groups is below ``COMPETENCE_FLOOR`` of
    what the task allows gets no shift / broadcast label (kind ``unsolved``, with a note) unless
    ``allow_unsolved``. Raises ValueError for bad inputs (messages name the parameter), for fewer than
    ``MIN_ROWS`` rows, and for thresholds outside [0, 1].
    """
    return analyse_heads(model, tokens, task, n_samples=n_samples, seed=seed, thresholds=thresholds,
                         method=method, allow_unsolved=allow_unsolved).records


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
    allow_unsolved: bool = False,
    recheck: bool = True,
) -> HeadAnalysis:
    """Like :func:`label_heads`, and also return the head groups, thresholds and baselines.

    ``recheck`` (with a task): label a head some fold does not confirm again on ``N_FOLDS`` fresh held-out
    batches of the batch's size (:mod:`anchor_interp.labels.stability`); ``False`` keeps the folds."""
    if not isinstance(thresholds, Thresholds):
        raise ValueError(f"thresholds: expected a Thresholds instance, got {type(thresholds).__name__}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed: must be an int, got {seed!r}")
    batch, notes = None, []
    if task is not None:
        batch, notes = _task_batch(tokens, task, n_samples, seed)
        check_tokens(model, batch.tokens)
        n_sampled = len(batch)
        batch, dropped_note = unmasked_rows(batch, task)
        notes += dropped_note
        tokens = batch.tokens
    check_tokens(model, tokens)
    if tokens.shape[0] < MIN_ROWS:
        raise ValueError(f"tokens: {tokens.shape[0]} rows; labels need at least {MIN_ROWS} (pass more rows, e.g. "
                         f"n_samples=256)")
    ev = gather_evidence(model, tokens, batch=batch, task=task, thresholds=thresholds, method=method, seed=seed)
    if batch is not None and len(first_rows(batch)) < len(batch):
        notes.append(f"counterfactual role evidence (effects, 95% intervals, routes, stability folds) reads the first "
                     f"{len(first_rows(batch))} of the {len(batch)} rows; accuracy, DLA and ablation read every row "
                     "(docs/performance.md, Memory)")
    records = [decide(ev.heads[key], thresholds) for key in sorted(ev.heads)]
    baseline = dict(ev.baseline)
    if batch is not None:
        gate = competence(model, batch, task, predictions=ev.clean_pred)
        baseline.update(gate)
        stability = _stability(model, batch, task, ev, records, thresholds, seed=seed, recheck_rows=n_sampled if recheck else 0)
        for rec in records:
            _apply_stability(rec, stability.get((rec.layer, rec.head)))
        if not gate["solved"]:
            notes.append(_gate_note(gate, allow_unsolved))
            if not allow_unsolved:
                _withhold_labels(records)
    else:
        notes.append("no task: labels come from attention patterns, weights and ablation (KL share) on the given "
                     "tokens; no counterfactual, route or competence evidence is available")
    groups = find_groups(model, tokens, batch, records, ev, thresholds, method=method, seed=seed)
    _note_dispensable(records, thresholds, has_task=batch is not None)
    for rec in records:
        rec.notes = notes + ev.notes + rec.notes
    head_effects = {kind: v.tolist() for kind, v in ev.causal.head_effect.items()} if ev.causal else {}
    circuit = [head_name(*h) for h in circuit_heads(records, groups, thresholds)]
    return HeadAnalysis(records, groups, thresholds, baseline, head_effects, circuit)


def _stability(model, batch, task, ev, records: list[HeadRecord], th: Thresholds, *, seed: int,
               recheck_rows: int) -> dict:
    """(layer, head) -> its labels on the ``N_FOLDS`` folds; with ``recheck_rows`` > 0, a head some fold does not
    confirm (and not borderline already) gets its labels on ``N_FOLDS`` fresh batches of that many rows."""
    rows = first_rows(batch)
    stability = fold_labels(model, rows, task, ev, th, seed=seed)
    if not recheck_rows:
        return stability
    unsure = [r for r in records if not r.borderline and not all(
        confirms(f, r.label, r.offset, r.kind) for f in stability.get((r.layer, r.head), []))]
    if unsure:
        stability.update(batch_labels(model, task, recheck_rows, ev, th, seed=seed,
                                      heads={(r.layer, r.head) for r in unsure}, device=batch.tokens.device))
    for rec in unsure:
        rec.notes.append(f"a fold of {len(rows) // N_FOLDS} rows did not confirm the label: its stability comes "
                         f"from {N_FOLDS} independent held-out batches of {recheck_rows} rows instead (recheck)")
    return stability


def _apply_stability(rec: HeadRecord, folds: list | None) -> None:
    """Fold labels -> ``stability`` (share of folds giving the majority label and kind), ``borderline`` when
    a fold does not confirm the label (:func:`anchor_interp.labels.stability.confirms`)."""
    if not folds:
        return
    labels = [(f.label, f.kind) for f in folds]
    top = max(set(labels), key=labels.count)
    rec.stability = labels.count(top) / len(labels)
    confirmed = sum(confirms(f, rec.label, rec.offset, rec.kind) for f in folds)
    rec.confidence *= confirmed / len(folds)
    if confirmed < len(folds):
        rec.borderline = True
        shown = ", ".join(f"{f.label}{'' if f.offset is None else f'({f.offset:+d})'}{'' if f.kind is None else '/' + f.kind}"
                          for f in folds)
        rec.notes.append(f"{len(folds) - confirmed} of the {len(folds)} batches do not confirm the label: {shown}")


def _gate_note(gate: dict, allowed: bool) -> str:
    what = ("labels are given anyway (allow_unsolved)" if allowed
            else "no head gets a shift or broadcast label (pass allow_unsolved / --allow-unsolved to label anyway)")
    return (f"the model does not solve the task: held-out accuracy {gate['competence_accuracy']:.3f} on the unmasked "
            f"groups is below the floor {gate['competence_floor']:.3f} ({COMPETENCE_FLOOR} x the attainable "
            f"{gate['attainable_accuracy']:.3f}); {what}")


def _withhold_labels(records: list[HeadRecord]) -> None:
    for rec in records:
        if rec.label in ("shift", "broadcast"):
            rec.notes.append(f"withheld label: {rec.label}" + ("" if rec.offset is None else f"({rec.offset:+d})"))
            rec.label, rec.kind, rec.offset = "neither", "unsolved", None


def _note_dispensable(records: list[HeadRecord], th: Thresholds, *, has_task: bool) -> None:
    """A labelled head outside any group whose ablation alone changes little: say others can do without it."""
    drop_key = "ablation_accuracy_drop" if has_task else "ablation_kl_share"
    for rec in records:
        if rec.label != "neither" and rec.group is None and rec.scores[drop_key] < (
                th.effect if has_task else th.kl_share):
            rec.notes.append(f"mean-ablating this head alone changes {drop_key.removeprefix('ablation_')} by only "
                             f"{rec.scores[drop_key]:.0%}: other heads can do without it")

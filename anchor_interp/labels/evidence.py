"""Evidence for the label rule: everything measured about each head, gathered once per analysis.

    evidence = gather_evidence(model, tokens, batch=batch, task=task, thresholds=th, method="mean", seed=0)
    evidence.heads[(layer, head)]  -> HeadEvidence (scores, role pattern scores, role effects, offsets)

Pattern scores come from :mod:`anchor_interp.scores.patterns`, weight scores from
:mod:`anchor_interp.scores.weights`, ablation from :mod:`anchor_interp.scores.ablation`; the causal
evidence is, with a task, each head's candidate roles with their routes (:mod:`anchor_interp.labels.roles`)
and, without one, the share of the KL of ablating every head. Every score is in [0, 1] unless its name
says otherwise (docs/concepts.md).

Rows are streamed in chunks of :data:`anchor_interp.scores.cache.CHUNK_ROWS`: the attention-pattern scores
(from statistics summed over chunks), DLA, per-head ablation and the clean predictions are reductions over
every row; the counterfactual role evidence reads the first :data:`~anchor_interp.scores.cache.FIRST_ROWS`
rows, and says so in a note (docs/performance.md, "Streaming over the rows"). With at most one chunk of
rows every scorer reads the one clean run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from anchor_interp.labels.records import Thresholds, clip01
from anchor_interp.labels.roles import CausalEvidence, RoleEvidence, measure_roles
from anchor_interp.scores import cache as _cache
from anchor_interp.scores.ablation import ablate, per_head_ablation
from anchor_interp.scores.cache import clean_run, row_chunks
from anchor_interp.scores.patterns import (
    add_sums,
    attention_patterns,
    is_causal,
    pattern_sums,
    scores_from_sums,
    task_pattern_sums,
    task_scores_from_sums,
)
from anchor_interp.scores.weights import (
    direct_logit_attribution,
    dla_share,
    ov_copying_score,
    qk_positional_preference,
    weight_evidence_notes,
)

__all__ = ["MIN_BASE_ACCURACY", "HeadEvidence", "ModelEvidence", "first_rows", "gather_evidence"]


def first_rows(batch):
    """The first :data:`~anchor_interp.scores.cache.FIRST_ROWS` rows of ``batch`` (all of them when it has fewer):
    what the counterfactual role evidence, its intervals and its stability folds read."""
    return batch if len(batch) <= _cache.FIRST_ROWS else batch.select(slice(0, _cache.FIRST_ROWS))

MIN_BASE_ACCURACY = 0.1  # below this held-out accuracy, relative accuracy drops are not computed
TASK_SCORE_KEYS = ("key_row_to_anchor", "anchor_row_to_key", "last_row_to_key", "last_row_to_anchor",
                   "last_row_to_pair", "key_column", "anchor_column", "task_shift", "task_broadcast")


@dataclass
class HeadEvidence:
    """One head's evidence. ``pattern``: role (``"shift"``, ``"broadcast"``) -> pattern score in [0, 1];
    ``offset``: the shift offset the role pattern prefers; ``generic_offset``: that of the generic
    ``shift`` score; ``qk_offset``: the positional-QK preference. With a task: ``roles`` (candidate roles
    with effect, interval and route, largest first) and ``head_effect`` (counterfactual kind -> the whole
    head's normalised effect). Without one: ``effect`` (role -> KL share of ablating the head, the same
    for both roles)."""

    layer: int
    head: int
    scores: dict[str, float]
    pattern: dict[str, float]
    effect: dict[str, float]
    offset: int
    generic_offset: int
    qk_offset: int
    has_task: bool
    roles: list[RoleEvidence] = field(default_factory=list)
    head_effect: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelEvidence:
    """Evidence for every head plus what groups need: ``single_effect`` [layer, head] (relative accuracy
    drop with a task, KL share without), ``group_metric``, ``baseline`` facts, ``notes`` for every head,
    and (with a task) the ``causal`` role evidence."""

    heads: dict[tuple[int, int], HeadEvidence]
    single_effect: Tensor
    group_metric: str
    baseline: dict[str, float]
    notes: list[str] = field(default_factory=list)
    causal: CausalEvidence | None = None
    clean_pred: Tensor | None = None  # (B,): the clean run's argmax at the last position, every row


def gather_evidence(model, tokens: Tensor, *, batch=None, task=None, thresholds: Thresholds, method: str,
                    seed: int) -> ModelEvidence:
    """Measure every piece of evidence the rule reads, once. ``batch``/``task``: both or neither."""
    causal = is_causal(model)
    clean = _clean_pass(model, tokens, batch, causal)  # the one clean run (chunk by chunk) every scorer reads
    ps, ts, logits, cache = clean["ps"], clean["ts"], clean["logits"], clean["cache"]
    token_ids = None
    if task is not None:
        ids = [t for t in task.target_ids() if t < model.cfg.d_vocab]
        token_ids = ids if len(ids) >= 2 else None
    ov = ov_copying_score(model, token_ids)
    qk_offset, qk_score = qk_positional_preference(model)
    if batch is not None:
        causal_ev = _task_effects(model, tokens, batch, task, thresholds, method, seed, causal, (logits, cache),
                                  clean["dla"])
    else:
        causal_ev = _ablation_effects(model, tokens, method, seed, (logits, cache))
    heads = {}
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            heads[(layer, head)] = _head_evidence(layer, head, ps, ts, ov, qk_offset, qk_score, causal_ev)
    notes = causal_ev["notes"] + weight_evidence_notes(model, token_ids)  # weight scores that do not apply
    return ModelEvidence(heads, causal_ev["single_effect"], causal_ev["group_metric"], causal_ev["baseline"],
                         notes, causal_ev.get("roles"), clean["pred"])


@torch.no_grad()
def _clean_pass(model, tokens: Tensor, batch, causal: bool) -> dict:
    """One clean run of every row, chunk by chunk (:func:`anchor_interp.scores.cache.row_chunks`): ``ps`` /
    ``ts`` the (task) pattern scores from statistics summed over the chunks, ``dla`` (with a batch: the mean
    direct logit attribution of the target, row-weighted over chunks), ``pred`` the argmax at the last
    position (B,); ``logits`` / ``cache`` of the run when the rows fit one chunk (else None: the later
    scorers stream their own runs)."""
    n = tokens.shape[0]
    sums = task_sums = dla = None
    preds, column, logits, cache = [], None, None, None
    for sl in row_chunks(n, desc="clean run"):
        logits, cache = clean_run(model, tokens[sl])
        pats = attention_patterns(model, tokens[sl], cache=cache)  # (b, L, H, T, T)
        chunk = pattern_sums(pats, causal)
        column = chunk["_column"]
        sums = add_sums(sums, chunk)
        if batch is not None:
            task_sums = add_sums(task_sums, task_pattern_sums(pats, batch.anchor_pos[sl], batch.key_pos[sl], causal))
            d = direct_logit_attribution(model, tokens[sl], batch.targets[sl].clamp_min(0), cache=cache)
            dla = d if n <= _cache.CHUNK_ROWS else (0 if dla is None else dla) + d.double() * (sl.stop - sl.start)
        preds.append(logits[:, -1].argmax(-1))
    one = n <= _cache.CHUNK_ROWS
    return {"ps": scores_from_sums(sums, causal, column=column if one else None),
            "ts": task_scores_from_sums(task_sums) if batch is not None else None,
            "dla": None if dla is None else (dla if one else (dla / n).float()),
            "pred": torch.cat(preds), "logits": logits if one else None, "cache": cache if one else None}


def _task_effects(model, tokens, batch, task, th: Thresholds, method, seed, causal: bool, clean, dla) -> dict:
    """With a task: DLA share, per-head ablation accuracy drop, and every head's candidate roles.
    ``clean``: (logits, cache) of the clean run (None, None when streamed); ``dla``: the mean DLA (layer, head)."""
    notes: list[str] = []
    baseline: dict[str, float] = {}
    logits, cache = clean
    dla = dla_share(dla)
    abl = per_head_ablation(model, tokens, targets=batch.targets, method=method, seed=seed, cache=cache,
                            clean_logits=logits)
    base_acc = float(abl["base_accuracy"])
    baseline["accuracy"] = base_acc
    if base_acc >= MIN_BASE_ACCURACY:
        acc_drop = ((base_acc - abl["accuracy"]) / base_acc).clamp(0, 1)
    else:  # a relative drop from (almost) nothing is noise
        acc_drop = torch.zeros_like(abl["accuracy"])
        notes.append(f"held-out accuracy {base_acc:.3f} < {MIN_BASE_ACCURACY}: accuracy drops are set to 0")
    roles = measure_roles(model, first_rows(batch), task, thresholds=th, seed=seed, causal=causal)
    notes += roles.notes
    for kind, run in roles.runs.items():
        baseline[f"logit_gap_{kind}"] = run["logit_gap"]
        baseline[f"rows_{kind}"] = run["rows"]
    return {"dla": dla, "acc_drop": acc_drop, "roles": roles, "single_effect": acc_drop,
            "group_metric": "accuracy_drop", "baseline": baseline, "notes": notes}


def _ablation_effects(model, tokens, method, seed, clean) -> dict:
    """Without a task: each head's share of the KL of mean-ablating every head (the same for both roles).
    ``clean``: (logits, cache) of the clean run."""
    cfg = model.cfg
    logits, cache = clean
    abl = per_head_ablation(model, tokens, method=method, seed=seed, positions="all", cache=cache,
                            clean_logits=logits)
    every = [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    kl_all = ablate(model, tokens, every, method=method, seed=seed, positions="all", cache=cache,
                    clean_logits=logits).kl
    share = (abl["kl"] / kl_all).clamp(0, 1) if kl_all > 1e-9 else torch.zeros_like(abl["kl"])
    return {"dla": None, "acc_drop": share, "effects": {"shift": share, "broadcast": share},
            "single_effect": share, "group_metric": "kl_share", "baseline": {"kl_all_heads": kl_all}, "notes": []}


def _head_evidence(layer, head, ps, ts, ov, qk_offset, qk_score, causal_ev) -> HeadEvidence:
    scores = ps.head(layer, head)
    shift_pat, offset = scores["shift"], int(ps.shift_offset[layer, head])
    bc_pat = scores["broadcast"]
    if ts is not None:
        for k in TASK_SCORE_KEYS:
            scores[k] = float(ts[k][layer, head])
        # with a task the shift pattern is the task's own: key row -> anchor (or anchor row -> key)
        shift_pat, offset = scores["task_shift"], int(ts["task_shift_offset"][layer, head])
        bc_pat = max(bc_pat, scores["task_broadcast"])
    scores["shift_pattern"], scores["broadcast_pattern"] = shift_pat, bc_pat
    scores["ov_copying"] = float(ov[layer, head])
    scores["qk_positional_shift"] = float(qk_score[layer, head])
    pattern = {"shift": shift_pat, "broadcast": bc_pat}
    dla, roles = causal_ev["dla"], causal_ev.get("roles")
    if roles is None:
        scores["ablation_kl_share"] = clip01(float(causal_ev["acc_drop"][layer, head]))
        effect = {role: float(causal_ev["effects"][role][layer, head]) for role in pattern}
        return HeadEvidence(layer, head, scores, pattern, effect, offset, int(ps.shift_offset[layer, head]),
                            int(qk_offset[layer, head]), False)
    scores["dla_share"] = float(dla[layer, head])
    scores["ablation_accuracy_drop"] = clip01(float(causal_ev["acc_drop"][layer, head]))
    head_effect = {kind: float(eff[layer, head]) for kind, eff in roles.head_effect.items()}
    for kind, v in head_effect.items():
        scores[f"patch_{kind}"] = clip01(v)
    return HeadEvidence(layer, head, scores, pattern, {}, offset, int(ps.shift_offset[layer, head]),
                        int(qk_offset[layer, head]), True, roles.roles[(layer, head)], head_effect)

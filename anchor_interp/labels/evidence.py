"""Evidence for the label rule: everything measured about each head, gathered once per analysis.

    evidence = gather_evidence(model, tokens, batch=batch, task=task, thresholds=th, method="mean", seed=0)
    evidence.heads[(layer, head)]  -> HeadEvidence (scores, role pattern scores, role effects, offsets)

Pattern scores come from :mod:`anchor_interp.scores.patterns`, weight scores from
:mod:`anchor_interp.scores.weights`, ablation from :mod:`anchor_interp.scores.ablation`, causal effects
from :mod:`anchor_interp.patching` (with a task) or ablation KL (without one). Every score is in [0, 1]
unless its name says otherwise (docs/concepts.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from anchor_interp.labels.records import Thresholds, clip01
from anchor_interp.scores.ablation import ablate, per_head_ablation
from anchor_interp.scores.patterns import attention_patterns, is_causal, pattern_scores, task_pattern_scores
from anchor_interp.scores.weights import (
    direct_logit_attribution,
    dla_share,
    ov_copying_score,
    qk_positional_preference,
)

__all__ = ["MIN_BASE_ACCURACY", "ROLE_COUNTERFACTUAL", "HeadEvidence", "ModelEvidence", "gather_evidence"]

ROLE_COUNTERFACTUAL = {"shift": "anchor_move", "broadcast": "key_swap"}
MIN_BASE_ACCURACY = 0.1  # below this held-out accuracy, relative accuracy drops are not computed
TASK_SCORE_KEYS = ("key_row_to_anchor", "anchor_row_to_key", "last_row_to_key", "last_row_to_anchor",
                   "last_row_to_pair", "key_column", "anchor_column", "task_shift", "task_broadcast")


@dataclass
class HeadEvidence:
    """One head's evidence. ``pattern`` / ``effect``: role (``"shift"``, ``"broadcast"``) -> pattern
    score in [0, 1] / causal effect (normalised patching with a task, KL share without; unclipped).
    ``offset``: the shift offset the role pattern prefers; ``generic_offset``: that of the generic
    ``shift`` score; ``qk_offset``: the positional-QK preference; ``location``: share in [0, 1] of the
    head's key_swap effect at the last position (None when unmeasured)."""

    layer: int
    head: int
    scores: dict[str, float]
    pattern: dict[str, float]
    effect: dict[str, float]
    offset: int
    generic_offset: int
    qk_offset: int
    location: float | None
    has_task: bool


@dataclass
class ModelEvidence:
    """Evidence for every head plus what groups need: ``single_effect`` [layer, head] (relative accuracy
    drop with a task, KL share without), ``group_metric``, ``baseline`` facts and ``notes`` for every head."""

    heads: dict[tuple[int, int], HeadEvidence]
    single_effect: Tensor
    group_metric: str
    baseline: dict[str, float]
    notes: list[str] = field(default_factory=list)


def gather_evidence(model, tokens: Tensor, *, batch=None, task=None, thresholds: Thresholds, method: str,
                    seed: int) -> ModelEvidence:
    """Measure every piece of evidence the rule reads, once. ``batch``/``task``: both or neither."""
    causal = is_causal(model)
    with torch.no_grad():
        pats = attention_patterns(model, tokens)  # (B, L, H, T, T)
    ps = pattern_scores(pats, causal)
    ts = task_pattern_scores(pats, batch.anchor_pos, batch.key_pos, causal) if batch is not None else None
    del pats
    token_ids = None
    if task is not None:
        ids = [t for t in task.target_ids() if t < model.cfg.d_vocab]
        token_ids = ids if len(ids) >= 2 else None
    ov = ov_copying_score(model, token_ids)
    qk_offset, qk_score = qk_positional_preference(model)
    if batch is not None:
        causal_ev = _task_effects(model, tokens, batch, task, thresholds, method, seed)
    else:
        causal_ev = _ablation_effects(model, tokens, method, seed)
    heads = {}
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            heads[(layer, head)] = _head_evidence(layer, head, ps, ts, ov, qk_offset, qk_score, causal_ev)
    return ModelEvidence(heads, causal_ev["single_effect"], causal_ev["group_metric"], causal_ev["baseline"],
                         causal_ev["notes"])


def _task_effects(model, tokens, batch, task, th: Thresholds, method, seed) -> dict:
    """With a task: DLA share, per-head ablation accuracy drop, patching effect per role, key location."""
    from anchor_interp.patching import patch_head_out

    notes: list[str] = []
    baseline: dict[str, float] = {}
    dla = dla_share(direct_logit_attribution(model, tokens, batch.targets.clamp_min(0)))
    abl = per_head_ablation(model, tokens, targets=batch.targets, method=method, seed=seed)
    base_acc = float(abl["base_accuracy"])
    baseline["accuracy"] = base_acc
    if base_acc >= MIN_BASE_ACCURACY:
        acc_drop = ((base_acc - abl["accuracy"]) / base_acc).clamp(0, 1)
    else:  # a relative drop from (almost) nothing is noise
        acc_drop = torch.zeros_like(abl["accuracy"])
        notes.append(f"held-out accuracy {base_acc:.3f} < {MIN_BASE_ACCURACY}: accuracy drops are set to 0")
    corrupt_of = {cf: task.counterfactual(batch, cf, seed=seed + 1) for cf in ROLE_COUNTERFACTUAL.values()}
    effects: dict[str, Tensor] = {}
    for role, cf in ROLE_COUNTERFACTUAL.items():
        res = patch_head_out(model, batch, corrupt_of[cf], metric="logit_diff", counterfactual=cf)
        gap = float(res.clean_value - res.corrupt_value)
        baseline[f"logit_gap_{cf}"] = gap
        vals = res.values.float().cpu()
        if not math.isfinite(gap) or abs(gap) < th.min_logit_gap:
            notes.append(
                f"{cf}: the model barely separates clean and corrupt answers (logit gap {gap:.3g} < "
                f"{th.min_logit_gap}); its patching effects are set to 0"
            )
            vals = torch.zeros_like(vals)
        effects[role] = torch.nan_to_num(vals, nan=0.0)
    last_share = None
    if abs(baseline["logit_gap_key_swap"]) >= th.min_logit_gap:
        # where the key lives in each head's output: key_swap patching one position at a time
        by_pos = patch_head_out(model, batch, corrupt_of["key_swap"], metric="logit_diff", by_pos=True,
                                counterfactual="key_swap")
        by_pos = torch.nan_to_num(by_pos.values.float().cpu(), nan=0.0).abs()  # (L, H, T)
        total = by_pos.sum(-1)  # (L, H)
        last_share = torch.where(total > 1e-9, by_pos[..., -1] / total.clamp_min(1e-9),
                                 torch.full_like(total, math.nan))
    return {"dla": dla, "acc_drop": acc_drop, "effects": effects, "last_share": last_share,
            "single_effect": acc_drop, "group_metric": "accuracy_drop", "baseline": baseline, "notes": notes}


def _ablation_effects(model, tokens, method, seed) -> dict:
    """Without a task: each head's share of the KL of mean-ablating every head (the same for both roles)."""
    cfg = model.cfg
    abl = per_head_ablation(model, tokens, method=method, seed=seed, positions="all")
    every = [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    kl_all = ablate(model, tokens, every, method=method, seed=seed, positions="all").kl
    share = (abl["kl"] / kl_all).clamp(0, 1) if kl_all > 1e-9 else torch.zeros_like(abl["kl"])
    return {"dla": None, "acc_drop": share, "effects": {"shift": share, "broadcast": share}, "last_share": None,
            "single_effect": share, "group_metric": "kl_share", "baseline": {"kl_all_heads": kl_all}, "notes": []}


def _head_evidence(layer, head, ps, ts, ov, qk_offset, qk_score, causal_ev) -> HeadEvidence:
    scores = ps.head(layer, head)
    shift_pat, offset = scores["shift"], int(ps.shift_offset[layer, head])
    bc_pat = scores["broadcast"]
    if ts is not None:
        for k in TASK_SCORE_KEYS:
            scores[k] = float(ts[k][layer, head])
        # with a task the shift evidence is the task's own: key row -> anchor (or anchor row -> key)
        shift_pat, offset = scores["task_shift"], int(ts["task_shift_offset"][layer, head])
        bc_pat = max(bc_pat, scores["task_broadcast"])
    scores["shift_pattern"], scores["broadcast_pattern"] = shift_pat, bc_pat
    scores["ov_copying"] = float(ov[layer, head])
    scores["qk_positional_shift"] = float(qk_score[layer, head])
    effects, dla = causal_ev["effects"], causal_ev["dla"]
    if dla is not None:
        scores["dla_share"] = float(dla[layer, head])
        scores["ablation_accuracy_drop"] = clip01(float(causal_ev["acc_drop"][layer, head]))
        for role, cf in ROLE_COUNTERFACTUAL.items():
            scores[f"patch_{cf}"] = clip01(float(effects[role][layer, head]))
    else:
        scores["ablation_kl_share"] = clip01(float(causal_ev["acc_drop"][layer, head]))
    location = None
    last_share = causal_ev["last_share"]
    if last_share is not None and math.isfinite(float(last_share[layer, head])):
        location = float(last_share[layer, head])
        scores["key_swap_last_share"] = location
    pattern = {"shift": shift_pat, "broadcast": bc_pat}
    effect = {role: float(effects[role][layer, head]) for role in pattern}
    return HeadEvidence(layer, head, scores, pattern, effect, offset, int(ps.shift_offset[layer, head]),
                        int(qk_offset[layer, head]), location, dla is not None)

"""Label every head ``shift``, ``broadcast`` or ``neither`` from pattern scores, weight evidence and causal evidence.

    records = label_heads(model, batch, task=task)          # with a task: counterfactual patching
    records = label_heads(model, tokens)                    # no task: ablation KL on the model's own output
    analysis = analyse_heads(model, batch, task=task)       # records + head groups + thresholds

The rule (docs/concepts.md gives the reasons and the measurements behind each threshold):

1. **Pattern role.** ``broadcast_pattern = max(broadcast, task_broadcast)``; ``shift_pattern =
   task_shift`` with a task (key row -> anchor or anchor row -> key lift), ``shift`` without one
   (:mod:`anchor_interp.patterns`). A role is a *candidate* when its pattern score is at least
   ``Thresholds.pattern``; with a task a head is also a shift candidate when ``task_shift >=
   Thresholds.task_shift_floor`` and its ``anchor_move`` effect is at least ``Thresholds.strong_effect``
   (a soft shift the answer depends on). A high generic ``shift`` with ``task_shift`` under the floor
   is noted as "not the task's shift".
2. **Causal effect of each role.** With a task: the head's output (``blocks.L.attn.hook_z``) patched
   from the clean run into the counterfactual run, normalised ``(patched - corrupt) / (clean -
   corrupt)`` of the logit difference: ``anchor_move`` for shift, ``key_swap`` for broadcast. Without
   a task: ``KL(p || p_ablated)`` over all positions when the head alone is mean-ablated, divided by the
   KL when every head is mean-ablated (the same number for both roles).
3. **Label.** A candidate whose effect is at least ``Thresholds.effect`` (no task:
   ``Thresholds.kl_share``) is confirmed; the confirmed
   role with the higher pattern score is the label (``offset`` = the best shift offset). A head with a
   candidate role but no confirmed one is ``neither`` / ``inert`` with a note. Otherwise ``neither`` with
   kind ``sink`` or ``self`` (score >= ``Thresholds.kind``), else ``uniform`` (uniform >=
   ``Thresholds.uniform``), else ``other``.
4. **Groups.** For each role and layer (shift: and offset), the heads confirmed in that role plus the
   inert candidates that still do something (effect >= a quarter of the confirming threshold; a decoy
   with zero output does not) are mean-ablated together. Two or more such heads form a group
   ``"<role>_L<layer>"`` (``"shift_L0_offset-1"``) with that joint effect (task: relative held-out
   accuracy drop; no task: KL share). ``needed_together`` when the group removes at least
   ``Thresholds.group_effect`` while no member alone does; only then are inert members relabelled with
   the role (with a note) -- otherwise the group is the confirmed heads alone. With a task, the
   ``neither`` heads of a layer whose patching effect is at least that quarter threshold and that are
   needed only together (joint >= ``group_effect``, none alone) form a group ``"other_L<layer>"`` with
   label ``neither``; they keep their labels.
5. **Confidence** in [0, 1]: for a label, ``sqrt(min(1, pattern / 0.5) * min(1, effect / 0.5))`` (a
   pattern score or effect of 0.5 counts as full evidence; group-relabelled members use the group's
   joint effect, times 0.8); for ``inert``, ``min(1, pattern / 0.5) * (1 - effect / confirming
   threshold)``; for the other kinds, ``0.5 * kind_score + 0.5 * (1 -
   max_role_pattern / Thresholds.pattern)`` (clipped).

Raises ValueError for bad inputs (messages name the parameter), for a task batch whose counterfactual
cannot be built, and for thresholds outside [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from anchor_interp.ablation import ablate, per_head_ablation
from anchor_interp.patterns import (
    _check_tokens,
    attention_patterns,
    is_causal,
    pattern_scores,
    task_pattern_scores,
)
from anchor_interp.weights import (
    direct_logit_attribution,
    dla_share,
    ov_copying_score,
    qk_positional_preference,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "HeadAnalysis",
    "HeadGroup",
    "HeadRecord",
    "LABELS",
    "NEITHER_KINDS",
    "Thresholds",
    "analyse_heads",
    "head_name",
    "label_heads",
]

LABELS = ("shift", "broadcast", "neither")
NEITHER_KINDS = ("sink", "self", "uniform", "inert", "other")
ROLE_COUNTERFACTUAL = {"shift": "anchor_move", "broadcast": "key_swap"}
FULL_EVIDENCE = 0.5
MIN_BASE_ACCURACY = 0.1  # below this held-out accuracy, relative accuracy drops are not computed


def head_name(layer: int, head: int) -> str:
    """``L{layer}H{head}``."""
    return f"L{layer}H{head}"


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds, each in [0, 1] (justified in docs/concepts.md).

    ``pattern``: least role pattern score for a candidate; ``effect``: least causal effect (normalised
    patching) to confirm a role with a task; ``task_shift_floor`` / ``strong_effect``: with a task, a
    head whose key-row/anchor-row lift (``task_shift``) is below ``pattern`` is still a shift candidate
    when that lift is at least ``task_shift_floor`` and its ``anchor_move`` effect at least
    ``strong_effect`` (a soft but above-chance shift that the output depends on); ``kl_share``: the same without a task (share of the KL of
    ablating every head); ``group_effect``: least joint effect of a group; ``kind``: least sink/self score for that kind;
    ``uniform``: least uniform score for kind ``uniform``; ``min_logit_gap``: least clean-vs-corrupt
    logit difference (logits, not in [0, 1]) for patching to count: below it the model does not tell
    the two answers apart and every effect is set to 0.
    """

    pattern: float = 0.2
    effect: float = 0.1
    task_shift_floor: float = 0.05
    strong_effect: float = 0.3
    kl_share: float = 0.05
    group_effect: float = 0.5
    kind: float = 0.5
    uniform: float = 0.8
    min_logit_gap: float = 1.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "min_logit_gap":
                if not (isinstance(v, (int, float)) and v >= 0):
                    raise ValueError(f"thresholds.min_logit_gap: must be a number >= 0, got {v!r}")
            elif not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"thresholds.{f.name}: must be a number in [0, 1], got {v!r}")


DEFAULT_THRESHOLDS = Thresholds()


@dataclass
class HeadRecord:
    """One head's label and its evidence (docs/interfaces.md). ``to_dict`` / ``from_dict`` are JSON-safe."""

    layer: int
    head: int
    name: str
    label: str
    offset: int | None
    kind: str | None
    scores: dict[str, float]
    causal_effect: float
    counterfactual: str
    confidence: float
    group: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores"] = {k: _finite(v) for k, v in self.scores.items()}
        d["causal_effect"] = _finite(self.causal_effect)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadRecord:
        known = {f.name for f in fields(cls)}
        missing = known - set(d) - {"group", "notes"}
        if missing:
            raise ValueError(f"HeadRecord.from_dict: missing fields {sorted(missing)}")
        kw = {k: d[k] for k in known if k in d}
        kw["scores"] = {k: (math.nan if v is None else float(v)) for k, v in kw["scores"].items()}
        kw["causal_effect"] = math.nan if kw["causal_effect"] is None else float(kw["causal_effect"])
        kw["notes"] = list(kw.get("notes") or [])
        return cls(**kw)


@dataclass
class HeadGroup:
    """Heads that carry one operation together: ``joint_effect`` is the effect of ablating them all
    (``metric``: ``"accuracy_drop"`` = relative held-out accuracy drop, or ``"kl_share"``);
    ``individual_effects`` the same measure per head alone; ``needed_together`` says no head alone
    reached ``Thresholds.group_effect`` while the group did."""

    name: str
    label: str
    heads: list[str]
    joint_effect: float
    metric: str
    individual_effects: dict[str, float]
    needed_together: bool

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["joint_effect"] = _finite(self.joint_effect)
        d["individual_effects"] = {k: _finite(v) for k, v in self.individual_effects.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadGroup:
        return cls(d["name"], d["label"], list(d["heads"]), d["joint_effect"], d["metric"],
                   dict(d.get("individual_effects", {})), bool(d.get("needed_together", False)))


@dataclass
class HeadAnalysis:
    """``records`` (one per head, ordered by layer, head), ``groups``, the ``thresholds`` used, and
    ``baseline`` facts (accuracy, logit gaps, KL of ablating everything)."""

    records: list[HeadRecord]
    groups: list[HeadGroup]
    thresholds: Thresholds
    baseline: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "heads": [r.to_dict() for r in self.records],
            "groups": [g.to_dict() for g in self.groups],
            "thresholds": asdict(self.thresholds),
            "baseline": {k: _finite(v) for k, v in self.baseline.items()},
        }


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _clip01(x: float) -> float:
    return 0.0 if not math.isfinite(x) else max(0.0, min(1.0, x))


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
    """One :class:`HeadRecord` per head, ordered by (layer, head); see the module docstring for the rule.

    ``tokens``: a token tensor ``[batch, seq]`` or, with a task, preferably the task's ``Batch`` (it
    carries the anchor and key positions). With a task and a bare tensor, a held-out batch of
    ``n_samples`` (default: as many rows as ``tokens``) is sampled from the task with ``seed`` instead.
    ``method``: ablation method for groups and the no-task KL (``"mean"``, ``"zero"``, ``"resample"``).
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
    cfg = model.cfg
    causal = is_causal(model)
    global_notes: list[str] = []
    batch = None
    if task is not None:
        batch, global_notes = _task_batch(tokens, task, n_samples, seed)
        tokens = batch.tokens
    _check_tokens(model, tokens)

    with torch.no_grad():
        pats = attention_patterns(model, tokens)  # (B, L, H, T, T)
    ps = pattern_scores(pats, causal)
    ts = task_pattern_scores(pats, batch.anchor_pos, batch.key_pos, causal) if batch is not None else None
    del pats

    token_ids = None
    if task is not None:
        ids = [t for t in task.target_ids() if t < cfg.d_vocab]
        token_ids = ids if len(ids) >= 2 else None
    ov = ov_copying_score(model, token_ids)
    qk_offset, qk_score = qk_positional_preference(model)

    baseline: dict[str, float] = {}
    effects: dict[str, Tensor] = {}
    last_share = None
    if batch is not None:
        answers = batch.targets.clamp_min(0)
        dla = dla_share(direct_logit_attribution(model, tokens, answers))
        abl = per_head_ablation(model, tokens, targets=batch.targets, method=method, seed=seed)
        base_acc = float(abl["base_accuracy"])
        baseline["accuracy"] = base_acc
        if base_acc >= MIN_BASE_ACCURACY:
            acc_drop = ((base_acc - abl["accuracy"]) / base_acc).clamp(0, 1)
        else:  # a relative drop from (almost) nothing is noise
            acc_drop = torch.zeros_like(abl["accuracy"])
            global_notes.append(f"held-out accuracy {base_acc:.3f} < {MIN_BASE_ACCURACY}: accuracy drops are set to 0")
        from anchor_interp.patching import patch_head_out

        corrupt_of = {cf: task.counterfactual(batch, cf, seed=seed + 1) for cf in ROLE_COUNTERFACTUAL.values()}
        for role, cf in ROLE_COUNTERFACTUAL.items():
            res = patch_head_out(model, batch, corrupt_of[cf], metric="logit_diff", counterfactual=cf)
            gap = float(res.clean_value - res.corrupt_value)
            baseline[f"logit_gap_{cf}"] = gap
            vals = res.values.float().cpu()
            if not math.isfinite(gap) or abs(gap) < thresholds.min_logit_gap:
                global_notes.append(
                    f"{cf}: the model barely separates clean and corrupt answers (logit gap {gap:.3g} < "
                    f"{thresholds.min_logit_gap}); its patching effects are set to 0"
                )
                vals = torch.zeros_like(vals)
            effects[role] = torch.nan_to_num(vals, nan=0.0)
        # where the key lives in each head's output: key_swap patching one position at a time
        if abs(baseline["logit_gap_key_swap"]) >= thresholds.min_logit_gap:
            by_pos = patch_head_out(model, batch, corrupt_of["key_swap"], metric="logit_diff", by_pos=True,
                                    counterfactual="key_swap")
            by_pos = torch.nan_to_num(by_pos.values.float().cpu(), nan=0.0).abs()  # (L, H, T)
            total = by_pos.sum(-1)
            last_share = torch.where(total > 1e-9, by_pos[..., -1] / total.clamp_min(1e-9),
                                     torch.full_like(total, math.nan))
        group_metric = "accuracy_drop"
    else:
        dla = None
        abl = per_head_ablation(model, tokens, method=method, seed=seed, positions="all")
        every = [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
        kl_all = ablate(model, tokens, every, method=method, seed=seed, positions="all").kl
        baseline["kl_all_heads"] = kl_all
        share = (abl["kl"] / kl_all).clamp(0, 1) if kl_all > 1e-9 else torch.zeros_like(abl["kl"])
        effects = {"shift": share, "broadcast": share}
        acc_drop = share
        group_metric = "kl_share"

    records: list[HeadRecord] = []
    role_pattern: dict[tuple[int, int], dict[str, float]] = {}
    pattern_offset: dict[tuple[int, int], int] = {}
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            scores = ps.head(layer, head)
            shift_pat, offset = scores["shift"], int(ps.shift_offset[layer, head])
            bc_pat = scores["broadcast"]
            if ts is not None:
                for k in ("key_row_to_anchor", "anchor_row_to_key", "last_row_to_key", "last_row_to_anchor",
                          "last_row_to_pair", "key_column", "anchor_column", "task_shift", "task_broadcast"):
                    scores[k] = float(ts[k][layer, head])
                # with a task the shift evidence is the task's own: key row -> anchor (or anchor row -> key)
                shift_pat, offset = scores["task_shift"], int(ts["task_shift_offset"][layer, head])
                bc_pat = max(bc_pat, scores["task_broadcast"])
            scores["shift_pattern"], scores["broadcast_pattern"] = shift_pat, bc_pat
            scores["ov_copying"] = float(ov[layer, head])
            scores["qk_positional_shift"] = float(qk_score[layer, head])
            if dla is not None:
                scores["dla_share"] = float(dla[layer, head])
                scores["ablation_accuracy_drop"] = _clip01(float(acc_drop[layer, head]))
                for role, cf in ROLE_COUNTERFACTUAL.items():
                    scores[f"patch_{cf}"] = _clip01(float(effects[role][layer, head]))
            else:
                scores["ablation_kl_share"] = _clip01(float(acc_drop[layer, head]))
            location = None
            if last_share is not None and math.isfinite(float(last_share[layer, head])):
                location = float(last_share[layer, head])
                scores["key_swap_last_share"] = location
            pat = {"shift": shift_pat, "broadcast": bc_pat}
            role_pattern[(layer, head)] = pat
            pattern_offset[(layer, head)] = offset
            eff = {role: float(effects[role][layer, head]) for role in pat}
            rec = _decide(layer, head, scores, pat, eff, offset, int(qk_offset[layer, head]), thresholds,
                          task is not None, location, int(ps.shift_offset[layer, head]))
            records.append(rec)

    effects_lh = {role: {(layer, head): float(v[layer, head]) for layer in range(cfg.n_layers)
                         for head in range(cfg.n_heads)} for role, v in effects.items()}
    groups = _find_groups(model, tokens, batch, records, role_pattern, pattern_offset, effects_lh, acc_drop,
                          thresholds, method, seed, group_metric, baseline)
    drop_key = "ablation_accuracy_drop" if batch is not None else "ablation_kl_share"
    for rec in records:
        if rec.label != "neither" and rec.group is None and rec.scores[drop_key] < (
                thresholds.effect if batch is not None else thresholds.kl_share):
            rec.notes.append(f"mean-ablating this head alone changes {drop_key.removeprefix('ablation_')} by only "
                             f"{rec.scores[drop_key]:.0%}: other heads can do without it")
        rec.notes = global_notes + rec.notes
    return HeadAnalysis(records, groups, thresholds, baseline)


def _decide(layer, head, scores, pat, eff, offset, qk_offset, th: Thresholds, has_task: bool,
            location: float | None, generic_offset: int = 0) -> HeadRecord:
    name = head_name(layer, head)
    cf_of = (lambda role: ROLE_COUNTERFACTUAL[role]) if has_task else (lambda role: "ablation_kl")
    candidates = [r for r in ("shift", "broadcast") if pat[r] >= th.pattern]
    effect_min = th.effect if has_task else th.kl_share
    notes: list[str] = []
    if has_task and "shift" not in candidates and pat["shift"] >= th.task_shift_floor \
            and eff["shift"] >= th.strong_effect:
        candidates.insert(0, "shift")
        notes.append(
            f"soft shift: the task rows' lift (task_shift {pat['shift']:.2f}) is below {th.pattern} but above "
            f"{th.task_shift_floor}, and patching it moves the answer strongly (anchor_move {eff['shift']:.2f} >= "
            f"{th.strong_effect})"
        )
    confirmed = [r for r in candidates if eff[r] >= effect_min]
    if confirmed:
        role = max(confirmed, key=lambda r: pat[r])
        if len(confirmed) == 2 and location is not None and eff["broadcast"] >= effect_min:
            # both patterns and both effects: decide by where the head's output carries the key
            role = "broadcast" if location >= 0.5 else "shift"
            notes.append(
                f"looks like both shift and broadcast; {location:.0%} of its key_swap effect is at the last "
                f"position, so it is labelled {role}"
            )
        conf = math.sqrt(min(1.0, pat[role] / FULL_EVIDENCE) * min(1.0, max(eff[role], 0.0) / FULL_EVIDENCE))
        if role == "shift" and qk_offset != offset and scores["qk_positional_shift"] >= th.pattern:
            notes.append(f"positional QK prefers offset {qk_offset}, the pattern offset {offset}")
        return HeadRecord(layer, head, name, role, offset if role == "shift" else None, None, scores,
                          eff[role], cf_of(role), _clip01(conf), None, notes)
    if candidates:
        role = max(candidates, key=lambda r: pat[r])
        what = f"shift({offset:+d})" if role == "shift" else "broadcast"
        how = f"patching ({cf_of(role)})" if has_task else "ablation"
        notes.append(
            f"pattern looks like {what} (score {pat[role]:.2f}) but {how} changes little "
            f"(effect {eff[role]:.3f} < {effect_min})"
        )
        conf = min(1.0, pat[role] / FULL_EVIDENCE) * _clip01(1.0 - max(eff[role], 0.0) / effect_min)
        return HeadRecord(layer, head, name, "neither", None, "inert", scores, eff[role], cf_of(role),
                          _clip01(conf), None, notes)
    if has_task and scores["shift"] >= th.pattern and pat["shift"] < th.task_shift_floor:
        notes.append(
            f"attends like shift({generic_offset:+d}) in general (shift "
            f"{scores['shift']:.2f}) but the key row puts no attention on the anchor above chance "
            f"(task_shift {pat['shift']:.2f} < {th.task_shift_floor}): not the task's shift"
        )
    max_role = max(pat.values())
    not_role = _clip01(1.0 - max_role / th.pattern) if th.pattern > 0 else 0.0
    kinds = {"sink": scores["sink"], "self": scores["self"]}
    best = max(kinds, key=kinds.get)
    if kinds[best] >= th.kind:
        kind, kind_score = best, kinds[best]
    elif scores["uniform"] >= th.uniform:
        kind, kind_score = "uniform", scores["uniform"]
    else:
        kind, kind_score = "other", 0.0
    role = max(pat, key=pat.get)
    return HeadRecord(layer, head, name, "neither", None, kind, scores, eff[role], cf_of(role),
                      _clip01(0.5 * kind_score + 0.5 * not_role), None, notes)


def _find_groups(model, tokens, batch, records, role_pattern, pattern_offset, effects, single_effect, th, method,
                 seed, metric, baseline):
    cfg = model.cfg
    contributes = (th.effect if batch is not None else th.kl_share) / 4
    redundant_below = th.effect if batch is not None else th.kl_share
    by_name = {(r.layer, r.head): r for r in records}
    groups: list[HeadGroup] = []

    def joint(heads) -> float:
        if batch is not None:
            r = ablate(model, tokens, heads, targets=batch.targets, method=method, seed=seed)
            return _clip01((r.base_accuracy - r.accuracy) / r.base_accuracy) if r.base_accuracy > 0 else 0.0
        r = ablate(model, tokens, heads, method=method, seed=seed, positions="all")
        kl_all = baseline.get("kl_all_heads", 0.0)
        return _clip01(r.kl / kl_all) if kl_all > 1e-9 else 0.0

    def _group_layer(heads, role, name):
        confirmed = [h for h in heads if by_name[h].label == role]
        # inert candidates join only if they do something (a decoy with zero output does not)
        weak = [h for h in heads if by_name[h].label == "neither" and role_pattern[h][role] >= th.pattern
                and float(effects[role][h]) >= contributes]
        members = sorted(confirmed + weak)
        if len(members) < 2:
            return
        effect = joint(members)
        singles = {head_name(*h): float(single_effect[h]) for h in members}
        needed = effect >= th.group_effect and max(singles.values()) < th.group_effect
        if weak and not needed:
            for h in weak:
                by_name[h].notes.append(
                    f"its layer-mates {', '.join(head_name(*c) for c in confirmed)} are labelled {role}; this "
                    f"head alone is below the threshold and the group does not need it"
                    if confirmed else f"with the other {role}-like heads of layer {h[0]} it still changes little "
                    f"(joint {metric} {effect:.0%})"
                )
            members, weak = confirmed, []
            if len(members) < 2:
                return
            effect = joint(members)
            singles = {head_name(*h): float(single_effect[h]) for h in members}
            needed = effect >= th.group_effect and max(singles.values()) < th.group_effect
        groups.append(HeadGroup(name, role, [head_name(*h) for h in members], effect, metric, singles, needed))
        names = ", ".join(head_name(*h) for h in members)
        for h in members:
            rec = by_name[h]
            rec.group = name
            if h in weak:
                rec.label, rec.kind = role, None
                rec.offset = pattern_offset[h] if role == "shift" else None
                rec.notes = [n for n in rec.notes if not n.startswith("pattern looks like")]
                rec.causal_effect = float(effects[role][h])
                rec.confidence = _clip01(0.8 * math.sqrt(
                    min(1.0, role_pattern[h][role] / FULL_EVIDENCE) * min(1.0, effect / FULL_EVIDENCE)))
            if effect < redundant_below:
                rec.notes.append(
                    f"redundant: mean-ablating all of group {name} ({names}) together gives {metric} {effect:.0%}; "
                    "other heads carry the operation without them"
                )
            if needed:
                rec.notes.append(
                    f"carries {role} together with the other heads of group {name} ({names}): mean-ablating "
                    f"them all removes {effect:.0%} ({metric}), this head alone {singles[head_name(*h)]:.0%}"
                )

    for role in ("shift", "broadcast"):
        for layer in range(cfg.n_layers):
            # shift heads group by offset: two heads moving tokens by different offsets are two operations
            keys = sorted({pattern_offset[(layer, h)] for h in range(cfg.n_heads)}) if role == "shift" else [None]
            for key in keys:
                heads = [(layer, h) for h in range(cfg.n_heads) if key is None or pattern_offset[(layer, h)] == key]
                suffix = "" if key is None else f"_offset{key:+d}"
                _group_layer(heads, role, f"{role}_L{layer}{suffix}")

    if batch is not None:
        # heads with no role that still move the answer a little when patched: needed only jointly?
        for layer in range(cfg.n_layers):
            members = [(layer, h) for h in range(cfg.n_heads)
                       if by_name[(layer, h)].label == "neither" and by_name[(layer, h)].group is None
                       and max(by_name[(layer, h)].scores.get("patch_anchor_move", 0.0),
                               by_name[(layer, h)].scores.get("patch_key_swap", 0.0)) >= contributes]
            if len(members) < 2:
                continue
            effect = joint(members)
            singles = {head_name(*h): float(single_effect[h]) for h in members}
            if not (effect >= th.group_effect and max(singles.values()) < th.group_effect):
                continue
            name = f"other_L{layer}"
            groups.append(HeadGroup(name, "neither", [head_name(*h) for h in members], effect, metric, singles, True))
            names = ", ".join(head_name(*h) for h in members)
            for h in members:
                rec = by_name[h]
                rec.group = name
                rec.notes.append(
                    f"no shift or broadcast role, but needed together with the other heads of group {name} "
                    f"({names}): mean-ablating them all removes {effect:.0%} ({metric}), this head alone "
                    f"{singles[head_name(*h)]:.0%}"
                )
    return groups

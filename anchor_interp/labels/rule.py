"""The label rule: one head's evidence -> one ``HeadRecord``, a pure function (no model, no tensors).

    record = decide(evidence, thresholds)

1. **Candidates.** A role (``ROLES``) is a candidate when its pattern score is at least
   ``Thresholds.pattern``; with a task a head is also a shift candidate when ``task_shift >=
   Thresholds.task_shift_floor`` and its ``anchor_move`` effect is at least ``Thresholds.strong_effect``
   (a soft shift the answer depends on).
2. **Confirmation.** A candidate whose causal effect is at least ``Thresholds.effect`` (no task:
   ``Thresholds.kl_share``) is confirmed; the confirmed role with the higher pattern score is the label
   (both confirmed: decided by where the head's key_swap effect sits, last position or not).
3. **Otherwise** ``neither``: kind ``inert`` (a candidate whose effect is too small), else ``sink`` /
   ``self`` (score >= ``Thresholds.kind``), ``uniform`` (>= ``Thresholds.uniform``), or ``other``.
4. **Confidence** in [0, 1] (docs/concepts.md section 5).

A new label is one row of ``ROLES`` and one branch of ``_confirmed_record``. Groups are formed after
every head is decided (:mod:`anchor_interp.labels.groups`).
"""

from __future__ import annotations

import math

from anchor_interp.labels.evidence import ROLE_COUNTERFACTUAL, HeadEvidence
from anchor_interp.labels.records import FULL_EVIDENCE, HeadRecord, Thresholds, clip01
from anchor_interp.names import head_name

__all__ = ["ROLES", "decide"]

# role -> (counterfactual that measures it with a task, what the pattern score reads)
ROLES = {
    "shift": (ROLE_COUNTERFACTUAL["shift"], "task_shift with a task (key row -> anchor lift), else shift"),
    "broadcast": (ROLE_COUNTERFACTUAL["broadcast"], "max(broadcast, task_broadcast)"),
}


def decide(ev: HeadEvidence, th: Thresholds) -> HeadRecord:
    """The label of one head from its evidence (see the module docstring). Pure: same input, same record."""
    notes: list[str] = []
    candidates = _candidates(ev, th, notes)
    effect_min = th.effect if ev.has_task else th.kl_share
    confirmed = [r for r in candidates if ev.effect[r] >= effect_min]
    if confirmed:
        return _confirmed_record(ev, th, confirmed, effect_min, notes)
    if candidates:
        return _inert_record(ev, candidates, effect_min, notes)
    return _kind_record(ev, th, notes)


def _counterfactual(ev: HeadEvidence, role: str) -> str:
    return ROLES[role][0] if ev.has_task else "ablation_kl"


def _candidates(ev: HeadEvidence, th: Thresholds, notes: list[str]) -> list[str]:
    pat, eff = ev.pattern, ev.effect
    candidates = [r for r in ROLES if pat[r] >= th.pattern]
    if ev.has_task and "shift" not in candidates and pat["shift"] >= th.task_shift_floor \
            and eff["shift"] >= th.strong_effect:
        candidates.insert(0, "shift")
        notes.append(
            f"soft shift: the task rows' lift (task_shift {pat['shift']:.2f}) is below {th.pattern} but above "
            f"{th.task_shift_floor}, and patching it moves the answer strongly (anchor_move {eff['shift']:.2f} >= "
            f"{th.strong_effect})"
        )
    return candidates


def _confirmed_record(ev, th, confirmed, effect_min, notes) -> HeadRecord:
    pat, eff = ev.pattern, ev.effect
    role = max(confirmed, key=lambda r: pat[r])
    if len(confirmed) == 2 and ev.location is not None and eff["broadcast"] >= effect_min:
        # both patterns and both effects: decide by where the head's output carries the key
        role = "broadcast" if ev.location >= 0.5 else "shift"
        notes.append(
            f"looks like both shift and broadcast; {ev.location:.0%} of its key_swap effect is at the last "
            f"position, so it is labelled {role}"
        )
    conf = math.sqrt(min(1.0, pat[role] / FULL_EVIDENCE) * min(1.0, max(eff[role], 0.0) / FULL_EVIDENCE))
    if role == "shift" and ev.qk_offset != ev.offset and ev.scores["qk_positional_shift"] >= th.pattern:
        notes.append(f"positional QK prefers offset {ev.qk_offset}, the pattern offset {ev.offset}")
    return HeadRecord(ev.layer, ev.head, head_name(ev.layer, ev.head), role,
                      ev.offset if role == "shift" else None, None, ev.scores, eff[role],
                      _counterfactual(ev, role), clip01(conf), None, notes)


def _inert_record(ev, candidates, effect_min, notes) -> HeadRecord:
    pat, eff = ev.pattern, ev.effect
    role = max(candidates, key=lambda r: pat[r])
    what = f"shift({ev.offset:+d})" if role == "shift" else "broadcast"
    how = f"patching ({_counterfactual(ev, role)})" if ev.has_task else "ablation"
    notes.append(
        f"pattern looks like {what} (score {pat[role]:.2f}) but {how} changes little "
        f"(effect {eff[role]:.3f} < {effect_min})"
    )
    conf = min(1.0, pat[role] / FULL_EVIDENCE) * clip01(1.0 - max(eff[role], 0.0) / effect_min)
    return HeadRecord(ev.layer, ev.head, head_name(ev.layer, ev.head), "neither", None, "inert", ev.scores,
                      eff[role], _counterfactual(ev, role), clip01(conf), None, notes)


def _kind_record(ev, th, notes) -> HeadRecord:
    pat, scores = ev.pattern, ev.scores
    if ev.has_task and scores["shift"] >= th.pattern and pat["shift"] < th.task_shift_floor:
        notes.append(
            f"attends like shift({ev.generic_offset:+d}) in general (shift "
            f"{scores['shift']:.2f}) but the key row puts no attention on the anchor above chance "
            f"(task_shift {pat['shift']:.2f} < {th.task_shift_floor}): not the task's shift"
        )
    not_role = clip01(1.0 - max(pat.values()) / th.pattern) if th.pattern > 0 else 0.0
    kinds = {"sink": scores["sink"], "self": scores["self"]}
    best = max(kinds, key=kinds.get)
    if kinds[best] >= th.kind:
        kind, kind_score = best, kinds[best]
    elif scores["uniform"] >= th.uniform:
        kind, kind_score = "uniform", scores["uniform"]
    else:
        kind, kind_score = "other", 0.0
    role = max(pat, key=pat.get)
    return HeadRecord(ev.layer, ev.head, head_name(ev.layer, ev.head), "neither", None, kind, scores,
                      ev.effect[role], _counterfactual(ev, role),
                      clip01(0.5 * kind_score + 0.5 * not_role), None, notes)

"""The label rule: one head's evidence -> one ``HeadRecord``, a pure function (no model, no tensors).

    record = decide(evidence, thresholds)

**With a task** (docs/concepts.md, "The label rule"), from the head's candidate roles
(:mod:`anchor_interp.labels.roles`), each measured under the single-factor counterfactual where it is
largest:

1. A role **passes** when its effect (a shift: also its effect away from the last row, ``away``) is at
   least ``Thresholds.effect`` and a later component uses it: its
   best route (path patching into a later layer's queries, keys or values, or into the logits) is at
   least ``Thresholds.route``. A role that moves information nothing uses gets a note, not a label.
2. The **label** is the passing *operation* (``shift`` or ``broadcast``) with the largest effect; ``copy``
   is the label (``neither`` with kind ``copy``: the useful information comes from the head's own
   position) only when no operation passes (``ROLES``, ``PRECEDENCE``). A head that moves a token from
   another position and has it used is a shift head even if it also copies its own key: the label says
   which of the paper's operations a head performs, ``roles`` says everything it does (docs/concepts.md).
   ``offset`` is the offset of the largest passing shift (every passing offset is in ``roles``);
   ``causal_effect`` is the label role's effect.
3. **Borderline** when the label hangs on a threshold edge: the label role passes one of its tests by
   less than that test's margin (effect: max(0.02, half its 95% interval); best route: 0.02; a shift's
   effect away from the last row: max(0.02, half that one's interval)); or, for a role-less or copy head,
   an operation role that would take the label if it passed (a role-less head: also its strongest role)
   fails each test it fails by less than the margin; or the two largest passing operations are a shift
   and a broadcast within a margin of each other. Each role in ``roles`` carries its own ``borderline``
   flag by the same tests (a passing role: passes one by less; a failing one: fails each by less).
4. **No role**: ``neither`` with kind ``inert`` (its pattern looks like a shift or broadcast), else
   ``sink`` / ``self`` (score >= ``Thresholds.kind``), ``uniform`` (>= ``Thresholds.uniform``), ``other``.
5. **Confidence** in [0, 1]: the probability, under a normal approximation of the bootstrap interval,
   that the label role passes (``neither``: that no role does); the analysis multiplies it by the label's
   stability over batches.

**Without a task** the causal evidence is each head's share of the KL of ablating every head: a role is a
candidate when its pattern score reaches ``Thresholds.pattern`` and is confirmed when the head's KL share
reaches ``Thresholds.kl_share``.

A new label is one row of ``ROLES`` and, in :mod:`anchor_interp.labels.roles`, how its part is measured.
"""

from __future__ import annotations

import math

from anchor_interp.labels.evidence import HeadEvidence
from anchor_interp.labels.records import FULL_EVIDENCE, HeadRecord, Thresholds, clip01
from anchor_interp.labels.roles import MIN_MARGIN, RoleEvidence
from anchor_interp.names import head_name

__all__ = ["PRECEDENCE", "ROLES", "decide", "main_role"]

# role -> (label, kind): what a head whose main role this is gets called
ROLES = {
    "shift": ("shift", None),
    "broadcast": ("broadcast", None),
    "copy": ("neither", "copy"),
}
# which passing role names the head: the paper's operations before the copy (largest effect within a rank)
PRECEDENCE = {"shift": 0, "broadcast": 0, "copy": 1}
OPERATIONS = tuple(r for r, rank in PRECEDENCE.items() if rank == 0)


def main_role(passing: list[RoleEvidence]) -> RoleEvidence | None:
    """The role that gives the label: the passing operation with the largest effect, else the copy."""
    return min(passing, key=lambda r: (PRECEDENCE[r.role], -r.effect), default=None)


def decide(ev: HeadEvidence, th: Thresholds) -> HeadRecord:
    """The label of one head from its evidence (see the module docstring). Pure: same input, same record."""
    if not ev.has_task:
        return _decide_without_task(ev, th)
    notes: list[str] = []
    passing = [r for r in ev.roles if _passes(r, th, notes)]
    roles = [_role_dict(r, th, r in passing) for r in ev.roles]
    main = main_role(passing)
    borderline = _borderline(ev.roles, passing, main, th)
    if main is not None:
        label, kind = ROLES[main.role]
        notes.append(f"{main.name()}: effect {main.effect:.2f} [{main.ci_low:.2f}, {main.ci_high:.2f}] >= "
                     f"{th.effect} ({main.counterfactual}); route {main.route_text()}")
        others = [r for r in passing if r is not main]
        if others:
            notes.append("also " + ", ".join(f"{r.name()} {r.effect:.2f}" for r in others))
        rec = HeadRecord(ev.layer, ev.head, head_name(ev.layer, ev.head), label,
                         main.offset if main.role == "shift" else None, kind, ev.scores, main.effect,
                         main.counterfactual, clip01(_p_pass(main, th)), None, notes)
    else:
        rec = _kind_record(ev, th, notes)
        rec.confidence = clip01(1.0 - max((_p_pass(r, th) for r in ev.roles), default=0.0))
    rec.roles, rec.borderline = roles, borderline
    carrier = next((r for r in ev.roles if r.reads is not None), None)  # every role carries the head's reads
    if carrier is not None:
        rec.reads, rec.reads_effects, rec.reads_borderline = (carrier.reads, carrier.reads_effects,
                                                              carrier.reads_borderline)
    return rec


def _passes(r: RoleEvidence, th: Thresholds, notes: list[str]) -> bool:
    if not r.effect >= th.effect:
        return False
    if r.away is not None and not r.away >= th.effect:
        notes.append(f"{r.name()} moves information (effect {r.effect:.2f}, {r.counterfactual}) but only "
                     f"{r.away:.2f} of it away from the last row (< {th.effect}): it fails the away test")
        return False
    recv, used = r.best_route
    if used >= th.route:
        return True
    notes.append(f"{r.name()} moves information (effect {r.effect:.2f}, {r.counterfactual}) but no later "
                 f"component uses it (best route {recv} {used:.2f} < {th.route})")
    return False


def _role_dict(r: RoleEvidence, th: Thresholds, passed: bool) -> dict:
    d = r.to_dict()
    d.update(passes=passed, threshold=th.effect, route_threshold=th.route,
             borderline=_at_edge(r, th) if passed else _near_pass(r, th))
    return d


def _tests(r: RoleEvidence, th: Thresholds) -> list[tuple[float, float, float]]:
    """(score, threshold, margin) of every test a role must pass: effect, best route, away (a shift)."""
    tests = [(r.effect, th.effect, r.margin), (r.best_route[1], th.route, MIN_MARGIN)]
    if r.away is not None:
        tests.append((r.away, th.effect, r.away_margin))
    return tests


def _at_edge(r: RoleEvidence, th: Thresholds) -> bool:
    """A passing role that could fail: some test passes by less than its margin."""
    return any(abs(v - t) < m for v, t, m in _tests(r, th))


def _near_pass(r: RoleEvidence, th: Thresholds) -> bool:
    """A failing role that could pass: every test it fails, it fails by less than its margin."""
    failed = [(v, t, m) for v, t, m in _tests(r, th) if not v >= t]
    return bool(failed) and all(t - v < m for v, t, m in failed)


def _borderline(roles: list[RoleEvidence], passing: list[RoleEvidence], main: RoleEvidence | None,
                th: Thresholds) -> bool:
    """The label hangs on a threshold edge (module docstring, rule 3)."""
    if main is not None and _at_edge(main, th):
        return True
    if main is None or main.role not in OPERATIONS:
        # an operation that would take the label if it passed; a role-less head: also its strongest role
        could_take = [r for r in roles if r.role in OPERATIONS and r not in passing]
        if main is None:
            could_take += sorted(roles, key=lambda r: -r.effect)[:1]
        if any(_near_pass(r, th) for r in could_take):
            return True
    ops = [r for r in passing if r.role in OPERATIONS]
    if len(ops) >= 2:
        a, b = ops[0], ops[1]  # largest first
        return a.role != b.role and (a.effect - b.effect) < max(a.margin, b.margin)
    return False


def _p_pass(r: RoleEvidence, th: Thresholds) -> float:
    """P(effect >= threshold) under a normal with the bootstrap interval's spread (and the route passing),
    times the same for ``away`` (a shift)."""
    if r.best_route[1] < th.route:
        return 0.0
    p = _p_above(r.effect, r.ci_low, r.ci_high, th.effect)
    if r.away is not None:
        lo, hi = (r.away_low, r.away_high) if r.away_low is not None else (r.away, r.away)
        p *= _p_above(r.away, lo, hi, th.effect)
    return p


def _p_above(value: float, low: float, high: float, threshold: float) -> float:
    """P(value >= threshold) under a normal whose 95% interval is [low, high]."""
    sd = max((high - low) / 3.92, 1e-6)
    return 0.5 * (1.0 + math.erf((value - threshold) / (sd * math.sqrt(2.0))))


def _kind_record(ev: HeadEvidence, th: Thresholds, notes: list[str]) -> HeadRecord:
    """``neither``: inert when the pattern looks like a role, else sink / self / uniform / other."""
    pat, scores = ev.pattern, ev.scores
    name = head_name(ev.layer, ev.head)
    best = max((r for r in ev.roles), key=lambda r: r.effect, default=None)
    effect, cf = (best.effect, best.counterfactual) if best is not None else (
        max(ev.head_effect.values(), default=0.0), next(iter(ev.head_effect), "none"))
    looks = [r for r in ("shift", "broadcast") if pat[r] >= th.pattern]
    if looks:
        role = max(looks, key=lambda r: pat[r])
        what = f"shift({ev.offset:+d})" if role == "shift" else "broadcast"
        notes.append(f"pattern looks like {what} (score {pat[role]:.2f}) but no role passes the causal tests "
                     f"(largest effect {effect:.3f}, threshold {th.effect}; a shift also needs it away from the "
                     "last row)")
        return HeadRecord(ev.layer, ev.head, name, "neither", None, "inert", scores, effect, cf, 0.0, None, notes)
    kinds = {"sink": scores["sink"], "self": scores["self"]}
    top = max(kinds, key=kinds.get)
    if kinds[top] >= th.kind:
        kind = top
    elif scores["uniform"] >= th.uniform:
        kind = "uniform"
    else:
        kind = "other"
    return HeadRecord(ev.layer, ev.head, name, "neither", None, kind, scores, effect, cf, 0.0, None, notes)


# ---------------------------------------------------------------------------------------------------
# without a task: pattern candidates confirmed by the KL share of ablating the head


def _decide_without_task(ev: HeadEvidence, th: Thresholds) -> HeadRecord:
    notes: list[str] = []
    pat, eff = ev.pattern, ev.effect
    candidates = [r for r in ("shift", "broadcast") if pat[r] >= th.pattern]
    confirmed = [r for r in candidates if eff[r] >= th.kl_share]
    name = head_name(ev.layer, ev.head)
    if confirmed:
        role = max(confirmed, key=lambda r: pat[r])
        conf = math.sqrt(min(1.0, pat[role] / FULL_EVIDENCE) * min(1.0, max(eff[role], 0.0) / FULL_EVIDENCE))
        if role == "shift" and ev.qk_offset != ev.offset and ev.scores["qk_positional_shift"] >= th.pattern:
            notes.append(f"positional QK prefers offset {ev.qk_offset}, the pattern offset {ev.offset}")
        return HeadRecord(ev.layer, ev.head, name, role, ev.offset if role == "shift" else None, None, ev.scores,
                          eff[role], "ablation_kl", clip01(conf), None, notes)
    if candidates:
        role = max(candidates, key=lambda r: pat[r])
        what = f"shift({ev.offset:+d})" if role == "shift" else "broadcast"
        notes.append(f"pattern looks like {what} (score {pat[role]:.2f}) but ablation changes little "
                     f"(effect {eff[role]:.3f} < {th.kl_share})")
        conf = min(1.0, pat[role] / FULL_EVIDENCE) * clip01(1.0 - max(eff[role], 0.0) / th.kl_share)
        return HeadRecord(ev.layer, ev.head, name, "neither", None, "inert", ev.scores, eff[role], "ablation_kl",
                          clip01(conf), None, notes)
    rec = _kind_record(ev, th, notes)
    not_role = clip01(1.0 - max(pat.values()) / th.pattern) if th.pattern > 0 else 0.0
    kind_score = {"sink": ev.scores["sink"], "self": ev.scores["self"], "uniform": ev.scores["uniform"]}.get(
        rec.kind, 0.0)
    role = max(pat, key=pat.get)
    rec.causal_effect, rec.counterfactual = eff[role], "ablation_kl"
    rec.confidence = clip01(0.5 * kind_score + 0.5 * not_role)
    return rec

"""Head groups: heads of one layer that carry one operation together, measured by ablating them jointly.

    groups = find_groups(model, tokens, batch, records, evidence, thresholds, method=..., seed=...)

**With a task**, after every head is labelled: per layer, the heads labelled ``shift`` with one offset
(``"shift_L0_offset-1"``), the heads labelled ``broadcast`` (``"broadcast_L1"``) -- two or more heads
each -- and the key-copy heads (``neither`` / ``copy``, ``"copy_L0"``, one or more) are mean-ablated
together; the group's ``joint_effect`` is the relative held-out accuracy drop. ``needed_together`` when
the group removes at least ``Thresholds.group_effect`` while no member alone does. A copy group whose
joint effect reaches ``Thresholds.effect`` is part of the circuit (``circuit_heads``).

**Without a task**, for each role and layer (shift: and offset), the heads confirmed in that role plus
the inert candidates that still do something (KL share >= a quarter of ``Thresholds.kl_share``) are
ablated together; two or more form a group (joint effect: KL share); inert members are relabelled with
the role only when the group is needed together. Records are updated in place (``group``, notes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from anchor_interp.labels.evidence import ModelEvidence
from anchor_interp.labels.records import FULL_EVIDENCE, HeadGroup, HeadRecord, Thresholds, clip01
from anchor_interp.names import head_name
from anchor_interp.scores.ablation import ablate

__all__ = ["circuit_heads", "find_groups"]


@dataclass
class _Ctx:
    """What every group measurement needs: the model, its rows, the records by head, the evidence."""

    model: object
    tokens: object
    batch: object
    by_head: dict
    ev: ModelEvidence
    th: Thresholds
    method: str
    seed: int

    @property
    def contributes(self) -> float:
        return (self.th.effect if self.batch is not None else self.th.kl_share) / 4

    @property
    def redundant_below(self) -> float:
        return self.th.effect if self.batch is not None else self.th.kl_share

    def joint(self, heads) -> float:
        """Effect of ablating ``heads`` together, in [0, 1] (relative accuracy drop, or KL share)."""
        if self.batch is not None:
            r = ablate(self.model, self.tokens, heads, targets=self.batch.targets, method=self.method,
                       seed=self.seed)
            return clip01((r.base_accuracy - r.accuracy) / r.base_accuracy) if r.base_accuracy > 0 else 0.0
        r = ablate(self.model, self.tokens, heads, method=self.method, seed=self.seed, positions="all")
        kl_all = self.ev.baseline.get("kl_all_heads", 0.0)
        return clip01(r.kl / kl_all) if kl_all > 1e-9 else 0.0

    def singles(self, members) -> dict[str, float]:
        return {head_name(*h): float(self.ev.single_effect[h]) for h in members}


def find_groups(model, tokens, batch, records: list[HeadRecord], ev: ModelEvidence, th: Thresholds, *,
                method: str, seed: int) -> list[HeadGroup]:
    """The head groups of the analysis (module docstring); updates ``records`` in place."""
    cfg = model.cfg
    ctx = _Ctx(model, tokens, batch, {(r.layer, r.head): r for r in records}, ev, th, method, seed)
    if batch is not None:
        return _labelled_groups(ctx)
    groups: list[HeadGroup] = []
    for role in ("shift", "broadcast"):
        for layer in range(cfg.n_layers):
            # shift heads group by offset: two heads moving tokens by different offsets are two operations
            offsets = sorted({ev.heads[(layer, h)].offset for h in range(cfg.n_heads)}) if role == "shift" else [None]
            for key in offsets:
                heads = [(layer, h) for h in range(cfg.n_heads) if key is None or ev.heads[(layer, h)].offset == key]
                suffix = "" if key is None else f"_offset{key:+d}"
                group = _role_group(ctx, heads, role, f"{role}_L{layer}{suffix}")
                if group is not None:
                    groups.append(group)
    return groups


def _labelled_groups(ctx: _Ctx) -> list[HeadGroup]:
    """With a task: groups of heads sharing a label (and offset) in one layer; copy heads by layer."""
    sets: dict[str, list] = {}
    for (layer, h), rec in sorted(ctx.by_head.items()):
        if rec.label == "shift":
            sets.setdefault(f"shift_L{layer}_offset{rec.offset:+d}", []).append((layer, h))
        elif rec.label == "broadcast":
            sets.setdefault(f"broadcast_L{layer}", []).append((layer, h))
        elif rec.kind == "copy":
            sets.setdefault(f"copy_L{layer}", []).append((layer, h))
    groups = []
    for name, members in sets.items():
        if len(members) < 2 and not name.startswith("copy"):
            continue
        effect, singles = ctx.joint(members), ctx.singles(members)
        needed = effect >= ctx.th.group_effect and max(singles.values()) < ctx.th.group_effect
        label = "neither" if name.startswith("copy") else name.split("_")[0]
        for h in members:
            _join(ctx, h, name, members, "copy" if label == "neither" else label, effect, singles, needed,
                  relabel=False)
        groups.append(HeadGroup(name, label, [head_name(*h) for h in members], effect, ctx.ev.group_metric,
                                singles, needed))
    return groups


def circuit_heads(records: list[HeadRecord], groups: list[HeadGroup], th: Thresholds) -> list[tuple[int, int]]:
    """The circuit: every head labelled shift or broadcast, plus the copy heads of copy groups whose joint
    ablation removes at least ``Thresholds.effect`` of the held-out accuracy (the model needs them)."""
    needed_copies = {name for g in groups if g.name.startswith("copy") and g.joint_effect >= th.effect
                     for name in g.heads}
    return [(r.layer, r.head) for r in records if r.label in ("shift", "broadcast") or r.name in needed_copies]


def _role_group(ctx: _Ctx, heads, role: str, name: str) -> HeadGroup | None:
    confirmed = [h for h in heads if ctx.by_head[h].label == role]
    # inert candidates join only if they do something (a decoy with zero output does not)
    weak = [h for h in heads if ctx.by_head[h].label == "neither" and ctx.ev.heads[h].pattern[role] >= ctx.th.pattern
            and ctx.ev.heads[h].effect[role] >= ctx.contributes]
    members = sorted(confirmed + weak)
    if len(members) < 2:
        return None
    effect, singles = ctx.joint(members), ctx.singles(members)
    needed = effect >= ctx.th.group_effect and max(singles.values()) < ctx.th.group_effect
    if weak and not needed:
        _note_weak_left_out(ctx, weak, confirmed, role, effect)
        members, weak = confirmed, []
        if len(members) < 2:
            return None
        effect, singles = ctx.joint(members), ctx.singles(members)
        needed = effect >= ctx.th.group_effect and max(singles.values()) < ctx.th.group_effect
    for h in members:
        _join(ctx, h, name, members, role, effect, singles, needed, relabel=h in weak)
    return HeadGroup(name, role, [head_name(*h) for h in members], effect, ctx.ev.group_metric, singles, needed)


def _note_weak_left_out(ctx: _Ctx, weak, confirmed, role, effect) -> None:
    for h in weak:
        ctx.by_head[h].notes.append(
            f"its layer-mates {', '.join(head_name(*c) for c in confirmed)} are labelled {role}; this "
            f"head alone is below the threshold and the group does not need it"
            if confirmed else f"with the other {role}-like heads of layer {h[0]} it still changes little "
            f"(joint {ctx.ev.group_metric} {effect:.0%})"
        )


def _join(ctx: _Ctx, h, name, members, role, effect, singles, needed, *, relabel: bool) -> None:
    """Put head ``h`` in group ``name``: relabel an inert member, add the redundancy / needed notes."""
    rec, metric = ctx.by_head[h], ctx.ev.group_metric
    names = ", ".join(head_name(*m) for m in members)
    rec.group = name
    if relabel:
        ev = ctx.ev.heads[h]
        rec.label, rec.kind = role, None
        rec.offset = ev.offset if role == "shift" else None
        rec.notes = [n for n in rec.notes if not n.startswith("pattern looks like")]
        rec.causal_effect = float(ev.effect[role])
        rec.confidence = clip01(0.8 * math.sqrt(
            min(1.0, ev.pattern[role] / FULL_EVIDENCE) * min(1.0, effect / FULL_EVIDENCE)))
    if effect < ctx.redundant_below:
        rec.notes.append(
            f"redundant: mean-ablating all of group {name} ({names}) together gives {metric} {effect:.0%}; "
            "other heads carry the operation without them"
        )
    if needed:
        rec.notes.append(
            f"carries {role} together with the other heads of group {name} ({names}): mean-ablating "
            f"them all removes {effect:.0%} ({metric}), this head alone {singles[head_name(*h)]:.0%}"
        )

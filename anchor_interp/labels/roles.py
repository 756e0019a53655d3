"""Role evidence: for each head, every role it could play, measured causally, with an interval and a route.

    causal = measure_roles(model, batch, task, thresholds=th, seed=0)
    causal.roles[(layer, head)]  -> [RoleEvidence(role="shift", offset=-1, effect=0.38, ...), ...]

For each single-factor counterfactual the task has (``key_value``, ``anchor_position``,
``anchor_identity``, ``anchor_identity_2``), the head's contribution is split into parts
(:mod:`anchor_interp.labels.routes`) and each part becomes a candidate role:

- ``shift`` (offset ``k != 0``): the information comes from ``k`` positions away (``offset{k}`` part);
  the same terms without the last row (``rows{k}``) are kept as ``away``, with their own interval, for the
  rule's away test (at the last row a fixed offset also picks out the rows whose slot sits there, which
  is a broadcast; the oracle's ``@nonlast`` test, docs/validation.md). A candidate when its away terms
  reach the effect threshold, or the part does and its away terms reach half of it: a shift that fails
  only the away test, and not by much, is listed too (the rule rejects it, with a note);
- ``copy`` (offset 0): the information comes from the head's own position (a key copy); the whole
  ``offset+0`` part counts, the last row included, and it must be spread over the anchor positions: the
  oracle's copy test (at the last row offset 0 also picks out the rows whose slot is the last token, a
  broadcast seen through offset 0, which sits in one anchor-position group);
- ``broadcast`` (slot): the last row reads a task slot (``last:<slot>`` part) whose offset from the last
  row varies across the rows, and it is spread over the anchor positions.

**Spread** (the oracle's test, for broadcasts and copies): with the rows grouped by their clean anchor
position, no group carries more than ``CONCENTRATION_MAX`` of the ``last:<slot>`` (``offset+0``) part's
effect: "one slot wherever it is"; a head that reads one fixed offset at the last row gets a slot read
only from the rows whose slot happens to sit there. Fewer than ``MIN_GROUPS`` anchor positions: not
tested. (Shift candidates are not spread-tested: real shift heads reach shares of 0.49 in the oracle, so
at 0.5 the test flipped them between batches; their guard is the ``away`` test.)

Each candidate keeps the counterfactual under which it is largest, its normalised effect (1 = restores
the clean answer), a 95% bootstrap interval over rows (``N_BOOTSTRAP`` resamples) and its route: the
normalised path-patching effect of that part into every later layer's query / key / value inputs and
into the logits. Only parts of heads whose whole effect reaches half the effect threshold are split
(the rest cannot hold a role).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from anchor_interp.labels.records import Thresholds, finite_or_none
from anchor_interp.labels.routes import (
    PairedRun,
    normalised,
    paired_run,
    part_masks,
    route_values,
    source_values,
)

__all__ = ["CONCENTRATION_MAX", "MIN_GROUPS", "N_BOOTSTRAP", "ROLE_KINDS", "CausalEvidence", "RoleEvidence",
           "anchor_reads", "measure_roles"]

ROLE_KINDS = ("key_value", "anchor_position", "anchor_identity", "anchor_identity_2")
N_BOOTSTRAP = 1000
MIN_MARGIN = 0.02  # the least margin around a threshold (effects are in [0, 1])
MIN_PAIRED_ROWS = 8  # fewer kept rows than this: the counterfactual is not used
CONCENTRATION_MAX = 0.5  # a broadcast's largest anchor-position group may carry at most this share of it
MIN_GROUPS = 3  # fewer anchor positions than this in the rows: the spread test is skipped
_WHAT = {"key_value": "key value", "anchor_position": "anchor position", "anchor_identity": "anchor identity",
         "anchor_identity_2": "second anchor identity"}
_INPUT = {"q": "queries", "k": "keys", "v": "values"}


@dataclass
class RoleEvidence:
    """One candidate role of one head. ``effect`` (normalised, 1 = restores the clean answer) with its
    95% bootstrap interval ``[ci_low, ci_high]``; ``routes``: receiver (``"L1.k"``, ``"logits"``) ->
    normalised path effect; ``reads``: the anchors the head reads (multi-anchor tasks, :func:`anchor_reads`),
    with each anchor slot's effect (``reads_effects``) and whether one sits within its margin of the
    threshold (``reads_borderline``): head-level facts, carried by every role of the head."""

    role: str
    offset: int | None
    slot: str | None
    counterfactual: str
    part: str
    effect: float
    ci_low: float
    ci_high: float
    routes: dict[str, float] = field(default_factory=dict)
    reads: str | None = None
    reads_effects: dict[str, float] | None = None  # anchor slot -> its effect (largest over the counterfactuals)
    reads_borderline: bool | None = None
    away: float | None = None  # shift: the effect of the same terms without the last row
    away_low: float | None = None  # shift: the 95% bootstrap interval of ``away``
    away_high: float | None = None
    spread: float | None = None  # broadcast / copy: share of the effect in its largest anchor-position group

    @property
    def margin(self) -> float:
        """max(MIN_MARGIN, half the 95% interval): how close to a threshold counts as borderline."""
        return max(MIN_MARGIN, (self.ci_high - self.ci_low) / 2)

    @property
    def away_margin(self) -> float:
        """max(MIN_MARGIN, half the 95% interval of ``away``): the margin of the away test (shift)."""
        if self.away_low is None or self.away_high is None:
            return MIN_MARGIN
        return max(MIN_MARGIN, (self.away_high - self.away_low) / 2)

    @property
    def best_route(self) -> tuple[str, float]:
        name = max(self.routes, key=lambda k: self.routes[k]) if self.routes else "none"
        return name, self.routes.get(name, 0.0)

    def name(self) -> str:
        """``shift(-1)``, ``broadcast(key)``, ``copy``."""
        if self.role == "shift":
            return f"shift({self.offset:+d})"
        return f"broadcast({self.slot})" if self.role == "broadcast" else self.role

    def route_text(self, least: float = 0.05) -> str:
        """E.g. ``"anchor position -> L1 keys 0.40; -> logits 0.02"`` (routes >= ``least``, largest first)."""
        parts = []
        for recv, v in sorted(self.routes.items(), key=lambda kv: -kv[1]):
            if v >= least or not parts:
                where = "logits" if recv == "logits" else f"{recv.split('.')[0]} {_INPUT[recv.split('.')[1]]}"
                parts.append(f"{where} {v:.2f}")
        return f"{_WHAT.get(self.counterfactual, self.counterfactual)} -> " + "; ".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["reads_effects"], d["reads_borderline"]  # head-level: the head record carries them once
        for k in ("effect", "ci_low", "ci_high"):
            d[k] = finite_or_none(d[k])
        d["routes"] = {k: finite_or_none(v) for k, v in self.routes.items()}
        for k in ("away", "away_low", "away_high"):
            d[k] = None if d[k] is None else finite_or_none(d[k])
        d["spread"] = None if self.spread is None else finite_or_none(self.spread)
        d["margin"] = finite_or_none(self.margin)
        d["name"] = self.name()
        d["route"] = self.route_text()
        return d


@dataclass
class CausalEvidence:
    """Per model: ``head_effect[kind]`` (layer, head) whole-head effects, ``roles[(layer, head)]``,
    ``runs[kind]``: rows used, rows dropped, logit gap; ``notes`` for every head; ``slot_effect[(layer,
    head)]``: ``"slot:<slot>"`` -> its largest effect over the counterfactuals; ``slot_margin``: half the 95%
    bootstrap interval of that effect (multi-anchor tasks' two anchor slots only)."""

    head_effect: dict[str, torch.Tensor]
    roles: dict[tuple[int, int], list[RoleEvidence]]
    runs: dict[str, dict]
    notes: list[str] = field(default_factory=list)
    slot_effect: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)  # max over kinds
    slot_margin: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)


def _kinds(task) -> list[str]:
    applicable = task.counterfactual_kinds() if hasattr(task, "counterfactual_kinds") else ("key_swap", "anchor_move")
    return [k for k in ROLE_KINDS if k in applicable]


def measure_roles(model, batch, task, *, thresholds: Thresholds, seed: int, causal: bool,
                  heads: set[tuple[int, int]] | None = None) -> CausalEvidence:
    """Every head's candidate roles under every single-factor counterfactual of ``task`` (module docstring);
    ``heads``: only these (layer, head) are measured (the others get no roles and a whole-head effect of 0)."""
    from anchor_interp.tasks import TaskError

    L, H = model.cfg.n_layers, model.cfg.n_heads
    ev = CausalEvidence({}, {(la, h): [] for la in range(L) for h in range(H)}, {})
    for kind in _kinds(task):
        try:
            pair = task.counterfactual_pair(batch, kind, seed=seed + 1)
        except TaskError as e:
            ev.notes.append(f"{kind}: not used ({e})")
            continue
        if len(pair.clean) < MIN_PAIRED_ROWS:
            ev.notes.append(f"{kind}: only {len(pair.clean)} rows have this counterfactual; not used")
            continue
        run = paired_run(model, pair.clean, pair.corrupt, kind, pair.n_dropped)
        ev.runs[kind] = {"rows": len(pair.clean), "dropped": pair.n_dropped, "logit_gap": run.gap}
        if not abs(run.gap) >= thresholds.min_logit_gap:
            ev.notes.append(f"{kind}: the model barely separates clean and corrupt answers (logit gap {run.gap:.3g} "
                            f"< {thresholds.min_logit_gap}); its effects are set to 0")
            ev.head_effect[kind] = torch.zeros(L, H)
            continue
        ev.head_effect[kind] = _measure_kind(model, run, ev, thresholds, seed, causal, heads)
    for key, roles in ev.roles.items():
        reads, effects, unsure = anchor_reads(ev.slot_effect.get(key, {}), ev.slot_margin.get(key, {}),
                                              thresholds.effect)
        ev.roles[key] = [dataclasses.replace(r, reads=reads, reads_effects=effects, reads_borderline=unsure)
                         for r in _strongest_per_role(roles, thresholds.effect)]
    return ev


def _measure_kind(model, run: PairedRun, ev: CausalEvidence, th: Thresholds, seed: int, causal: bool,
                  heads: set[tuple[int, int]] | None = None):
    L, H = model.cfg.n_layers, model.cfg.n_heads
    B = run.clean_ld.shape[0]
    masks = part_masks(run, causal)
    parts = [p for p in masks if p != "head"]
    gen = torch.Generator().manual_seed(seed)
    boot = torch.randint(B, (N_BOOTSTRAP, B), generator=gen)  # (R, B) resampled rows
    head_effect = torch.zeros(L, H)  # the heads left out by ``heads`` stay 0
    for layer in range(L):
        chosen = [h for h in range(H) if heads is None or (layer, h) in heads]
        if not chosen:
            continue
        whole = source_values(model, run, layer, [(h, masks["head"]) for h in chosen])  # (len(chosen), B)
        head_effect[layer, chosen] = normalised(whole, run)
        for h in chosen:
            if not head_effect[layer, h] >= th.effect / 2:
                continue
            main = [p for p in parts if not p.startswith("rows")]
            values = source_values(model, run, layer, [(h, masks[p]) for p in main])  # (P, B)
            effects = dict(zip(main, normalised(values, run).tolist(), strict=True))
            rows = [f"rows{p.removeprefix('offset')}" for p in main if p.startswith("offset") and p != "offset+0"
                    and effects[p] >= th.effect / 2 and f"rows{p.removeprefix('offset')}" in masks]
            away_values = {}  # the shift candidates' terms away from the last row: rows{k} -> (B,)
            if rows:
                away_values = dict(zip(rows, source_values(model, run, layer, [(h, masks[p]) for p in rows]),
                                       strict=True))
                effects.update((p, float(normalised(v, run))) for p, v in away_values.items())
            shares = {p: _largest_group_share(values[main.index(p)], run) for p in main
                      if (p.startswith("last:") or p == "offset+0") and effects[p] >= th.effect / 2}
            slots = ev.slot_effect.setdefault((layer, h), {})
            slot_margins = ev.slot_margin.setdefault((layer, h), {})
            anchors = ("slot:anchor", "slot:anchor2") if "slot:anchor2" in effects else ()
            for p in effects:
                if p.startswith("slot:") and effects[p] > slots.get(p, float("-inf")):
                    slots[p] = effects[p]
                    if p in anchors:  # which anchors a head reads: a claim with its own margin
                        lo, hi = _interval(values[main.index(p)], run, boot)
                        slot_margins[p] = (hi - lo) / 2
            for role, offset, slot, part in _candidates(effects, run, th.effect, shares):
                if not effects[part] >= th.effect / 2:
                    continue
                lo, hi = _interval(values[main.index(part)], run, boot)
                routes = {k: float(normalised(v, run)) for k, v in
                          route_values(model, run, layer, h, masks[part]).items()}
                away = away_low = away_high = None
                if role == "shift":
                    away = effects[f"rows{offset:+d}"]
                    away_low, away_high = _interval(away_values[f"rows{offset:+d}"], run, boot)
                ev.roles[(layer, h)].append(RoleEvidence(role, offset, slot, run.kind, part, effects[part], lo, hi,
                                                         routes, away=away, away_low=away_low, away_high=away_high,
                                                         spread=shares.get(part)))
    return head_effect


def _interval(values: Float[Tensor, " batch"], run: PairedRun, boot: Tensor) -> tuple[float, float]:
    """The 95% bootstrap interval of a part's normalised effect (``boot``: (R, B) resampled rows)."""
    lo, hi = torch.quantile(normalised(values, run, boot), torch.tensor([0.025, 0.975])).tolist()
    return lo, hi


def _largest_group_share(values: Float[Tensor, " batch"], run: PairedRun) -> float | None:
    """The share of a part's effect (per row: patched minus corrupt logit difference, negatives as 0 per
    group) carried by its largest group of rows with one clean anchor position, in [0, 1]; None when the
    rows hold fewer than ``MIN_GROUPS`` anchor positions (not tested), 1 when nothing is positive."""
    if "anchor" not in run.slots:
        return None
    groups, group_of = run.slots["anchor"][0].unique(return_inverse=True)  # (G,), (B,) clean anchor positions
    if len(groups) < MIN_GROUPS:
        return None
    d = values - run.corrupt_ld  # (B,)
    per_group = d.new_zeros(len(groups)).index_add_(0, group_of, d).clamp(min=0)  # (G,)
    total = float(per_group.sum())
    return float(per_group.max()) / total if total > 0 else 1.0


def _candidates(effects: dict[str, float], run: PairedRun, least: float,
                shares: dict[str, float | None]) -> list[tuple[str, int | None, str | None, str]]:
    """(role, offset, slot, part) for every part that could carry a role; ``least``: the effect threshold;
    ``shares``: the largest anchor-position share of each ``last:<slot>`` and the ``offset+0`` part (None: not tested; missing:
    fails)."""

    def spread(part: str) -> bool:
        share = shares.get(part, 1.0)
        return share is None or share <= CONCENTRATION_MAX

    out = []
    offsets = {p: int(p.removeprefix("offset")) for p in effects if p.startswith("offset")}
    for part, k in offsets.items():
        if k == 0 and effects[part] >= least and spread(part):
            out.append(("copy", 0, None, part))
        elif k != 0 and f"rows{k:+d}" in effects and (effects[f"rows{k:+d}"] >= least or (
                effects[part] >= least and effects[f"rows{k:+d}"] >= least / 2)):
            # listed when it fails only the away test, and not by much, so a near miss shows with its numbers
            # (at the last row alone a fixed offset picks out the rows whose slot sits there: a broadcast)
            out.append(("shift", k, None, part))
    T = run.clean.tokens.shape[1]
    for slot, (pos_c, _) in run.slots.items():
        varying = len(set((pos_c - (T - 1)).tolist())) >= 2  # the slot sits at several offsets from the last row
        part = f"last:{slot}"
        if varying and part in effects and spread(part):
            out.append(("broadcast", None, slot, part))
    return out


def anchor_reads(effects: dict[str, float], margins: dict[str, float],
                 least: float) -> tuple[str | None, dict[str, float] | None, bool | None]:
    """Multi-anchor tasks: which anchors a head reads. ``effects``: ``"slot:<slot>"`` -> the slot's effect
    (any destination, largest over the counterfactuals; normalised, 1 = restores the clean answer);
    ``margins``: the same keys -> half that effect's 95% interval; ``least``: the effect threshold.

    Returns ``(reads, anchor_effects, borderline)``: the anchors whose effect reaches ``least``, largest
    first, joined by ``+`` (``"anchor"``, ``"anchor2+anchor"``; ``"-"`` for none); anchor -> effect; and
    whether an anchor's effect lies within its margin (at least ``MIN_MARGIN``) of ``least``, so that
    another batch could read it the other way. ``(None, None, None)`` when the task has one anchor."""
    anchors = {s: effects[f"slot:{s}"] for s in ("anchor", "anchor2") if f"slot:{s}" in effects}
    if len(anchors) < 2:
        return None, None, None
    read = [s for s in sorted(anchors, key=lambda s: -anchors[s]) if anchors[s] >= least]
    unsure = any(abs(v - least) < max(MIN_MARGIN, margins.get(f"slot:{s}", MIN_MARGIN)) for s, v in anchors.items())
    return ("+".join(read) if read else "-"), {s: float(v) for s, v in anchors.items()}, unsure


# the counterfactual that names each role's factor: preferred when another is larger by less than a margin
CANONICAL_KIND = {"shift": "anchor_position", "broadcast": "key_value", "copy": "key_value"}


def _strongest_per_role(roles: list[RoleEvidence], least: float) -> list[RoleEvidence]:
    """One candidate per (role, offset, slot): the counterfactual under which it is largest (the role's
    canonical one when the others exceed it by less than a margin), among those whose ``away`` reaches
    ``least`` when any does (a shift); largest first."""
    by_key: dict[tuple, list[RoleEvidence]] = {}
    for r in roles:
        by_key.setdefault((r.role, r.offset, r.slot), []).append(r)
    best = []
    for (role, _, _), rs in by_key.items():
        rs = [r for r in rs if r.away is None or r.away >= least] or rs
        top = max(rs, key=lambda r: r.effect)
        canon = next((r for r in rs if r.counterfactual == CANONICAL_KIND[role]), None)
        best.append(canon if canon is not None and top.effect - canon.effect < max(top.margin, canon.margin) else top)
    return sorted(best, key=lambda r: -r.effect)

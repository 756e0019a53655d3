"""What the labeller writes: thresholds, one ``HeadRecord`` per head, ``HeadGroup``s, the ``HeadAnalysis``.

All of these are plain dataclasses with JSON-safe ``to_dict`` (non-finite floats become None); their
fields are the contract written in docs/interfaces.md ("HeadRecord and FindHeadsResult").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "DEFAULT_THRESHOLDS",
    "FULL_EVIDENCE",
    "HeadAnalysis",
    "HeadGroup",
    "HeadRecord",
    "LABELS",
    "NEITHER_KINDS",
    "Thresholds",
    "clip01",
    "finite_or_none",
]

LABELS = ("shift", "broadcast", "neither")
NEITHER_KINDS = ("copy", "sink", "self", "uniform", "inert", "other", "unsolved")
FULL_EVIDENCE = 0.5  # a pattern score or effect of 0.5 counts as full evidence in a confidence


def finite_or_none(x) -> float | None:
    """``float(x)``, or None when it is NaN or infinite (strict JSON)."""
    x = float(x)
    return x if math.isfinite(x) else None


def clip01(x: float) -> float:
    """``x`` clipped to [0, 1]; NaN -> 0."""
    return 0.0 if not math.isfinite(x) else max(0.0, min(1.0, x))


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds, each in [0, 1] (justified in docs/concepts.md).

    With a task: ``effect``: least normalised effect of a role's part (1 = restores the clean answer) for
    the role to count; ``route``: least normalised path effect of that part into a later component (a
    later layer's queries, keys or values, or the logits) for it to count as used; ``pattern``: least
    pattern score for a role-less head to be called ``inert`` (it looks like the role but does nothing);
    ``group_effect``: least joint effect of a group; ``min_logit_gap``: least clean-vs-corrupt logit
    difference (logits, not in [0, 1]) for a counterfactual to be used at all.
    Without a task: ``pattern`` makes a candidate, ``kl_share`` (share of the KL of ablating every head)
    confirms it. ``kind``: least sink/self score for that kind; ``uniform``: least uniform score for kind
    ``uniform``.

    Raises ValueError for a threshold outside [0, 1] (``min_logit_gap``: negative).
    """

    pattern: float = 0.2
    effect: float = 0.1
    route: float = 0.05
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
    """One head's label and its evidence (docs/interfaces.md). ``to_dict`` / ``from_dict`` are JSON-safe.

    ``causal_effect``: the label role's effect (with a task; normalised, 1 = restores the clean answer);
    ``roles``: every measured role (``RoleEvidence.to_dict()`` plus ``passes``, ``threshold``, ...);
    ``borderline``: a score lies within its margin of a threshold, or the label is not the same on every
    batch; ``stability``: fraction of the batches (folds) that gave the majority label; ``reads``: the
    anchors a multi-anchor head reads (``"anchor2+anchor"``, ``"-"``: none), ``reads_effects`` each anchor
    slot's effect and ``reads_borderline`` whether one lies within its margin of the threshold (None: the
    task has one anchor)."""

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
    roles: list[dict[str, Any]] = field(default_factory=list)
    borderline: bool = False
    stability: float | None = None
    reads: str | None = None
    reads_effects: dict[str, float] | None = None
    reads_borderline: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores"] = {k: finite_or_none(v) for k, v in self.scores.items()}
        d["causal_effect"] = finite_or_none(self.causal_effect)
        if self.reads_effects is not None:
            d["reads_effects"] = {k: finite_or_none(v) for k, v in self.reads_effects.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadRecord:
        """Read back what ``to_dict`` wrote. Raises ValueError for missing fields."""
        known = {f.name for f in fields(cls)}
        missing = known - set(d) - {"group", "notes", "roles", "borderline", "stability", "reads",
                                    "reads_effects", "reads_borderline"}
        if missing:
            raise ValueError(f"HeadRecord.from_dict: missing fields {sorted(missing)}")
        kw = {k: d[k] for k in known if k in d}
        kw["scores"] = {k: (math.nan if v is None else float(v)) for k, v in kw["scores"].items()}
        kw["causal_effect"] = math.nan if kw["causal_effect"] is None else float(kw["causal_effect"])
        kw["notes"] = list(kw.get("notes") or [])
        kw["roles"] = list(kw.get("roles") or [])
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
        d["joint_effect"] = finite_or_none(self.joint_effect)
        d["individual_effects"] = {k: finite_or_none(v) for k, v in self.individual_effects.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadGroup:
        return cls(d["name"], d["label"], list(d["heads"]), d["joint_effect"], d["metric"],
                   dict(d.get("individual_effects", {})), bool(d.get("needed_together", False)))


@dataclass
class HeadAnalysis:
    """``records`` (one per head, ordered by layer, head), ``groups``, the ``thresholds`` used,
    ``baseline`` facts (accuracy, logit gaps, competence gate, KL of ablating everything),
    ``head_effects`` (with a task: counterfactual kind -> ``[layer][head]`` whole-head effect, normalised)
    and ``circuit`` (the heads the circuit check ablates: shift, broadcast and needed copy heads)."""

    records: list[HeadRecord]
    groups: list[HeadGroup]
    thresholds: Thresholds
    baseline: dict[str, float]
    head_effects: dict[str, list[list[float]]] = field(default_factory=dict)
    circuit: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "heads": [r.to_dict() for r in self.records],
            "groups": [g.to_dict() for g in self.groups],
            "thresholds": asdict(self.thresholds),
            "baseline": {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in self.baseline.items()},
            "head_effects": {k: [[finite_or_none(x) for x in row] for row in v] for k, v in self.head_effects.items()},
            "circuit": list(self.circuit),
        }

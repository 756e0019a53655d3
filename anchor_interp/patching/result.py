"""PatchResult: the metric per patched site, with its axes, hooks and baselines (docs/interfaces.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["PatchResult"]


@dataclass
class PatchResult:
    """Metric per patched site.

    ``values`` has one dimension per entry of ``axes`` (axis names from docs/interfaces.md);
    ``hook_names`` are the TransformerLens hooks that were patched; ``metric`` is ``"logit_diff"``,
    ``"accuracy"``, ``"kl"`` or ``"custom"``; ``normalised`` says whether ``values`` are
    ``(patched - corrupt) / (clean - corrupt)``. ``clean_value`` / ``corrupt_value`` are the raw
    metric of the unpatched clean and corrupted runs; ``method`` is ``"exact"`` (activation
    patching) or ``"attribution"`` (gradient approximation).
    Raises ValueError when ``values`` does not have one dimension per axis name.
    """

    values: Tensor
    axes: tuple[str, ...]
    hook_names: tuple[str, ...]
    metric: str
    counterfactual: str | None = None
    normalised: bool = True
    clean_value: float | None = None
    corrupt_value: float | None = None
    method: str = "exact"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.dim() != len(self.axes):
            raise ValueError(
                f"PatchResult: values has {self.values.dim()} dimensions but axes names {len(self.axes)} "
                f"({self.axes}); give one axis name per dimension"
            )

    def raw(self) -> Tensor:
        """Values in metric units (undo the normalisation); raises ValueError without baselines."""
        if not self.normalised:
            return self.values
        if self.clean_value is None or self.corrupt_value is None:
            raise ValueError("PatchResult.raw: clean_value and corrupt_value are needed to undo normalisation")
        return self.corrupt_value + self.values * (self.clean_value - self.corrupt_value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN and infinities become ``None``)."""

        def clean_float(x: float) -> float | None:
            return x if math.isfinite(x) else None

        def nested(v: Any) -> Any:
            return [nested(u) for u in v] if isinstance(v, list) else clean_float(float(v))

        return {
            "values": nested(self.values.detach().cpu().double().tolist()),
            "shape": list(self.values.shape),
            "axes": list(self.axes),
            "hook_names": list(self.hook_names),
            "metric": self.metric,
            "counterfactual": self.counterfactual,
            "normalised": self.normalised,
            "clean_value": None if self.clean_value is None else clean_float(self.clean_value),
            "corrupt_value": None if self.corrupt_value is None else clean_float(self.corrupt_value),
            "method": self.method,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatchResult:
        """Inverse of :meth:`to_dict` (``None`` values come back as NaN)."""

        def nested(v: Any) -> Any:
            return [nested(u) for u in v] if isinstance(v, list) else (math.nan if v is None else v)

        values = torch.tensor(nested(d["values"]), dtype=torch.float64).reshape(d["shape"])
        return cls(
            values=values,
            axes=tuple(d["axes"]),
            hook_names=tuple(d["hook_names"]),
            metric=d["metric"],
            counterfactual=d.get("counterfactual"),
            normalised=bool(d.get("normalised", True)),
            clean_value=d.get("clean_value"),
            corrupt_value=d.get("corrupt_value"),
            method=d.get("method", "exact"),
            extra=dict(d.get("extra", {})),
        )

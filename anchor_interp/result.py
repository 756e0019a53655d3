"""The find_heads result schema: ``FindHeadsResult`` and its JSON, below both the analysis and the report.

The analysis (:mod:`anchor_interp.find_heads`) writes a ``FindHeadsResult``; the report
(:mod:`anchor_interp.report`) reads one, from memory or from its JSON alone, so a saved result can be
re-rendered without recomputing anything. Fields: docs/interfaces.md ("HeadRecord and FindHeadsResult").
Importing this module is cheap (no torch).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from anchor_interp import __version__
from anchor_interp.atomic import atomic_write_text

__all__ = ["PATCHING_SWEEPS", "SCHEMA_VERSION", "FindHeadsResult", "json_safe", "key_scores", "label_role",
           "label_role_index"]

SCHEMA_VERSION = 1

# (patching name, sweep, counterfactual kind); each gives one heatmap in the report.
PATCHING_SWEEPS = (
    ("resid_pre/key_value", "resid_pre", "key_value"),
    ("head_out/key_value", "head_out", "key_value"),
    ("head_out/anchor_position", "head_out", "anchor_position"),
)



# The keys every schema-1 result carries (the others default to empty).
_REQUIRED_KEYS = ("schema_version", "seed", "model", "task", "accuracy", "heads")


@dataclass
class FindHeadsResult:
    """Everything find_heads learned about one model, as plain JSON-able Python values.

    Fields (docs/interfaces.md, "HeadRecord and FindHeadsResult"):
    - ``model``: preset, n_layers, n_heads, d_model, n_params, causal, attn_only, source, ...
    - ``task``: ``task.to_dict()``.
    - ``accuracy``: held-out argmax accuracy at the last position, in [0, 1]:
      ``{"split", "n", "overall", "groups": [{"name", "masked", "n", "accuracy"}]}``.
    - ``heads``: one ``HeadRecord.to_dict()`` per head, ordered by (layer, head).
    - ``groups``: named groups of heads with their joint effect
      ``[{"name", "label", "heads": ["L0H1", ...], "joint_effect", "metric", ...}]`` (``HeadGroup.to_dict()``).
    - ``patching``: name -> ``PatchResult.to_dict()`` (e.g. ``"head_out/key_swap"``).
    - ``ablation``: ``{"method", "baseline": {"accuracy", "loss"}, "checks": [...], "per_head": [...]}``.
    - ``examples``: ``[{"tokens", "token_labels", "anchor_pos", "key_pos", "target", "prediction",
      "group", "patterns": {"blocks.L.attn.hook_pattern": [head][dest_pos][src_pos]}}]``.
    - ``history``: training metric rows from the checkpoint (may be empty).
    - ``timings``: seconds spent in each stage of find_heads.
    - ``competence``: the competence gate: ``{"accuracy", "attainable_accuracy", "floor", "solved",
      "allow_unsolved"}`` (accuracies in [0, 1], unmasked groups); empty in results of older versions.
    - ``labelling``: ``{"thresholds", "circuit": ["L0H1", ...], "counterfactuals": {kind: {"rows",
      "logit_gap"}}}``: how the labels were made.
    - ``training``: how the model was trained, from its checkpoint: ``{"recipe": {...}, "seed", "step",
      "epoch", "n_train", "train_seconds"}`` (any may be missing; empty when unknown or in older results).
    - ``mean_attention``: every head's anchor-aligned mean attention over the analysis rows
      (``find_heads.mean_attention``): ``{"aligned_to": "anchor_pos", "offsets": [lo, hi], "rows",
      "values": [layer][head][q_off][k_off]}``; empty in results of older versions (the report says
      "not computed").
    """

    seed: int
    model: dict[str, Any]
    task: dict[str, Any]
    accuracy: dict[str, Any]
    heads: list[dict[str, Any]]
    groups: list[dict[str, Any]] = field(default_factory=list)
    patching: dict[str, dict[str, Any]] = field(default_factory=dict)
    ablation: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    command: str = ""
    package_version: str = __version__
    schema_version: int = SCHEMA_VERSION
    timings: dict[str, float] = field(default_factory=dict)
    competence: dict[str, Any] = field(default_factory=dict)
    labelling: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    mean_attention: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (a deep copy); ``schema_version`` first."""
        d = asdict(self)
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FindHeadsResult:
        """Read back what `to_dict` wrote.

        Raises ValueError if ``d`` is not a dict, lacks a required key, or has a schema_version
        other than 1 (a result written by an incompatible version of anchor_interp).
        """
        if not isinstance(d, dict):
            raise ValueError(f"FindHeadsResult.from_dict: expected a dict, got {type(d).__name__}")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"FindHeadsResult: schema_version {version!r} is not supported; this anchor_interp "
                f"({__version__}) reads schema_version {SCHEMA_VERSION}. Re-run find_heads to regenerate it."
            )
        missing = [k for k in _REQUIRED_KEYS if k not in d]
        if missing:
            raise ValueError(f"FindHeadsResult: missing keys {missing}; a schema-1 result needs {list(_REQUIRED_KEYS)}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        """JSON text; NaN and infinities (e.g. an accuracy over no rows) are written as null."""
        return json.dumps(json_safe(self.to_dict()), indent=1, allow_nan=False)

    def save_json(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the result as JSON, atomically (temp file in the same folder, then os.replace).

        Raises FileExistsError if ``path`` exists and ``overwrite`` is False.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
        atomic_write_text(path, self.to_json(), make_parents=True)
        return path

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> FindHeadsResult:
        """Read a result saved by `save_json`. Raises ValueError for unreadable or invalid JSON."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"result JSON {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"result JSON {path} could not be read: {e}") from None
        return cls.from_dict(d)

def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None and tuples by lists (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def label_role_index(h: dict) -> int | None:
    """Index in ``h["roles"]`` of the passing role that gives the head its label (``shift`` at the head's
    ``offset``, ``broadcast``, or the ``copy`` of a ``neither``/``copy`` head); None for a role-less label.
    Not always the first passing role: a shift outranks a larger copy (docs/concepts.md, section 5)."""
    want = {"shift": "shift", "broadcast": "broadcast"}.get(h.get("label"), "copy" if h.get("kind") == "copy" else None)
    for i, r in enumerate(h.get("roles") or []):
        if r.get("passes") and r.get("role") == want and (want != "shift" or r.get("offset") == h.get("offset")):
            return i
    return None


def label_role(h: dict) -> dict | None:
    """The role dict at :func:`label_role_index` (None for a role-less label)."""
    i = label_role_index(h)
    return None if i is None else h["roles"][i]


def key_scores(h: dict) -> dict[str, float | None]:
    """The two pattern scores every label is read against (each in [0, 1], above chance):
    ``shift_pattern`` and ``broadcast_pattern`` (falling back to ``shift`` / ``broadcast``)."""
    scores = h.get("scores") or {}
    return {
        "shift": scores.get("shift_pattern", scores.get("shift")),
        "broadcast": scores.get("broadcast_pattern", scores.get("broadcast")),
    }

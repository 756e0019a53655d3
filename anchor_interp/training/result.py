"""What training returns (:class:`TrainResult`, one per model) and raises (:class:`TrainingDiverged`,
:class:`TrainingInterrupted`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainResult", "TrainingDiverged", "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a SIGINT (Ctrl-C) or SIGTERM after saving a resumable checkpoint;
    ``signum`` is the signal's number."""

    def __init__(self, message: str, *, signum: int):
        super().__init__(message)
        self.signum = signum


class TrainingDiverged(RuntimeError):
    """The loss of a model became non-finite. ``step`` is the first bad step (1-based); the last good
    checkpoint (if any was written) is left untouched at ``checkpoint``."""

    def __init__(self, message: str, *, model_index: int, step: int, checkpoint: str | None):
        super().__init__(message)
        self.model_index, self.step, self.checkpoint = model_index, step, checkpoint


@dataclass
class TrainResult:
    """One trained model: the HookedTransformer (trained in place), its metric history and end state."""

    model: Any
    seed: int
    history: list[dict]
    step: int
    epoch: int
    stopped_early: bool
    out_dir: str | None = None
    recipe: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        """The last history row (evaluation at the end of training or at the early stop)."""
        return self.history[-1] if self.history else {}

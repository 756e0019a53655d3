"""Patching metrics: what a patched run is scored by, at the last position, averaged over the batch.

The named metrics (:data:`METRICS`) are vectorised over patched variants (logits
``[*variant, batch, d_vocab]`` at the last position) and are batch means of per-row values, which lets
a sweep run only the rows a patch changes (:meth:`Metric.rows`). A callable metric is
``logits [batch, pos, d_vocab] -> scalar``, as in ``transformer_lens.patching``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from anchor_interp.patching.inputs import PatchInputs

__all__ = ["METRICS", "Metric", "MetricFn", "accuracy", "kl_from_clean", "logit_diff", "resolve_metric"]

METRICS = ("logit_diff", "accuracy", "kl")

# A metric callable, as in transformer_lens.patching: logits [batch, pos, d_vocab] -> scalar tensor.
MetricFn = Callable[[Tensor], Tensor]


def logit_diff(
    last_logits: Float[Tensor, "*variant batch d_vocab"],
    clean_targets: Int[Tensor, " batch"],
    corrupt_targets: Int[Tensor, " batch"],
) -> Float[Tensor, "*variant"]:
    """Batch-mean of ``logit[clean answer] - logit[corrupt answer]`` (logit units, unbounded)."""
    shape = last_logits.shape[:-1]
    clean = last_logits.gather(-1, clean_targets.expand(shape).unsqueeze(-1)).squeeze(-1)  # (*variant, batch)
    corrupt = last_logits.gather(-1, corrupt_targets.expand(shape).unsqueeze(-1)).squeeze(-1)
    return (clean - corrupt).mean(-1)


def accuracy(
    last_logits: Float[Tensor, "*variant batch d_vocab"], clean_targets: Int[Tensor, " batch"]
) -> Float[Tensor, "*variant"]:
    """Batch-mean of ``argmax == clean answer`` (in [0, 1])."""
    return (last_logits.argmax(-1) == clean_targets).to(last_logits.dtype).mean(-1)


def kl_from_clean(
    last_logits: Float[Tensor, "*variant batch d_vocab"], clean_logprobs: Float[Tensor, "batch d_vocab"]
) -> Float[Tensor, "*variant"]:
    """Batch-mean of ``KL(p_clean || p_patched)`` at the last position (nats, >= 0; 0 for the clean run)."""
    return _kl_rows(clean_logprobs, last_logits.log_softmax(-1)).mean(-1)


def _kl_rows(clean_logprobs: Tensor, logprobs: Tensor) -> Tensor:
    """Per-row KL over the last dim; tokens the clean run gives probability 0 contribute 0 (not NaN)."""
    p = clean_logprobs.exp()
    return torch.where(p > 0, p * (clean_logprobs - logprobs), torch.zeros_like(p)).sum(-1)


class Metric:
    """A named metric (vectorised, last position only) or a user callable (full logits, per variant).

    ``clean_logits`` [batch, pos, d_vocab] are the clean run's (used by ``"kl"``: its last-position
    log-probabilities are the reference distribution).
    """

    def __init__(
        self,
        name: str,
        fn: MetricFn | None,
        clean_targets: Int[Tensor, " batch"] | None,
        corrupt_targets: Int[Tensor, " batch"] | None,
        clean_logits: Float[Tensor, "batch pos d_vocab"],
    ):
        self.name = name
        self.fn = fn
        self.clean_targets = clean_targets
        self.corrupt_targets = corrupt_targets
        self.clean_logprobs = clean_logits[:, -1].log_softmax(-1) if name == "kl" else None  # (B, d_vocab)
        self.needs_full_logits = fn is not None

    def rows(self, last: Float[Tensor, "N d_vocab"], b: Int[Tensor, " N"]) -> Float[Tensor, " N"]:
        """Per-row value of a named metric (its batch-mean is the metric) for rows ``b`` of the batch."""
        if self.name == "logit_diff":
            clean = last.gather(1, self.clean_targets[b, None])[:, 0]  # (N,)
            return clean - last.gather(1, self.corrupt_targets[b, None])[:, 0]
        if self.name == "accuracy":
            return (last.argmax(-1) == self.clean_targets[b]).to(last.dtype)
        return _kl_rows(self.clean_logprobs[b], last.log_softmax(-1))

    def __call__(self, logits: Float[Tensor, "variant batch pos d_vocab"]) -> Float[Tensor, " variant"]:
        if self.fn is not None:
            return torch.stack([_scalar(self.fn(lv), lv.shape) for lv in logits]).to(logits.dtype)
        last = logits[:, :, -1]  # (V, B, d_vocab)
        if self.name == "logit_diff":
            return logit_diff(last, self.clean_targets, self.corrupt_targets)
        if self.name == "accuracy":
            return accuracy(last, self.clean_targets)
        return kl_from_clean(last, self.clean_logprobs)


def _scalar(value, logits_shape) -> Tensor:
    """A callable metric's value as a 0-d tensor; ValueError for anything that is not one number."""
    try:
        value = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"metric: a callable metric must return a scalar tensor, got {type(value).__name__}") from err
    if value.numel() != 1:
        raise ValueError(
            f"metric: a callable metric must return one number per call (average over the batch), but it "
            f"returned shape {tuple(value.shape)} for logits of shape {tuple(logits_shape)}; e.g. a per-row "
            "metric needs .mean()"
        )
    if not (value.is_floating_point() or value.is_complex()):
        value = value.double()
    return value.reshape(())


def resolve_metric(metric: str | MetricFn | None, inp: PatchInputs, d_vocab: int) -> tuple[str, MetricFn | None]:
    """``(name, callable or None)`` of the metric a patching call asked for.

    ``None`` picks ``"logit_diff"``, or ``"kl"`` when a corrupted target is -1 (``anchor_remove``).
    Raises ValueError for an unknown name, a metric that needs answers the inputs lack (token
    tensors; ``logit_diff`` with ``anchor_remove``), or targets outside ``[0, d_vocab)``.
    """
    if callable(metric):
        return "custom", metric
    if metric is None:
        if inp.clean_targets is None:
            raise ValueError(
                "metric: token tensors carry no answers; pass metric='kl' or a callable "
                "(logits [batch, pos, d_vocab] -> scalar), or give Batches"
            )
        no_answer = bool((inp.corrupt_targets < 0).any())
        return ("kl" if no_answer else "logit_diff"), None
    if metric not in METRICS:
        raise ValueError(f"metric: unknown metric {metric!r}; use one of {METRICS} or a callable")
    if metric in ("logit_diff", "accuracy"):
        if inp.clean_targets is None:
            raise ValueError(f"metric={metric!r} needs answers: give Batches, or use metric='kl' or a callable")
        if (inp.clean_targets < 0).any() or (inp.clean_targets >= d_vocab).any():
            raise ValueError(f"metric={metric!r}: clean.targets must lie in [0, {d_vocab})")
    if metric == "logit_diff":
        if (inp.corrupt_targets < 0).any():
            raise ValueError(
                "metric='logit_diff' needs a correct answer in the corrupted run, but corrupt.targets has -1 "
                "(anchor_remove: the task is absent); use metric='kl'"
            )
        if (inp.corrupt_targets >= d_vocab).any():
            raise ValueError(f"metric='logit_diff': corrupt.targets must lie in [0, {d_vocab})")
    return metric, None

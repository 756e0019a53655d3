"""One exact patching call: the clean and corrupted runs, the metric and its baselines, and the batching
of patched rows through the :class:`~anchor_interp.patching.engine.Engine`.

A sweep function (:mod:`~anchor_interp.patching.activation`, :mod:`~anchor_interp.patching.path`)
builds a :class:`Sweep` with the hooks it needs, describes the patched rows of each variant
(:class:`~anchor_interp.patching.engine.Rows`), lets :meth:`Sweep.run` batch them, and wraps the values
with :meth:`Sweep.result`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_interp.names import hook_name
from anchor_interp.patching.engine import Rows, engine_for
from anchor_interp.patching.inputs import prepare_inputs
from anchor_interp.patching.metrics import Metric, MetricFn, resolve_metric
from anchor_interp.patching.result import PatchResult

__all__ = ["DEFAULT_MAX_BATCH", "Sweep", "build_result", "check_max_batch"]

DEFAULT_MAX_BATCH = 4096  # most sequences (patched variants x batch rows) in one forward pass

# what Engine.final_rows / Engine.one_position_block read from the corrupted run, per layer
_CONTEXT_HOOKS = ("resid_pre", "q", "k", "v")


def check_max_batch(max_batch: Any) -> None:
    """Raise ValueError unless ``max_batch`` is a positive int."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch: must be a positive int (sequences per forward pass), got {max_batch!r}")


class Sweep:
    """Shared state of one patching call.

    Named metrics are batch means of per-row values, so only the rows a patch changes are run (the
    others keep their corrupted-run value, and rows a patch turns into the clean input take the
    clean run's value); a patch at one position right before the final attention
    block takes the engine's sparse path (:meth:`Engine.final_rows`). The clean and corrupted runs
    are one forward pass (stacked) that keeps only the activations the sweep needs:
    ``hooks_clean`` from the clean run (in ``self.clean``), ``hooks_corrupt`` from the corrupted
    one (in ``self.corrupt``). Raises ValueError for bad inputs, an unknown metric or ``max_batch < 1``.
    """

    def __init__(
        self,
        model: Any,
        clean: Any,
        corrupt: Any,
        metric: str | MetricFn | None,
        counterfactual: str | None,
        hooks_clean: Sequence[str],
        hooks_corrupt: Sequence[str],
        max_batch: int,
    ):
        check_max_batch(max_batch)
        self.inp = prepare_inputs(model, clean, corrupt, counterfactual)
        self.metric_name, metric_fn = resolve_metric(metric, self.inp, model.cfg.d_vocab)
        self.engine = engine_for(model)
        self.model = model
        self.max_batch = max_batch
        self.n_layers = model.cfg.n_layers
        self.B, self.T = self.inp.clean_tokens.shape
        self.last_only = metric_fn is None
        self._answer_dirs: tuple[Tensor, Tensor] | None = None
        context = [hook_name(short, layer) for layer in range(self.n_layers) for short in _CONTEXT_HOOKS]
        self._layer_ctx: dict[int, dict[str, Tensor]] = {}
        names = list(dict.fromkeys([*hooks_clean, *hooks_corrupt, *(context if self.last_only else [])]))
        with torch.inference_mode():
            tokens = torch.cat([self.inp.clean_tokens, self.inp.corrupt_tokens])  # (2B, T)
            logits, cache = self.engine.run_cached(tokens, names, full_logits=not self.last_only)
            B = self.B
            self.clean = {n: cache[n][:B] for n in hooks_clean}
            self.corrupt = {n: cache[n][B:] for n in names}
            clean_logits, corrupt_logits = logits[:B], logits[B:]
            self.metric = Metric(
                self.metric_name, metric_fn, self.inp.clean_targets, self.inp.corrupt_targets, clean_logits
            )
            self.clean_value = float(self.metric(clean_logits[None])[0])
            self.corrupt_value = float(self.metric(corrupt_logits[None])[0])
            if self.last_only:
                b = torch.arange(B, device=logits.device)
                self.corrupt_rows = self.metric.rows(corrupt_logits[:, -1], b)  # (B,)
                self.clean_rows = self.metric.rows(clean_logits[:, -1], b)
                self.final = self.engine.final_context(self.corrupt, corrupt_logits[:, -1])

    def run(
        self,
        layer: int,
        n_variants: int,
        make_rows: Callable[[int, int, bool], Rows],
        *,
        after_attn: bool,
        base: Float[Tensor, "B T d_model"],
        receivers: dict[int, list[tuple[int, str]]] | None = None,
    ) -> Float[Tensor, " variant"]:
        """Metric of ``n_variants`` patched runs starting at ``layer`` (``resid_pre``, or ``resid_mid``
        if ``after_attn``); ``make_rows(s, e, all_rows)`` gives the rows of variants s..e-1 (only the
        changed ones unless ``all_rows``); ``base`` [B, T, d] is the unpatched start residual."""
        per_chunk = max(1, self.max_batch // self.B)
        with torch.inference_mode():
            if not self.last_only:  # a user callable: every row, full logits, one call per variant
                out = []
                for s in range(0, n_variants, per_chunk):
                    e = min(n_variants, s + per_chunk)
                    logits = self._forward_rows(make_rows(s, e, True), layer, after_attn, base, receivers, False)
                    out.append(self.metric(logits.reshape(e - s, self.B, self.T, -1)))
                return torch.cat(out).clone()
            table = self.corrupt_rows[None].repeat(n_variants, 1)  # (variant, B)
            pending: list[Rows] = []
            n_pending = 0
            for s in range(0, n_variants, per_chunk):
                rows = make_rows(s, min(n_variants, s + per_chunk), False)
                if rows.is_clean is not None:
                    done = rows.take(rows.is_clean)
                    table[done.var, done.b] = self.clean_rows[done.b]
                    rows = rows.take(~rows.is_clean)
                if len(rows):
                    pending.append(rows)
                    n_pending += len(rows)
                last_chunk = s + per_chunk >= n_variants
                if pending and (n_pending >= self.max_batch or last_chunk):
                    rows = Rows.cat(pending)
                    pending, n_pending = [], 0
                    for i in range(0, len(rows), self.max_batch):
                        part = rows.take(slice(i, i + self.max_batch))
                        table[part.var, part.b] = self._row_values(part, layer, after_attn, base, receivers)
            return table.mean(1).clone()

    def _row_values(self, rows: Rows, layer, after_attn, base, receivers) -> Float[Tensor, " N"]:
        """The metric's per-row values of patched rows (named metrics only)."""

        def readout(resid: Tensor) -> Tensor:  # final residual stream (N, Tq, d) -> (N, 1)
            return self._readout(resid[:, -1:], rows.b)[:, None]

        final = self.n_layers - 1
        if rows.pos is None or receivers:
            return self._forward_rows(rows, layer, after_attn, base, receivers, True, readout)[:, -1]
        # one changed position: take it to the next attention block, which sees one new key/value
        if after_attn and layer == final:
            # a change at the final block's output reaches the logits only at the last position
            out = self.corrupt_rows[rows.b].clone()  # (N,)
            at_last = (rows.pos == self.T - 1).nonzero()[:, 0]
            if at_last.numel():
                resid = self.engine.mlp(final, rows.row[at_last][:, None])  # (n, 1, d)
                out[at_last] = self._readout(resid, rows.b[at_last])
            return out
        attn_layer = layer + 1 if after_attn else layer
        row = self.engine.mlp(layer, rows.row[:, None])[:, 0] if after_attn else rows.row  # resid_pre there
        if attn_layer == final:
            return self.engine.final_rows(self.final, replace(rows, row=row), None, readout)
        if attn_layer not in self._layer_ctx:
            self._layer_ctx[attn_layer] = self.engine.layer_context(self.corrupt, attn_layer)
        resid = self.engine.one_position_block(self._layer_ctx[attn_layer], attn_layer, rows.b, rows.pos, row)
        return self.engine.forward_from(
            attn_layer + 1, resid, after_attn=False, last_only=True, readout=readout
        )[:, -1]

    def _readout(self, resid: Float[Tensor, "N 1 d_model"], b: Int[Tensor, " N"]) -> Float[Tensor, " N"]:
        """Per-row metric from the final residual stream at the last position. The logit difference
        needs only two unembedding columns per row; other metrics unembed the whole vocabulary."""
        cap = getattr(self.model.cfg, "output_logits_soft_cap", -1.0)
        if self.metric_name == "logit_diff" and not (cap is not None and cap > 0):
            resid = self.engine.final_norm(resid)
            if self._answer_dirs is None:  # per batch row: W_U[:, clean] - W_U[:, corrupt], and the bias
                self._answer_dirs = self.engine.answer_directions(self.inp.clean_targets, self.inp.corrupt_targets)
            dirs, bias = self._answer_dirs  # (B, d), (B,)
            return (resid[:, 0] * dirs.index_select(0, b)).sum(-1) + bias.index_select(0, b)
        return self.metric.rows(self.engine.logits(resid)[:, 0], b)

    def _forward_rows(self, rows: Rows, layer, after_attn, base, receivers, last_only, readout=None) -> Tensor:
        start = rows.start
        if start is None:
            start = base[rows.b].clone()  # (N, T, d)
            start[torch.arange(len(rows), device=start.device), rows.pos] = rows.row
        return self.engine.forward_from(
            layer, start, after_attn=after_attn, last_only=last_only, receivers=receivers,
            receiver_delta=rows.delta, readout=readout,
        )

    def result(
        self, values: Tensor, axes: Sequence[str], hook_names: Sequence[str], normalise: bool,
        extra: dict[str, Any] | None = None,
    ) -> PatchResult:
        """``values`` (raw metric per site) as a :class:`PatchResult`, normalised if ``normalise``.

        Raises ValueError when normalising and the clean and corrupted runs give the same metric
        (gap below 1e-9, or not finite)."""
        return build_result(values, axes, hook_names, normalise, self.metric_name, self.clean_value,
                            self.corrupt_value, self.inp.counterfactual, extra)


def build_result(
    values: Tensor, axes: Sequence[str], hook_names: Sequence[str], normalise: bool, metric_name: str,
    clean_value: float, corrupt_value: float, counterfactual: str | None, extra: dict[str, Any] | None = None,
) -> PatchResult:
    """``values`` (raw metric per site) as an exact :class:`PatchResult`, normalised if ``normalise``
    (shared by :class:`Sweep` and the plain-TransformerLens path). Raises ValueError when normalising
    and the clean and corrupted runs give the same metric (gap below 1e-9, or not finite)."""
    values = values.detach().cpu()
    if normalise:
        gap = clean_value - corrupt_value
        if not math.isfinite(gap) or abs(gap) < 1e-9:
            raise ValueError(
                f"normalise: the clean and corrupted runs give the same {metric_name} "
                f"({clean_value:.6g} vs {corrupt_value:.6g}), so (patched - corrupt) / "
                "(clean - corrupt) is undefined; pass normalise=False, or use a counterfactual/metric "
                "that changes the model's answer"
            )
        values = (values - corrupt_value) / gap
    return PatchResult(
        values=values,
        axes=tuple(axes),
        hook_names=tuple(hook_names),
        metric=metric_name,
        counterfactual=counterfactual,
        normalised=normalise,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        method="exact",
        extra=dict(extra or {}),
    )

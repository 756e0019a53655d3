"""Activation patching: run the corrupted input, patch in clean activations, measure a metric.

Conventions (the same as ``transformer_lens.patching``, see docs/patching.md):

- every function takes a **clean** and a **corrupted** input, row-paired: either two ``Batch``es
  (``task.sample`` and ``task.counterfactual``) or two token tensors ``[batch, seq]``;
- the model runs on the corrupted input and one site at a time (a residual position, a head, a head
  at one position, ...) is replaced by its value from the clean run;
- the metric is measured at the **last position** and averaged over the batch;
- normalised values are ``(patched - corrupt) / (clean - corrupt)``: 1 = the patch restores the
  clean behaviour fully, 0 = no effect.

Nothing here calls ``transformer_lens.patching``: all patched variants of one layer are stacked
along the batch dimension (chunked by ``max_batch``), each forward starts at the patched layer from
cached activations, the last block computes only the last query row, and no gradients are kept.
Only the hooks a sweep needs are cached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_interp.patch_engine import Rows, changed_rows, check_model, engine_for

if TYPE_CHECKING:
    from anchor_interp.tasks import Batch

METRICS = ("logit_diff", "accuracy", "kl")
QKV = ("q", "k", "v")
DEFAULT_MAX_BATCH = 4096  # most sequences (patched variants x batch rows) in one forward pass

# A metric callable, as in transformer_lens.patching: logits [batch, pos, d_vocab] -> scalar tensor.
MetricFn = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class PatchResult:
    """Metric per patched site.

    ``values`` has one dimension per entry of ``axes`` (axis names from docs/interfaces.md);
    ``hook_names`` are the TransformerLens hooks that were patched; ``metric`` is ``"logit_diff"``,
    ``"accuracy"``, ``"kl"`` or ``"custom"``; ``normalised`` says whether ``values`` are
    ``(patched - corrupt) / (clean - corrupt)``. ``clean_value`` / ``corrupt_value`` are the raw
    metric of the unpatched clean and corrupted runs; ``method`` is ``"exact"`` (activation
    patching) or ``"attribution"`` (gradient approximation).
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


# ---------------------------------------------------------------------------------------------
# metrics (vectorised over patched variants: logits [variant, batch, d_vocab] at the last position)


def logit_diff(
    last_logits: Float[Tensor, "*variant batch d_vocab"],
    clean_targets: Int[Tensor, " batch"],
    corrupt_targets: Int[Tensor, " batch"],
) -> Float[Tensor, "*variant"]:
    """Batch-mean of ``logit[clean answer] - logit[corrupt answer]`` (logit units, unbounded)."""
    shape = last_logits.shape[:-1]
    clean = last_logits.gather(-1, clean_targets.expand(shape).unsqueeze(-1)).squeeze(-1)
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


class _Metric:
    """A named metric (vectorised, last position only) or a user callable (full logits, per variant)."""

    def __init__(self, name: str, fn: MetricFn | None, clean_targets, corrupt_targets, clean_logits):
        self.name = name
        self.fn = fn
        self.clean_targets = clean_targets
        self.corrupt_targets = corrupt_targets
        self.clean_logprobs = clean_logits[:, -1].log_softmax(-1) if name == "kl" else None
        self.needs_full_logits = fn is not None

    def rows(self, last: Float[Tensor, "N d_vocab"], b: Int[Tensor, " N"]) -> Float[Tensor, " N"]:
        """Per-row value of a named metric (its batch-mean is the metric) for rows ``b`` of the batch."""
        if self.name == "logit_diff":
            clean = last.gather(1, self.clean_targets[b, None])[:, 0]
            return clean - last.gather(1, self.corrupt_targets[b, None])[:, 0]
        if self.name == "accuracy":
            return (last.argmax(-1) == self.clean_targets[b]).to(last.dtype)
        return _kl_rows(self.clean_logprobs[b], last.log_softmax(-1))

    def __call__(self, logits: Float[Tensor, "variant batch pos d_vocab"]) -> Float[Tensor, " variant"]:
        if self.fn is not None:
            return torch.stack([torch.as_tensor(self.fn(lv)).reshape(()) for lv in logits]).to(logits.dtype)
        last = logits[:, :, -1]  # (V, B, d_vocab)
        if self.name == "logit_diff":
            return logit_diff(last, self.clean_targets, self.corrupt_targets)
        if self.name == "accuracy":
            return accuracy(last, self.clean_targets)
        return kl_from_clean(last, self.clean_logprobs)


# ---------------------------------------------------------------------------------------------
# inputs


@dataclass
class _Inputs:
    clean_tokens: Tensor
    corrupt_tokens: Tensor
    clean_targets: Tensor | None
    corrupt_targets: Tensor | None
    counterfactual: str | None


def _is_batch(x: Any) -> bool:
    return hasattr(x, "tokens") and hasattr(x, "targets")


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _as_tokens(x: Any, name: str, model) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a Batch or a long tensor [batch, seq], got {type(x).__name__}")
    if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: expected a long tensor [batch, seq], got {x.dtype} of shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty; give at least one row")
    if x.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"{name}: sequence length {x.shape[1]} exceeds the model's n_ctx={model.cfg.n_ctx}")
    if x.min() < 0 or x.max() >= model.cfg.d_vocab:
        raise ValueError(
            f"{name}: token ids must lie in [0, {model.cfg.d_vocab}) (the model's d_vocab), "
            f"got [{int(x.min())}, {int(x.max())}]"
        )
    return x.long().to(_model_device(model))


def _inputs(model, clean: Any, corrupt: Any, counterfactual: str | None) -> _Inputs:
    check_model(model)
    if _is_batch(clean) != _is_batch(corrupt):
        raise ValueError(
            "clean/corrupt: give two Batches (task.sample + task.counterfactual) or two token tensors, not a mix"
        )
    clean_targets = corrupt_targets = None
    if _is_batch(clean):
        clean_tokens = _as_tokens(clean.tokens, "clean.tokens", model)
        corrupt_tokens = _as_tokens(corrupt.tokens, "corrupt.tokens", model)
        clean_targets = clean.targets.long().to(clean_tokens.device)
        corrupt_targets = corrupt.targets.long().to(clean_tokens.device)
        if clean_targets.shape != (clean_tokens.shape[0],) or corrupt_targets.shape != (corrupt_tokens.shape[0],):
            raise ValueError("clean/corrupt: targets must be long [batch], one per row of tokens")
        if counterfactual is None and bool((corrupt_targets < 0).all()):
            counterfactual = "anchor_remove"
    else:
        clean_tokens = _as_tokens(clean, "clean", model)
        corrupt_tokens = _as_tokens(corrupt, "corrupt", model)
    if clean_tokens.shape != corrupt_tokens.shape:
        raise ValueError(
            f"clean/corrupt: shapes differ, {tuple(clean_tokens.shape)} vs {tuple(corrupt_tokens.shape)}; "
            "the corrupted batch must be row-paired with the clean one (task.counterfactual(clean, ...))"
        )
    return _Inputs(clean_tokens, corrupt_tokens, clean_targets, corrupt_targets, counterfactual)


def _resolve_metric(metric: str | MetricFn | None, inp: _Inputs, d_vocab: int) -> tuple[str, MetricFn | None]:
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


# ---------------------------------------------------------------------------------------------
# one patching call: inputs, caches, metric, baselines; runs patched rows through the engine


class _Sweep:
    """Shared state of one patching call.

    Named metrics are batch means of per-row values, so only the rows a patch changes are run (the
    others keep their corrupted-run value, and rows a patch turns into the clean input take the
    clean run's value); a patch at one position right before the final attention
    block takes the engine's sparse path (:meth:`Engine.final_rows`). The clean and corrupted runs
    are one forward pass (stacked) that keeps only the activations the sweep needs.
    """

    def __init__(self, model, clean, corrupt, metric, counterfactual, hooks_clean, hooks_corrupt, max_batch):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch: must be a positive int (sequences per forward pass), got {max_batch!r}")
        self.inp = _inputs(model, clean, corrupt, counterfactual)
        self.metric_name, metric_fn = _resolve_metric(metric, self.inp, model.cfg.d_vocab)
        self.engine = engine_for(model)
        self.model = model
        self.max_batch = max_batch
        self.n_layers = model.cfg.n_layers
        self.B, self.T = self.inp.clean_tokens.shape
        self.last_only = metric_fn is None
        self._answer_dirs: tuple[Tensor, Tensor] | None = None
        context = [
            f"blocks.{layer}.{name}"
            for layer in range(self.n_layers)
            for name in ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v")
        ]
        self._layer_ctx: dict[int, dict[str, Tensor]] = {}
        names = list(dict.fromkeys([*hooks_clean, *hooks_corrupt, *(context if self.last_only else [])]))
        with torch.inference_mode():
            tokens = torch.cat([self.inp.clean_tokens, self.inp.corrupt_tokens])
            logits, cache = self.engine.run_cached(tokens, names, full_logits=not self.last_only)
            B = self.B
            self.clean = {n: cache[n][:B] for n in hooks_clean}
            self.corrupt = {n: cache[n][B:] for n in names}
            clean_logits, corrupt_logits = logits[:B], logits[B:]
            self.metric = _Metric(
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
        base: Tensor,
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
            out = self.corrupt_rows[rows.b].clone()
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

    def _readout(self, resid: Float[Tensor, "N 1 d_model"], b: Tensor) -> Float[Tensor, " N"]:
        """Per-row metric from the final residual stream at the last position. The logit difference
        needs only two unembedding columns per row; other metrics unembed the whole vocabulary."""
        cfg = self.model.cfg
        cap = getattr(cfg, "output_logits_soft_cap", -1.0)
        if self.metric_name == "logit_diff" and not (cap is not None and cap > 0):
            if cfg.normalization_type is not None:
                resid = self.engine.norm(self.model.ln_final, resid)
            if self._answer_dirs is None:  # per batch row: W_U[:, clean] - W_U[:, corrupt], and the bias
                W_U, b_U = self.model.unembed.W_U, self.model.unembed.b_U  # (d, V), (V,)
                ct, xt = self.inp.clean_targets, self.inp.corrupt_targets
                self._answer_dirs = ((W_U[:, ct] - W_U[:, xt]).T.contiguous(), b_U[ct] - b_U[xt])  # (B, d), (B,)
            dirs, bias = self._answer_dirs
            return (resid[:, 0] * dirs.index_select(0, b)).sum(-1) + bias.index_select(0, b)
        return self.metric.rows(self.engine.unembed(resid)[:, 0], b)

    def _forward_rows(self, rows: Rows, layer, after_attn, base, receivers, last_only, readout=None) -> Tensor:
        start = rows.start
        if start is None:
            start = base[rows.b].clone()
            start[torch.arange(len(rows), device=start.device), rows.pos] = rows.row
        return self.engine.forward_from(
            layer, start, after_attn=after_attn, last_only=last_only, receivers=receivers,
            receiver_delta=rows.delta, readout=readout,
        )

    def result(self, values: Tensor, axes, hook_names, normalise: bool, extra=None) -> PatchResult:
        values = values.detach().cpu()
        if normalise:
            gap = self.clean_value - self.corrupt_value
            if not math.isfinite(gap) or abs(gap) < 1e-9:
                raise ValueError(
                    f"normalise: the clean and corrupted runs give the same {self.metric_name} "
                    f"({self.clean_value:.6g} vs {self.corrupt_value:.6g}), so (patched - corrupt) / "
                    "(clean - corrupt) is undefined; pass normalise=False, or use a counterfactual/metric "
                    "that changes the model's answer"
                )
            values = (values - self.corrupt_value) / gap
        return PatchResult(
            values=values,
            axes=tuple(axes),
            hook_names=tuple(hook_names),
            metric=self.metric_name,
            counterfactual=self.inp.counterfactual,
            normalised=normalise,
            clean_value=self.clean_value,
            corrupt_value=self.corrupt_value,
            method="exact",
            extra=dict(extra or {}),
        )


def layer_hooks(model, hook: str) -> list[str]:
    """``blocks.{layer}.{hook}`` for every layer of ``model`` (none if it is not a HookedTransformer:
    the sweep then raises its own error naming the problem)."""
    n_layers = model.cfg.n_layers if hasattr(model, "cfg") else 0
    return [f"blocks.{layer}.{hook}" for layer in range(n_layers)]


def _resid_mid_names(model) -> list[str]:
    return layer_hooks(model, "hook_resid_pre") + layer_hooks(model, "hook_attn_out")


def _one_position_rows(diff_vp: Tensor, rows_vp: Tensor, positions: Tensor, s: int, all_rows: bool) -> Rows:
    """Rows for variants that each patch one position: ``diff_vp`` [v, B, ...] says which rows change,
    ``rows_vp`` [v, B, d] is the new residual at the variant's position ``positions`` [v]."""
    var, b = changed_rows(diff_vp, s, all_rows)
    local = var - s
    return Rows(var, b, pos=positions[local], row=rows_vp[local, b])


# ---------------------------------------------------------------------------------------------
# public sweeps


def patch_resid_pre(
    model,
    clean: Batch | Int[Tensor, "batch seq"],
    corrupt: Batch | Int[Tensor, "batch seq"],
    metric: str | MetricFn | None = None,
    *,
    normalise: bool = True,
    counterfactual: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> PatchResult:
    """Patch ``blocks.L.hook_resid_pre`` at one position at a time: values [layer, pos].

    ``metric`` is ``"logit_diff"`` (default for Batches with answers), ``"accuracy"``, ``"kl"``
    (default when the corrupted targets are -1, e.g. ``anchor_remove``) or a callable
    ``logits [batch, pos, d_vocab] -> scalar``. Raises ValueError for bad inputs (see docs/patching.md).
    """
    names = layer_hooks(model, "hook_resid_pre")
    n_layers = len(names)
    sw = _Sweep(model, clean, corrupt, metric, counterfactual, names, names, max_batch)
    positions = torch.arange(sw.T, device=sw.inp.clean_tokens.device)
    values = []
    for layer in range(n_layers):
        clean_r, corrupt_r = sw.clean[names[layer]], sw.corrupt[names[layer]]  # (B, T, d)
        diff = (clean_r - corrupt_r).permute(1, 0, 2)  # (T, B, d): variant = position
        new = clean_r.permute(1, 0, 2)
        differs = (diff != 0).any(-1)  # (T, B)
        # a row that differs only at the patched position becomes the clean run exactly
        becomes_clean = differs & (differs.sum(0) == 1)[None]  # (T, B)

        def make_rows(s, e, all_rows, diff=diff, new=new, becomes_clean=becomes_clean):
            rows = _one_position_rows(diff[s:e], new[s:e], positions[s:e], s, all_rows)
            if not all_rows:
                rows.is_clean = becomes_clean[rows.var, rows.b]
            return rows

        values.append(sw.run(layer, sw.T, make_rows, after_attn=False, base=corrupt_r))
    return sw.result(torch.stack(values), ("layer", "pos"), names, normalise)


def _head_rows_delta(model, layer: int, dz: Tensor, heads: Tensor, b: Tensor, pos: Tensor | None) -> Tensor:
    """Residual-stream change ``dz[b, pos, head] @ W_O[head]`` of each row (all positions if ``pos`` is
    None): [N, d_model] or [N, T, d_model]. Computed per head for the selected rows only, so that no
    [heads, batch, pos, d_model] tensor is ever built."""
    W_O = model.blocks[layer].attn.W_O  # (H, dh, d)
    shape = (len(b), model.cfg.d_model) if pos is not None else (len(b), dz.shape[1], model.cfg.d_model)
    out = torch.empty(shape, dtype=dz.dtype, device=dz.device)
    for h in heads.unique().tolist():
        sel = (heads == h).nonzero()[:, 0]
        x = dz[b[sel], pos[sel], h] if pos is not None else dz[b[sel], :, h]  # (n, dh) or (n, T, dh)
        out[sel] = x @ W_O[h]
    return out


def _head_sweep(sw: _Sweep, model, dz_of_layer, by_pos: bool, pos_axis: str, hook: str, normalise: bool):
    cfg = model.cfg
    n_layers, H, T = cfg.n_layers, cfg.n_heads, sw.T
    positions = torch.arange(T, device=sw.inp.clean_tokens.device)
    values = []
    for layer in range(n_layers):
        dz = dz_of_layer(layer)  # (B, T, H, dh)
        base = sw.corrupt[f"blocks.{layer}.hook_resid_pre"] + sw.corrupt[f"blocks.{layer}.hook_attn_out"]
        if not by_pos:
            dz_h = dz.permute(2, 0, 1, 3)  # (H, B, T, dh): variant = head

            def make_rows(s, e, all_rows, layer=layer, dz=dz, dz_h=dz_h, base=base):
                var, b = changed_rows(dz_h[s:e], s, all_rows)
                return Rows(var, b, start=base[b] + _head_rows_delta(model, layer, dz, var, b, None))

            values.append(sw.run(layer, H, make_rows, after_attn=True, base=base))
            continue
        # variants (head, pos), head-major: variant i = head i // T at position i % T
        dz_hp = dz.permute(2, 1, 0, 3).reshape(H * T, sw.B, -1)  # (H*T, B, dh)

        def make_rows(s, e, all_rows, layer=layer, dz=dz, dz_hp=dz_hp, base=base):
            var, b = changed_rows(dz_hp[s:e], s, all_rows)
            heads, pos = var // T, positions[var % T]
            row = base[b, pos] + _head_rows_delta(model, layer, dz, heads, b, pos)
            return Rows(var, b, pos=pos, row=row)

        values.append(sw.run(layer, H * T, make_rows, after_attn=True, base=base).reshape(H, T))
    names = layer_hooks(model, f"attn.{hook}")
    axes = ("layer", "head", pos_axis) if by_pos else ("layer", "head")
    return sw.result(torch.stack(values), axes, names, normalise)


def patch_head_out(
    model,
    clean: Batch | Int[Tensor, "batch seq"],
    corrupt: Batch | Int[Tensor, "batch seq"],
    metric: str | MetricFn | None = None,
    *,
    by_pos: bool = False,
    normalise: bool = True,
    counterfactual: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> PatchResult:
    """Patch each head's output ``blocks.L.attn.hook_z`` (all positions, or one position with ``by_pos``).

    Values [layer, head] or [layer, head, pos] (note: ``transformer_lens.patching`` puts pos before
    head). Metric and errors as in :func:`patch_resid_pre`.
    """
    z = layer_hooks(model, "attn.hook_z")
    sw = _Sweep(model, clean, corrupt, metric, counterfactual, z, z + _resid_mid_names(model), max_batch)
    return _head_sweep(
        sw, model, lambda layer: sw.clean[z[layer]] - sw.corrupt[z[layer]], by_pos, "pos", "hook_z", normalise
    )


def patch_head_pattern(
    model,
    clean: Batch | Int[Tensor, "batch seq"],
    corrupt: Batch | Int[Tensor, "batch seq"],
    metric: str | MetricFn | None = None,
    *,
    by_pos: bool = False,
    normalise: bool = True,
    counterfactual: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> PatchResult:
    """Patch each head's attention pattern ``blocks.L.attn.hook_pattern`` (all rows, or one ``dest_pos`` row).

    The patched head mixes the corrupted run's values with the clean run's pattern. Values
    [layer, head] or [layer, head, dest_pos]. Metric and errors as in :func:`patch_resid_pre`.
    """
    pat, vv, z = (layer_hooks(model, f"attn.hook_{c}") for c in ("pattern", "v", "z"))
    sw = _Sweep(model, clean, corrupt, metric, counterfactual, pat, pat + vv + z + _resid_mid_names(model), max_batch)

    def dz_of_layer(layer):
        v = sw.corrupt[vv[layer]]  # (B, T, H, dh)
        z_clean_pattern = (sw.clean[pat[layer]] @ v.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)  # (B, T, H, dh)
        dz = z_clean_pattern - sw.corrupt[z[layer]]
        # rows whose pattern is unchanged are exactly unchanged (no rounding noise from the recomputation)
        same = (sw.clean[pat[layer]] == sw.corrupt[pat[layer]]).all(-1).permute(0, 2, 1)  # (B, T, H)
        return dz.masked_fill(same[..., None], 0.0)

    return _head_sweep(sw, model, dz_of_layer, by_pos, "dest_pos", "hook_pattern", normalise)


Receivers = str | Sequence[tuple[int, int, str]]


def _check_receivers(model, receivers: Receivers) -> dict[int, list[tuple[int, str]]] | None:
    if isinstance(receivers, str):
        if receivers != "logits":
            raise ValueError(f"receivers: use 'logits' or a list of (layer, head, 'q'|'k'|'v'), got {receivers!r}")
        return None
    if not isinstance(receivers, Sequence) or len(receivers) == 0:
        raise ValueError("receivers: use 'logits' or a non-empty list of (layer, head, 'q'|'k'|'v')")
    cfg = model.cfg
    out: dict[int, list[tuple[int, str]]] = {}
    for r in receivers:
        if not (isinstance(r, Sequence) and len(r) == 3):
            raise ValueError(f"receivers: each receiver is (layer, head, 'q'|'k'|'v'), got {r!r}")
        layer, head, comp = r
        if not (isinstance(layer, int) and 0 <= layer < cfg.n_layers):
            raise ValueError(f"receivers: layer {layer!r} out of range [0, {cfg.n_layers})")
        if not (isinstance(head, int) and 0 <= head < cfg.n_heads):
            raise ValueError(f"receivers: head {head!r} out of range [0, {cfg.n_heads})")
        if comp not in QKV:
            raise ValueError(f"receivers: component {comp!r} must be one of {QKV}")
        if (head, comp) not in out.setdefault(layer, []):
            out[layer].append((head, comp))
    return out


def path_patch(
    model,
    clean: Batch | Int[Tensor, "batch seq"],
    corrupt: Batch | Int[Tensor, "batch seq"],
    receivers: Receivers = "logits",
    metric: str | MetricFn | None = None,
    *,
    normalise: bool = True,
    counterfactual: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> PatchResult:
    """Path patching from every sender head: values [src_layer, src_head].

    The sender's change ``(clean - corrupt) hook_z @ W_O`` is added, through the residual stream only,
    to the receivers' input: ``"logits"`` = the final residual stream before ``ln_final`` (every head
    and MLP in between keeps its corrupted value), or each listed receiver head's q, k or v input
    (before its ``ln1``); everything downstream of a receiver is recomputed. Senders in a layer at or
    above every receiver have no direct path: their value is the corrupted run's (0 when normalised).
    Metric and errors as in :func:`patch_resid_pre`.
    """
    check_model(model)
    cfg = model.cfg
    n_layers, H = cfg.n_layers, cfg.n_heads
    rec = _check_receivers(model, receivers)
    z = layer_hooks(model, "attn.hook_z")
    if rec is None:
        start_name, start_layer = f"blocks.{n_layers - 1}.hook_resid_post", n_layers
        rec_hooks = [start_name]
    else:
        start_layer = min(rec)
        start_name = f"blocks.{start_layer}.hook_resid_pre"
        rec_hooks = [f"blocks.{layer}.hook_{c}_input" for layer in sorted(rec) for _, c in rec[layer]]
    sw = _Sweep(model, clean, corrupt, metric, counterfactual, z, z + [start_name], max_batch)
    dtype = next(model.parameters()).dtype
    values = torch.full((n_layers, H), sw.corrupt_value, dtype=dtype)
    base = sw.corrupt[start_name]  # (B, T, d)
    for src_layer in range(n_layers):
        if rec is not None and src_layer >= max(rec):
            continue  # no direct path from here to any receiver
        dz = sw.clean[z[src_layer]] - sw.corrupt[z[src_layer]]  # (B, T, H, dh)
        dz_h = dz.permute(2, 0, 1, 3)  # (H, B, T, dh): variant = sender head
        if rec is None:

            def make_rows(s, e, all_rows, src_layer=src_layer, dz=dz, dz_h=dz_h):
                var, b = changed_rows(dz_h[s:e], s, all_rows)
                return Rows(var, b, start=base[b] + _head_rows_delta(model, src_layer, dz, var, b, None))

            vals = sw.run(start_layer, H, make_rows, after_attn=False, base=base)
        else:
            active = {layer: hs for layer, hs in rec.items() if layer > src_layer}

            def make_rows(s, e, all_rows, src_layer=src_layer, dz=dz, dz_h=dz_h):
                var, b = changed_rows(dz_h[s:e], s, all_rows)
                return Rows(var, b, start=base[b], delta=_head_rows_delta(model, src_layer, dz, var, b, None))

            vals = sw.run(start_layer, H, make_rows, after_attn=False, base=base, receivers=active)
        values[src_layer] = vals.cpu()
    return sw.result(
        values, ("src_layer", "src_head"), z + rec_hooks, normalise, extra={"receivers": _receivers_json(receivers)}
    )


def _receivers_json(receivers: Receivers) -> Any:
    return receivers if isinstance(receivers, str) else [list(r) for r in receivers]


# re-exported so that every patching entry point lives in one namespace (defined in attribution.py)
from anchor_interp.attribution import (  # noqa: E402
    AttributionCheck,
    attribution_patch_heads,
    attribution_patch_resid_pre,
    compare_attribution,
)

__all__ = [
    "METRICS",
    "AttributionCheck",
    "PatchResult",
    "accuracy",
    "attribution_patch_heads",
    "attribution_patch_resid_pre",
    "check_model",
    "compare_attribution",
    "kl_from_clean",
    "logit_diff",
    "patch_head_out",
    "patch_head_pattern",
    "patch_resid_pre",
    "path_patch",
]

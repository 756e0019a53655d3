"""AdamW over stacked parameters: torch.optim.AdamW's update for k models at once, clipped per model."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from anchor_interp.training.recipe import Recipe

__all__ = ["StackedAdamW"]


class StackedAdamW:
    """AdamW (torch.optim.AdamW's formula, decoupled weight decay) over stacked parameters.

    Adam is elementwise, so slice i of the stacked update is model i's own update. Gradient clipping
    is per model: each model's gradient is scaled by min(1, clip / (its global norm + 1e-6)), as
    ``torch.nn.utils.clip_grad_norm_`` does for one model. With ``recipe.fused_adamw`` the update is
    torch's fused AdamW kernel (the same formula in one pass over memory, about 6x faster per step on
    the 2-core CPU for the paper preset; results differ from the unfused update in the last bit).

    ``foreach`` (default: on when the parameters are on a GPU and there are at most 1024 (parameter,
    model) slices; beyond that, listing the slices costs more than the loop's launches): clipping and the per-model-learning-rate
    update run as torch's multi-tensor ``_foreach_*`` kernels over every (parameter, model) slice, a
    handful of kernel launches per step instead of several per parameter (a GPU step of small models
    is bound by launches). Same formula; results may differ from the loop in the last bit.
    """

    def __init__(self, params: dict[str, Tensor], recipe: Recipe, foreach: bool | None = None):
        self.params = params
        self.r = recipe
        first = next(iter(params.values()))
        slices = first.shape[0] * len(params)  # (parameter, model) slices the multi-tensor kernels would take
        self.foreach = (first.device.type == "cuda" and slices <= 1024) if foreach is None else foreach
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self._step_count = 0
        self._fused_stale = False  # count_step() moved the count without the fused kernel's own
        self._fused = None
        if recipe.fused_adamw:
            self._fused = torch.optim.AdamW(
                list(params.values()), lr=recipe.lr, betas=(recipe.beta1, recipe.beta2), eps=recipe.adam_eps,
                weight_decay=recipe.weight_decay, fused=True,
            )
            for n, p in params.items():  # the fused kernel updates our moment tensors in place
                self._fused.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                        "exp_avg": self.exp_avg[n], "exp_avg_sq": self.exp_avg_sq[n]}

    @property
    def step_count(self) -> int:
        """Optimiser steps taken (Adam's bias-correction count)."""
        return self._step_count

    @step_count.setter
    def step_count(self, value: int) -> None:
        self._step_count = int(value)
        if self._fused is not None:
            for st in self._fused.state.values():
                st["step"].fill_(self._step_count)

    def count_step(self) -> int:
        """Count one step whose update was made elsewhere (a :class:`~anchor_interp.training.graph.StaticStep`
        updates these moments in place); returns the new count. The fused kernel's own count follows
        when it is next used."""
        self._step_count += 1
        self._fused_stale = self._fused is not None
        return self._step_count

    def _slices(self, tensors: list[Tensor]) -> list[Tensor]:
        """Every tensor's k model slices, model-major within each tensor: [t0[0], .., t0[k-1], t1[0], ..]."""
        return [s for t in tensors for s in t.unbind(0)]

    @torch.no_grad()
    def clip_(self) -> Tensor:
        """Clip each model's gradient in place; returns the per-model norms before clipping, (k,)."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]  # frozen parameters have none
        k = grads[0].shape[0]
        if self.foreach:
            slices = self._slices(grads)
            norms = torch.stack(torch._foreach_norm(slices)).view(len(grads), k).pow(2).sum(0).sqrt()  # (k,)
            if self.r.grad_clip is not None:
                coef = (self.r.grad_clip / (norms + 1e-6)).clamp(max=1.0)  # (k,)
                torch._foreach_mul_(slices, coef.tolist() * len(grads))  # one sync; one multi-tensor kernel
            return norms
        return self.clip_grads_(grads)

    @torch.no_grad()
    def clip_grads_(self, grads: list[Tensor]) -> Tensor:
        """:meth:`clip_` over ``grads`` (each (k, ...)) with per-tensor kernels and no host sync (so a
        CUDA graph can capture it); returns the per-model norms before clipping, (k,)."""
        k = grads[0].shape[0]
        norms = torch.stack([g.reshape(k, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # (k,)
        if self.r.grad_clip is not None:
            coef = (self.r.grad_clip / (norms + 1e-6)).clamp(max=1.0)  # (k,)
            for g in grads:
                g.mul_(coef.view((k,) + (1,) * (g.ndim - 1)))
        return norms

    @torch.no_grad()
    def step(self, lr: float | Tensor) -> None:
        """One AdamW update with learning rate ``lr``: a float, or a (k,) tensor, one per stacked model
        (models at different points of their schedules; always the unfused update)."""
        self._step_count += 1
        per_model = isinstance(lr, Tensor)
        if self._fused is not None:
            if self._fused_stale:  # the fused kernel's count: the steps before this one
                for st in self._fused.state.values():
                    st["step"].fill_(self._step_count - 1)
                self._fused_stale = False
            if not per_model:
                self._fused.param_groups[0]["lr"] = lr
                self._fused.step()
                return
            for st in self._fused.state.values():  # keep the fused kernel's own count in step
                st["step"].fill_(self._step_count)
        b1, b2 = self.r.beta1, self.r.beta2
        bc1 = 1 - b1**self._step_count
        bc2_sqrt = math.sqrt(1 - b2**self._step_count)
        if self.foreach:
            self._foreach_step(lr, b1, b2, bc1, bc2_sqrt)
            return
        for n, p in self.params.items():
            if p.grad is not None:  # a frozen parameter (Recipe.freeze) has none: no step, no weight decay
                self.update_(n, lr, bc1, bc2_sqrt)

    @torch.no_grad()
    def update_(self, name: str, lr: float | Tensor, bc1: float | Tensor, bc2_sqrt: float | Tensor) -> None:
        """AdamW's update of parameter ``name`` from its gradient, per-tensor kernels, no host sync (so a
        CUDA graph can capture it). ``lr``: a float or one per model, (k,); ``bc1`` = 1 - beta1^t and
        ``bc2_sqrt`` = sqrt(1 - beta2^t): floats or 0-dim tensors (a graph fills them each step)."""
        p, m, v, r = self.params[name], self.exp_avg[name], self.exp_avg_sq[name], self.r
        g = p.grad
        per_model = isinstance(lr, Tensor)
        lr_p = lr.view((-1,) + (1,) * (p.ndim - 1)) if per_model else lr  # (k, 1, ...) or a float
        p.mul_(1 - lr_p * r.weight_decay)
        m.lerp_(g, 1 - r.beta1)
        v.mul_(r.beta2).addcmul_(g, g, value=1 - r.beta2)
        denom = (v.sqrt() / bc2_sqrt).add_(r.adam_eps)
        if per_model:
            p.sub_(m / denom * (lr_p / bc1))
        else:
            p.addcdiv_(m, denom, value=-lr / bc1)

    def _foreach_step(self, lr: float | Tensor, b1: float, b2: float, bc1: float, bc2_sqrt: float) -> None:
        """The loop of :meth:`step` as multi-tensor kernels over every (parameter, model) slice."""
        names = [n for n, p in self.params.items() if p.grad is not None]
        k = self.params[names[0]].shape[0]
        lrs = lr.tolist() if isinstance(lr, Tensor) else [lr] * k  # one learning rate per model
        ps = self._slices([self.params[n] for n in names])
        gs = self._slices([self.params[n].grad for n in names])
        ms = self._slices([self.exp_avg[n] for n in names])
        vs = self._slices([self.exp_avg_sq[n] for n in names])
        torch._foreach_mul_(ps, [1 - lrs[i] * self.r.weight_decay for _ in names for i in range(k)])
        torch._foreach_lerp_(ms, gs, 1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, self.r.adam_eps)
        torch._foreach_addcdiv_(ps, ms, denom, [-lrs[i] / bc1 for _ in names for i in range(k)])

    def state_slice(self, i: int) -> dict[str, Tensor]:
        """Model i's AdamW moments, ``exp_avg.<param>`` and ``exp_avg_sq.<param>`` (views, not copies)."""
        out = {f"exp_avg.{n}": t[i] for n, t in self.exp_avg.items()}
        out.update({f"exp_avg_sq.{n}": t[i] for n, t in self.exp_avg_sq.items()})
        return out

    def load_slice(self, i: int, tensors: dict[str, Tensor]) -> None:
        """Copy a :meth:`state_slice` into model i's moments."""
        with torch.no_grad():
            for n in self.params:
                self.exp_avg[n][i].copy_(tensors[f"exp_avg.{n}"])
                self.exp_avg_sq[n][i].copy_(tensors[f"exp_avg_sq.{n}"])

"""The stack: the models still training, as one set of tensors with a leading model axis.

Row j of every tensor in a :class:`Stack` belongs to model ``slots[j]`` (its index in the list given to
``train_many``). A model that stops (early stop, or the end of its schedule while others train on)
becomes a :class:`Frozen` snapshot and leaves the stack: :meth:`Stack.without` restacks the others, so
no step is spent on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from anchor_interp.training.optim import StackedAdamW

__all__ = ["Frozen", "Stack", "ckpt_cfg", "stack_models"]


def stack_models(models: list) -> dict[str, Tensor]:
    """Stack the parameters of k same-config HookedTransformers along a new leading axis: name ->
    (k, *shape), detached copies."""
    names = [n for n, _ in models[0].named_parameters()]
    out = {}
    for name in names:
        out[name] = torch.stack([dict(m.named_parameters())[name].detach() for m in models]).clone()
    return out


def ckpt_cfg(cfg) -> dict:
    """The model config as written to a checkpoint, without device and seed: two models whose
    ``ckpt_cfg`` are equal can be stacked."""
    if getattr(cfg, "arch", None) == "reference":
        d = cfg.to_dict()
    else:
        from anchor_interp.models.adapter import config_to_dict

        d = config_to_dict(cfg)
    d.pop("device", None)
    d.pop("seed", None)
    return d


@dataclass
class Frozen:
    """A model that has left the stack: its weights and AdamW moments when it stopped."""

    params: dict[str, Tensor]  # name -> parameter shape
    opt: dict[str, Tensor]  # StackedAdamW.state_slice names -> parameter shape
    opt_step: int  # AdamW steps taken when it stopped
    step: int  # its last step (global step count when it stopped)
    epoch: int


@dataclass
class Stack:
    """The models still training. Row j of every tensor is model ``slots[j]``; k_act = len(slots)."""

    slots: list[int]
    params: dict[str, Tensor]  # name -> (k_act, *shape), leaf tensors that require grad
    opt: StackedAdamW
    train_tokens: Tensor | None  # (k_act, N_max, T) fixed training sets; None with data="fresh"
    train_targets: Tensor | None  # (k_act, N_max)
    order: Tensor  # (k_act, N_max) each row's data order in its current epoch
    order_epoch: list[int]  # the epoch ``order`` holds, per row (-1: none yet)
    bad_step: Tensor  # (k_act,) first step whose loss was non-finite, -1 while none
    slot_idx: Tensor = field(init=False)  # slots as a (k_act,) long tensor
    widths: dict[int, Tensor] = field(init=False, default_factory=dict)  # batch width -> (k_act,) tensor

    def __post_init__(self):
        self.slot_idx = torch.tensor(self.slots, dtype=torch.long, device=self.order.device)

    def width(self, width: int) -> Tensor:
        """``width`` as a (k_act,) long tensor, made once per stack."""
        if width not in self.widths:
            self.widths[width] = torch.full((len(self.slots),), width, dtype=torch.long, device=self.order.device)
        return self.widths[width]

    def freeze(self, j: int, step: int, epoch: int) -> Frozen:
        """A snapshot of row j (copies of its weights and AdamW moments)."""
        return Frozen(params={n: t[j].detach().clone() for n, t in self.params.items()},
                      opt={n: t.clone() for n, t in self.opt.state_slice(j).items()},
                      opt_step=self.opt.step_count, step=step, epoch=epoch)

    def without(self, done: list[bool]) -> Stack:
        """The stack of the rows whose model is not ``done`` (itself when every model still trains)."""
        rows = [j for j, i in enumerate(self.slots) if not done[i]]
        if len(rows) == len(self.slots):
            return self
        if not rows:  # every model has stopped: the loop ends, results come from the snapshots
            return replace(self, slots=[])
        sel = torch.tensor(rows, dtype=torch.long, device=self.order.device)
        params = {n: t.detach()[sel].clone().requires_grad_(True) for n, t in self.params.items()}
        opt = StackedAdamW(params, self.opt.r, foreach=self.opt.foreach)
        for jj, j in enumerate(rows):
            opt.load_slice(jj, self.opt.state_slice(j))
        opt.step_count = self.opt.step_count
        fixed = self.train_tokens is not None
        return Stack(
            slots=[self.slots[j] for j in rows], params=params, opt=opt,
            train_tokens=self.train_tokens[sel] if fixed else None,
            train_targets=self.train_targets[sel] if fixed else None,
            order=self.order[sel], order_epoch=[self.order_epoch[j] for j in rows], bad_step=self.bad_step[sel],
        )

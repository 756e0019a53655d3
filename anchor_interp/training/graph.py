"""One training step of a Stack as a CUDA graph: captured once, replayed every step.

A GPU step of small stacked models spends much of its time launching hundreds of small kernels from
Python; a CUDA graph records them once and replays them with one launch (measured on an H200: 25.0 ->
18.1 ms a step for the 45 reference models of the identity figure; docs/performance.md). :class:`StaticStep`
is the eager step of :mod:`anchor_interp.training.loop` (forward, per-model mean cross-entropy,
backward, per-model gradient clipping, AdamW with one learning rate per model) written with tensors
only, over static buffers that each step fills:

    tokens (k, B, T), targets (k, B)      this step's batch (copied in)
    lr (k,)                               each model's learning rate
    bc1, bc2_sqrt ()                      Adam's bias corrections for the shared step count
    -> loss (k,), hits (k,)               each model's mean loss (nats) and correct rows

The arithmetic is the eager loop path's (``StackedAdamW`` without the fused kernel or ``foreach``), so a
graphed run matches an eager one to float tolerance (tests/training/test_graph.py compares them on the
CPU, where ``capture=False`` runs the same body without a graph). Eligible runs: fixed training data
and no ragged batch (every model's row count a multiple of the batch size); the loop checks this and
otherwise steps eagerly. A new Stack (a model left) is captured anew.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import anchor_interp.training as _api

__all__ = ["StaticStep", "graph_eligible"]

WARMUP_STEPS = 2  # eager runs of the body on a side stream before capture (PyTorch's documented recipe)


def graph_eligible(rec, n_rows: list[int]) -> bool:
    """Whether a run's steps can be one static graph: fixed data, every batch full (no padding rows)."""
    return rec.data == "fixed" and all(n % rec.batch_size == 0 for n in n_rows)


class StaticStep:
    """The training step of ``stack`` over static buffers; ``capture``: record it as a CUDA graph
    (needs a CUDA stack). ``frozen``: parameter names that get no update (Recipe.freeze).

    Raises RuntimeError if capture fails (the caller then steps eagerly)."""

    def __init__(self, stack, cfg, rec, seq_len: int, frozen: tuple[str, ...], capture: bool):
        self.stack, self.cfg, self.rec = stack, cfg, rec
        k, B = len(stack.slots), rec.batch_size
        dev = stack.order.device
        self.tokens = torch.zeros(k, B, seq_len, dtype=torch.long, device=dev)  # (k, B, T)
        self.targets = torch.zeros(k, B, dtype=torch.long, device=dev)  # (k, B)
        self.lr = torch.zeros(k, device=dev)  # (k,)
        self.bc1 = torch.ones((), device=dev)  # 1 - beta1^t
        self.bc2_sqrt = torch.ones((), device=dev)  # sqrt(1 - beta2^t)
        self.names = [n for n in stack.params if n not in frozen]
        self.graph = None
        self.out: tuple[Tensor, Tensor] | None = None
        if capture:
            self._capture()

    def __call__(self, tokens: Tensor, targets: Tensor, lrs: list[float], step_count: int) -> tuple[Tensor, Tensor]:
        """One step on this batch: (k, B, T) tokens, (k, B) targets, one learning rate per model, the
        optimiser's step count after this step. Returns each model's mean loss (k,) and correct rows (k,),
        static tensors overwritten by the next call."""
        b1, b2 = self.rec.beta1, self.rec.beta2
        self.tokens.copy_(tokens)
        self.targets.copy_(targets)
        self.lr.copy_(torch.tensor(lrs, dtype=torch.float32))
        self.bc1.fill_(1 - b1**step_count)
        self.bc2_sqrt.fill_((1 - b2**step_count) ** 0.5)
        if self.graph is None:
            return self._body()
        self.graph.replay()
        return self.out

    def _body(self) -> tuple[Tensor, Tensor]:
        """Forward, loss, backward, clip, AdamW: tensor ops only (no host sync), so it can be captured."""
        params, rec = self.stack.params, self.rec
        for p in params.values():
            p.grad = None
        with torch.autocast(self.tokens.device.type, dtype=torch.bfloat16, enabled=rec.precision == "bf16",
                            cache_enabled=False):
            logits = _api.stacked_forward(params, self.cfg, self.tokens).float()  # (k, B, V)
        k = logits.shape[0]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1), reduction="none")
        loss = ce.view(k, -1).mean(1)  # (k,)
        loss.sum().backward()
        with torch.no_grad():
            self._clip()
            self._adamw()
            hits = (logits.argmax(-1) == self.targets).float().sum(1)  # (k,)
        return loss.detach(), hits

    def _clip(self) -> None:
        """Scale each model's gradient by min(1, clip / (its global norm + 1e-6)) (StackedAdamW.clip_)."""
        self.stack.opt.clip_grads_([self.stack.params[n].grad for n in self.names])

    def _adamw(self) -> None:
        """AdamW with per-model learning rates (StackedAdamW.update_, bias corrections as tensors)."""
        for n in self.names:
            self.stack.opt.update_(n, self.lr, self.bc1, self.bc2_sqrt)

    def _capture(self) -> None:
        """Warm up on a side stream (weights and moments restored afterwards, also when it fails), then
        record the body."""
        params, opt = self.stack.params, self.stack.opt
        saved = [(t, t.detach().clone()) for t in [*params.values(), *opt.exp_avg.values(), *opt.exp_avg_sq.values()]]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._body()
            torch.cuda.current_stream().wait_stream(side)
        finally:
            with torch.no_grad():
                for t, copy in saved:
                    t.copy_(copy)
            del saved
            for p in params.values():
                p.grad = None
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._body()

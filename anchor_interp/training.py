"""Training anchor models: recipes, a batched trainer for k models at once, history, resume.

One code path trains ``k >= 1`` HookedTransformers with the same config as one computation: their
weights are stacked along a leading model axis and run through :func:`stacked_forward` (the same
arithmetic as HookedTransformer's forward, scored at the last position only). Every model keeps its
own seed, training data, data order, gradient clipping and AdamW state, so training k models together
gives the weights of k separate runs (to float tolerance).

Loss and accuracy are computed at the last input position only (the task's single scored position).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

# ----------------------------------------------------------------------------------------------
# recipes


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Recipe:
    """Optimiser, schedule and data settings. Epochs count passes over the ``n_train`` sequences.

    Learning rate: linear warm-up from ``lr_start`` to ``lr`` over ``warmup_epochs``, then a cosine
    from ``lr`` toward ``lr_end`` with period ``cosine_epochs`` (lr_end reached after cosine_epochs
    more epochs; None = the cosine ends with the run). ``schedule_per``: "epoch" (lr changes once per epoch, as in the authors' code) or
    "step" (fractional epochs). ``data``: "fixed" (one training set of n_train sequences, reshuffled
    every epoch: what "training-set size" means in the paper) or "fresh" (new sequences every step).
    ``precision``: "fp32", or "bf16" (mixed precision: the training forward and backward run their
    matmuls in bfloat16 under ``torch.autocast``; weights, optimiser state, loss and every held-out
    evaluation stay float32, so reported accuracies are those of the saved float32 weights).
    """

    name: str
    epochs: int
    batch_size: int
    lr: float
    lr_start: float
    lr_end: float
    warmup_epochs: float
    cosine_epochs: float | None  # None: the cosine ends with the run (epochs - warmup_epochs)
    schedule_per: str = "step"
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    n_train: int = 1000
    n_test: int = 1000
    data: str = "fixed"
    eval_every: int = 1
    early_stop_acc: float | None = None
    checkpoint_every: int = 0  # epochs; 0 = only at the end
    precision: str = "fp32"  # "fp32" or "bf16" (mixed: bf16 matmuls in training steps only)
    fused_adamw: bool = False  # torch's fused AdamW kernel: same formula, faster, last-bit differences

    def __post_init__(self):
        def bad(field_name, allowed):
            raise ValueError(f"recipe field {field_name}={getattr(self, field_name)!r} is invalid; {allowed}")

        if self.epochs < 1:
            bad("epochs", "use an int >= 1")
        if self.batch_size < 1:
            bad("batch_size", "use an int >= 1")
        for f in ("lr", "lr_start", "lr_end"):
            if not (math.isfinite(getattr(self, f)) and getattr(self, f) >= 0):
                bad(f, "use a finite number >= 0")
        if self.warmup_epochs < 0:
            bad("warmup_epochs", "use a number of epochs >= 0")
        if self.cosine_epochs is not None and self.cosine_epochs <= 0:
            bad("cosine_epochs", "use a number of epochs > 0, or None (the cosine ends with the run)")
        if self.schedule_per not in ("epoch", "step"):
            bad("schedule_per", "use 'epoch' or 'step'")
        if self.data not in ("fixed", "fresh"):
            bad("data", "use 'fixed' (a training set of n_train sequences) or 'fresh' (new data every step)")
        if self.n_train < 1 or self.n_test < 1:
            bad("n_train" if self.n_train < 1 else "n_test", "use an int >= 1")
        if self.eval_every < 1:
            bad("eval_every", "use an int >= 1 (epochs)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            bad("grad_clip", "use a number > 0 or None")
        if self.early_stop_acc is not None and not 0 < self.early_stop_acc <= 1:
            bad("early_stop_acc", "use a held-out accuracy in (0, 1] or None")
        if self.checkpoint_every < 0:
            bad("checkpoint_every", "use 0 (only at the end) or a number of epochs")
        if self.precision not in PRECISIONS:
            bad("precision", f"use one of {PRECISIONS} (bf16 = mixed precision for the training steps)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **overrides) -> Recipe:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(
                f"unknown recipe field(s) {unknown}; known: {[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **overrides)

    def lr_at(self, epoch: float) -> float:
        """Learning rate at (fractional) ``epoch``; floored to whole epochs when schedule_per="epoch"."""
        t = math.floor(epoch) if self.schedule_per == "epoch" else epoch
        if t < self.warmup_epochs:
            return self.lr_start + (self.lr - self.lr_start) * t / self.warmup_epochs
        period = self.cosine_epochs if self.cosine_epochs is not None else max(self.epochs - self.warmup_epochs, 1)
        phase = math.pi * (t - self.warmup_epochs) / period
        return self.lr_end + 0.5 * (self.lr - self.lr_end) * (1 + math.cos(min(phase, math.pi)))


RECIPES: dict[str, Recipe] = {
    # Ours: large lr with a short warm-up, cosine to 1/100 ending with the run, batch 100.
    "fast": Recipe(
        name="fast", epochs=100, batch_size=100, lr=1e-3, lr_start=1e-4, lr_end=1e-5,
        warmup_epochs=2, cosine_epochs=None, schedule_per="step",
    ),
    # Tuned for wall time to 99% held-out on identity learning (benchmarks/bench_training.py, the
    # paper preset, N = 1000; docs/performance.md): bf16 mixed precision and the fused AdamW kernel
    # (cheaper steps), batch 50, lr 1e-4 -> 3e-4 over a 1-epoch warm-up, beta2 0.98, then a cosine
    # over the remaining 99 epochs toward 1e-5, 500 held-out sequences. Meant with early_stop_acc.
    "quick": Recipe(
        name="quick", epochs=100, batch_size=50, lr=3e-4, lr_start=1e-4, lr_end=1e-5,
        warmup_epochs=1, cosine_epochs=None, schedule_per="step", beta2=0.98, n_test=500,
        precision="bf16", fused_adamw=True,
    ),
    # The authors' recipe (spec section 4): AdamW (weight decay 0.01), clip 1.0, warm-up 2e-5 -> 2e-4
    # over 400 epochs, cosine with period 4000 epochs toward 2e-5, stepped per epoch, batch 50,
    # 4000 epochs, 500 held-out sequences.
    "paper": Recipe(
        name="paper", epochs=4000, batch_size=50, lr=2e-4, lr_start=2e-5, lr_end=2e-5,
        warmup_epochs=400, cosine_epochs=4000, schedule_per="epoch", n_test=500,
    ),
}


def get_recipe(recipe: str | Recipe | dict, **overrides) -> Recipe:
    """A Recipe from a name in RECIPES, a Recipe, or a dict of its fields, with ``overrides`` applied.
    Raises ValueError for an unknown name or field."""
    if isinstance(recipe, Recipe):
        base = recipe
    elif isinstance(recipe, dict):
        try:
            base = Recipe(**recipe)
        except TypeError as e:
            raise ValueError(f"recipe dict does not fit Recipe: {e}") from e
    elif isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; known recipes: {sorted(RECIPES)}")
        base = RECIPES[recipe]
    else:
        raise ValueError(f"recipe must be a name {sorted(RECIPES)}, a Recipe or a dict; got {type(recipe).__name__}")
    return base.replace(**overrides) if overrides else base


# ----------------------------------------------------------------------------------------------
# seeds

_MIX = 1_000_003


def derive_seed(seed: int, *parts: int) -> int:
    """A deterministic seed for a sub-stream (train data, test data, epoch order, fresh step)."""
    s = int(seed)
    for p in parts:
        s = (s * _MIX + int(p) + 0x9E37) % (2**62)
    return s


TRAIN_DATA, TEST_DATA, EPOCH_ORDER, FRESH_STEP = 1, 2, 3, 4

# ----------------------------------------------------------------------------------------------
# the stacked forward


def _layer_norm(x: Tensor, w: Tensor | None, b: Tensor | None, eps: float) -> Tensor:
    # same arithmetic as transformer_lens.components.LayerNorm; w, b: (k, d) broadcast over (k, ..., d)
    x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    if w is None:
        return x
    shape = (w.shape[0],) + (1,) * (x.ndim - 2) + (w.shape[-1],)
    return x * w.view(shape) + b.view(shape)


_ACTS = {"relu": F.relu, "gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu}


def check_trainable_config(cfg) -> None:
    """Raise ValueError if the batched trainer does not implement this HookedTransformerConfig."""
    problems = []
    if cfg.positional_embedding_type != "standard":
        problems.append(f"positional_embedding_type={cfg.positional_embedding_type!r} (needs 'standard')")
    if cfg.normalization_type not in ("LN", "LNPre", None):
        problems.append(f"normalization_type={cfg.normalization_type!r} (needs 'LN', 'LNPre' or None)")
    if not cfg.attn_only and cfg.act_fn not in _ACTS:
        problems.append(f"act_fn={cfg.act_fn!r} (needs one of {sorted(_ACTS)})")
    if cfg.attention_dir not in ("causal", "bidirectional"):
        problems.append(f"attention_dir={cfg.attention_dir!r}")
    for flag in ("gated_mlp", "parallel_attn_mlp", "use_local_attn", "use_qk_norm", "final_rms",
                 "scale_attn_by_inverse_layer_idx", "post_embedding_ln", "use_normalization_before_and_after"):
        if getattr(cfg, flag, False):
            problems.append(f"{flag}=True")
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        problems.append("grouped-query attention")
    if problems:
        raise ValueError("the trainer does not support this model config: " + "; ".join(problems))


def stacked_forward(
    params: dict[str, Tensor], cfg, tokens: Int[Tensor, "k batch seq"]
) -> Float[Tensor, "k batch d_vocab_out"]:
    """Last-position logits of k stacked HookedTransformers (same math as ``model(tokens)[:, -1]``).

    ``params[name]`` has shape (k, *shape of the HookedTransformer parameter ``name``). Every matmul is
    one bmm over the model axis. The last layer is computed for the last query position only, which
    leaves the scored logits unchanged.
    """
    k, B, T = tokens.shape
    W_E = params["embed.W_E"]  # (k, V, d)
    V, d = W_E.shape[1], W_E.shape[2]
    offsets = (torch.arange(k, device=tokens.device) * V).view(k, 1, 1)
    x = W_E.reshape(k * V, d)[tokens + offsets]  # (k, B, T, d)
    x = x + params["pos_embed.W_pos"][:, None, :T, :]  # (k, B, T, d)
    nh, hs = cfg.n_heads, cfg.d_head
    scale = math.sqrt(hs) if cfg.use_attn_scale else 1.0
    if cfg.use_attn_scale and cfg.attn_scale > 0:
        scale = cfg.attn_scale
    causal = cfg.attention_dir == "causal"
    ln = cfg.normalization_type is not None
    mask = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril() if causal else None
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        last = layer == cfg.n_layers - 1
        Tq = 1 if last else T
        h = _layer_norm(x, params.get(p + "ln1.w"), params.get(p + "ln1.b"), cfg.eps) if ln else x
        hq = h[:, :, -1:] if last else h  # (k, B, Tq, d)
        # weights (k, nh, d, hs) -> (k, d, nh*hs): one bmm per projection
        W_Q = params[p + "attn.W_Q"].permute(0, 2, 1, 3).reshape(k, d, nh * hs)
        W_KV = torch.cat([params[p + "attn.W_K"], params[p + "attn.W_V"]], 1).permute(0, 2, 1, 3).reshape(k, d, 2 * nh * hs)
        q = (hq.reshape(k, B * Tq, d) @ W_Q).view(k, B, Tq, nh, hs).transpose(2, 3)  # (k, B, nh, Tq, hs)
        q = q + params[p + "attn.b_Q"][:, None, :, None, :]
        kv = (h.reshape(k, B * T, d) @ W_KV).view(k, B, T, 2, nh, hs)
        kk = kv[:, :, :, 0].transpose(2, 3) + params[p + "attn.b_K"][:, None, :, None, :]  # (k, B, nh, T, hs)
        v = kv[:, :, :, 1].transpose(2, 3) + params[p + "attn.b_V"][:, None, :, None, :]  # (k, B, nh, T, hs)
        att = (q @ kk.transpose(-1, -2)) / scale  # (k, B, nh, Tq, T)
        if causal and Tq > 1:
            att = att.masked_fill(~mask, float("-inf"))
        att = att.softmax(dim=-1)
        z = (att @ v).transpose(2, 3).reshape(k, B * Tq, nh * hs)  # (k, B*Tq, nh*hs)
        attn_out = z @ params[p + "attn.W_O"].reshape(k, nh * hs, d) + params[p + "attn.b_O"][:, None, :]
        x = (x[:, :, -1:] if last else x) + attn_out.view(k, B, Tq, d)  # (k, B, Tq, d)
        if not cfg.attn_only:
            h = _layer_norm(x, params.get(p + "ln2.w"), params.get(p + "ln2.b"), cfg.eps) if ln else x
            pre = h.reshape(k, B * Tq, d) @ params[p + "mlp.W_in"] + params[p + "mlp.b_in"][:, None, :]
            post = _ACTS[cfg.act_fn](pre) @ params[p + "mlp.W_out"] + params[p + "mlp.b_out"][:, None, :]
            x = x + post.view(k, B, Tq, d)
    x = x[:, :, -1]  # (k, B, d)
    if ln:
        x = _layer_norm(x, params.get("ln_final.w"), params.get("ln_final.b"), cfg.eps)
    return x @ params["unembed.W_U"] + params["unembed.b_U"][:, None, :]  # (k, B, V_out)


def stack_models(models: list) -> dict[str, Tensor]:
    """Stack the parameters of k same-config HookedTransformers along a new leading axis."""
    names = [n for n, _ in models[0].named_parameters()]
    out = {}
    for name in names:
        out[name] = torch.stack([dict(m.named_parameters())[name].detach() for m in models]).clone()
    return out


def unstack_into(params: dict[str, Tensor], models: list) -> None:
    """Copy slice i of every stacked parameter into ``models[i]`` (in place)."""
    with torch.no_grad():
        for i, m in enumerate(models):
            for name, p in m.named_parameters():
                p.copy_(params[name][i].to(p.device))


# ----------------------------------------------------------------------------------------------
# optimiser: AdamW over stacked parameters, with per-model gradient clipping


class StackedAdamW:
    """AdamW (torch.optim.AdamW's formula, decoupled weight decay) over stacked parameters.

    Adam is elementwise, so slice i of the stacked update is model i's own update. Gradient clipping
    is per model: each model's gradient is scaled by min(1, clip / (its global norm + 1e-6)), as
    ``torch.nn.utils.clip_grad_norm_`` does for one model. With ``recipe.fused_adamw`` the update is
    torch's fused AdamW kernel (the same formula in one pass over memory, about 6x faster per step on
    the 2-core CPU for the paper preset; results differ from the unfused update in the last bit).
    """

    def __init__(self, params: dict[str, Tensor], recipe: Recipe):
        self.params = params
        self.r = recipe
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self._step_count = 0
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

    @torch.no_grad()
    def clip_(self) -> Tensor:
        """Clip each model's gradient in place; returns the per-model norms before clipping, (k,)."""
        grads = [p.grad for p in self.params.values()]
        k = grads[0].shape[0]
        sq = torch.stack([g.reshape(k, -1).pow(2).sum(1) for g in grads]).sum(0)  # (k,)
        norms = sq.sqrt()
        if self.r.grad_clip is not None:
            coef = (self.r.grad_clip / (norms + 1e-6)).clamp(max=1.0)
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
            if not per_model:
                self._fused.param_groups[0]["lr"] = lr
                self._fused.step()
                return
            for st in self._fused.state.values():  # keep the fused kernel's own count in step
                st["step"].fill_(self._step_count)
        b1, b2 = self.r.beta1, self.r.beta2
        bc1 = 1 - b1**self._step_count
        bc2_sqrt = math.sqrt(1 - b2**self._step_count)
        for n, p in self.params.items():
            g = p.grad
            lr_p = lr.view((-1,) + (1,) * (p.ndim - 1)) if per_model else lr  # (k, 1, ...) or a float
            p.mul_(1 - lr_p * self.r.weight_decay)
            self.exp_avg[n].lerp_(g, 1 - b1)
            self.exp_avg_sq[n].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (self.exp_avg_sq[n].sqrt() / bc2_sqrt).add_(self.r.adam_eps)
            if per_model:
                p.sub_(self.exp_avg[n] / denom * (lr_p / bc1))
            else:
                p.addcdiv_(self.exp_avg[n], denom, value=-lr / bc1)

    def state_slice(self, i: int) -> dict[str, Tensor]:
        out = {f"exp_avg.{n}": t[i] for n, t in self.exp_avg.items()}
        out.update({f"exp_avg_sq.{n}": t[i] for n, t in self.exp_avg_sq.items()})
        return out

    def load_slice(self, i: int, tensors: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for n in self.params:
                self.exp_avg[n][i].copy_(tensors[f"exp_avg.{n}"])
                self.exp_avg_sq[n][i].copy_(tensors[f"exp_avg_sq.{n}"])


# ----------------------------------------------------------------------------------------------
# results


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


# ----------------------------------------------------------------------------------------------
# the training loop


def _group_names(task) -> list[tuple[str, bool]]:
    return [(g.name, bool(g.masked)) for g in task.groups]


@torch.no_grad()
def evaluate_stacked(params, cfg, tokens, targets, group, task, chunk: int = 4096) -> list[dict]:
    """Held-out loss and accuracy per model (overall, seen groups, masked groups, and per group).

    tokens: (k, n, seq); targets, group: (k, n). Accuracy in [0, 1]; loss in nats (mean cross-entropy).
    Rows with target -1 are skipped. Masked groups never count toward ``test_acc``; it is the
    accuracy over seen groups (``test_acc_masked`` reports the masked ones; None when there are none).
    """
    k, n, _ = tokens.shape
    losses, correct = [], []
    for s in range(0, n, chunk):
        logits = stacked_forward(params, cfg, tokens[:, s : s + chunk])  # (k, c, V)
        t = targets[:, s : s + chunk]
        valid = t >= 0
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.clamp(min=0).reshape(-1), reduction="none")
        losses.append(ce.view(t.shape).masked_fill(~valid, float("nan")))
        correct.append(((logits.argmax(-1) == t) & valid).float().masked_fill(~valid, float("nan")))
    loss = torch.cat(losses, 1).cpu()  # (k, n)
    corr = torch.cat(correct, 1).cpu()
    group = group.cpu()
    groups = _group_names(task)
    rows = []
    for i in range(k):
        row: dict[str, float] = {}
        seen = torch.zeros(n, dtype=torch.bool)
        masked = torch.zeros(n, dtype=torch.bool)
        for gi, (gname, gmasked) in enumerate(groups):
            sel = group[i] == gi
            (masked if gmasked else seen).logical_or_(sel)
            row[f"test_acc/{gname}"] = _nanmean(corr[i][sel])
        row["test_loss"] = _nanmean(loss[i][seen])
        row["test_acc"] = _nanmean(corr[i][seen])
        row["test_acc_masked"] = _nanmean(corr[i][masked])
        rows.append(row)
    return rows


def _nanmean(x: Tensor) -> float | None:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else None


def _stack_batches(batches) -> tuple[Tensor, Tensor, Tensor]:
    return (torch.stack([b.tokens for b in batches]), torch.stack([b.targets for b in batches]),
            torch.stack([b.group for b in batches]))


def _train_only_groups(task) -> list[int]:
    return [i for i, g in enumerate(task.groups) if not g.masked]


def _sample_train(task, n: int, seed: int, device) -> tuple[Tensor, Tensor, Tensor]:
    b = task.sample(n, split="train", seed=seed, device=device)
    keep = torch.isin(b.group, torch.tensor(_train_only_groups(task), device=b.group.device))
    if not bool(keep.all()):  # masked groups are evaluated, never trained on
        b = b.select(keep.nonzero().squeeze(1))
    return b.tokens, b.targets, b.group


def train_many(
    models: list,
    task,
    recipe: str | Recipe | dict = "fast",
    *,
    seeds: list[int],
    out_dirs: list[str | os.PathLike] | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    preset: str | None = None,
    stop_after_step: int | None = None,
    checkpoint_every_steps: int = 0,
    **recipe_overrides,
) -> list[TrainResult]:
    """Train k same-config HookedTransformers on ``task`` as one batched computation.

    ``models[i]`` (initial weights) is trained in place with ``seeds[i]`` (its data, order and test
    set). ``out_dirs[i]``: checkpoint folder (history.csv, history.png, checkpoint files) or None.
    ``resume``: continue from the checkpoints in out_dirs (they must exist and match task, recipe and
    seed). ``stop_after_step``: save a checkpoint after that many steps and return (an interruption,
    possibly mid-epoch). ``checkpoint_every_steps``: also checkpoint every that many steps.
    ``recipe_overrides``: Recipe fields, e.g. ``n_train=500, epochs=50``; ``n_train`` may be a list
    with one training-set size per model (each model then keeps its own epochs, schedule position and
    evaluations; see docs/models.md). A model that stops (early stop, or the end of its schedule while
    others train on) leaves the batched computation.
    Raises ValueError on bad input (mismatched configs, unknown recipe, unwritable folder, resume of
    another task), TrainingDiverged when a loss becomes non-finite.
    """
    from tqdm.auto import tqdm

    from anchor_interp import checkpoint as ckpt
    from anchor_interp.models import check_config_for_task, resolve_device

    if not models:
        raise ValueError("models must be a non-empty list of HookedTransformers")
    k = len(models)
    n_each = recipe_overrides.pop("n_train", None)
    if isinstance(n_each, (list, tuple)):
        if len(n_each) != k:
            raise ValueError(f"n_train must be an int or one int per model ({k}); got {len(n_each)} sizes")
        recs = [get_recipe(recipe, **recipe_overrides, n_train=n) for n in n_each]
    else:
        over = recipe_overrides if n_each is None else {**recipe_overrides, "n_train": n_each}
        recs = [get_recipe(recipe, **over)] * k
    rec = recs[0]  # every field but n_train is shared
    if len(seeds) != k:
        raise ValueError(f"seeds must have one int per model ({k}); got {len(seeds)}")
    if out_dirs is not None and len(out_dirs) != k:
        raise ValueError(f"out_dirs must have one folder per model ({k}); got {len(out_dirs)}")
    cfg = models[0].cfg
    for i, m in enumerate(models[1:], 1):
        if ckpt_cfg(m.cfg) != ckpt_cfg(cfg):
            raise ValueError(f"models[{i}] has a different config from models[0]; batch only same-config models")
    check_config_for_task(cfg, task)
    check_trainable_config(cfg)
    dev = resolve_device(device if device is not None else models[0].W_E.device)
    if resume and out_dirs is None:
        raise ValueError("resume=True needs out_dirs (the checkpoint folders to continue from)")
    if out_dirs is not None:
        out_dirs = [ckpt.ensure_writable_dir(d) for d in out_dirs]

    params = {n: t.to(dev).requires_grad_(True) for n, t in stack_models(models).items()}
    opt = StackedAdamW(params, rec)

    # data: each model its own fixed training set and held-out set (seeded by its own seed)
    B = rec.batch_size
    if rec.data == "fixed":
        train = [_sample_train(task, r.n_train, derive_seed(s, TRAIN_DATA), dev) for r, s in zip(recs, seeds, strict=True)]
        n_rows = [t[0].shape[0] for t in train]  # masked groups removed: may be below n_train
        n_max = max(n_rows)
        train_tokens = torch.zeros(k, n_max, task.seq_len, dtype=torch.long, device=dev)  # (k, N_max, T)
        train_targets = torch.zeros(k, n_max, dtype=torch.long, device=dev)  # (k, N_max); rows >= n_i unused
        for i, (tok_i, tgt_i, _) in enumerate(train):
            train_tokens[i, : n_rows[i]], train_targets[i, : n_rows[i]] = tok_i, tgt_i
    else:
        n_rows = [r.n_train for r in recs]
    test = [task.sample(rec.n_test, split="test", seed=derive_seed(s, TEST_DATA), device=dev) for s in seeds]
    test_tokens, test_targets, test_group = _stack_batches(test)
    spe = [math.ceil(n / B) for n in n_rows]  # steps per epoch, per model
    total = [rec.epochs * s for s in spe]

    histories: list[list[dict]] = [[] for _ in range(k)]
    done = [False] * k  # frozen: stopped early, or at the end of its schedule
    early = [False] * k  # stopped early (reached early_stop_acc)
    snapshots: dict[int, dict] = {}  # model index -> {"params", "opt", "step", "epoch"} frozen when it stopped
    step = 0
    acc = {"loss": torch.zeros(k, device=dev), "correct": torch.zeros(k, device=dev),
           "n": torch.zeros(k, dtype=torch.long, device=dev)}
    elapsed0 = 0.0

    if resume:
        step, elapsed0 = _load_resume(out_dirs, task, recs, seeds, params, opt, histories, done, early, snapshots,
                                      acc, dev)

    # the stack holds the models still training; slots[j] = the model index of stacked row j
    slots = list(range(k))
    slot_idx = torch.arange(k, device=dev)  # slots as a tensor, (k_act,)
    widths: dict[int, Tensor] = {}  # batch width -> (k_act,) tensor of it, made once per stack

    def slot_width(width: int) -> Tensor:
        if width not in widths:
            widths[width] = torch.full((len(slots),), width, dtype=torch.long, device=dev)
        return widths[width]

    def compact() -> None:
        nonlocal params, opt, slots, slot_idx, train_tok_s, train_tgt_s, bad_step, order_s, order_epoch
        keep = [j for j, i in enumerate(slots) if not done[i]]
        if len(keep) == len(slots):
            return
        if not keep:  # every model has stopped: the loop ends, results come from the snapshots
            slots = []
            return
        sel = torch.tensor(keep, dtype=torch.long, device=dev)
        slices = [opt.state_slice(j) for j in keep]
        count = opt.step_count
        params = {n: t.detach()[sel].clone().requires_grad_(True) for n, t in params.items()}
        opt = StackedAdamW(params, rec)
        for jj, sl in enumerate(slices):
            opt.load_slice(jj, sl)
        opt.step_count = count
        if rec.data == "fixed":
            train_tok_s, train_tgt_s = train_tok_s[sel], train_tgt_s[sel]
        bad_step = bad_step[sel]
        order_s, order_epoch = order_s[sel], [order_epoch[j] for j in keep]
        slots = [slots[j] for j in keep]
        slot_idx = torch.tensor(slots, dtype=torch.long, device=dev)
        widths.clear()

    def save(i: int, resume_state: bool) -> None:
        if out_dirs is None:
            return
        if i in snapshots:
            snap = snapshots[i]
            p_i, o_i, s_i, e_i = snap["params"], snap["opt"], snap["step"], snap["epoch"]
        else:
            j = slots.index(i)
            p_i = {n: t[j] for n, t in params.items()}
            o_i = opt.state_slice(j)
            s_i, e_i = step, step // spe[i]
        resume_info = {
            "global_step": step,
            "optimizer_step": opt.step_count,
            "done": done[i],
            "stopped_early": early[i],
            "epoch_loss_sum": float(acc["loss"][i]),
            "epoch_correct": float(acc["correct"][i]),
            "epoch_n": int(acc["n"][i]),
            "elapsed_s": elapsed0 + time.perf_counter() - t0,
            "frozen_step": s_i,
            "frozen_optimizer_step": snapshots[i]["opt_step"] if i in snapshots else opt.step_count,
        }
        ckpt.save_checkpoint(
            out_dirs[i], models[i], task, preset=preset, recipe=recs[i].to_dict(), seed=seeds[i], step=s_i,
            epoch=e_i, n_train=n_rows[i], history=histories[i], params=p_i,
            optimizer_tensors=o_i if resume_state else None, resume=resume_info if resume_state else None,
        )
        if not resume_state:
            write_history(histories[i], out_dirs[i])

    def freeze(j: int, i: int, stopped_early: bool) -> None:
        done[i], early[i] = True, stopped_early
        snapshots[i] = {"params": {n: t[j].detach().clone() for n, t in params.items()},
                        "opt": {n: t.clone() for n, t in opt.state_slice(j).items()},
                        "opt_step": opt.step_count, "step": step, "epoch": step // spe[i]}

    def end_of_epochs(ended: list[tuple[int, int]], lrs: list[float], last_good: int | None) -> int | None:
        """Evaluate, early-stop, schedule-end and checkpoint the (slot, model) pairs whose epoch ended at
        ``step``; returns the step of the last good checkpoint."""
        _check_finite(bad_step, slots, out_dirs, last_good)
        evals = [(j, i) for j, i in ended if (step // spe[i]) % rec.eval_every == 0 or step == total[i]]
        if evals:
            js = [j for j, _ in evals]
            p_eval = params if len(js) == len(slots) else {n: t[js] for n, t in params.items()}
            ii = torch.tensor([i for _, i in evals], device=dev)
            rows = evaluate_stacked(p_eval, cfg, test_tokens[ii], test_targets[ii], test_group[ii], task)
            for (j, i), r_i in zip(evals, rows, strict=True):
                lr_i = lrs[j]
                row = {"epoch": step // spe[i], "step": step, "lr": lr_i,
                       "train_loss": float(acc["loss"][i]) / int(acc["n"][i]),
                       "train_acc": float(acc["correct"][i]) / int(acc["n"][i])}
                row.update(r_i)
                row["time_s"] = round(elapsed0 + time.perf_counter() - t0, 3)
                histories[i].append(row)
                if rec.early_stop_acc is not None and (row["test_acc"] or 0.0) >= rec.early_stop_acc:
                    freeze(j, i, stopped_early=True)
            if progress:
                live = [h[-1] for h in histories if h]
                bar.set_postfix(loss=f"{sum(r['train_loss'] for r in live) / len(live):.3f}",
                                test_acc=f"{sum(r['test_acc'] or 0.0 for r in live) / len(live):.3f}")
        for j, i in ended:
            if step == total[i] and not done[i]:
                freeze(j, i, stopped_early=False)  # the end of its schedule; others may train on
            # train_loss / train_acc of a history row: running means over that row's epoch only
            acc["loss"][i] = acc["correct"][i] = 0.0
            acc["n"][i] = 0
        if (rec.checkpoint_every and any((step // spe[i]) % rec.checkpoint_every == 0 for _, i in ended)
                and not all(done)):
            for i in range(k):
                save(i, True)
            last_good = step
        return last_good

    t0 = time.perf_counter()
    last_good_ckpt_step = step if resume else None
    total_steps = max(total)
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc=f"train {k} model(s)", unit="step",
               leave=False, mininterval=1.0)
    bad_step = torch.full((k,), -1, dtype=torch.long, device=dev)
    if rec.data == "fixed":
        train_tok_s, train_tgt_s = train_tokens, train_targets  # rows of the models in the stack
    else:
        train_tok_s = train_tgt_s = None
    for i in range(k):  # a resumed run: models frozen before the interruption leave the stack
        if step >= total[i] and not done[i]:
            raise ValueError(f"model {i}: the checkpoint is past the end of its schedule; nothing to resume")
    # data order of the current epoch of every stacked model, and which epoch that is (-1: none yet)
    order_s = torch.zeros(k, max(n_rows), dtype=torch.long, device=dev)  # (k_act, N_max)
    order_epoch = [-1] * k
    compact()
    with _DeferredSigint(enabled=out_dirs is not None) as sigint:
        while slots:
            # one batch per model in the stack: rows lo..hi of its epoch order (the last batch of an epoch
            # may be shorter; then rows are padded and masked out of the loss)
            pos = [divmod(step, spe[i]) for i in slots]  # (epoch, step in epoch) per stacked model
            spans = [(ie * B, min((ie + 1) * B, n_rows[i])) for i, (_, ie) in zip(slots, pos, strict=True)]
            width = max(hi - lo for lo, hi in spans)
            ragged = any(hi - lo != width for lo, hi in spans)
            if rec.data == "fixed":
                for j, (i, (ep, _)) in enumerate(zip(slots, pos, strict=True)):
                    if order_epoch[j] != ep:  # a new epoch (or a resumed one): this model's data order
                        gen = torch.Generator().manual_seed(derive_seed(seeds[i], EPOCH_ORDER, ep))
                        order_s[j, : n_rows[i]] = torch.randperm(n_rows[i], generator=gen).to(dev)
                        order_epoch[j] = ep
                if len(set(spans)) == 1:  # every model at the same rows of its order
                    idx = order_s[:, spans[0][0] : spans[0][1]]  # (k_act, b)
                else:
                    lo_t = torch.tensor([lo for lo, _ in spans], device=dev)
                    cols = (lo_t[:, None] + torch.arange(width, device=dev)[None]).clamp(max=order_s.shape[1] - 1)
                    idx = torch.gather(order_s, 1, cols)  # (k_act, b); columns past a model's count are masked
                tok = torch.gather(train_tok_s, 1, idx[:, :, None].expand(-1, -1, train_tok_s.shape[2]))
                tgt = torch.gather(train_tgt_s, 1, idx)
                counts = [hi - lo for lo, hi in spans]
            else:
                fresh = [_sample_train(task, hi - lo, derive_seed(seeds[i], FRESH_STEP, step), dev)
                         for i, (lo, hi) in zip(slots, spans, strict=True)]
                counts = [f[0].shape[0] for f in fresh]
                width = max(counts)
                ragged = any(c != width for c in counts)
                tok = torch.zeros(len(slots), width, task.seq_len, dtype=torch.long, device=dev)
                tgt = torch.zeros(len(slots), width, dtype=torch.long, device=dev)
                for j, f in enumerate(fresh):
                    tok[j, : counts[j]], tgt[j, : counts[j]] = f[0], f[1]
            lr_of: dict[int, float] = {}  # models with the same steps per epoch share their point on the schedule
            for i, (ep, ie) in zip(slots, pos, strict=True):
                if spe[i] not in lr_of:
                    lr_of[spe[i]] = rec.lr_at(ep + ie / spe[i])
            lrs = [lr_of[spe[i]] for i in slots]
            lr = lrs[0] if len(set(lrs)) == 1 else torch.tensor(lrs, device=dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=rec.precision == "bf16"):
                logits = stacked_forward(params, cfg, tok).float()  # (k_act, b, V)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
            ce = ce.view(len(slots), -1)  # (k_act, b)
            if ragged:
                n_t = torch.tensor(counts, device=dev)
                valid = torch.arange(width, device=dev)[None] < n_t[:, None]  # (k_act, b)
                loss_k = (ce * valid).sum(1) / n_t
            else:
                valid, n_t = None, slot_width(width)
                loss_k = ce.mean(1)  # (k_act,)
            for p in params.values():
                p.grad = None
            loss_k.sum().backward()
            opt.clip_()
            opt.step(lr)
            step += 1
            with torch.no_grad():
                finite = torch.isfinite(loss_k)
                bad_step = torch.where((~finite) & (bad_step < 0), torch.full_like(bad_step, step), bad_step)
                hit = (logits.argmax(-1) == tgt) if valid is None else (logits.argmax(-1) == tgt) & valid
                acc["loss"].index_add_(0, slot_idx, loss_k.detach() * n_t)
                acc["correct"].index_add_(0, slot_idx, hit.float().sum(1))
                acc["n"].index_add_(0, slot_idx, n_t.long())
            bar.update(1)
            ended = [(j, i) for j, i in enumerate(slots) if step % spe[i] == 0]  # models at the end of an epoch
            if ended:
                last_good_ckpt_step = end_of_epochs(ended, lrs, last_good_ckpt_step)
            # checkpoints and interruptions come after the epoch-end work, so a resumed run never skips it
            ckpt_now = checkpoint_every_steps and step % checkpoint_every_steps == 0
            interrupt = stop_after_step is not None and step >= stop_after_step
            if sigint.received:  # Ctrl-C: save a resumable checkpoint between steps, then stop
                _check_finite(bad_step, slots, out_dirs, last_good_ckpt_step)
                for i in range(k):
                    save(i, True)
                bar.close()
                raise KeyboardInterrupt(
                    f"interrupted at step {step}" + (f"; resume with --resume from {[str(d) for d in out_dirs]}"
                                                     if out_dirs is not None else "")
                )
            if ckpt_now or interrupt:
                _check_finite(bad_step, slots, out_dirs, last_good_ckpt_step)
                for i in range(k):
                    save(i, True)
                last_good_ckpt_step = step
            if interrupt:
                bar.close()
                return _results(models, params, slots, snapshots, seeds, histories, step, spe, early, out_dirs, recs)
            compact()
        bar.close()
        for i in range(k):
            save(i, False)
        return _results(models, params, slots, snapshots, seeds, histories, step, spe, early, out_dirs, recs)


class _DeferredSigint:
    """While active (main thread only), Ctrl-C sets ``received`` instead of raising mid-step, so the
    loop can finish the step, save a consistent checkpoint and then raise KeyboardInterrupt."""

    def __init__(self, enabled: bool):
        import threading

        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received = False
        self._old = None

    def __enter__(self):
        if self.enabled:
            import signal

            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = True

    def __exit__(self, *exc):
        if self.enabled:
            import signal

            signal.signal(signal.SIGINT, self._old)
        return False


def ckpt_cfg(cfg) -> dict:
    from anchor_interp._tl import config_to_dict

    d = config_to_dict(cfg)
    d.pop("device", None)
    d.pop("seed", None)
    return d


def _check_finite(bad_step: Tensor, slots: list[int], out_dirs, last_good) -> None:
    """Raise TrainingDiverged for the first stacked model (``slots[j]`` = its index) whose loss was non-finite."""
    bad = bad_step.cpu()
    if bool((bad >= 0).any()):
        j = int((bad >= 0).nonzero()[0])
        i = slots[j]
        where = (f"the last good checkpoint (step {last_good}) is kept in {str(out_dirs[i])!r}"
                 if out_dirs is not None and last_good is not None else "no checkpoint was written")
        raise TrainingDiverged(
            f"model {i}: the training loss became non-finite at step {int(bad[j])}; {where}. "
            f"Lower the learning rate or enable grad_clip.",
            model_index=i, step=int(bad[j]), checkpoint=str(out_dirs[i]) if out_dirs is not None else None,
        )


def _results(models, params, slots, snapshots, seeds, histories, step, spe, early, out_dirs, recs):
    final = {n: t.detach() for n, t in params.items()}
    results = []
    for i, m in enumerate(models):
        p_i = snapshots[i]["params"] if i in snapshots else {n: t[slots.index(i)] for n, t in final.items()}
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(p_i[name].to(p.device))
        m.eval()
        s_i = snapshots[i]["step"] if i in snapshots else step
        results.append(TrainResult(
            model=m, seed=seeds[i], history=histories[i], step=s_i, epoch=s_i // spe[i],
            stopped_early=early[i], out_dir=str(out_dirs[i]) if out_dirs is not None else None,
            recipe=recs[i].to_dict(),
        ))
    return results


def _load_resume(out_dirs, task, recs, seeds, params, opt, histories, done, early, snapshots, acc, dev):
    from anchor_interp import checkpoint as ckpt

    steps, elapsed = set(), 0.0
    for i, d in enumerate(out_dirs):
        meta = ckpt.read_meta(d)
        if meta.get("resume") is None:
            raise ckpt.CheckpointError(
                f"checkpoint {str(d)!r} has no resume state (it is a finished or shipped model); "
                f"start a new run instead of --resume"
            )
        if meta["task"] != task.to_dict():
            raise ckpt.CheckpointError(
                f"checkpoint {str(d)!r} is from task {meta['task']!r}, not {task.to_dict()!r}; "
                f"resume with the same task, or start a new run in another folder"
            )
        try:  # through Recipe, so that fields added since the checkpoint was written get their defaults
            saved = get_recipe(meta.get("recipe") or {}).to_dict()
        except ValueError:
            saved = meta.get("recipe") or {}
        rec = recs[i]
        if saved != rec.to_dict():
            diff = sorted(k for k in rec.to_dict() if saved.get(k) != rec.to_dict()[k])
            raise ckpt.CheckpointError(f"checkpoint {str(d)!r} used another recipe (fields differ: {diff})")
        if meta.get("seed") != seeds[i]:
            raise ckpt.CheckpointError(f"checkpoint {str(d)!r} has seed {meta.get('seed')}, not {seeds[i]}")
        r = meta["resume"]
        tensors = ckpt.read_tensors(d, ckpt.MODEL_FILE, meta)
        opt_tensors = ckpt.read_tensors(d, ckpt.OPTIMIZER_FILE, meta)
        with torch.no_grad():
            for n, p in params.items():
                p[i].copy_(tensors[n].to(dev))
        opt.load_slice(i, {n: t.to(dev) for n, t in opt_tensors.items()})
        histories[i].extend(meta["history"])
        steps.add(r["global_step"])
        opt.step_count = r["optimizer_step"]
        elapsed = max(elapsed, r.get("elapsed_s", 0.0))
        acc["loss"][i] = r["epoch_loss_sum"]
        acc["correct"][i] = r["epoch_correct"]
        acc["n"][i] = r["epoch_n"]
        if r["done"]:
            done[i] = True
            early[i] = r.get("stopped_early", True)  # before schedule ends froze models, "done" meant early
            snapshots[i] = {"params": {n: t.to(dev) for n, t in tensors.items()},
                            "opt": {n: t.to(dev) for n, t in opt_tensors.items()},
                            "opt_step": r["frozen_optimizer_step"], "step": meta["step"], "epoch": meta["epoch"]}
    if len(steps) != 1:
        raise ckpt.CheckpointError(f"the checkpoints to resume are at different steps {sorted(steps)}")
    return steps.pop(), elapsed


def train(
    model,
    task,
    recipe: str | Recipe | dict = "fast",
    *,
    seed: int,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    preset: str | None = None,
    stop_after_step: int | None = None,
    checkpoint_every_steps: int = 0,
    **recipe_overrides,
) -> TrainResult:
    """Train one HookedTransformer in place (see :func:`train_many`, which this calls with k = 1)."""
    return train_many(
        [model], task, recipe, seeds=[seed], out_dirs=None if out_dir is None else [out_dir], resume=resume,
        device=device, progress=progress, preset=preset, stop_after_step=stop_after_step,
        checkpoint_every_steps=checkpoint_every_steps, **recipe_overrides,
    )[0]


# ----------------------------------------------------------------------------------------------
# history files


def write_history(history: list[dict], out_dir: str | os.PathLike) -> None:
    """Write ``history.csv``, ``history.json`` and ``history.png`` (loss and accuracy vs epoch) atomically."""
    from anchor_interp.checkpoint import atomic_write_bytes, atomic_write_text

    out = Path(out_dir)
    if not history:
        return
    cols = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(cols)] + [",".join(_fmt(row.get(c, "")) for c in cols) for row in history]
    atomic_write_text(out / "history.csv", "\n".join(lines) + "\n")
    atomic_write_text(out / "history.json", json.dumps(history, indent=0) + "\n")
    atomic_write_bytes(out / "history.png", plot_history_png(history))


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def read_history_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("",) else float("nan") for k, v in row.items()} for row in csv.DictReader(f)]


def _nan(v) -> float:
    return float("nan") if v is None else v


def plot_history_png(history: list[dict], title: str = "") -> bytes:
    """PNG bytes: train/test loss (log scale) and train/test accuracy versus epoch."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(ep, [r["train_loss"] for r in history], label="train")
    a1.plot(ep, [_nan(r["test_loss"]) for r in history], label="held-out")
    a1.set_yscale("log")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss (nats, last position)")
    a1.legend()
    a2.plot(ep, [r["train_acc"] for r in history], label="train")
    a2.plot(ep, [_nan(r["test_acc"]) for r in history], label="held-out (seen groups)")
    if any(r.get("test_acc_masked") is not None for r in history):
        a2.plot(ep, [_nan(r.get("test_acc_masked")) for r in history], label="held-out (masked groups)")
    a2.set_ylim(-0.02, 1.02)
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy")
    a2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

"""What each model sees: its seeds, its training set, its held-out set, its data order and its batches.

Every random stream is a function of the model's seed (:func:`derive_seed` with one of the stream ids
below), never of the other models in the stack or of the step the run resumed at, so a model trained in
a stack of k, alone, or in a resumed run sees the same sequences in the same order.

Masked task groups are never trained on: they are dropped from training sets and fresh batches, and
only evaluated (:mod:`anchor_interp.training.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = [
    "EPOCH_ORDER",
    "FRESH_STEP",
    "TEST_DATA",
    "TRAIN_DATA",
    "Batch",
    "derive_seed",
    "epoch_order",
    "fixed_batch",
    "fresh_batch",
    "held_out_sets",
    "sample_train",
    "training_sets",
]

# the random streams of one model, each derived from its seed
TRAIN_DATA, TEST_DATA, EPOCH_ORDER, FRESH_STEP = 1, 2, 3, 4

_MIX = 1_000_003


def derive_seed(seed: int, *parts: int) -> int:
    """A deterministic seed for a sub-stream (train data, test data, epoch order, fresh step)."""
    s = int(seed)
    for p in parts:
        s = (s * _MIX + int(p) + 0x9E37) % (2**62)
    return s


def sample_train(task, n: int, seed: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` training sequences of ``task`` minus those of masked groups: tokens (m, T), targets (m,),
    group (m,), with m <= n."""
    b = task.sample(n, split="train", seed=seed, device=device)
    trainable = [i for i, g in enumerate(task.groups) if not g.masked]
    keep = torch.isin(b.group, torch.tensor(trainable, device=b.group.device))
    if not bool(keep.all()):  # masked groups are evaluated, never trained on
        b = b.select(keep.nonzero().squeeze(1))
    return b.tokens, b.targets, b.group


def training_sets(
    task, sizes: list[int], seeds: list[int], device
) -> tuple[Int[Tensor, "k n_max seq"], Int[Tensor, "k n_max"], list[int]]:
    """Each model's fixed training set (``sizes[i]`` sequences drawn with ``seeds[i]``), zero-padded to
    the largest: tokens (k, N_max, T), targets (k, N_max), and each model's row count (masked groups
    removed, so possibly below its size)."""
    train = [sample_train(task, n, derive_seed(s, TRAIN_DATA), device) for n, s in zip(sizes, seeds, strict=True)]
    n_rows = [t[0].shape[0] for t in train]
    tokens = torch.zeros(len(train), max(n_rows), task.seq_len, dtype=torch.long, device=device)  # (k, N_max, T)
    targets = torch.zeros(len(train), max(n_rows), dtype=torch.long, device=device)  # (k, N_max); rows >= n_i unused
    for i, (tok_i, tgt_i, _) in enumerate(train):
        tokens[i, : n_rows[i]], targets[i, : n_rows[i]] = tok_i, tgt_i
    return tokens, targets, n_rows


def held_out_sets(
    task, n: int, seeds: list[int], device
) -> tuple[Int[Tensor, "k n seq"], Int[Tensor, "k n"], Int[Tensor, "k n"]]:
    """Each model's held-out set: ``n`` test-split sequences (every group, masked ones included) drawn
    with its seed: tokens (k, n, T), targets (k, n), group index (k, n)."""
    test = [task.sample(n, split="test", seed=derive_seed(s, TEST_DATA), device=device) for s in seeds]
    return (torch.stack([b.tokens for b in test]), torch.stack([b.targets for b in test]),
            torch.stack([b.group for b in test]))


def epoch_order(seed: int, epoch: int, n: int) -> Int[Tensor, " n"]:
    """The order in which a model with ``seed`` visits its ``n`` training rows in ``epoch`` (CPU)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, EPOCH_ORDER, epoch))
    return torch.randperm(n, generator=gen)


@dataclass
class Batch:
    """One training batch per stacked model. Model j's rows past ``counts[j]`` are padding (the last
    batch of an epoch may be shorter than the others'); the loss masks them out."""

    tokens: Tensor  # (k_act, b, T)
    targets: Tensor  # (k_act, b)
    counts: list[int]  # real rows per model

    @property
    def width(self) -> int:
        return max(self.counts)

    @property
    def ragged(self) -> bool:
        """Whether some model has padding rows."""
        return any(c != self.width for c in self.counts)


def fixed_batch(tokens: Tensor, targets: Tensor, order: Tensor, spans: list[tuple[int, int]]) -> Batch:
    """Rows ``order[j, lo:hi]`` of model j's training set, for ``(lo, hi) = spans[j]``.

    tokens (k_act, N_max, T), targets and order (k_act, N_max): the stacked training sets and the data
    order of each model's current epoch.
    """
    counts = [hi - lo for lo, hi in spans]
    width = max(counts)
    if len(set(spans)) == 1:  # every model at the same rows of its order
        idx = order[:, spans[0][0] : spans[0][1]]  # (k_act, b)
    else:
        lo_t = torch.tensor([lo for lo, _ in spans], device=order.device)
        cols = (lo_t[:, None] + torch.arange(width, device=order.device)[None]).clamp(max=order.shape[1] - 1)
        idx = torch.gather(order, 1, cols)  # (k_act, b); columns past a model's count are masked
    tok = torch.gather(tokens, 1, idx[:, :, None].expand(-1, -1, tokens.shape[2]))  # (k_act, b, T)
    tgt = torch.gather(targets, 1, idx)  # (k_act, b)
    return Batch(tok, tgt, counts)


def fresh_batch(task, seeds: list[int], spans: list[tuple[int, int]], step: int, device) -> Batch:
    """New training sequences for each model (``data="fresh"``): ``hi - lo`` of them for model j, drawn
    with its seed ``seeds[j]`` and the global ``step``."""
    fresh = [sample_train(task, hi - lo, derive_seed(s, FRESH_STEP, step), device)
             for s, (lo, hi) in zip(seeds, spans, strict=True)]
    counts = [f[0].shape[0] for f in fresh]
    tok = torch.zeros(len(fresh), max(counts), task.seq_len, dtype=torch.long, device=device)  # (k_act, b, T)
    tgt = torch.zeros(len(fresh), max(counts), dtype=torch.long, device=device)  # (k_act, b)
    for j, f in enumerate(fresh):
        tok[j, : counts[j]], tgt[j, : counts[j]] = f[0], f[1]
    return Batch(tok, tgt, counts)

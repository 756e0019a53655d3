"""reading_comprehension (this project's own format; the paper's public code has no generator).

Context (positions 0..seq_len-2) = fillers with two facts "3 x3" and "4 x4" at non-overlapping places;
the last input is the question anchor q in {3, 4}; the target is the key that follows q in the
context. Groups: "ask3", "ask4". anchor_pos/key_pos = the asked fact; extra: distractor_anchor_pos,
distractor_key_pos, query_pos.

anchor_position swaps the asked anchor with the token at another context position p' (the other fact
and the question stay); anchor_identity does not apply (a second 3 or 4 leaves two facts for one
question).
"""

from __future__ import annotations

import torch
from torch import Tensor

from anchor_interp.tasks.base import (
    FILLER_HIGH,
    FILLER_LOW,
    MODULUS,
    DataGroup,
    Task,
    TaskError,
    fillers,
    pick_valid,
    uniform_index,
)
from anchor_interp.tasks.batch import Batch

FACT_ANCHORS = (3, 4)


class ReadingComprehension(Task):
    """Two facts in the context, a question anchor at the end; see the module docstring."""

    definition = "project"
    description = "facts '3 x' and '4 y' in context, last input 3 or 4; target the key of that anchor"
    extra_fields = ("distractor_anchor_pos", "distractor_key_pos", "query_pos")

    def __init__(self, seq_len: int = 9):
        super().__init__("reading_comprehension", {"seq_len": seq_len})
        if seq_len < 5:
            raise TaskError(
                f"make_task('reading_comprehension', seq_len={seq_len}): seq_len is too short for two 2-token facts "
                f"and a question; use seq_len >= 5"
            )
        self.seq_len = seq_len
        self.anchor_ids = FACT_ANCHORS
        self.groups = (DataGroup("ask3", 1.0), DataGroup("ask4", 1.0))
        self.residue = 0
        # key x = b + s (s = start of the fact); test iff b % 8 == 0. Tables per split: (2, n_base) base values.
        base = torch.arange(FILLER_LOW, FILLER_HIGH + 1)
        self._base = [base[base % MODULUS != 0], base[base % MODULUS == 0]]
        self._n_fact_starts = seq_len - 2  # a fact occupies (s, s+1), s + 1 <= seq_len - 2

    def target_ids(self, split: str | None = None) -> tuple[int, ...]:
        bases = self._base if split is None else [self._base[split == "test"]]
        out = set()
        for b in bases:
            for s in range(self._n_fact_starts):
                out.update((b + s).tolist())
        return tuple(sorted(out))

    def _draw_key(self, split_idx: Tensor, s: Tensor, gen, exclude: Tensor | None = None) -> Tensor:
        """x = b + s with b from the row's split; never ``exclude``."""
        n = s.shape[0]
        out = torch.empty(n, dtype=torch.long)
        for k in (0, 1):
            rows = (split_idx == k).nonzero()[:, 0]
            if len(rows) == 0:
                continue
            b = self._base[k]
            if exclude is None:
                out[rows] = b[uniform_index(torch.full((len(rows),), len(b)), gen)] + s[rows]
            else:
                ex_b = exclude[rows] - s[rows]
                ex_idx = torch.searchsorted(b, ex_b)
                has = (ex_idx < len(b)) & (b[ex_idx.clamp(max=len(b) - 1)] == ex_b)
                idx = uniform_index(torch.full((len(rows),), len(b)) - has.long(), gen)
                idx = idx + (has & (idx >= ex_idx)).long()
                out[rows] = b[idx] + s[rows]
        return out

    def _sample(self, n: int, split: str, gen: torch.Generator, weights: Tensor) -> Batch:
        S = self.seq_len
        group = torch.multinomial(weights, n, replacement=True, generator=gen)  # 0: ask 3, 1: ask 4
        tokens = fillers((n, S), gen)
        # two non-overlapping 2-token facts in positions 0..S-2: pick u1 != u2 in [0, S-3), sort, shift the 2nd
        m = S - 3
        u1 = uniform_index(torch.full((n,), m), gen)
        u2 = uniform_index(torch.full((n,), m - 1), gen)
        u2 = u2 + (u2 >= u1).long()
        first, second = torch.minimum(u1, u2), torch.maximum(u1, u2) + 1
        three_first = torch.rand(n, generator=gen) < 0.5
        s3 = torch.where(three_first, first, second)
        s4 = torch.where(three_first, second, first)
        asked_s = torch.where(group == 0, s3, s4)
        other_s = torch.where(group == 0, s4, s3)
        sp = torch.full((n,), int(split == "test"), dtype=torch.long)
        x = self._draw_key(sp, asked_s, gen)
        y = self._draw_key(sp, other_s, gen, exclude=x)  # distinct keys, so the facts are distinguishable
        rows = torch.arange(n)
        asked_anchor = torch.tensor(FACT_ANCHORS)[group]
        other_anchor = torch.tensor(FACT_ANCHORS)[1 - group]
        tokens[rows, asked_s] = asked_anchor
        tokens[rows, asked_s + 1] = x
        tokens[rows, other_s] = other_anchor
        tokens[rows, other_s + 1] = y
        tokens[:, S - 1] = asked_anchor
        return Batch(
            tokens=tokens, targets=x, anchor_pos=asked_s, key_pos=asked_s + 1, group=group,
            extra={"distractor_anchor_pos": other_s, "distractor_key_pos": other_s + 1,
                   "query_pos": torch.full((n,), S - 1, dtype=torch.long)},
        )

    def _counterfactual(self, batch: Batch, kind: str, gen: torch.Generator) -> Batch:
        n = len(batch)
        rows = torch.arange(n)
        tokens = batch.tokens.clone()
        if kind == "anchor_remove":
            tokens[rows, batch.anchor_pos] = fillers((n,), gen)
            minus = torch.full((n,), -1, dtype=torch.long)
            extra = {k: minus for k in batch.extra}
            return Batch(tokens=tokens, targets=minus, anchor_pos=minus, key_pos=minus, group=batch.group, extra=extra)
        if kind == "key_swap":
            s = batch.anchor_pos
            x = tokens[rows, batch.key_pos]
            y = tokens[rows, batch.extra["distractor_key_pos"]]
            sp = ((x - s) % MODULUS == self.residue).long()
            new = self._draw_key(sp, s, gen, exclude=x)
            clash = new == y  # keep the two facts distinguishable: redraw rows that hit the distractor key
            for _ in range(64):
                if not bool(clash.any()):
                    break
                idx = clash.nonzero()[:, 0]
                new[idx] = self._draw_key(sp[idx], s[idx], gen, exclude=x[idx])
                clash = new == y
            if bool(clash.any()):
                raise TaskError("counterfactual(kind='key_swap'): could not draw a key distinct from both facts")
            tokens[rows, batch.key_pos] = new
            return batch.replace(tokens=tokens, targets=new)
        # anchor_move: swap the two context anchors, so the asked anchor now precedes the other key
        a, d = batch.anchor_pos, batch.extra["distractor_anchor_pos"]
        ta, td = tokens[rows, a].clone(), tokens[rows, d].clone()
        tokens[rows, a], tokens[rows, d] = td, ta
        extra = dict(batch.extra)
        extra["distractor_anchor_pos"], extra["distractor_key_pos"] = batch.anchor_pos, batch.key_pos
        return Batch(tokens=tokens, targets=tokens[rows, d + 1], anchor_pos=d, key_pos=d + 1, group=batch.group,
                     extra=extra)

    # ------------------------------------------------------------------ single-factor counterfactuals

    def _kind_unavailable(self, kind: str) -> str | None:
        if kind in ("anchor_identity", "anchor_identity_2"):
            return ("the context holds one fact per anchor id (3 and 4); replacing the asked anchor by the other "
                    "id leaves two facts with the same anchor and no single answer")
        if kind == "anchor_position":
            return None
        return super()._kind_unavailable(kind)

    def _counterfactual_kept(self, batch: Batch, kind: str, gen: torch.Generator) -> tuple[Batch, Tensor]:
        """anchor_position: swap the asked anchor (at p) with the token at p' in 0..seq_len-3. Valid p': the
        new fact (p', p'+1) does not touch the other fact, p'+1 != p (the new key is the token already at
        p'+1), and that token x' = b + p' has b in [20, 99] of the row's held-out class, x' != x, x' != y."""
        n, S = len(batch), self.seq_len
        rows = torch.arange(n)
        tokens = batch.tokens  # (n, S)
        p, d = batch.anchor_pos, batch.extra["distractor_anchor_pos"]  # (n,), (n,)
        x = tokens[rows, batch.key_pos]  # (n,) the asked key
        y = tokens[rows, batch.extra["distractor_key_pos"]]  # (n,) the other fact's key
        test = (x - p) % MODULUS == self.residue  # (n,)
        cand = torch.arange(S - 2)  # (C,) fact starts inside the context
        new_key = tokens[:, 1:S - 1]  # (n, C): the token at p'+1 (untouched when p'+1 != p)
        b = new_key - cand[None, :]  # (n, C)
        valid = ((cand[None, :] != p[:, None]) & (cand[None, :] + 1 != p[:, None])
                 & ((cand[None, :] - d[:, None]).abs() > 1)
                 & (b >= FILLER_LOW) & (b <= FILLER_HIGH) & ((b % MODULUS == self.residue) == test[:, None])
                 & (new_key != x[:, None]) & (new_key != y[:, None]))  # (n, C)
        kept, q = pick_valid(valid, gen)  # (n,), (n,)
        idx = kept.nonzero()[:, 0]  # (k,)
        q, p_old = q[idx], p[idx]  # (k,)
        k = torch.arange(len(idx))
        toks = tokens[idx].clone()  # (k, S)
        toks[k, p_old], toks[k, q] = tokens[idx, q], tokens[idx, p_old]
        extra = {f: v[idx] for f, v in batch.extra.items()}
        return Batch(tokens=toks, targets=toks[k, q + 1], anchor_pos=q, key_pos=q + 1, group=batch.group[idx],
                     extra=extra), idx

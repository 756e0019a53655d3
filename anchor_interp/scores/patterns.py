"""Attention-pattern scores: how much each head looks like a shift, a broadcast, a sink, self or uniform.

Every score is in [0, 1] and is measured *above chance*. The unit is the **lift** of one attention
weight ``a`` in a row that can see ``n`` positions (``n = r + 1`` in a causal model, ``n = seq`` in a
bidirectional one)::

    lift(a) = (a - 1/n) / (1 - 1/n)        # in [-1/(n-1), 1]

0 = what a uniform row puts there, 1 = all of the row's attention. Lifts are averaged first (over the
rows and examples a score covers) and the average is clipped to [0, 1] last, so that noise around
uniform averages out instead of adding up. A key row putting 0.32 on the anchor where uniform gives
0.2 (n = 5) has lift 0.15: soft, but above chance. Rows that see a single position (row 0 of a
causal model) have no choice and are left out of every score.

Scores (each a mean over the batch; ``m = ceil((seq - 1) / 2)`` is the *row floor*, see below):

- ``shift``: best over offsets ``k != 0`` of the **off-diagonal** lift at ``(r, r + k)``, averaged over
  the rows that can reach ``r + k``, each row weighted by the mass it moves, ``1 - a[r, r]``. Off-diagonal:
  the row is renormalised without its diagonal and compared with ``1/(n - 1)``, so a head that keeps
  half its attention on itself and puts the rest on the previous token is a shift (trained causal
  models do this: self 0.6-0.8 plus the previous token); rows with fewer than two other positions are
  left out. Only offsets that at least ``m`` rows can reach are scored, so that a row or two cannot
  make an offset (the sink at position 0 is offset ``-8`` for row 8 alone). ``shift_offset`` is that
  best ``k`` (``-1`` = previous token; ``k > 0`` only in bidirectional models).
- ``column(s)``: summed lift that the *other* rows put on column ``s``, divided by
  ``max(rows that can see s, m)``: one row alone gives at most ``1/m``; a broadcast is one-to-many.
- ``sink``: best over fixed positions ``s`` of the batch mean of ``column(s)`` (``sink_pos`` is that s).
- ``broadcast``: mean over examples of that example's best ``column`` minus the batch mean of the
  sink column, clipped to [0, 1]: the column mass that moves with the content. A head attending to a
  marker token at a random position scores ``~1 - 1/(number of marker positions)``; a sink scores 0.
- ``self``: mean lift on the diagonal.
- ``uniform``: mean over rows of the row's entropy divided by ``log(n)``: 1 = exactly uniform.

With a task's batch (:func:`task_pattern_scores`), the same units on the rows and columns the task
makes meaningful: ``key_row_to_anchor`` and ``anchor_row_to_key`` (off-diagonal lifts, as ``shift``),
``last_row_to_key``, ``last_row_to_anchor``, ``key_column``, ``anchor_column`` (lifts, as columns),
``last_row_to_pair`` (the last row's mass on the anchor and key slots together, vs ``2/n``; rows where
either slot is the last position are left out), and their summaries ``task_shift`` (best of the two
shift directions) and ``task_broadcast`` (best of the two columns and the three last-row scores: the
tasks score the last position only, so a head whose last row reads the key, or the anchor slot that
holds it after a shift, is doing the broadcast's one essential move).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_interp.models.validate import check_tokens
from anchor_interp.names import layer_hook_names
from anchor_interp.scores.cache import cached_activations

__all__ = [
    "TASK_SCORE_NAMES",
    "PatternScores",
    "add_sums",
    "anchor_aligned_sums",
    "attention_patterns",
    "is_causal",
    "normalised_mass",
    "pattern_scores",
    "pattern_sums",
    "scores_from_sums",
    "task_pattern_scores",
    "task_pattern_sums",
    "task_scores_from_sums",
    "visible_mask",
]


def is_causal(model) -> bool:
    """True if the model's attention is causal (``cfg.attention_dir == "causal"``)."""
    return getattr(model.cfg, "attention_dir", "causal") != "bidirectional"


def attention_patterns(
    model, tokens: Int[Tensor, "batch seq"], cache=None
) -> Float[Tensor, "batch layer head dest_pos src_pos"]:
    """Run ``model`` on ``tokens`` and stack every ``blocks.L.attn.hook_pattern``.

    ``cache``: the activations of a run of ``tokens`` that already happened
    (:func:`anchor_interp.scores.cache.clean_run`, or any ``run_with_cache`` result or dict holding the
    patterns): read instead of running the model again; same numbers.
    Raises ValueError if ``tokens`` is not a 2-D integer tensor of ids in ``[0, d_vocab)`` and length
    at most ``n_ctx``, or if ``cache`` lacks a pattern of this batch.
    """
    check_tokens(model, tokens)
    names = layer_hook_names("pattern", model.cfg.n_layers)
    if cache is None:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    acts = cached_activations(cache, names, tokens)
    return torch.stack([acts[name] for name in names], dim=1)  # (B, L, H, T, T)


def visible_mask(seq: int, causal: bool, device=None) -> torch.Tensor:
    """Bool [dest_pos, src_pos]: which source positions each row can see."""
    if causal:
        return torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
    return torch.ones(seq, seq, dtype=torch.bool, device=device)


def off_diagonal_lift(
    patterns: Float[Tensor, "... dest_pos src_pos"], causal: bool
) -> tuple[Float[Tensor, "... dest_pos src_pos"], Float[Tensor, "... dest_pos"]]:
    """(lift of each weight within its row's off-diagonal mass, vs ``1/(n - 1)``; the row's moved mass
    ``1 - a[r, r]``). Lifts are 0 on the diagonal, on masked cells and in rows with < 2 other positions."""
    seq = patterns.shape[-1]
    vis = visible_mask(seq, causal, patterns.device)
    eye = torch.eye(seq, dtype=torch.bool, device=patterns.device)
    n_other = (vis & ~eye).sum(-1).to(patterns.dtype)  # (T,)
    moved = 1.0 - torch.diagonal(patterns, dim1=-2, dim2=-1)  # (..., T)
    off = patterns.masked_fill(eye, 0.0) / moved.clamp_min(1e-12)[..., None]
    chance = (1.0 / n_other.clamp_min(1.0))[:, None]
    lift = (off - chance) / (1.0 - chance).clamp_min(1e-12)
    ok = vis & ~eye & (n_other >= 2)[:, None]
    return lift * ok.to(patterns.dtype), moved


def row_floor(seq: int) -> int:
    """The row floor ``m = ceil((seq - 1) / 2)``: the fewest rows a scored offset or column divides by."""
    return max(1, math.ceil((seq - 1) / 2))


def normalised_mass(patterns: Float[Tensor, "... dest_pos src_pos"], causal: bool) -> Float[Tensor, "... dest_pos src_pos"]:
    """The lift ``(a - 1/n) / (1 - 1/n)`` of each weight; 0 where the row sees < 2 positions or s is masked."""
    seq = patterns.shape[-1]
    vis = visible_mask(seq, causal, patterns.device)  # (T, T)
    n_vis = vis.sum(-1).to(patterns.dtype)  # (T,)
    chance = (1.0 / n_vis)[:, None]  # (T, 1)
    ok_row = (n_vis >= 2)[:, None]  # (T, 1)
    denom = (1.0 - chance).clamp_min(1e-12)
    norm = (patterns - chance) / denom
    return norm * (vis & ok_row).to(patterns.dtype)


@dataclass
class PatternScores:
    """Per-head pattern scores, each a ``[layer, head]`` tensor (see the module docstring for meanings).

    ``shift_by_offset`` is ``[layer, head, offset]`` over ``offsets``; ``column`` (None when streamed) is the per-example
    column score ``[batch, layer, head, src_pos]`` (unclipped lifts).
    """

    shift: Tensor
    shift_offset: Tensor
    shift_by_offset: Tensor
    offsets: tuple[int, ...]
    broadcast: Tensor
    sink: Tensor
    sink_pos: Tensor
    self_attn: Tensor
    uniform: Tensor
    column: Tensor | None = field(repr=False)  # None when scored from sums over several batches

    def head(self, layer: int, head: int) -> dict[str, float]:
        """The scalar scores of one head (JSON-friendly)."""
        return {
            "shift": float(self.shift[layer, head]),
            "broadcast": float(self.broadcast[layer, head]),
            "sink": float(self.sink[layer, head]),
            "self": float(self.self_attn[layer, head]),
            "uniform": float(self.uniform[layer, head]),
        }


def pattern_scores(
    patterns: Float[Tensor, "batch layer head dest_pos src_pos"], causal: bool = True
) -> PatternScores:
    """Score every head's attention patterns (no task needed); see the module docstring.

    Raises ValueError if ``patterns`` is not 5-D with square, non-empty ``[dest_pos, src_pos]`` axes.
    """
    sums = pattern_sums(patterns, causal)
    return scores_from_sums(sums, causal, column=sums.pop("_column"))


def pattern_sums(patterns: Float[Tensor, "batch layer head dest_pos src_pos"], causal: bool = True) -> dict[str, Tensor]:
    """The statistics :func:`pattern_scores` reads, summed over the batch: add the dicts of two batches
    (:func:`add_sums`) and :func:`scores_from_sums` gives the scores of both together (streaming over
    row chunks). Raises ValueError as :func:`pattern_scores`."""
    if patterns.dim() != 5 or patterns.shape[-1] != patterns.shape[-2] or patterns.shape[-1] < 2:
        raise ValueError(
            "patterns: expected shape [batch, layer, head, dest_pos, src_pos] with dest_pos == src_pos >= 2, "
            f"got {tuple(patterns.shape)}"
        )
    patterns = patterns.float()
    n, seq = patterns.shape[0], patterns.shape[-1]
    vis = visible_mask(seq, causal, patterns.device)
    ok_row = vis.sum(-1) >= 2  # (T,)
    norm = normalised_mass(patterns, causal)  # (B, L, H, T, T)

    # shift(k): off-diagonal lift at (r, r + k), mean over reachable rows weighted by the moved mass
    off_lift, moved = off_diagonal_lift(patterns, causal)  # (B, L, H, T, T), (B, L, H, T)
    num, den = [], []
    for k, rows in _shift_rows(seq, causal, patterns.device):
        vals = off_lift[..., rows, rows + k]  # (B, L, H, R)
        w = moved[..., rows]  # (B, L, H, R)
        num.append((vals * w).sum(dim=(0, -1)))  # (L, H)
        den.append(w.sum(dim=(0, -1)))
    zeros = torch.zeros(patterns.shape[1:3], device=patterns.device)
    out = {"rows": torch.tensor(float(n)),
           "shift_num": torch.stack(num, -1) if num else zeros[..., None],  # (L, H, K)
           "shift_den": torch.stack(den, -1) if den else zeros[..., None]}

    # columns: other rows' mass on s / max(rows that see s, m)
    col_rows, col_div = _column_rows(seq, causal, patterns.device)
    column = (norm * col_rows.to(patterns.dtype)).sum(-2) / col_div  # (B, L, H, T)
    out["column"] = column.sum(0)  # (L, H, T)
    out["best_column"] = column.max(-1).values.sum(0)  # (L, H)
    out["self"] = torch.diagonal(norm, dim1=-2, dim2=-1)[..., ok_row].sum(dim=(0, -1))  # (L, H)

    n_vis = vis.sum(-1).to(patterns.dtype)
    p = patterns.clamp_min(1e-12)
    entropy = -(patterns * p.log() * vis.to(patterns.dtype)).sum(-1)  # (B, L, H, T)
    out["uniform"] = (entropy[..., ok_row] / n_vis[ok_row].log()).sum(dim=(0, -1))  # (L, H)
    out["_column"] = column
    return out


def add_sums(a: dict[str, Tensor] | None, b: dict[str, Tensor]) -> dict[str, Tensor]:
    """The sums of two batches (:func:`pattern_sums` or :func:`task_pattern_sums`); ``a`` None: ``b``.
    Per-row entries (``delta``) are concatenated; keys starting with ``_`` are dropped."""
    b = {k: v for k, v in b.items() if not k.startswith("_")}
    if a is None:
        return b
    return {k: torch.cat([a[k], v]) if k == "delta" else a[k] + v for k, v in b.items()}


def _shift_rows(seq: int, causal: bool, device) -> list[tuple[int, Tensor]]:
    """(offset k, the rows scored at k) for every scored shift offset (at least ``row_floor`` rows)."""
    vis = visible_mask(seq, causal, device)
    eye = torch.eye(seq, dtype=torch.bool, device=device)
    ok_off = (vis & ~eye).sum(-1) >= 2  # (T,)
    out = []
    for k in range(-(seq - 1), seq):
        if k == 0:
            continue
        rows = torch.arange(max(0, -k), min(seq, seq - k), device=device)
        rows = rows[ok_off[rows] & vis[rows, rows + k]]
        if len(rows) >= row_floor(seq):
            out.append((k, rows))
    return out


def _column_rows(seq: int, causal: bool, device) -> tuple[Tensor, Tensor]:
    """(the rows each column score sums over (T dest, T src), its divisor max(rows, m) (T,))."""
    vis = visible_mask(seq, causal, device)
    ok_row = vis.sum(-1) >= 2
    col_rows = vis & ok_row[:, None] & ~torch.eye(seq, dtype=torch.bool, device=device)  # (T dest, T src)
    return col_rows, col_rows.sum(0).clamp_min(row_floor(seq)).float()


def scores_from_sums(sums: dict[str, Tensor], causal: bool, column: Tensor | None = None) -> PatternScores:
    """:class:`PatternScores` from :func:`pattern_sums` (added over any number of batches); ``column``:
    the per-example column scores when one batch was scored (else None)."""
    n = sums["rows"]
    seq = sums["column"].shape[-1]
    shifts = _shift_rows(seq, causal, sums["column"].device)
    offsets = [k for k, _ in shifts] or [-1]  # too short for any row to choose between two other positions
    shift_by_offset = sums["shift_num"] / sums["shift_den"].clamp_min(1e-12)  # (L, H, K)
    best = shift_by_offset.argmax(-1)
    shift = shift_by_offset.gather(-1, best[..., None])[..., 0].clamp(0.0, 1.0)
    shift_offset = torch.tensor(offsets, device=shift.device)[best]
    mean_column = sums["column"] / n  # (L, H, T)
    sink, sink_pos = mean_column.max(-1)
    broadcast = (sums["best_column"] / n - mean_column.max(-1).values).clamp(0.0, 1.0)
    ok_rows = int((visible_mask(seq, causal).sum(-1) >= 2).sum())
    return PatternScores(
        shift=shift,
        shift_offset=shift_offset,
        shift_by_offset=shift_by_offset,
        offsets=tuple(offsets),
        broadcast=broadcast,
        sink=sink.clamp(0.0, 1.0),
        sink_pos=sink_pos,
        self_attn=(sums["self"] / (n * ok_rows)).clamp(0.0, 1.0),
        uniform=(sums["uniform"] / (n * ok_rows)).clamp(0.0, 1.0),
        column=column,
    )


def task_pattern_scores(
    patterns: Float[Tensor, "batch layer head dest_pos src_pos"],
    anchor_pos: Int[Tensor, " batch"],
    key_pos: Int[Tensor, " batch"],
    causal: bool = True,
) -> dict[str, Tensor]:
    """Scores on the task's meaningful rows and columns, each ``[layer, head]`` in [0, 1].

    Rows with ``anchor_pos`` or ``key_pos`` equal to -1 (not applicable) are left out; a score with no
    usable row is 0. Returns ``key_row_to_anchor``, ``anchor_row_to_key``, ``last_row_to_key``,
    ``last_row_to_anchor``, ``last_row_to_pair``, ``key_column``, ``anchor_column``, ``task_shift``,
    ``task_broadcast`` and
    ``task_shift_offset`` (the offset of the better shift direction, as a float tensor of ints).
    Raises ValueError on shape mismatches.
    """
    return task_scores_from_sums(task_pattern_sums(patterns, anchor_pos, key_pos, causal))


TASK_SCORE_NAMES = ("key_row_to_anchor", "anchor_row_to_key", "last_row_to_key", "last_row_to_anchor",
                    "last_row_to_pair", "key_column", "anchor_column")


def task_pattern_sums(
    patterns: Float[Tensor, "batch layer head dest_pos src_pos"],
    anchor_pos: Int[Tensor, " batch"],
    key_pos: Int[Tensor, " batch"],
    causal: bool = True,
) -> dict[str, Tensor]:
    """What :func:`task_pattern_scores` reads, summed over the batch (each score's weighted sum and weight,
    ``<name>_num`` / ``<name>_den``, and ``delta``: the usable rows' ``anchor_pos - key_pos``); add two
    batches' dicts with :func:`add_sums` and score them with :func:`task_scores_from_sums`."""
    if patterns.dim() != 5:
        raise ValueError(f"patterns: expected [batch, layer, head, dest_pos, src_pos], got {tuple(patterns.shape)}")
    n, n_layers, n_heads, seq, _ = patterns.shape
    if anchor_pos.shape != (n,) or key_pos.shape != (n,):
        raise ValueError(
            f"anchor_pos/key_pos: expected shape [{n}] (one per batch row), got {tuple(anchor_pos.shape)} and "
            f"{tuple(key_pos.shape)}"
        )
    patterns = patterns.float()
    norm = normalised_mass(patterns, causal)  # (B, L, H, T, T)
    vis = visible_mask(seq, causal, patterns.device)
    m = row_floor(seq)
    valid = (anchor_pos >= 0) & (key_pos >= 0) & (anchor_pos < seq) & (key_pos < seq) & (anchor_pos != key_pos)
    a = anchor_pos.clamp(0, seq - 1)
    k = key_pos.clamp(0, seq - 1)
    b = torch.arange(n, device=patterns.device)
    last = torch.full_like(a, seq - 1)

    off_lift, moved = off_diagonal_lift(patterns, causal)  # (B, L, H, T, T), (B, L, H, T)
    eye = torch.eye(seq, dtype=torch.bool, device=patterns.device)
    n_other = (vis & ~eye).sum(-1)
    out: dict[str, Tensor] = {}

    def add(name, vals, weights):  # vals, weights: (B, L, H) -> the weighted sum and the weight
        out[f"{name}_num"] = (vals * weights).sum(0)
        out[f"{name}_den"] = weights.sum(0)

    for name, rows, cols in (("key_row_to_anchor", k, a), ("anchor_row_to_key", a, k)):
        usable = (valid & vis[rows, cols] & (n_other[rows] >= 2)).to(patterns.dtype)[:, None, None]
        vals = off_lift[b, :, :, rows, cols]  # (B, L, H)
        add(name, vals, moved[b, :, :, rows] * usable)
    for name, rows, cols in (("last_row_to_key", last, k), ("last_row_to_anchor", last, a)):
        usable = (valid & vis[rows, cols] & (vis[rows].sum(-1) >= 2) & (rows != cols)).to(patterns.dtype)
        vals = norm[b, :, :, rows, cols]
        add(name, vals, usable[:, None, None].expand_as(vals))

    # the last row's mass on the anchor and key slots together, vs 2/n: a head that reads the key directly
    # for some anchor positions and the anchor slot (holding the key) for others still scores
    n_last = vis[seq - 1].sum().to(patterns.dtype)
    pair = patterns[b, :, :, last, k] + patterns[b, :, :, last, a]  # (B, L, H)
    pair_ok = valid & vis[last, k] & vis[last, a] & (k != last) & (a != last) & (n_last > 2)
    chance2 = 2.0 / n_last
    pair_lift = (pair - chance2) / (1.0 - chance2).clamp_min(1e-12)
    add("last_row_to_pair", pair_lift, pair_ok.to(patterns.dtype)[:, None, None].expand_as(pair_lift))

    col_rows = vis & (vis.sum(-1) >= 2)[:, None] & ~torch.eye(seq, dtype=torch.bool, device=patterns.device)
    col_div = col_rows.sum(0).clamp_min(m).to(patterns.dtype)
    column = (norm * col_rows.to(patterns.dtype)).sum(-2) / col_div  # (B, L, H, T)
    for name, cols in (("key_column", k), ("anchor_column", a)):
        vals = column[b, :, :, cols]  # (B, L, H)
        usable = (valid & (col_rows[:, cols].sum(0) > 0)).to(patterns.dtype)
        add(name, vals, usable[:, None, None].expand_as(vals))
    out["delta"] = (anchor_pos - key_pos)[valid]  # (usable rows,)
    return out


def task_scores_from_sums(sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """:func:`task_pattern_scores` from :func:`task_pattern_sums` (added over any number of batches)."""
    out = {name: (sums[f"{name}_num"] / sums[f"{name}_den"].clamp_min(1e-12)).clamp(0.0, 1.0)
           for name in TASK_SCORE_NAMES}
    key_first = out["key_row_to_anchor"] >= out["anchor_row_to_key"]
    out["task_shift"] = torch.maximum(out["key_row_to_anchor"], out["anchor_row_to_key"])
    delta = sums["delta"]
    mode = int(delta.mode().values) if len(delta) else 0
    out["task_shift_offset"] = torch.where(
        key_first, torch.full_like(out["task_shift"], float(mode)), torch.full_like(out["task_shift"], float(-mode))
    )
    out["task_broadcast"] = torch.stack(
        [out["key_column"], out["anchor_column"], out["last_row_to_key"], out["last_row_to_anchor"],
         out["last_row_to_pair"]]
    ).max(0).values
    return out


def anchor_aligned_sums(
    patterns: Float[Tensor, "batch layer head dest_pos src_pos"], anchor_pos: Int[Tensor, " batch"]
) -> tuple[Float[Tensor, "layer head q_off k_off"], Int[Tensor, "q_off k_off"]]:
    """Attention summed over rows with positions re-indexed relative to each row's anchor, and the row counts.

    Row ``b`` with its anchor at ``a`` adds ``patterns[b, l, h, d, s]`` into cell
    ``[l, h, d - a + (T - 1), s - a + (T - 1)]``: both axes are offsets from the anchor, from ``-(T - 1)``
    (index 0) to ``T - 1`` (index ``2T - 2``). ``counts[q, k]`` is the number of rows that reach that cell
    (the same for every head), so ``sums / counts`` is the anchor-aligned mean attention: a shift shows as
    one bright off-diagonal, a broadcast of the slot at anchor + j as one column at ``k_off = j``.
    Rows whose anchor is -1 (no anchor) are left out. Add the sums and counts of several chunks of rows
    to get the mean over all of them.

    Raises ValueError if ``patterns`` is not 5-D with square position axes or ``anchor_pos`` does not
    have one entry per row.
    """
    if patterns.ndim != 5 or patterns.shape[-1] != patterns.shape[-2]:
        raise ValueError(f"anchor_aligned_sums: patterns must be (batch, layer, head, T, T), got {tuple(patterns.shape)}")
    if anchor_pos.shape != patterns.shape[:1]:
        raise ValueError(f"anchor_aligned_sums: anchor_pos has shape {tuple(anchor_pos.shape)}, "
                         f"expected ({patterns.shape[0]},)")
    _, L, H, T, _ = patterns.shape
    sums = torch.zeros(L, H, 2 * T - 1, 2 * T - 1, dtype=torch.float64)
    counts = torch.zeros(2 * T - 1, 2 * T - 1, dtype=torch.int64)
    anchors = anchor_pos.detach().cpu()
    for a in sorted(set(anchors.tolist())):
        if not 0 <= a < T:
            continue
        rows = (anchors == a).nonzero().squeeze(-1)  # (n_a,)
        lo = T - 1 - a  # index of offset -a, i.e. position 0
        sums[:, :, lo:lo + T, lo:lo + T] += patterns[rows.to(patterns.device)].detach().double().sum(0).cpu()  # (L, H, T, T)
        counts[lo:lo + T, lo:lo + T] += len(rows)
    return sums, counts

"""HookedTransformers with hand-set weights whose heads are known: ground truth for the head labeller.

:func:`make_head_zoo_model` builds a 1-layer attention-only model (no LayerNorm) with one head per
entry of a head list; by default (:data:`DEFAULT_HEADS`):

=====  ==============  ===============================================================  =====================
head   name            pattern (every row)                                              expected label
=====  ==============  ===============================================================  =====================
L0H0   ``prev``        the previous token (offset -1)                                   shift, offset -1
L0H1   ``offset2``     two tokens back (offset -2)                                      shift, offset -2
L0H2   ``broadcast``   the marker token, wherever it is (rows before it: uniform)       broadcast
L0H3   ``sink``        position 0                                                       neither / sink
L0H4   ``self``        its own position                                                 neither / self
L0H5   ``uniform``     uniform over the visible positions                               neither / uniform
L0H6   ``decoy``       the previous token, but ``W_O = 0``: moves nothing               neither / inert
=====  ==============  ===============================================================  =====================

Residual layout (``d_model = 2 * d_vocab + n_ctx``): token one-hot ``[0, V)``, position one-hot
``[V, V + T)``, a copy space ``[V + T, 2V + T)``. Every head except the decoy copies the attended token
into the copy space (``W_V`` reads the token one-hot, ``W_O`` writes it to the copy space) and
``W_U`` reads the copy space with gain ``logit_gain``: the output is a mixture of the attended tokens,
so removing any copying head changes it. Queries and keys read the position or token one-hots with
gain ``attn_gain`` (in units of the attention logit after TransformerLens' ``1/sqrt(d_head)``).
Bidirectional models may use positive offsets (``("next", +1)``).

:func:`make_identity_circuit_model` builds, for an identity-type task (anchor, key right after it,
target = key), a 2-layer causal model that solves the task with the paper's causal mechanism and
three distractors (expected labels in :data:`CIRCUIT_EXPECTED`):

=====  ===========================================================================  ==================
head   what it does                                                                 expected label
=====  ===========================================================================  ==================
L0H0   previous-token head; its OV writes a "the token before me was an anchor"     shift, offset -1
       flag into the key's position
L0H1   previous-token pattern, ``W_O = 0`` (decoy)                                  neither / inert
L0H2   attends to itself; writes into a direction nothing reads                     neither / self
L1H0   every row reads the flagged position (the key) and copies the token there    broadcast
       into the copy space that ``W_U`` reads
L1H1   uniform; writes into a direction nothing reads                               neither / uniform
L1H2   attends to position 0; ``W_O = 0``                                           neither / sink
=====  ===========================================================================  ==================

Anchor tokens also carry -1 on the flag direction, so that an anchor at position 0 (whose row can only
see itself) does not flag itself, and the model is exact (held-out accuracy 1.0).

The **hard cases** (issue 12) are task-based builders in the same spirit, each with its own table and
expected labels (tests/labels/test_planted_cases.py):

- :func:`make_key_copy_decoy_model` (:data:`KEY_COPY_EXPECTED`): a key-copy head whose value layer 1 reads
  through its values, next to the flag shift head: ``neither`` / ``copy``;
- :func:`make_two_offset_shift_model` (:func:`two_offset_expected`, :data:`TWO_OFFSET_EXPECTED`): composition,
  one layer-0 head reads both anchors (offsets -1 and -2) into the key row: ``shift`` with both offsets passing;
- :func:`make_bidirectional_tie_model` (:data:`TIE_EXPECTED`): bidirectional, anchor row -> key and key row ->
  anchor with near-equal attention, only +1 used: ``shift(+1)``;
- :func:`make_soft_shift_model` (:data:`SOFT_SHIFT_EXPECTED`): a shift head with 0.3 on the anchor whose flag
  layer 1's keys read (``shift(-1)``) next to a crisp previous-token head whose output nothing reads
  (``neither`` / ``inert``).

:func:`sample_tokens` draws the inputs these heads are meant for: fillers in ``[4, V)`` and exactly
one marker token (one of ``MARKERS`` = 1, 2, 3, at random) per row, at a random position in
``[0, n_ctx - 3]``. The broadcast head attends to whichever marker is there and copies it, so what it
moves depends on the input (a head that always moved the same token would be inert under mean ablation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = [
    "CIRCUIT_EXPECTED",
    "CIRCUIT_SPLIT_EXPECTED",
    "DEFAULT_HEADS",
    "KEY_COPY_EXPECTED",
    "SOFT_SHIFT_EXPECTED",
    "TIE_EXPECTED",
    "TWO_OFFSET_EXPECTED",
    "TWO_OFFSET_PAIRS",
    "GroundTruthHead",
    "MARKERS",
    "expected_labels",
    "make_bidirectional_tie_model",
    "make_head_zoo_model",
    "make_identity_circuit_model",
    "make_key_copy_decoy_model",
    "make_soft_shift_model",
    "make_two_offset_shift_model",
    "sample_tokens",
    "two_offset_expected",
]

MARKERS = (1, 2, 3)
FIRST_FILLER = len(MARKERS) + 1
KINDS = ("shift", "broadcast", "sink", "self", "uniform", "decoy")


@dataclass(frozen=True)
class GroundTruthHead:
    """One hand-set head: ``kind`` in KINDS; ``offset`` for ``shift`` and ``decoy`` (relative position)."""

    name: str
    kind: str
    offset: int | None = None

    def expected(self) -> tuple[str, int | None, str | None]:
        """(label, offset, kind) that :func:`anchor_interp.labels.label_heads` should give this head."""
        if self.kind == "shift":
            return "shift", self.offset, None
        if self.kind == "broadcast":
            return "broadcast", None, None
        if self.kind == "decoy":
            return "neither", None, "inert"
        return "neither", None, self.kind


DEFAULT_HEADS: tuple[GroundTruthHead, ...] = (
    GroundTruthHead("prev", "shift", -1),
    GroundTruthHead("offset2", "shift", -2),
    GroundTruthHead("broadcast", "broadcast"),
    GroundTruthHead("sink", "sink"),
    GroundTruthHead("self", "self"),
    GroundTruthHead("uniform", "uniform"),
    GroundTruthHead("decoy", "decoy", -1),
)


def expected_labels(heads: tuple[GroundTruthHead, ...] = DEFAULT_HEADS) -> list[tuple[str, int | None, str | None]]:
    """The expected (label, offset, kind) of each head of a :func:`make_head_zoo_model` model, in order."""
    return [h.expected() for h in heads]


def make_head_zoo_model(
    heads: tuple[GroundTruthHead, ...] = DEFAULT_HEADS,
    *,
    d_vocab: int = 32,
    n_ctx: int = 10,
    attention_dir: str = "causal",
    attn_gain: float = 12.0,
    logit_gain: float = 4.0,
    device: str = "cpu",
):
    """A 1-layer attention-only HookedTransformer whose head ``i`` implements ``heads[i]``.

    Raises ValueError for an unknown head kind, an offset the attention direction cannot reach
    (``offset >= 0`` in a causal model, ``offset == 0``, ``|offset| >= n_ctx``), ``d_vocab < 3`` or
    ``n_ctx < 4``, or an unknown ``attention_dir``.
    """
    from anchor_interp.models.adapter import HookedTransformerConfig, attn_weights, build_model, embed_weights

    if attention_dir not in ("causal", "bidirectional"):
        raise ValueError(f"attention_dir: must be 'causal' or 'bidirectional', got {attention_dir!r}")
    if d_vocab < FIRST_FILLER + 2 or n_ctx < 4:
        raise ValueError(
            f"d_vocab >= {FIRST_FILLER + 2} and n_ctx >= 4 are needed (markers + fillers); got d_vocab={d_vocab}, "
            f"n_ctx={n_ctx}"
        )
    if not heads:
        raise ValueError("heads: give at least one GroundTruthHead")
    for h in heads:
        if h.kind not in KINDS:
            raise ValueError(f"heads: unknown kind {h.kind!r} for head {h.name!r}; known kinds: {', '.join(KINDS)}")
        if h.kind in ("shift", "decoy"):
            if h.offset is None or h.offset == 0 or abs(h.offset) >= n_ctx:
                raise ValueError(f"heads: {h.name!r} needs a non-zero offset with |offset| < n_ctx={n_ctx}, got {h.offset}")
            if attention_dir == "causal" and h.offset > 0:
                raise ValueError(
                    f"heads: {h.name!r} has offset {h.offset} > 0, which a causal model cannot attend to; "
                    "use a negative offset or attention_dir='bidirectional'"
                )

    V, T = d_vocab, n_ctx
    d_head = max(V, T + max((abs(h.offset or 0) for h in heads), default=0) + 1)
    d_model = 2 * V + T
    cfg = HookedTransformerConfig(
        n_layers=1,
        n_heads=len(heads),
        d_model=d_model,
        d_head=d_head,
        n_ctx=T,
        d_vocab=V,
        attn_only=True,
        act_fn=None,
        normalization_type=None,
        positional_embedding_type="standard",
        attention_dir=attention_dir,
        device=device,
        seed=0,
    )
    model = build_model(cfg)
    emb = embed_weights(model)  # the model's own W_E, W_pos, W_U: written below
    tok = torch.arange(V)  # token one-hot dims
    pos = V + torch.arange(T)  # position one-hot dims
    copy = V + T + torch.arange(V)  # copy-space dims
    gain = attn_gain * (d_head**0.5)  # undo TransformerLens' 1/sqrt(d_head)

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        emb["W_E"][tok, tok] = 1.0
        emb["W_pos"][torch.arange(T), pos] = 1.0
        emb["W_U"][copy, tok] = logit_gain
        attn = attn_weights(model, 0)
        for i, h in enumerate(heads):
            W_Q, W_K = attn["W_Q"][i], attn["W_K"][i]  # (d_model, d_head)
            if h.kind in ("shift", "decoy"):
                # q_r = e_(r + |k| or r), k_s = e_(s + ...): q_r . k_s = gain iff s = r + offset
                shift_q = max(0, h.offset)  # bidirectional positive offsets shift the query index instead
                shift_k = max(0, -h.offset)
                W_Q[pos, torch.arange(T) + shift_q] = gain
                W_K[pos, torch.arange(T) + shift_k] = 1.0
            elif h.kind == "self":
                W_Q[pos, torch.arange(T)] = gain
                W_K[pos, torch.arange(T)] = 1.0
            elif h.kind == "sink":
                W_Q[pos, 0] = gain  # constant query
                W_K[pos[0], 0] = 1.0
            elif h.kind == "broadcast":
                W_Q[pos, 0] = gain
                W_K[tok[list(MARKERS)], 0] = 1.0
            # uniform: all-zero QK
            attn["W_V"][i][tok, torch.arange(V)] = 1.0
            if h.kind != "decoy":
                attn["W_O"][i][torch.arange(V), copy] = 1.0
    model.eval()
    return model


def sample_tokens(n: int, *, d_vocab: int = 32, n_ctx: int = 10, seed: int = 0) -> Int[Tensor, "batch seq"]:
    """``n`` rows of fillers uniform in ``[4, d_vocab)`` with one marker (from ``MARKERS``) at a position in
    ``[0, n_ctx - 3]``.

    Seeded by its own CPU generator. Raises ValueError for ``n < 1``, ``d_vocab < 6`` or ``n_ctx < 4``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: need an int >= 1 rows, got {n!r}")
    if d_vocab < FIRST_FILLER + 2 or n_ctx < 4:
        raise ValueError(f"d_vocab >= {FIRST_FILLER + 2} and n_ctx >= 4 are needed; got d_vocab={d_vocab}, n_ctx={n_ctx}")
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(FIRST_FILLER, d_vocab, (n, n_ctx), generator=g)
    marker_pos = torch.randint(0, n_ctx - 2, (n,), generator=g)
    marker = torch.tensor(MARKERS)[torch.randint(0, len(MARKERS), (n,), generator=g)]
    tokens[torch.arange(n), marker_pos] = marker
    return tokens


CIRCUIT_EXPECTED: tuple[tuple[str, int | None, str | None], ...] = (
    ("shift", -1, None),
    ("neither", None, "inert"),
    ("neither", None, "self"),
    ("broadcast", None, None),
    ("neither", None, "uniform"),
    ("neither", None, "sink"),
)
CIRCUIT_SPLIT_EXPECTED = CIRCUIT_EXPECTED[:4] + (("broadcast", None, None),) + CIRCUIT_EXPECTED[5:]


def make_identity_circuit_model(
    task, *, split_broadcast: bool = False, attn_gain: float = 12.0, logit_gain: float = 10.0, device: str = "cpu"
):
    """A hand-set 2-layer x 3-head causal model that solves ``task`` (anchor at p, key at p + 1, target =
    key) with a previous-token shift head and a broadcast head; see the module docstring for every head.

    ``split_broadcast``: L1H1 becomes a second copy of the broadcast head and each copy writes half the
    logit gain: the broadcast is spread over two heads, either of which alone still gets the answer
    right (expected labels: :data:`CIRCUIT_SPLIT_EXPECTED`; they form the group ``broadcast_L1``).

    Raises ValueError if the task is not of that shape (a sample's key is not right after its anchor or
    its target is not the key).
    """
    from anchor_interp.models.adapter import HookedTransformerConfig, attn_weights, build_model, embed_weights

    probe = task.sample(64, split="test", seed=0)
    ok = (probe.key_pos == probe.anchor_pos + 1) & (probe.targets == probe.tokens[torch.arange(len(probe)), probe.key_pos])
    if not bool(ok.all()):
        raise ValueError(
            f"task: make_identity_circuit_model needs an identity-type task (key right after the anchor, target = "
            f"key); {task.name!r} is not"
        )
    V, T = task.vocab_size, task.seq_len
    tok, pos = torch.arange(V), V + torch.arange(T)
    flag, sink_dim = V + T, V + T + 1
    copy = V + T + 2 + torch.arange(V)
    d_model, d_head = 2 * V + T + 2, max(V, T + 2)
    cfg = HookedTransformerConfig(
        n_layers=2, n_heads=3, d_model=d_model, d_head=d_head, n_ctx=T, d_vocab=V, attn_only=True, act_fn=None,
        normalization_type=None, positional_embedding_type="standard", attention_dir="causal", device=device, seed=0,
    )
    model = build_model(cfg)
    emb = embed_weights(model)  # the model's own W_E, W_pos, W_U: written below
    gain = attn_gain * (d_head**0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        emb["W_E"][tok, tok] = 1.0
        emb["W_E"][tok[list(task.anchor_ids)], flag] = -1.0
        emb["W_pos"][torch.arange(T), pos] = 1.0
        emb["W_U"][copy, tok] = logit_gain
        a0, a1 = attn_weights(model, 0), attn_weights(model, 1)
        for h in (0, 1):  # previous-token pattern (shift and decoy)
            a0["W_Q"][h][pos, torch.arange(T) + 1] = gain
            a0["W_K"][h][pos, torch.arange(T) + 2] = 1.0
        # shift: value = "is an anchor", written to the flag direction
        a0["W_V"][0][tok[list(task.anchor_ids)], 0] = 1.0
        a0["W_O"][0][0, flag] = 1.0
        a0["W_V"][1][tok[list(task.anchor_ids)], 0] = 1.0  # decoy: same value, W_O stays 0
        # self head, writing to a direction nothing reads
        a0["W_Q"][2][pos, torch.arange(T)] = gain
        a0["W_K"][2][pos, torch.arange(T)] = 1.0
        a0["W_V"][2][tok, torch.arange(V)] = 1.0
        a0["W_O"][2][torch.arange(V), sink_dim] = 1.0
        # broadcast: constant query, key = the flag; copies the token it reads
        for h in (0, 1) if split_broadcast else (0,):
            a1["W_Q"][h][pos, 0] = gain
            a1["W_K"][h][flag, 0] = 1.0
            a1["W_V"][h][tok, torch.arange(V)] = 1.0
            a1["W_O"][h][torch.arange(V), copy] = 0.5 if split_broadcast else 1.0
        if not split_broadcast:  # uniform, writing to a direction nothing reads
            a1["W_V"][1][tok, torch.arange(V)] = 1.0
            a1["W_O"][1][torch.arange(V), sink_dim] = 1.0
        # sink without output
        a1["W_Q"][2][pos, 0] = gain
        a1["W_K"][2][pos[0], 0] = 1.0
        a1["W_V"][2][tok, torch.arange(V)] = 1.0
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------------
# hard cases (issue 12): task-based models whose head roles are known, for the causal labeller
#
# Layout (``_Layout``): one-hots of the task's anchor tokens and of its value tokens ``[lo, hi]`` (fillers,
# keys, targets; every other id embeds to 0: the task never shows it), one-hot positions, then named blocks.
# Value spaces (``copy0``: a token copied by a layer-0 head; ``out``: what ``W_U`` reads) are indexed by the
# value tokens too, so ``d_model`` is ~3 x 90 + T and ``d_head`` ~90 for the 201-token vocabulary. Attention
# logits are set in logit units (the builders multiply by the layer's ``attn_scale``): a position table
# ``table[d, s]`` becomes ``q_d = table[d] * scale`` on ``d_head`` columns ``[0, T)`` and ``k_s = e_s``.

KEY_COPY_EXPECTED: tuple[tuple[str, int | None, str | None], ...] = (
    ("shift", -1, None),
    ("neither", None, "copy"),
    ("broadcast", None, None),
    ("neither", None, "uniform"),
)
TIE_EXPECTED: tuple[tuple[str, int | None, str | None], ...] = (
    ("shift", 1, None),
    ("broadcast", None, None),
)
SOFT_SHIFT_EXPECTED: tuple[tuple[str, int | None, str | None], ...] = (
    ("shift", -1, None),
    ("neither", None, "inert"),
    ("broadcast", None, None),
    ("neither", None, "uniform"),
)
# make_two_offset_shift_model(make_task("composition", pairs=TWO_OFFSET_PAIRS, masked=())): two pair classes
TWO_OFFSET_PAIRS = ("13", "31", "23", "32")
TWO_OFFSET_EXPECTED: tuple[tuple[str, int | None, str | None], ...] = (
    ("shift", -2, None),
    ("neither", None, "uniform"),
    ("broadcast", None, None),
    ("broadcast", None, None),
)


def _value_range(task) -> tuple[int, int]:
    """(lo, hi), inclusive: every key, filler and target token of ``task`` (block tasks in "plus" key mode)."""
    from anchor_interp.tasks.base import FILLER_HIGH, FILLER_LOW

    targets = task.target_ids()
    lo = min(FILLER_LOW, min(targets))
    hi = min(task.vocab_size - 1, max(max(targets), FILLER_HIGH + task.seq_len))
    if max(task.anchor_ids) >= lo:
        raise ValueError(f"task: {task.name!r} has anchor ids {task.anchor_ids} inside its value range [{lo}, {hi}]")
    return lo, hi


class _Layout:
    """Residual dims: ``anchors`` (one per anchor id), ``values`` (one per token in [lo, hi]), ``pos``, then
    the blocks of :meth:`add`."""

    def __init__(self, task):
        self.lo, self.hi = _value_range(task)
        self.K = self.hi - self.lo + 1
        self.anchor_ids = list(task.anchor_ids)
        A, T = len(self.anchor_ids), task.seq_len
        self.anchors = torch.arange(A)
        self.values = A + torch.arange(self.K)
        self.pos = A + self.K + torch.arange(T)
        self.size = A + self.K + T

    def add(self, n: int) -> Tensor:
        out = self.size + torch.arange(n)
        self.size += n
        return out

    def write_embedding(self, model, out: Tensor, logit_gain: float) -> dict:
        """Write ``W_E`` / ``W_pos`` (the one-hots) and ``W_U`` (``out`` dim i -> logit of token lo + i)."""
        from anchor_interp.models.adapter import embed_weights

        emb = embed_weights(model)
        T = len(self.pos)
        emb["W_E"][self.anchor_ids, self.anchors] = 1.0
        emb["W_E"][torch.arange(self.lo, self.hi + 1), self.values] = 1.0
        emb["W_pos"][torch.arange(T), self.pos] = 1.0
        emb["W_U"][out, torch.arange(self.lo, self.hi + 1)] = logit_gain
        return emb


def _blank_model(task, n_layers: int, n_heads: int, d_model: int, d_head: int, attention_dir: str, device: str):
    """An attention-only HookedTransformer for ``task`` with every parameter zero (no LayerNorm)."""
    from anchor_interp.models.adapter import HookedTransformerConfig, build_model

    cfg = HookedTransformerConfig(
        n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_head=d_head, n_ctx=task.seq_len,
        d_vocab=task.vocab_size, attn_only=True, act_fn=None, normalization_type=None,
        positional_embedding_type="standard", attention_dir=attention_dir, device=device, seed=0,
    )
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def _position_logits(attn: dict, head: int, pos: Tensor, table: Tensor, scale: float) -> None:
    """Head ``head``'s positional attention logits ``table[d, s]`` (logit units), on ``d_head`` columns [0, T)."""
    T = len(pos)
    attn["W_Q"][head][pos, :T] = table * scale
    attn["W_K"][head][pos, torch.arange(T)] = 1.0


def _offset_table(T: int, logits: dict[int, float]) -> Tensor:
    """(T, T) table with ``logits[k]`` at every ``(d, d + k)`` inside the sequence, 0 elsewhere."""
    table = torch.zeros(T, T)
    for k, v in logits.items():
        d = torch.arange(max(0, -k), min(T, T - k))
        table[d, d + k] = v
    return table


def _copy(attn: dict, head: int, src: Tensor, dst: Tensor | None) -> None:
    """OV of ``head``: residual dims ``src`` -> ``d_head`` columns [0, len(src)) -> residual dims ``dst``."""
    cols = torch.arange(len(src))
    attn["W_V"][head][src, cols] = 1.0
    if dst is not None:
        attn["W_O"][head][cols, dst] = 1.0


def _check_identity_layout(task, builder: str) -> None:
    probe = task.sample(64, split="test", seed=0)
    rows = torch.arange(len(probe))
    ok = (probe.key_pos == probe.anchor_pos + 1) & (probe.targets == probe.tokens[rows, probe.key_pos])
    if not bool(ok.all()):
        raise ValueError(f"task: {builder} needs an identity-type task (key right after the anchor, target = key); "
                         f"{task.name!r} is not")


def make_key_copy_decoy_model(task, *, attn_gain: float = 12.0, logit_gain: float = 10.0, device: str = "cpu"):
    """Hard case 1, a **key copy** next to the flag shift head: a 2-layer x 2-head causal model that solves an
    identity-type ``task`` (anchor at p, key at p + 1, target = key); expected labels :data:`KEY_COPY_EXPECTED`.

    =====  ======================================================================  ==================
    head   what it does                                                            expected label
    =====  ======================================================================  ==================
    L0H0   previous-token head; writes "the token before me was an anchor" into a   shift, offset -1
           flag direction at the key's position (layer 1 reads it through keys)
    L0H1   **key copy**: 0.75 of each row on its own position, 0.25 on the          neither / copy
           previous token (a decoy for pattern-based offsets); copies the token
           into ``copy0``, which L1H0 reads through its **values**: the answer
           needs it, but the information comes from offset 0
    L1H0   broadcast: every row reads the flagged position (the key) and copies     broadcast
           its ``copy0`` content into ``out``, which ``W_U`` reads
    L1H1   all-zero weights (uniform, writes nothing)                               neither / uniform
    =====  ======================================================================  ==================

    Anchor tokens carry -1 on the flag (an anchor at position 0 attends to itself). Raises ValueError if the
    task is not identity-type.
    """
    from anchor_interp.models.adapter import attn_scale, attn_weights

    _check_identity_layout(task, "make_key_copy_decoy_model")
    T = task.seq_len
    lay = _Layout(task)
    flag, copy0, out = lay.add(1), lay.add(lay.K), lay.add(lay.K)
    model = _blank_model(task, 2, 2, lay.size, max(lay.K, T), "causal", device)
    with torch.no_grad():
        emb = lay.write_embedding(model, out, logit_gain)
        emb["W_E"][lay.anchor_ids, flag] = -1.0
        a0, a1 = attn_weights(model, 0), attn_weights(model, 1)
        s0, s1 = attn_scale(model, 0), attn_scale(model, 1)
        # L0H0: previous token, value "is an anchor" -> flag
        _position_logits(a0, 0, lay.pos, _offset_table(T, {-1: attn_gain}), s0)
        a0["W_V"][0][lay.anchors, 0] = 1.0
        a0["W_O"][0][0, flag] = 1.0
        # L0H1: key copy, 0.75 self / 0.25 previous token; value token -> copy0
        _position_logits(a0, 1, lay.pos, _offset_table(T, {0: attn_gain, -1: attn_gain - math.log(3.0)}), s0)
        _copy(a0, 1, lay.values, copy0)
        # L1H0: broadcast to the flag; reads copy0 through its values
        a1["W_Q"][0][lay.pos, 0] = attn_gain * s1
        a1["W_K"][0][flag, 0] = 1.0
        _copy(a1, 0, copy0, out)
    model.eval()
    return model


def make_bidirectional_tie_model(task, *, attn_gain: float = 12.0, logit_gain: float = 10.0,
                                 device: str = "cpu"):
    """Hard case 3, **near-tie directions**: a bidirectional 2-layer x 1-head model (the shape of the paper's
    mechanism model) that solves an identity-type ``task``; expected labels :data:`TIE_EXPECTED`.

    =====  ======================================================================  ==================
    head   what it does                                                            expected label
    =====  ======================================================================  ==================
    L0H0   every row reads its right neighbour (+1) and its left one (-1); the      shift, offset +1
           anchor row puts ~0.60 on the key (+1), the key row ~0.65 on the anchor
           (-1: anchor tokens get a key bonus), so the pattern slightly prefers
           -1. Its value copies the token into ``copy0`` and writes "is an
           anchor" into a scratch direction nothing reads: only the +1 direction
           (the key copied into the anchor slot) is used downstream
    L1H0   broadcast: every row reads the anchor token (by its embedding) and       broadcast
           copies the anchor slot's ``copy0`` into ``out``, which ``W_U`` reads
    =====  ======================================================================  ==================

    The anchor slot holds 0.6 key + 0.4 the token before the anchor: the key still wins the argmax. Raises
    ValueError if the task is not identity-type.
    """
    from anchor_interp.models.adapter import attn_scale, attn_weights

    _check_identity_layout(task, "make_bidirectional_tie_model")
    T = task.seq_len
    lay = _Layout(task)
    scratch, copy0, out = lay.add(1), lay.add(lay.K), lay.add(lay.K)
    model = _blank_model(task, 2, 1, lay.size, max(lay.K + 1, T + 1), "bidirectional", device)
    right = math.log(0.60 / 0.40)  # anchor row: +1 (the key) vs -1 (a filler)
    bonus = right + math.log(0.65 / 0.35)  # key row: -1 (the anchor) vs +1 (a filler)
    with torch.no_grad():
        lay.write_embedding(model, out, logit_gain)
        a0, a1 = attn_weights(model, 0), attn_weights(model, 1)
        s0, s1 = attn_scale(model, 0), attn_scale(model, 1)
        _position_logits(a0, 0, lay.pos, _offset_table(T, {1: attn_gain + right, -1: attn_gain}), s0)
        a0["W_Q"][0][lay.pos, T] = bonus * s0  # constant query; key: anchor tokens
        a0["W_K"][0][lay.anchors, T] = 1.0
        _copy(a0, 0, lay.values, copy0)
        a0["W_V"][0][lay.anchors, lay.K] = 1.0  # "is an anchor" -> scratch, on the spare d_head column
        a0["W_O"][0][lay.K, scratch] = 1.0
        a1["W_Q"][0][lay.pos, 0] = attn_gain * s1
        a1["W_K"][0][lay.anchors, 0] = 1.0
        _copy(a1, 0, copy0, out)
    model.eval()
    return model


def make_soft_shift_model(task, *, soft: float = 0.3, attn_gain: float = 12.0, logit_gain: float = 10.0,
                          device: str = "cpu"):
    """Hard cases 4 and 5, **weak pattern, strong route** next to **attends like a shift, output unused**: a
    2-layer x 2-head causal model that solves an identity-type ``task``; expected labels
    :data:`SOFT_SHIFT_EXPECTED`.

    =====  ======================================================================  ==================
    head   what it does                                                            expected label
    =====  ======================================================================  ==================
    L0H0   **soft** shift: the key row puts only ``soft`` (0.3) of its attention   shift, offset -1
           on the anchor and spreads the rest evenly over the other positions
           (itself included); other rows put ~0.66 on the previous token and
           spread the rest (anchor tokens get a key logit of -1.5, so rows
           further on read the anchor by < 0.05); writes "the token before me
           was an anchor" into the flag that L1H0's **keys** read: the flag is
           ``soft`` at the key row and < 0.05 elsewhere
    L0H1   crisp previous-token head (~1.0 on offset -1); copies the token into a   neither / inert
           scratch space: ``W_O`` is non-zero, but no later head and not ``W_U``
           reads that space
    L1H0   broadcast: every row reads the flagged position (the key) and copies     broadcast
           its token into ``out``, which ``W_U`` reads
    L1H1   all-zero weights (uniform, writes nothing)                               neither / uniform
    =====  ======================================================================  ==================

    Position 0 carries -1 on the flag (its row can only read itself: an anchor there would flag its own
    position). Raises ValueError if the task is not identity-type or ``soft`` is not in (0.05, 0.95).
    """
    from anchor_interp.models.adapter import attn_scale, attn_weights

    _check_identity_layout(task, "make_soft_shift_model")
    if not 0.05 < soft < 0.95:
        raise ValueError(f"soft: the key row's attention on the anchor must be in (0.05, 0.95), got {soft!r}")
    T = task.seq_len
    lay = _Layout(task)
    flag, scratch, out = lay.add(1), lay.add(lay.K), lay.add(lay.K)
    model = _blank_model(task, 2, 2, lay.size, max(lay.K, T + 1), "causal", device)
    avoid = 1.5  # key logit of anchor tokens: -avoid
    with torch.no_grad():
        emb = lay.write_embedding(model, out, logit_gain)
        emb["W_pos"][0, flag] = -1.0
        a0, a1 = attn_weights(model, 0), attn_weights(model, 1)
        s0, s1 = attn_scale(model, 0), attn_scale(model, 1)
        # row d: previous token ln(soft d / (1 - soft)) + avoid, the d other visible positions 0, anchor tokens
        # -avoid: the key row (whose previous token is the anchor) puts `soft` on it
        table = torch.zeros(T, T)
        d = torch.arange(1, T)
        table[d, d - 1] = torch.log(soft * d / (1.0 - soft)) + avoid
        _position_logits(a0, 0, lay.pos, table, s0)
        a0["W_Q"][0][lay.pos, T] = -avoid * s0  # constant query; key: anchor tokens
        a0["W_K"][0][lay.anchors, T] = 1.0
        a0["W_V"][0][lay.anchors, 0] = 1.0
        a0["W_O"][0][0, flag] = 1.0
        # L0H1: previous token; token -> scratch (nothing reads it)
        _position_logits(a0, 1, lay.pos, _offset_table(T, {-1: attn_gain}), s0)
        _copy(a0, 1, lay.values, scratch)
        # L1H0: the flag is `soft` at the key row: scale the query so that it still stands out by attn_gain
        a1["W_Q"][0][lay.pos, 0] = attn_gain / soft * s1
        a1["W_K"][0][flag, 0] = 1.0
        _copy(a1, 0, lay.values, out)
    model.eval()
    return model


def _pair_classes(task) -> list[tuple[tuple[int, int], int]]:
    """[((i, j), shift)]: the unordered anchor pairs of the unmasked groups of a composition-type task and
    the target shift each gives. Raises ValueError for another layout, a pair that repeats an anchor, a shift
    that depends on the order, or a sample whose target is not key + shift."""
    layout = (("anchor", 0), ("anchor2", 1), ("key", 2))
    groups = getattr(task, "block_groups", ())
    if not groups or any(tuple(g.slots) != layout for g in groups):
        raise ValueError(f"task: make_two_offset_shift_model needs a composition-type task (anchors a1 a2 at p, "
                         f"p + 1, key at p + 2); {task.name!r} is not")
    classes: dict[tuple[int, int], int] = {}
    for g in groups:
        if g.masked:
            continue
        i, j = g.tokens["anchor"], g.tokens["anchor2"]
        c = (min(i, j), max(i, j))
        if i == j or classes.get(c, g.shift) != g.shift:
            raise ValueError(f"task: pair {i}{j} of {task.name!r} repeats an anchor or its shift depends on the order")
        classes[c] = g.shift
    probe = task.sample(64, split="test", seed=0)
    rows = torch.arange(len(probe))
    pairs = zip(probe.tokens[rows, probe.anchor_pos].tolist(), probe.tokens[rows, probe.extra["anchor2_pos"]].tolist(),
                strict=True)
    shift = torch.tensor([classes.get((min(i, j), max(i, j)), 0) for i, j in pairs])
    masked = torch.tensor([task.groups[g].masked for g in probe.group.tolist()])
    if not bool((masked | (probe.targets == probe.tokens[rows, probe.key_pos] + shift)).all()):
        raise ValueError(f"task: {task.name!r}'s targets are not key + the anchor pair's shift")
    return sorted(classes.items())


def two_offset_expected(task) -> tuple[tuple[str, int | None, str | None], ...]:
    """Expected labels of :func:`make_two_offset_shift_model` ``(task)`` (:data:`TWO_OFFSET_EXPECTED` for
    ``make_task("composition", pairs=TWO_OFFSET_PAIRS, masked=())``)."""
    n = len(_pair_classes(task))
    H = max(2, n)
    return ((("shift", -2, None),) + (("neither", None, "uniform"),) * (H - 1) + (("broadcast", None, None),) * n
            + (("neither", None, "uniform"),) * (H - n))


def make_two_offset_shift_model(task, *, attn_gain: float = 12.0, gate_gain: float = 20.0,
                                logit_gain: float = 10.0, device: str = "cpu"):
    """Hard case 2, **a shift from two offsets**: a 2-layer causal model that solves a composition-type ``task``
    (anchors a1 a2 at p, p + 1, key x at p + 2, target x + f(a1) + f(a2)) on its unmasked groups, with one
    head per layer per unordered anchor pair ``c = {i, j}`` of the unmasked groups (at least 2); expected
    labels :func:`two_offset_expected` (:data:`TWO_OFFSET_EXPECTED` on the pairs :data:`TWO_OFFSET_PAIRS`).

    =========  ===================================================================  ==================
    head       what it does                                                         expected label
    =========  ===================================================================  ==================
    L0H0       every row reads offsets -1 and -2 (0.5 each): the key row reads      shift, offset -2
               both anchors and writes their one-hot "bag" 0.5 (e_a1 + e_a2),      (shift(-1) passes
               which layer 1's keys read (the a1 identity is the larger effect)     too)
    L0H1..     all-zero weights                                                     neither / uniform
    L1Hc       gated broadcast for pair ``c``: the last row reads the key when      broadcast
               the bag there is ``c`` (key logit 2 ``gate_gain``), an anchor
               position otherwise (1.5 ``gate_gain``; anchors have no value), and
               maps the key x to x + shift(c) in ``out``, which ``W_U`` reads
    =========  ===================================================================  ==================

    The gate key is ``gate_gain * (2 bag . m_c + [token is an anchor a] (1.5 - 2 m_c(a)))``, ``m_c`` the
    indicator of ``c``'s anchors. Rows of masked pairs get no answer. Raises ValueError for other tasks.
    """
    from anchor_interp.models.adapter import attn_scale, attn_weights

    classes = _pair_classes(task)
    T = task.seq_len
    lay = _Layout(task)
    A = len(lay.anchor_ids)
    bag, out = lay.add(A), lay.add(lay.K)
    H = max(2, len(classes))
    model = _blank_model(task, 2, H, lay.size, max(lay.K, T, A), "causal", device)
    table = _offset_table(T, {-1: attn_gain, -2: attn_gain})
    table[0, 0] = attn_gain  # row 0 can only read itself
    cols = torch.arange(lay.K)
    with torch.no_grad():
        lay.write_embedding(model, out, logit_gain)
        a0, a1 = attn_weights(model, 0), attn_weights(model, 1)
        s0, s1 = attn_scale(model, 0), attn_scale(model, 1)
        _position_logits(a0, 0, lay.pos, table, s0)
        _copy(a0, 0, lay.anchors, bag)
        for h, ((i, j), shift) in enumerate(classes):
            m = torch.tensor([1.0 if a in (i, j) else 0.0 for a in lay.anchor_ids])
            a1["W_Q"][h][lay.pos, 0] = gate_gain * s1
            a1["W_K"][h][bag, 0] = 2.0 * m
            a1["W_K"][h][lay.anchors, 0] = 1.5 - 2.0 * m
            a1["W_V"][h][lay.values, cols] = 1.0
            dst = cols + shift  # value token lo + i -> lo + i + shift
            ok = (dst >= 0) & (dst < lay.K)
            a1["W_O"][h][cols[ok], out[dst[ok]]] = 1.0
    model.eval()
    return model

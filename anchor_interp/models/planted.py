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

:func:`sample_tokens` draws the inputs these heads are meant for: fillers in ``[4, V)`` and exactly
one marker token (one of ``MARKERS`` = 1, 2, 3, at random) per row, at a random position in
``[0, n_ctx - 3]``. The broadcast head attends to whichever marker is there and copies it, so what it
moves depends on the input (a head that always moved the same token would be inert under mean ablation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = [
    "CIRCUIT_EXPECTED",
    "CIRCUIT_SPLIT_EXPECTED",
    "DEFAULT_HEADS",
    "GroundTruthHead",
    "MARKERS",
    "expected_labels",
    "make_head_zoo_model",
    "make_identity_circuit_model",
    "sample_tokens",
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

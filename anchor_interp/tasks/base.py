"""Task: the shared interface of every anchor task, plus the vocabulary layout and input checks.

A task samples ``Batch``es (seeded, vectorised, on its own CPU generator) and builds
row-paired counterfactual batches for patching. Subclasses implement ``_sample``,
``_counterfactual`` (the kinds every task builds for every row) and ``_counterfactual_kept`` (the
single-factor kinds, which keep only the rows they can build) on CPU; this class validates
arguments and moves results to a device.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from anchor_interp.tasks.batch import Batch

# The paper's vocabulary layout (docs/tasks.md, "Vocabulary").
VOCAB_SIZE = 201
SEQ_LEN = 9
PAD_ID = 0
RESERVED_ANCHOR_IDS = tuple(range(1, 11))  # 1..10
FILLER_LOW, FILLER_HIGH = 20, 99  # inclusive; the authors' held-out lists are built from range(20, 100)
MODULUS = 8  # modular held-out rule: (key - block start) % 8 == residue -> test

SPLITS = ("train", "test")
# the kinds every task builds for every row (a full row-paired batch)
COUNTERFACTUAL_KINDS = ("key_swap", "anchor_move", "anchor_remove")
# kinds that change exactly one factor; anchor_position / anchor_identity* may drop rows (counterfactual_pair)
SINGLE_FACTOR_KINDS = ("key_value", "anchor_position", "anchor_identity", "anchor_identity_2")
ALL_COUNTERFACTUAL_KINDS = COUNTERFACTUAL_KINDS + SINGLE_FACTOR_KINDS
# which factors of a row each kind changes (docs/tasks.md, "Counterfactual kinds")
KIND_FACTORS: dict[str, tuple[str, ...]] = {
    "key_swap": ("key_value",),  # the same counterfactual as key_value (same tensors for the same seed)
    "anchor_move": ("anchor_position", "key_value"),  # a fresh key value is written at the new key position
    "anchor_remove": ("anchor_presence",),
    "key_value": ("key_value",),
    "anchor_position": ("anchor_position",),
    "anchor_identity": ("anchor_identity",),  # the primary anchor (at anchor_pos)
    "anchor_identity_2": ("anchor_identity",),  # the second anchor (at extra["anchor2_pos"])
}


class TaskError(ValueError):
    """Bad task parameters or bad arguments to a task method (a ValueError)."""


class CounterfactualPair(NamedTuple):
    """Row-paired clean and corrupted batches from ``Task.counterfactual_pair``.

    clean: the kept rows of the input batch (``batch.select(kept)``); corrupt: row ``i`` is the
    counterfactual of ``clean`` row ``i``; kept: long (n_kept,) indices of the kept rows in the input
    batch (increasing, on the batch's device); n_dropped: how many input rows were dropped.
    """

    clean: Batch
    corrupt: Batch
    kept: Int[Tensor, " kept"]
    n_dropped: int


@dataclass(frozen=True)
class DataGroup:
    """A named part of a task's data. ``masked`` groups are never sampled for the train split."""

    name: str
    weight: float
    masked: bool = False


class Task:
    """Base class of every anchor task. See docs/interfaces.md for the contract.

    Attributes: name, params (JSON-serialisable; ``make_task(name, **params)`` recreates the task),
    vocab_size, seq_len, anchor_ids (token ids the task uses as anchors), groups (tuple of DataGroup),
    extra_fields (names of the task's ``Batch.extra`` fields), definition ("paper" or "project").
    """

    name: str
    vocab_size: int = VOCAB_SIZE
    seq_len: int = SEQ_LEN
    anchor_ids: tuple[int, ...] = ()
    groups: tuple[DataGroup, ...] = ()
    extra_fields: tuple[str, ...] = ()
    definition: str = "paper"
    description: str = ""

    def __init__(self, name: str, params: dict):
        self.name = name
        self._params = dict(params)

    # ------------------------------------------------------------------ identity

    @property
    def params(self) -> dict:
        return dict(self._params)

    def to_dict(self) -> dict:
        """JSON-serialisable description; ``Task.from_dict`` rebuilds the task from name + params."""
        return {"name": self.name, "params": self.params, "vocab_size": self.vocab_size, "seq_len": self.seq_len}

    @staticmethod
    def from_dict(d: dict) -> Task:
        """Rebuild a task from ``to_dict()``. Raises TaskError if the stored vocab/seq_len disagree."""
        from anchor_interp.tasks.registry import make_task

        if not isinstance(d, dict) or "name" not in d:
            raise TaskError(f"Task.from_dict(d): d must be a dict with a 'name' (and 'params'); got {d!r}")
        task = make_task(d["name"], **dict(d.get("params", {})))
        for attr in ("vocab_size", "seq_len"):
            if attr in d and d[attr] != getattr(task, attr):
                raise TaskError(
                    f"Task.from_dict(d): d[{attr!r}]={d[attr]} but task {task.name!r} with params "
                    f"{task.params} has {attr}={getattr(task, attr)}; the dict comes from another version"
                )
        return task

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"make_task({self.name!r}{', ' if args else ''}{args})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Task) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted((k, repr(v)) for k, v in self._params.items()))))

    # ------------------------------------------------------------------ sampling

    def sample(
        self, n: int, split: str = "train", seed: int = 0, device=None, groups=None
    ) -> Batch:
        """``n`` sequences of ``split`` ("train" or "test"), generated on a CPU generator seeded with
        ``seed``, then moved to ``device``. ``groups`` (optional) restricts sampling to the named
        groups (names or indices; masked groups are allowed only for split="test").

        Raises TaskError for n <= 0, an unknown split, a non-integer seed or a bad group.
        """
        n = _check_n(n)
        split = _check_split(split)
        seed = _check_seed(seed)
        weights = self._group_weights(split, groups)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        batch = self._sample(n, split, gen, weights)
        return batch.to(device)

    def counterfactual(self, batch: Batch, kind: str, seed: int = 0) -> Batch:
        """A batch row-paired with ``batch`` (see docs/tasks.md for what each kind changes per task).

        kind: one of ALL_COUNTERFACTUAL_KINDS. ``key_value`` and ``key_swap`` are the same counterfactual
        (same tensors for the same seed). ``anchor_remove`` rows have targets -1 (no correct answer)
        and anchor_pos/key_pos (and extra positions) -1. The result is on ``batch``'s device.

        Raises TaskError for an unknown kind, a kind that does not apply to this task (the message
        names both), a batch of another task's shape, a kind the task cannot build for some row, and
        for ``anchor_position`` / ``anchor_identity*`` when some rows have no valid counterfactual: those
        kinds drop such rows, so use ``counterfactual_pair``, which returns the kept clean rows too.
        """
        kind = self._check_counterfactual_args(batch, kind)
        seed = _check_seed(seed)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        if kind in COUNTERFACTUAL_KINDS or kind == "key_value":
            out = self._counterfactual(batch.to("cpu"), "key_swap" if kind == "key_value" else kind, gen)
            return out.to(batch.device)
        corrupt, kept = self._counterfactual_kept(batch.to("cpu"), kind, gen)
        n_dropped = len(batch) - len(kept)
        if n_dropped:
            raise TaskError(
                f"counterfactual(kind={kind!r}): task {self.name!r} has no valid {kind} counterfactual for "
                f"{n_dropped} of the {len(batch)} rows ({_KIND_RULES[kind]}); use "
                f"task.counterfactual_pair(batch, {kind!r}, seed=...), which drops those rows and returns the "
                f"kept clean rows with their counterfactuals"
            )
        return corrupt.to(batch.device)

    def counterfactual_pair(self, batch: Batch, kind: str, seed: int = 0) -> CounterfactualPair:
        """``CounterfactualPair(clean, corrupt, kept, n_dropped)`` for any kind: ``clean`` holds the rows of
        ``batch`` that have a valid counterfactual of ``kind`` and ``corrupt`` their counterfactuals, row
        for row. Only ``anchor_position`` and ``anchor_identity*`` drop rows; the other kinds keep all
        (``kept = arange(n)``, ``clean is batch``). Same seed, same tensors as ``counterfactual``.

        Raises TaskError like ``counterfactual`` (unknown kind, kind that does not apply, bad batch), and
        when no row at all has a valid counterfactual (the message says what a kept row needs).
        """
        kind = self._check_counterfactual_args(batch, kind)
        seed = _check_seed(seed)
        if kind in COUNTERFACTUAL_KINDS or kind == "key_value":
            corrupt = self.counterfactual(batch, kind, seed=seed)
            kept = torch.arange(len(batch), device=batch.device)
            return CounterfactualPair(batch, corrupt, kept, 0)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        corrupt, kept = self._counterfactual_kept(batch.to("cpu"), kind, gen)
        if len(kept) == 0:
            raise TaskError(
                f"counterfactual_pair(kind={kind!r}): none of the {len(batch)} rows of task {self.name!r} has a "
                f"valid {kind} counterfactual ({_KIND_RULES[kind]}); {_KIND_HINTS[kind]}"
            )
        kept = kept.to(batch.device)
        return CounterfactualPair(batch.select(kept), corrupt.to(batch.device), kept, len(batch) - len(kept))

    def counterfactual_kinds(self) -> tuple[str, ...]:
        """The kinds of ALL_COUNTERFACTUAL_KINDS that apply to this task (the others raise TaskError)."""
        return tuple(k for k in ALL_COUNTERFACTUAL_KINDS if self._kind_unavailable(k) is None)

    def _check_counterfactual_args(self, batch: Batch, kind: str) -> str:
        if kind not in ALL_COUNTERFACTUAL_KINDS:
            raise TaskError(
                f"counterfactual(kind={kind!r}): kind must be one of {list(ALL_COUNTERFACTUAL_KINDS)}"
            )
        why = self._kind_unavailable(kind)
        if why is not None:
            raise TaskError(
                f"counterfactual(kind={kind!r}): kind {kind!r} does not apply to task {self.name!r}: {why}. "
                f"Kinds that apply: {list(self.counterfactual_kinds())}"
            )
        if not isinstance(batch, Batch):
            raise TaskError(f"counterfactual(batch=...): batch must be a Batch; got {type(batch).__name__}")
        if batch.seq_len != self.seq_len:
            raise TaskError(
                f"counterfactual(batch=...): batch has seq_len {batch.seq_len} but task {self.name!r} has "
                f"seq_len {self.seq_len}"
            )
        if len(batch) == 0:
            raise TaskError("counterfactual(batch=...): batch is empty (n must be > 0)")
        if bool((batch.anchor_pos < 0).any()):
            raise TaskError(
                "counterfactual(batch=...): some rows have no anchor (anchor_pos == -1), e.g. an anchor_remove "
                "batch; build counterfactuals from clean batches"
            )
        return kind

    # ------------------------------------------------------------------ targets

    def target_ids(self, split: str | None = None) -> tuple[int, ...]:
        """Sorted token ids that can be targets (of ``split``, or of either split when None)."""
        raise NotImplementedError

    def target_probs(self, batch: Batch) -> Float[Tensor, "batch vocab"]:
        """The target distribution of each row (one-hot for deterministic tasks; rows with target -1
        are all zeros). statistical_output overrides this with its 0.8/0.2 split."""
        probs = torch.zeros(len(batch), self.vocab_size, device=batch.device)
        ok = batch.targets >= 0
        probs[ok, batch.targets[ok]] = 1.0
        return probs

    # ------------------------------------------------------------------ rendering

    def token_labels(
        self, tokens_row: Int[Tensor, " seq"], anchor_pos: int | None = None, key_pos: int | None = None,
        extra: dict | None = None,
    ) -> list[str]:
        """One label per position: anchors ``A:3``, the key ``K:96``, other marked positions
        ``<NAME>:tok`` (from ``extra``, e.g. ``K2:57``), plain tokens as digits."""
        toks = [int(t) for t in torch.as_tensor(tokens_row).reshape(-1).tolist()]
        marks = self._marks(len(toks), toks, anchor_pos, key_pos, extra)
        return [f"{marks[i]}:{t}" if i in marks else str(t) for i, t in enumerate(toks)]

    def render(
        self, tokens_row: Int[Tensor, " seq"], anchor_pos: int | None = None, key_pos: int | None = None,
        extra: dict | None = None,
    ) -> str:
        """A readable line, e.g. ``69 73 25 [A:3] <K:96> 82 71 58 81``: anchors in [], keys in <>."""
        toks = [int(t) for t in torch.as_tensor(tokens_row).reshape(-1).tolist()]
        marks = self._marks(len(toks), toks, anchor_pos, key_pos, extra)
        out = []
        for i, t in enumerate(toks):
            m = marks.get(i)
            if m is None:
                out.append(str(t))
            elif m.startswith("A"):
                out.append(f"[{m}:{t}]")
            else:
                out.append(f"<{m}:{t}>")
        return " ".join(out)

    def render_batch(self, batch: Batch, rows: int = 5) -> list[str]:
        """``render`` of the first ``rows`` rows, with ``-> target`` appended."""
        lines = []
        for i in range(min(rows, len(batch))):
            extra = {k: int(v[i]) for k, v in batch.extra.items()}
            line = self.render(batch.tokens[i], int(batch.anchor_pos[i]), int(batch.key_pos[i]), extra)
            lines.append(f"{line} -> {int(batch.targets[i])}")
        return lines

    def _marks(self, seq, toks, anchor_pos, key_pos, extra) -> dict[int, str]:
        marks: dict[int, str] = {}
        for i, t in enumerate(toks):  # every anchor token is marked, even without positions
            if t in self.anchor_ids:
                marks[i] = "A"
        for field, value in (extra or {}).items():
            if field.endswith("_pos") and value is not None and 0 <= int(value) < seq:
                marks[int(value)] = _EXTRA_MARKS.get(field, field[:-4].upper())
        if key_pos is not None and 0 <= int(key_pos) < seq:
            marks[int(key_pos)] = "K"
        if anchor_pos is not None and 0 <= int(anchor_pos) < seq:
            marks[int(anchor_pos)] = "A"
        return marks

    # ------------------------------------------------------------------ subclass hooks

    def _sample(self, n: int, split: str, gen: torch.Generator, weights: Tensor) -> Batch:
        raise NotImplementedError

    def _counterfactual(self, batch: Batch, kind: str, gen: torch.Generator) -> Batch:
        """One of COUNTERFACTUAL_KINDS for every row of ``batch`` (CPU)."""
        raise NotImplementedError

    def _counterfactual_kept(self, batch: Batch, kind: str, gen: torch.Generator) -> tuple[Batch, Tensor]:
        """A kind that may drop rows (anchor_position, anchor_identity*): (corrupt rows, kept indices) on CPU."""
        raise NotImplementedError

    def _kind_unavailable(self, kind: str) -> str | None:
        """Why ``kind`` does not apply to this task, or None when it does. The kinds of
        COUNTERFACTUAL_KINDS and key_value apply to every task."""
        if kind in COUNTERFACTUAL_KINDS or kind == "key_value":
            return None
        return f"{type(self).__name__} does not implement it"

    def _group_weights(self, split: str, groups) -> Float[Tensor, " group"]:
        """Sampling weight per group for ``split`` (masked groups weigh 0 in train)."""
        names = [g.name for g in self.groups]
        if groups is None:
            chosen = list(range(len(self.groups)))
        else:
            if isinstance(groups, (str, int)):
                groups = [groups]
            chosen = []
            for g in groups:
                if isinstance(g, int) and 0 <= g < len(names):
                    chosen.append(g)
                elif isinstance(g, str) and g in names:
                    chosen.append(names.index(g))
                else:
                    raise TaskError(f"sample(groups=...): unknown group {g!r}; task {self.name!r} has groups {names}")
            if not chosen:
                raise TaskError(f"sample(groups=...): no groups given; choose from {names}")
        w = torch.zeros(len(self.groups), dtype=torch.float64)
        for i in chosen:
            g = self.groups[i]
            if split == "train" and g.masked:
                if groups is not None:
                    raise TaskError(
                        f"sample(groups=...): group {g.name!r} is masked (never trained on); sample it with "
                        f"split='test'"
                    )
                continue
            w[i] = g.weight
        return w


# what a kept row needs, per kind that drops rows (used in error messages)
_KIND_RULES = {
    "anchor_position": "a row is kept when moving its anchor block to another start puts, at the new key "
    "position, an unchanged token that is a valid key of the row's held-out class and of an unmasked group, "
    "differs from the old key and changes the target",
    "anchor_identity": "a row is kept when another anchor id at anchor_pos gives an unmasked group of the task "
    "that accepts the row's key and changes the target",
    "anchor_identity_2": "a row is kept when another anchor id at anchor2_pos gives an unmasked group of the task "
    "that accepts the row's key and changes the target",
}
_KIND_HINTS = {
    "anchor_position": "sample more rows (train-split rows are kept more often than test-split rows)",
    "anchor_identity": "sample more rows, or rows of other groups (e.g. multi_anchor_two_interval swaps land in an "
    "unmasked group only from its masked groups: use split='test')",
    "anchor_identity_2": "sample more rows, or rows of other groups",
}

_EXTRA_MARKS = {
    "anchor2_pos": "A2",
    "anchor_start_pos": "A0",
    "anchor_mid_pos": "A1",
    "key2_pos": "K2",
    "cue_pos": "C",
    "query_pos": "Q",
    "distractor_anchor_pos": "A'",
    "distractor_key_pos": "K'",
}


# ---------------------------------------------------------------------- argument checks


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
        raise TaskError(f"sample(n={n!r}): n must be a positive int (number of sequences)")
    return int(n)


def _check_split(split) -> str:
    if split not in SPLITS:
        raise TaskError(f"sample(split={split!r}): split must be one of {list(SPLITS)}")
    return split


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not (0 <= seed < 2**63):
        raise TaskError(f"seed={seed!r}: seed must be an int in [0, 2**63)")
    return int(seed)


def check_int_param(task: str, name: str, value, low: int, high: int) -> int:
    """Validate an integer task parameter in [low, high] (inclusive); raise TaskError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise TaskError(f"make_task({task!r}, {name}={value!r}): {name} must be an int in [{low}, {high}]")
    return value


# ---------------------------------------------------------------------- vectorised helpers


def uniform_index(count: Tensor, gen: torch.Generator) -> Tensor:
    """A uniform index in [0, count) per element (count >= 1), drawn with ``gen``."""
    u = torch.rand(count.shape, generator=gen, dtype=torch.float64)
    return torch.minimum((u * count).long(), count - 1)


def pick_valid(
    valid: Bool[Tensor, "batch choice"], gen: torch.Generator
) -> tuple[Bool[Tensor, " batch"], Int[Tensor, " batch"]]:
    """One uniformly drawn True column per row of ``valid`` (n, C): (has any (n,) bool, column (n,) long;
    0 where the row has none). Draws one number per row, valid or not, so the draw is seeded by ``gen`` alone."""
    count = valid.sum(1)  # (n,)
    r = uniform_index(count.clamp(min=1), gen)  # (n,) rank of the chosen True among the row's Trues
    col = (valid.long().cumsum(1) > r[:, None]).long().argmax(1)  # (n,) first column whose running count passes r
    return count > 0, col


def fillers(shape, gen: torch.Generator) -> Tensor:
    """Uniform filler tokens in [FILLER_LOW, FILLER_HIGH]."""
    return torch.randint(FILLER_LOW, FILLER_HIGH + 1, shape, generator=gen, dtype=torch.long)

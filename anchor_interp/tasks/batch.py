"""Batch: one set of sequences with their targets and the positions that matter.

Field names and dtypes are the shared contract of docs/interfaces.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor

_ROW_FIELDS = ("targets", "anchor_pos", "key_pos", "group")


@dataclass(frozen=True, eq=False)  # eq on tensors is ambiguous: compare fields with torch.equal
class Batch:
    """A frozen batch of ``n`` rows; every tensor is long and on the same device.

    tokens:     (n, seq) model inputs only
    targets:    (n,) the token after the last input (the only scored position); -1 = no correct answer
    anchor_pos: (n,) position of the (primary) anchor; -1 where not applicable
    key_pos:    (n,) position of the (primary) key; -1 where not applicable
    group:      (n,) index into ``task.groups``
    extra:      task-specific fields, each long (n,) (documented per task in docs/tasks.md)

    Raises ValueError on construction if shapes or dtypes disagree.
    """

    tokens: Int[Tensor, "batch seq"]
    targets: Int[Tensor, " batch"]
    anchor_pos: Int[Tensor, " batch"]
    key_pos: Int[Tensor, " batch"]
    group: Int[Tensor, " batch"]
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.tokens, Tensor) or self.tokens.ndim != 2:
            raise ValueError(f"Batch.tokens must be a 2-D long tensor (n, seq); got {_describe(self.tokens)}")
        n = self.tokens.shape[0]
        fields = [("tokens", self.tokens)] + [(f, getattr(self, f)) for f in _ROW_FIELDS]
        fields += [(f"extra[{k!r}]", v) for k, v in self.extra.items()]
        for name, t in fields:
            if not isinstance(t, Tensor):
                raise ValueError(f"Batch.{name} must be a torch.Tensor; got {type(t).__name__}")
            if t.dtype != torch.long:
                raise ValueError(f"Batch.{name} must have dtype torch.long; got {t.dtype}")
            if t.device != self.tokens.device:
                raise ValueError(f"Batch.{name} is on {t.device} but tokens are on {self.tokens.device}")
            if name != "tokens" and tuple(t.shape) != (n,):
                raise ValueError(f"Batch.{name} must have shape ({n},) to match tokens; got {tuple(t.shape)}")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def to(self, device) -> Batch:
        """The same batch on ``device`` (returns self when already there)."""
        if device is None or torch.device(device) == self.tokens.device:
            return self
        return self._map(lambda t: t.to(device))

    def select(self, index) -> Batch:
        """Rows ``index`` (an int, a slice, a long index tensor/list or a bool mask of length n)."""
        if isinstance(index, int):
            index = [index]
        if isinstance(index, (list, tuple)):
            index = torch.as_tensor(index, dtype=torch.long)
        if isinstance(index, Tensor):
            index = index.to(self.tokens.device)
            if index.dtype == torch.bool and tuple(index.shape) != (len(self),):
                raise ValueError(f"select(index): a bool mask must have shape ({len(self)},); got {tuple(index.shape)}")
        return self._map(lambda t: t[index])

    def replace(self, **fields) -> Batch:
        """A copy with the given fields replaced (``extra`` is replaced whole)."""
        return dataclasses.replace(self, **fields)

    def _map(self, fn) -> Batch:
        return Batch(
            tokens=fn(self.tokens),
            targets=fn(self.targets),
            anchor_pos=fn(self.anchor_pos),
            key_pos=fn(self.key_pos),
            group=fn(self.group),
            extra={k: fn(v) for k, v in self.extra.items()},
        )


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__

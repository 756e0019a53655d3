"""Deterministic packing of a sweep's runs into train_many stacks (the same for every executor).

Runs whose settings agree on everything but seed, n_train and init scale (:meth:`RunSpec.shape_key`)
can be trained as one batched computation. Groups are ordered by their first run in sweep order; inside
a group runs are ordered by (n_train, seed, id) so that models of similar length share a stack, then cut
into stacks of at most ``max_stack``. Packing depends only on the runs and ``max_stack``, never on which
runs are finished, so a rerun finds every stack's checkpoints where it left them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from anchor_interp.sweeps.spec import RunSpec

__all__ = ["DEFAULT_MAX_STACK", "Stack", "pack"]

DEFAULT_MAX_STACK = 8


@dataclass(frozen=True)
class Stack:
    """Runs trained together by one train_many call; ``id``: 12 hex digits hashing the run ids."""

    id: str
    runs: tuple[RunSpec, ...]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.runs]


def pack(runs: list[RunSpec], max_stack: int = DEFAULT_MAX_STACK) -> list[Stack]:
    """The stacks of ``runs`` (each at most ``max_stack`` runs of one shape). Raises ValueError for max_stack < 1."""
    if max_stack < 1:
        raise ValueError(f"max_stack={max_stack}: use an integer >= 1 (runs per train_many stack)")
    groups: dict[str, list[RunSpec]] = {}
    for r in runs:
        groups.setdefault(r.shape_key(), []).append(r)
    stacks = []
    for members in groups.values():
        members = sorted(members, key=lambda r: (r.n_train, r.seed, r.id))
        for s in range(0, len(members), max_stack):
            chunk = tuple(members[s : s + max_stack])
            sid = hashlib.sha256(",".join(r.id for r in chunk).encode()).hexdigest()[:12]
            stacks.append(Stack(sid, chunk))
    return stacks

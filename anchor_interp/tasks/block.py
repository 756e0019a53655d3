"""BlockTask: tasks whose sequence is random fillers plus one contiguous "block" of anchor and key slots.

Identity learning and its variants, recitation, composition, synonym, multi-anchor, statistical
output, classification, working memory, anchor length and the frequency pair are all block tasks:
they differ only in the slots of the block, the groups and the target function.

Layout of one row (docs/tasks.md):
    tokens = fillers; the block starts at ``s`` (uniform over the starts where it fits);
    slot (role, offset) sits at s + offset (mod seq_len for wrap-around tasks);
    key values: x = base + s ("plus" mode, the authors' ``random.choice(dataset) + pos``) or
    x = base ("direct" mode); held-out rule: the row is test iff (x - s) % 8 == residue.
    target = target_map[combine(keys) + group shift (+ a random shift for statistical tasks)].

Counterfactuals: key_swap (= key_value), anchor_move, anchor_remove for every row; anchor_position
moves the group's "unit" (its anchor tokens, and the cue for recitation) to another start by swapping
it with the tokens there; anchor_identity(_2) replaces one anchor id. The last two keep only the rows
they can build (docs/tasks.md, "Counterfactual kinds").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from anchor_interp.tasks.base import (
    FILLER_HIGH,
    FILLER_LOW,
    MODULUS,
    PAD_ID,
    VOCAB_SIZE,
    DataGroup,
    Task,
    TaskError,
    fillers,
    pick_valid,
    uniform_index,
)
from anchor_interp.tasks.batch import Batch

FIXED_ROLES = ("anchor", "anchor2", "anchor_start", "anchor_mid")  # tokens fixed by the group
KEY_ROLES = ("key", "key2")  # drawn from the group's key table
CUE_ROLE = "cue"  # a random filler-range value that is repeated at the last input (recitation)
ROLES = FIXED_ROLES + KEY_ROLES + (CUE_ROLE,)
UNIT_ROLES = FIXED_ROLES + (CUE_ROLE,)  # the slots anchor_position moves together (the keys stay)
IDENTITY_ROLE = {"anchor_identity": "anchor", "anchor_identity_2": "anchor2"}  # the anchor each kind replaces
_SPLIT_INDEX = {"train": 0, "test": 1, "all": 2}
_MAX_TRIES = 64


@dataclass(frozen=True)
class BlockGroup:
    """One data group of a block task.

    slots: (role, offset) pairs; offsets >= 0, at least one "anchor" and one "key".
    tokens: role -> token id for the fixed roles (anchors).
    key_values: base values of the key (before adding the block start in "plus" mode).
    shift: added to the combined key value to give the target.
    """

    name: str
    slots: tuple[tuple[str, int], ...]
    tokens: dict[str, int]
    key_values: tuple[int, ...]
    shift: int = 0
    weight: float = 1.0
    masked: bool = False
    extra_consts: dict[str, int] = field(default_factory=dict)  # per-group constant extra fields


class BlockTask(Task):
    """A task made of fillers and one block of slots; see the module docstring.

    combine: "key" (target from the primary key) or "mean" (floor((key + key2) / 2)).
    key_mode: "plus" (x = base + s) or "direct" (x = base).
    wrap: slot positions are taken mod seq_len (the block may wrap around the end).
    query_cue: the last input repeats the cue value (recitation); the block must end before it.
    target_map: optional dict value -> target token (classification); identity otherwise.
    random_shift: optional ((shift, prob), ...) added to the target per row (statistical output).
    """

    def __init__(
        self,
        name: str,
        params: dict,
        groups: list[BlockGroup],
        *,
        seq_len: int = 9,
        residue: int = 0,
        modulus: int = MODULUS,
        combine: str = "key",
        key_mode: str = "plus",
        wrap: bool = False,
        query_cue: bool = False,
        target_map: dict[int, int] | None = None,
        random_shift: tuple[tuple[int, float], ...] | None = None,
        max_start: int | None = None,
        definition: str = "paper",
        description: str = "",
        vocab_size: int = VOCAB_SIZE,
    ):
        super().__init__(name, params)
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.residue = residue
        self.modulus = modulus
        self.combine = combine
        self.key_mode = key_mode
        self.wrap = wrap
        self.query_cue = query_cue
        self.definition = definition
        self.description = description
        self.block_groups = tuple(groups)
        self.groups = tuple(DataGroup(g.name, float(g.weight), bool(g.masked)) for g in groups)
        anchors = sorted({t for g in groups for t in g.tokens.values()})
        self.anchor_ids = tuple(anchors)
        self._target_map = None
        if target_map is not None:
            tm = torch.arange(4 * vocab_size, dtype=torch.long)
            for k, v in target_map.items():
                tm[k] = v
            self._target_map = tm
        self._random_shift = random_shift
        self._max_start = max_start
        self._build_tables()
        self._check_layout()
        self._build_counterfactual_tables()

    # ------------------------------------------------------------------ construction

    def _build_tables(self):
        G, S = len(self.block_groups), self.seq_len
        roles_used = [r for r in ROLES if any(r in dict(g.slots) for g in self.block_groups)]
        self.roles = tuple(roles_used)
        extra = [f"{r}_pos" for r in roles_used if r not in ("anchor", "key")]
        consts = sorted({k for g in self.block_groups for k in g.extra_consts})
        self.extra_fields = tuple(extra + consts)
        self._consts = tuple(consts)

        # slot offsets (G, R), -1 where the group lacks the role; fixed tokens (G, R)
        self._offset = torch.full((G, len(roles_used)), -1, dtype=torch.long)
        self._fixed = torch.full((G, len(roles_used)), -1, dtype=torch.long)
        self._shift = torch.zeros(G, dtype=torch.long)
        self._const = torch.full((G, max(1, len(consts))), -1, dtype=torch.long)
        span = []
        for gi, g in enumerate(self.block_groups):
            slots = dict(g.slots)
            if len(slots) != len(g.slots):
                raise TaskError(f"task {self.name!r}, group {g.name!r}: a role appears twice in slots {g.slots}")
            if "anchor" not in slots or "key" not in slots:
                raise TaskError(f"task {self.name!r}, group {g.name!r}: slots need an 'anchor' and a 'key'")
            offs = sorted(slots.values())
            if len(set(offs)) != len(offs) or offs[0] != 0:
                raise TaskError(f"task {self.name!r}, group {g.name!r}: slot offsets must be distinct and start at 0")
            for ri, r in enumerate(roles_used):
                if r in slots:
                    self._offset[gi, ri] = slots[r]
                    if r in FIXED_ROLES:
                        self._fixed[gi, ri] = g.tokens[r]
            self._shift[gi] = g.shift
            for ci, c in enumerate(consts):
                self._const[gi, ci] = g.extra_consts.get(c, -1)
            span.append(max(offs))

        # allowed block starts per group (G, S) padded; counts (G,)
        last = S - 1 - (1 if self.query_cue else 0)  # last position a slot may use
        self._starts = torch.zeros(G, S, dtype=torch.long)
        self._n_starts = torch.zeros(G, dtype=torch.long)
        for gi, sp in enumerate(span):
            starts = list(range(0, S)) if self.wrap else list(range(0, last - sp + 1))
            if self._max_start is not None:
                starts = [x for x in starts if x <= self._max_start]
            if not starts or (self.wrap and sp > last):
                need = sp + 1 + (1 if self.query_cue else 0)
                raise TaskError(
                    f"make_task({self.name!r}, ...): seq_len={S} is too short for group "
                    f"{self.block_groups[gi].name!r}: its anchor/key block needs {need} positions; use seq_len >= {need}"
                )
            self._starts[gi, : len(starts)] = torch.tensor(starts)
            self._n_starts[gi] = len(starts)

        # key tables (G, 3 splits, S starts, K) padded; counts (G, 3, S)
        tables = {}
        K = 1
        for gi, g in enumerate(self.block_groups):
            base = sorted(set(int(v) for v in g.key_values))
            for s in range(S):
                for sp_name, sp in _SPLIT_INDEX.items():
                    vals = []
                    for b in base:
                        x = b + s if self.key_mode == "plus" else b
                        is_test = (x - s) % self.modulus == self.residue
                        if sp_name == "all" or is_test == (sp_name == "test"):
                            vals.append(x)
                    tables[gi, sp, s] = vals
                    K = max(K, len(vals))
        self._keys = torch.zeros(G, 3, S, K, dtype=torch.long)
        self._n_keys = torch.zeros(G, 3, S, dtype=torch.long)
        # lookup: index of value x in table (G, 3, S, V) or -1
        V = 4 * self.vocab_size
        self._key_index = torch.full((G, 3, S, V), -1, dtype=torch.long)
        for (gi, sp, s), vals in tables.items():
            if vals and max(vals) >= V:
                raise TaskError(
                    f"make_task({self.name!r}, ...): seq_len={S} makes key values reach {max(vals)}, beyond "
                    f"vocab_size={self.vocab_size}; use a shorter seq_len"
                )
            self._n_keys[gi, sp, s] = len(vals)
            if vals:
                self._keys[gi, sp, s, : len(vals)] = torch.tensor(vals)
                self._key_index[gi, sp, s, torch.tensor(vals)] = torch.arange(len(vals))

    def _check_layout(self):
        """Raise TaskError for empty splits or keys/targets that collide with anchors or leave the vocab."""
        anchors = set(self.anchor_ids)
        for a in anchors:
            if FILLER_LOW <= a <= FILLER_HIGH or a == PAD_ID or not (0 < a < self.vocab_size):
                raise TaskError(
                    f"make_task({self.name!r}, ...): anchor id {a} must be in 1..{FILLER_LOW - 1} "
                    f"(not padding 0, not a filler {FILLER_LOW}..{FILLER_HIGH})"
                )
        for gi, g in enumerate(self.block_groups):
            starts = self._starts[gi, : self._n_starts[gi]].tolist()
            splits = ("all",) if g.masked else ("train", "test")
            for s in starts:
                for sp in splits:
                    if self._n_keys[gi, _SPLIT_INDEX[sp], s] == 0:
                        raise TaskError(
                            f"make_task({self.name!r}, ...): the held-out rule (key - block start) % {self.modulus} == "
                            f"{self.residue} leaves the {sp} split of group {g.name!r} empty at block start {s}; "
                            f"give the group key values of both residue classes (or change residue)"
                        )
            keys = set(self._keys[gi, 2][self._keys_mask(gi)].tolist())
            bad = sorted(keys & anchors)
            if bad:
                raise TaskError(
                    f"make_task({self.name!r}, ...): key values {bad} of group {g.name!r} overlap anchor ids "
                    f"{sorted(anchors)}; keys must lie outside the anchor ids"
                )
        targets = self.target_ids()
        bad = sorted(set(targets) & (anchors | {PAD_ID}))
        if bad:
            raise TaskError(
                f"make_task({self.name!r}, ...): targets {bad} land on anchor ids / padding "
                f"{sorted(anchors | {PAD_ID})}; choose anchors, shifts or key values whose targets stay above "
                f"{max(anchors | {PAD_ID})}"
            )
        if max(targets) >= self.vocab_size or min(targets) < 0:
            raise TaskError(
                f"make_task({self.name!r}, ...): targets reach {max(targets)} but vocab_size is {self.vocab_size}; "
                f"use a shorter seq_len or smaller shifts"
            )

    def _build_counterfactual_tables(self):
        """Tables of the single-factor kinds: each group's moving unit, and the groups a row may land in."""
        groups, G = self.block_groups, len(self.block_groups)
        unit_ri = [ri for ri, r in enumerate(self.roles) if r in UNIT_ROLES]
        offs = [[int(self._offset[gi, ri]) for ri in unit_ri if self._offset[gi, ri] >= 0] for gi in range(G)]
        self._unit_offset = torch.full((G, max(len(o) for o in offs)), -1, dtype=torch.long)  # (G, U)
        for gi, o in enumerate(offs):
            self._unit_offset[gi, : len(o)] = torch.tensor(o, dtype=torch.long)
        layout = [(tuple(sorted(g.slots)), tuple(sorted(g.extra_consts.items()))) for g in groups]
        open_ = [not g.masked for g in groups]
        # anchor_position: same layout and anchor ids, unmasked (e.g. 3_I1 -> 3_I2 when the new key is in I2)
        self._siblings = torch.tensor(
            [[layout[a] == layout[b] and groups[a].tokens == groups[b].tokens and open_[b] for b in range(G)]
             for a in range(G)], dtype=torch.bool)  # (G, G)
        # anchor_identity(_2): same layout, the role's anchor id differs, every other anchor id equal, unmasked
        self._identity_swap = {}
        for role in IDENTITY_ROLE.values():
            m = torch.zeros(G, G, dtype=torch.bool)
            for a, ga in enumerate(groups):
                for b, gb in enumerate(groups):
                    m[a, b] = (layout[a] == layout[b] and open_[b] and role in ga.tokens and role in gb.tokens
                               and ga.tokens[role] != gb.tokens[role]
                               and all(gb.tokens[k] == v for k, v in ga.tokens.items() if k != role))
            self._identity_swap[role] = m

    def _kind_unavailable(self, kind: str) -> str | None:
        if kind == "anchor_position":
            if bool((self._n_starts < 2).all()):
                return (f"the anchor block has a single possible start (seq_len={self.seq_len}), so the anchor "
                        f"cannot move")
            return None
        if kind in IDENTITY_ROLE:
            role = IDENTITY_ROLE[kind]
            where = "anchor_pos" if role == "anchor" else "extra['anchor2_pos']"
            if role not in self.roles:
                return "its layout has no second anchor (anchor_identity_2 is for two-anchor blocks like composition's a1 a2)"
            m = self._identity_swap[role]
            if not bool(m.any()):
                ids = sorted({g.tokens[role] for g in self.block_groups if role in g.tokens})
                return (f"no unmasked group has the same layout as another group and differs from it only in the "
                        f"anchor at {where} (anchor ids there: {ids})")
            if not bool((m & (self._shift[:, None] != self._shift[None, :])).any()):
                return (f"every anchor id it could put at {where} gives the same target (its anchors map keys to "
                        f"the same value), so the target would never change")
            return None
        return super()._kind_unavailable(kind)

    def _keys_mask(self, gi: int) -> Tensor:
        K = self._keys.shape[-1]
        return torch.arange(K)[None, :] < self._n_keys[gi, 2][:, None]  # (S, K)

    # ------------------------------------------------------------------ targets

    def _targets(self, keys: dict[str, Tensor], group: Tensor, rshift: Tensor | None) -> Tensor:
        if self.combine == "mean":
            v = torch.div(keys["key"] + keys["key2"], 2, rounding_mode="floor")
        else:
            v = keys["key"]
        v = v + self._shift[group]
        if rshift is not None:
            v = v + rshift
        if self._target_map is not None:
            v = self._target_map[v]
        return v

    def target_ids(self, split: str | None = None) -> tuple[int, ...]:
        """Sorted target ids reachable in ``split`` (None: both splits)."""
        out = set()
        shifts = [0] if self._random_shift is None else [s for s, _ in self._random_shift]
        for gi, g in enumerate(self.block_groups):
            if split == "train" and g.masked:
                continue
            sps = ["all"] if (g.masked or split is None) else [split]
            for sp in sps:
                for s in self._starts[gi, : self._n_starts[gi]].tolist():
                    n = int(self._n_keys[gi, _SPLIT_INDEX[sp], s])
                    vals = self._keys[gi, _SPLIT_INDEX[sp], s, :n]
                    if self.combine == "mean":
                        v = torch.div(vals[:, None] + vals[None, :], 2, rounding_mode="floor").reshape(-1)
                    else:
                        v = vals
                    for r in shifts:
                        w = v + int(self._shift[gi]) + r
                        if self._target_map is not None:
                            w = self._target_map[w]
                        out.update(w.tolist())
        return tuple(sorted(out))

    def target_probs(self, batch: Batch) -> Tensor:
        if self._random_shift is None:
            return super().target_probs(batch)
        # rows' expected distribution: the deterministic part is target - sampled shift; recover it from keys
        cpu = batch.to("cpu")
        ok = cpu.targets >= 0
        keys = {"key": cpu.tokens.gather(1, cpu.key_pos.clamp(min=0)[:, None])[:, 0]}
        base = self._targets(keys, cpu.group, None)
        probs = torch.zeros(len(cpu), self.vocab_size)
        for s, p in self._random_shift:
            probs[ok, (base + s)[ok]] += p
        return probs.to(batch.device)

    # ------------------------------------------------------------------ sampling

    def _sample(self, n: int, split: str, gen: torch.Generator, weights: Tensor) -> Batch:
        G, S = len(self.block_groups), self.seq_len
        if G == 1:
            group = torch.zeros(n, dtype=torch.long)
        else:
            group = torch.multinomial(weights, n, replacement=True, generator=gen)
        tokens = fillers((n, S), gen)  # (n, S)
        s = self._starts[group, uniform_index(self._n_starts[group], gen)]  # (n,)
        masked = torch.tensor([g.masked for g in self.block_groups])[group]
        sp = torch.where(masked, 2, _SPLIT_INDEX[split])  # masked groups (test only) draw from all values
        keys = {}
        for r in self.roles:
            if r in KEY_ROLES:
                keys[r] = self._draw_keys(group, sp, s, gen)
        cue = fillers((n,), gen) if CUE_ROLE in self.roles else None
        rshift = self._draw_rshift(n, gen)
        pos = self._write_block(tokens, group, s, keys, cue)
        if self.query_cue:
            tokens[:, S - 1] = cue
        targets = self._targets(keys, group, rshift)
        return self._make_batch(tokens, targets, pos, group)

    def _draw_keys(self, group: Tensor, sp: Tensor, s: Tensor, gen: torch.Generator, exclude: Tensor | None = None):
        """Key values from the (group, split, start) tables; with ``exclude``, never that value."""
        count = self._n_keys[group, sp, s]
        if exclude is None:
            return self._keys[group, sp, s, uniform_index(count, gen)]
        ex_idx = self._key_index[group, sp, s, exclude.clamp(0, self._key_index.shape[-1] - 1)]
        has = (ex_idx >= 0).long()
        if bool((count - has < 1).any()):
            bad = int(((count - has) < 1).nonzero()[0, 0])
            raise TaskError(
                f"counterfactual: task {self.name!r} group {self.block_groups[int(group[bad])].name!r} has only one "
                f"valid key value at block start {int(s[bad])}; key_swap/anchor_move need two"
            )
        idx = uniform_index(count - has, gen)
        idx = idx + ((has == 1) & (idx >= ex_idx)).long()
        return self._keys[group, sp, s, idx]

    def _draw_rshift(self, n: int, gen: torch.Generator) -> Tensor | None:
        if self._random_shift is None:
            return None
        shifts = torch.tensor([s for s, _ in self._random_shift], dtype=torch.long)
        probs = torch.tensor([p for _, p in self._random_shift], dtype=torch.float64)
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        idx = torch.searchsorted(torch.cumsum(probs, 0)[:-1].contiguous(), u, right=True)
        return shifts[idx]

    def _positions(self, group: Tensor, s: Tensor) -> Tensor:
        """(n, R) absolute slot positions, -1 where the row's group lacks the role."""
        off = self._offset[group]  # (n, R)
        pos = s[:, None] + off
        if self.wrap:
            pos = pos % self.seq_len
        return torch.where(off >= 0, pos, -1)

    def _write_block(self, tokens, group, s, keys, cue) -> Tensor:
        pos = self._positions(group, s)  # (n, R)
        fixed = self._fixed[group]  # (n, R)
        rows = torch.arange(tokens.shape[0])
        for ri, r in enumerate(self.roles):
            p = pos[:, ri]
            if r in KEY_ROLES:
                val = keys[r]
            elif r == CUE_ROLE:
                val = cue
            else:
                val = fixed[:, ri]
            has = p >= 0
            if bool(has.all()):
                tokens[rows, p] = val
            else:
                tokens[rows[has], p[has]] = val[has]
        return pos

    def _make_batch(self, tokens, targets, pos, group) -> Batch:
        col = {r: pos[:, i] for i, r in enumerate(self.roles)}
        extra = {f"{r}_pos": col[r] for r in self.roles if r not in ("anchor", "key")}
        for ci, c in enumerate(self._consts):
            extra[c] = self._const[group, ci]
        return Batch(tokens=tokens, targets=targets, anchor_pos=col["anchor"], key_pos=col["key"], group=group,
                     extra=extra)

    # ------------------------------------------------------------------ counterfactuals

    def _block_start(self, batch: Batch) -> Tensor:
        off = self._offset[batch.group, self.roles.index("anchor")]
        s = batch.anchor_pos - off
        return s % self.seq_len if self.wrap else s

    def _row_split(self, batch: Batch, s: Tensor) -> Tensor:
        """Split index per row (0 train, 1 test, 2 masked group), from the held-out rule."""
        key = batch.tokens.gather(1, batch.key_pos[:, None])[:, 0]
        is_test = (key - s) % self.modulus == self.residue
        masked = torch.tensor([g.masked for g in self.block_groups])[batch.group]
        return torch.where(masked, 2, is_test.long())

    def _read_keys(self, batch: Batch) -> dict[str, Tensor]:
        keys = {}
        for r in self.roles:
            if r in KEY_ROLES:
                p = batch.key_pos if r == "key" else batch.extra[f"{r}_pos"]
                keys[r] = batch.tokens.gather(1, p.clamp(min=0)[:, None])[:, 0]
        return keys

    def _rshift_of(self, batch: Batch, keys) -> Tensor | None:
        if self._random_shift is None:
            return None
        return batch.targets - self._targets(keys, batch.group, None)

    def _counterfactual(self, batch: Batch, kind: str, gen: torch.Generator) -> Batch:
        n = len(batch)
        group = batch.group
        s = self._block_start(batch)
        sp = self._row_split(batch, s)
        keys = self._read_keys(batch)
        rshift = self._rshift_of(batch, keys)
        tokens = batch.tokens.clone()
        rows = torch.arange(n)
        pos = self._positions(group, s)

        if kind == "anchor_remove":
            for ri, r in enumerate(self.roles):
                if r in FIXED_ROLES:
                    p = pos[:, ri]
                    has = p >= 0
                    tokens[rows[has], p[has]] = fillers((int(has.sum()),), gen)
            minus = torch.full((n,), -1, dtype=torch.long)
            extra = {k: (minus if k.endswith("_pos") else v) for k, v in batch.extra.items()}
            return Batch(tokens=tokens, targets=minus, anchor_pos=minus, key_pos=minus, group=group, extra=extra)

        if kind == "key_swap":
            new_keys = {r: v.clone() for r, v in keys.items()}
            todo = torch.ones(n, dtype=torch.bool)
            targets = batch.targets.clone()
            for _ in range(_MAX_TRIES):
                idx = todo.nonzero()[:, 0]
                new_keys["key"][idx] = self._draw_keys(group[idx], sp[idx], s[idx], gen, exclude=keys["key"][idx])
                sub = {r: v[idx] for r, v in new_keys.items()}
                targets[idx] = self._targets(sub, group[idx], None if rshift is None else rshift[idx])
                todo = targets == batch.targets
                if not bool(todo.any()):
                    break
            self._check_changed(todo, kind)
            kp = batch.key_pos
            tokens[rows, kp] = new_keys["key"]
            return batch.replace(tokens=tokens, targets=targets)

        # anchor_move: move the block's non-key slots to a new start; write fresh keys there
        n_st = self._n_starts[group]
        if bool((n_st < 2).any()):
            raise TaskError(
                f"counterfactual(kind='anchor_move'): task {self.name!r} has only one anchor position "
                f"(seq_len={self.seq_len}); the anchor cannot move. Use key_swap or anchor_remove"
            )
        cur = (self._starts[group] == s[:, None]).long().argmax(1)  # index of s among the starts
        j = uniform_index(n_st - 1, gen)
        j = j + (j >= cur).long()
        s_new = self._starts[group, j]
        cue = None
        for ri, r in enumerate(self.roles):  # old anchors/cue -> fresh fillers; the old key stays
            if r in FIXED_ROLES or r == CUE_ROLE:
                p = pos[:, ri]
                has = p >= 0
                if r == CUE_ROLE:
                    cue = tokens[rows, p.clamp(min=0)]
                tokens[rows[has], p[has]] = fillers((int(has.sum()),), gen)
        new_keys = {}
        targets = torch.empty(n, dtype=torch.long)
        todo = torch.ones(n, dtype=torch.bool)
        for _ in range(_MAX_TRIES):
            idx = todo.nonzero()[:, 0]
            for r in self.roles:
                if r in KEY_ROLES:
                    drawn = self._draw_keys(group[idx], sp[idx], s_new[idx], gen)
                    new_keys.setdefault(r, torch.empty(n, dtype=torch.long))[idx] = drawn
            sub = {r: v[idx] for r, v in new_keys.items()}
            targets[idx] = self._targets(sub, group[idx], None if rshift is None else rshift[idx])
            todo = targets == batch.targets
            if not bool(todo.any()):
                break
        self._check_changed(todo, "anchor_move")
        new_pos = self._write_block(tokens, group, s_new, new_keys, cue)
        return self._make_batch(tokens, targets, new_pos, group)

    # ------------------------------------------------------------------ single-factor counterfactuals

    def _counterfactual_kept(self, batch: Batch, kind: str, gen: torch.Generator) -> tuple[Batch, Tensor]:
        if kind == "anchor_position":
            return self._anchor_position(batch, gen)
        return self._anchor_identity(batch, IDENTITY_ROLE[kind], gen)

    def _rule_split(self, batch: Batch, s: Tensor) -> Tensor:
        """Held-out class of each row by the rule (0 train, 1 test), masked groups included."""
        key = batch.tokens.gather(1, batch.key_pos[:, None])[:, 0]  # (n,)
        return ((key - s) % self.modulus == self.residue).long()

    def _unit_positions(self, group: Tensor, s: Tensor) -> Tensor:
        """(n, U) positions of the group's unit (anchors, cue) for block start s; -1 past the group's unit."""
        off = self._unit_offset[group]  # (n, U)
        pos = s[:, None] + off
        if self.wrap:
            pos = pos % self.seq_len
        return torch.where(off >= 0, pos, -1)

    def _move_unit(self, tokens: Tensor, group: Tensor, s: Tensor, s_new: Tensor) -> Tensor:
        """Tokens with each row's unit moved from start s to s_new: a permutation of the row. The unit's
        tokens go to their new positions; the tokens they displace go to the freed old positions, in
        position order; every other token stays."""
        n, S = tokens.shape
        U = self._unit_offset.shape[1]
        src, dst = self._unit_positions(group, s), self._unit_positions(group, s_new)  # (n, U)
        src, dst = torch.where(src >= 0, src, S), torch.where(dst >= 0, dst, S)  # column S: a dump column
        in_old = torch.zeros(n, S + 1, dtype=torch.bool).scatter_(1, src, True)[:, :S]  # (n, S)
        in_new = torch.zeros(n, S + 1, dtype=torch.bool).scatter_(1, dst, True)[:, :S]  # (n, S)
        ar = torch.arange(S).expand(n, S)  # (n, S)
        displaced, freed = in_new & ~in_old, in_old & ~in_new  # (n, S), as many of each per row
        out_of = torch.argsort(torch.where(displaced, ar, ar + S), dim=1, stable=True)[:, :U]  # (n, U)
        into = torch.argsort(torch.where(freed, ar, ar + S), dim=1, stable=True)[:, :U]  # (n, U)
        used = torch.arange(U)[None, :] < displaced.sum(1)[:, None]  # (n, U)
        perm = torch.cat([ar, torch.full((n, 1), S)], 1)  # (n, S+1): perm[q] = source of the token at q
        perm.scatter_(1, torch.where(used, into, S), out_of)
        perm.scatter_(1, dst, src)
        return tokens.gather(1, perm[:, :S])  # (n, S)

    def _anchor_position(self, batch: Batch, gen: torch.Generator) -> tuple[Batch, Tensor]:
        """Move each row's unit to another start (a permutation of the row); keep the rows where some
        start puts an unchanged, valid, different key at the new key position and changes the target."""
        n, G = len(batch), len(self.block_groups)
        group, tokens = batch.group, batch.tokens  # (n,), (n, S)
        s = self._block_start(batch)  # (n,)
        sp = self._rule_split(batch, s)  # (n,) the new row keeps the held-out class of the clean row
        keys = self._read_keys(batch)
        rshift = self._rshift_of(batch, keys)
        old_unit = self._unit_positions(group, s)  # (n, U)
        key_ri = [ri for ri, r in enumerate(self.roles) if r in KEY_ROLES]
        V = self._key_index.shape[-1]
        C = self._starts.shape[1]
        valid = torch.zeros(n, C, dtype=torch.bool)  # (n, C): start index j is a valid move
        new_group = torch.zeros(n, C, dtype=torch.long)
        new_target = torch.zeros(n, C, dtype=torch.long)
        for j in range(int(self._n_starts.max())):
            s_new = self._starts[group, j]  # (n,)
            ok = (j < self._n_starts[group]) & (s_new != s)  # (n,)
            kpos = self._positions(group, s_new)[:, key_ri]  # (n, K)
            has_k = kpos >= 0
            # the new key must be the token already there: no new key position is an old unit position (nor a
            # new one: slots are distinct), so the moved row holds the clean row's token there
            hit = (kpos[:, :, None] == old_unit[:, None, :]) & has_k[:, :, None] & (old_unit[:, None, :] >= 0)
            ok &= ~hit.flatten(1).any(1)
            new_keys = {self.roles[ri]: tokens.gather(1, kpos[:, i:i + 1].clamp(min=0))[:, 0]
                        for i, ri in enumerate(key_ri)}
            # groups that take the new keys at s_new in the row's held-out class (same anchors, unmasked)
            accepts = self._siblings[group].clone()  # (n, G)
            for i, ri in enumerate(key_ri):
                x = new_keys[self.roles[ri]].clamp(0, V - 1)
                inside = self._key_index[torch.arange(G)[None, :], sp[:, None], s_new[:, None], x[:, None]] >= 0
                accepts &= inside | ~has_k[:, i:i + 1]  # (n, G)
            g_new = accepts.long().argmax(1)  # (n,) the first accepting group (at most one in every shipped task)
            tgt = self._targets(new_keys, g_new, rshift)  # (n,)
            ok &= accepts.any(1) & (new_keys["key"] != keys["key"]) & (tgt != batch.targets)
            valid[:, j], new_group[:, j], new_target[:, j] = ok, g_new, tgt
        kept, j = pick_valid(valid, gen)  # (n,), (n,)
        idx = kept.nonzero()[:, 0]  # (k,)
        j = j[idx]
        s_new = self._starts[group[idx], j]  # (k,)
        g_new = new_group[idx, j]  # (k,)
        toks = self._move_unit(tokens[idx], group[idx], s[idx], s_new)  # (k, S)
        pos = self._positions(g_new, s_new)  # (k, R)
        return self._make_batch(toks, new_target[idx, j], pos, g_new), idx

    def _anchor_identity(self, batch: Batch, role: str, gen: torch.Generator) -> tuple[Batch, Tensor]:
        """Replace the anchor of ``role`` by another group's anchor id (same layout, same other anchors,
        unmasked, the row's key in its table); keep the rows where such a group changes the target."""
        n, G = len(batch), len(self.block_groups)
        group = batch.group
        s = self._block_start(batch)  # (n,)
        sp = self._rule_split(batch, s)  # (n,)
        keys = self._read_keys(batch)
        rshift = self._rshift_of(batch, keys)
        V = self._key_index.shape[-1]
        grid = torch.arange(G)[None, :].expand(n, G)  # (n, G)
        accepts = self._identity_swap[role][group].clone()  # (n, G)
        for r, x in keys.items():
            absent = (batch.key_pos if r == "key" else batch.extra[f"{r}_pos"]) < 0  # (n,) group without this key
            inside = self._key_index[grid, sp[:, None], s[:, None], x.clamp(0, V - 1)[:, None]] >= 0  # (n, G)
            accepts &= inside | absent[:, None]
        tgt = self._targets({r: x[:, None] for r, x in keys.items()}, grid,
                            None if rshift is None else rshift[:, None])  # (n, G)
        kept, g = pick_valid(accepts & (tgt != batch.targets[:, None]), gen)  # (n,), (n,)
        idx = kept.nonzero()[:, 0]  # (k,)
        g_new = g[idx]  # (k,)
        pos = self._positions(g_new, s[idx])  # (k, R), the same slots as the old group
        ri = self.roles.index(role)
        tokens = batch.tokens[idx].clone()  # (k, S)
        tokens[torch.arange(len(idx)), pos[:, ri]] = self._fixed[g_new, ri]
        return self._make_batch(tokens, tgt[idx, g_new], pos, g_new), idx

    def _check_changed(self, todo: Tensor, kind: str):
        if bool(todo.any()):
            raise TaskError(
                f"counterfactual(kind={kind!r}): task {self.name!r} could not change the target of "
                f"{int(todo.sum())} rows in {_MAX_TRIES} draws; the group has too few key values"
            )

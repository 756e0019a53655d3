"""Oracle for head roles: a slow, exhaustive causal analysis of a trained anchor model.

    python analyses/oracle_heads.py --zoo default
    python analyses/oracle_heads.py --checkpoint runs/small0 --n-samples 512 --seed 0 --json oracle.json

It shares nothing with the labeller (``anchor_interp.heads`` / ``anchor_interp.pipeline``): it uses
plain TransformerLens hooks and imports from ``anchor_interp`` only the tasks (``anchor_interp.tasks``)
and model loading (``anchor_interp.models.checkpoint``, ``anchor_interp.models.zoo``). The decision
rule and its thresholds are documented in docs/validation.md.

What it measures, per attention head (L, H) and per counterfactual kind (the key value alone, the
anchor position alone, and for tasks with several anchor ids the anchor identity), with the answer
metric = logit(clean target) - logit(counterfactual target) at the last position, normalised
``(patched - corrupt) / (clean - corrupt)`` (run the corrupt input, patch in clean activations):

1. Source. The head's output at destination d is ``z_d = sum_s A[d,s] v_s``. A *source* is a set of
   (d, s) terms: every term with ``s - d = k`` (one per offset k), every term whose s is a task slot
   (anchor, key, ... read from each run's own positions; at every d, or at the last row only), or all
   terms. Patching a source replaces, in the corrupt run, the corrupt terms of that set by the clean
   ones (z recomputed from the two runs' patterns and values, at hook_z); everything downstream is
   recomputed. -> the source's total effect.
2. Route. Path patching of the head's output change ``(z_clean - z_corrupt) @ W_O[H]`` (all positions)
   into one receiver only: a later head's query, key or value input (each head, and all heads of a
   layer at once), a later MLP's input, or the logits (the residual going straight to the final
   LayerNorm and the unembedding; the LayerNorm scale is *recomputed* from the patched residual).
   Everything else stays at its corrupt value. Receiver q/k/v are recomputed by this script from the
   corrupt residual plus the change (``ln1(resid_pre + delta) @ W_Q[H'] + b_Q[H']``).
3. Cross product. The same path patching for the output change of every source of item 1
   (every offset, every slot) into every receiver: what information, from where, goes where.

Every number here is exact activation patching (no gradients); same seed, same numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# ----------------------------------------------------------------------------------------------
# Decision rule thresholds (docs/validation.md explains each choice).

# A source (offset k, or a task slot) "matters" when patching it alone recovers at least this fraction
# of the clean-corrupt logit difference. Hand-made checks on the shipped default model found 0.17-0.45
# for heads that do the job and 0.001-0.03 for heads that do not (shared/spec/head_roles.md).
EFFECT_MIN = 0.10
# A role needs a route: the path effect of that source's output into at least one later receiver
# (a head's q, k or v input, all heads of a layer, an MLP, or the logits) must reach this. Lower than
# EFFECT_MIN because one role's effect can split over several receivers (e.g. keys and values).
ROUTE_MIN = 0.05
# "The same offset across sequences" / "one slot wherever it is": the effect of an offset or slot must
# be spread over the anchor positions. With p uniform over 6-9 positions an evenly spread effect puts
# 0.11-0.17 of itself in the largest anchor-position group; a broadcast head's single offset puts ~1.0
# in one group (the rows whose key happens to sit at that offset from the last row).
CONCENTRATION_MAX = 0.5
MIN_GROUPS = 3  # fewer anchor positions than this: the concentration test is skipped (reported)
# Edges: a test passed or failed by less than this (an effect, a share, a route) is reported (``edge`` on a
# role, ``near_misses``, ``at_edge`` per head): the oracle has no intervals, so this says where its own
# label could go either way; it does not change the label.
NEAR = 0.02
MIN_ROWS = 32  # fewest usable pairs (model right on the clean and the corrupt row) per counterfactual
ROWS_PER_FORWARD = 4096  # patched runs are batched: many patches in one forward, this many rows at most
ROUTE_PRINT_MIN = 0.02  # route entries printed in the table (the JSON has all)

KEY_KINDS = ("key_value", "key_swap")  # the first one the task offers is used
POSITION_KINDS = ("anchor_position", "anchor_move")  # anchor_move (two-factor) only as a fallback
IDENTITY_KINDS = ("anchor_identity", "anchor_identity_2")  # every one the task offers (several anchor ids)
SINGLE_FACTOR = {"key_value", "key_swap", "anchor_position", "anchor_identity", "anchor_identity_2"}


class OracleError(ValueError):
    """Bad input: unknown model, a model that does not solve its task, an unwritable output."""


# ----------------------------------------------------------------------------------------------
# counterfactual pairs


@dataclass
class Pair:
    """One counterfactual kind: row-paired clean and corrupt batches the model solves both ways."""

    kind: str
    clean: object  # anchor_interp.tasks.Batch
    corrupt: object
    rows_sampled: int
    rows_invalid: int  # dropped by the task (no valid counterfactual) or with equal targets
    rows_unsolved: int  # dropped because the model is wrong on the clean or the corrupt row


def available_kinds(task) -> tuple[list[str], list[str]]:
    """The counterfactual kinds to use for ``task``, and notes about fallbacks."""
    from anchor_interp.tasks import COUNTERFACTUAL_KINDS

    offered = task.counterfactual_kinds() if hasattr(task, "counterfactual_kinds") else COUNTERFACTUAL_KINDS
    kinds, notes = [], []
    for family, label in ((KEY_KINDS, "key value"), (POSITION_KINDS, "anchor position")):
        have = [k for k in family if k in offered]
        if not have:
            notes.append(f"task {task.name!r} offers no {label} counterfactual")
            continue
        kinds.append(have[0])
        if have[0] not in SINGLE_FACTOR:
            notes.append(f"{have[0]!r} used for the {label}: it is two-factor (the single-factor kind "
                         f"{family[0]!r} is not offered)")
    kinds += [k for k in IDENTITY_KINDS if k in offered]
    return kinds, notes


def _counterfactual(task, clean, kind: str, seed: int):
    """(clean, corrupt): the rows with a valid counterfactual of ``kind`` (``task.counterfactual_pair``
    drops rows without a valid new anchor start or identity), row-paired."""
    if hasattr(task, "counterfactual_pair"):
        pair = task.counterfactual_pair(clean, kind, seed=seed)
        return pair.clean, pair.corrupt
    return clean, task.counterfactual(clean, kind, seed=seed)


def make_pair(model, task, kind: str, n: int, seed: int, split: str, kind_index: int,
              all_rows: bool = False) -> Pair:
    import torch

    clean = task.sample(n, split=split, seed=seed)
    clean, corrupt = _counterfactual(task, clean, kind, seed=seed * 1009 + 17 + kind_index)
    n_valid = len(clean)
    keep = (clean.targets >= 0) & (corrupt.targets >= 0) & (clean.targets != corrupt.targets)
    dev = next(model.parameters()).device
    with torch.no_grad():
        pred_c = model(clean.tokens.to(dev))[:, -1].argmax(-1).cpu()
        pred_x = model(corrupt.tokens.to(dev))[:, -1].argmax(-1).cpu()
    solved = keep & (pred_c == clean.targets.cpu()) & (pred_x == corrupt.targets.cpu())
    if all_rows:
        solved = keep
    idx = solved.nonzero().squeeze(1)
    return Pair(kind=kind, clean=clean.select(idx).to(dev), corrupt=corrupt.select(idx).to(dev),
                rows_sampled=n, rows_invalid=n - n_valid + int((~keep).sum()),
                rows_unsolved=int((keep & ~solved).sum()))


def slot_positions(batch) -> dict[str, object]:
    """Task slots of a batch: name -> (n,) positions (-1 = absent). anchor, key, then every
    ``*_pos`` extra field (anchor2, key2, cue, query, ...)."""
    slots = {"anchor": batch.anchor_pos, "key": batch.key_pos}
    for name, t in sorted(batch.extra.items()):
        if name.endswith("_pos"):
            slots[name[: -len("_pos")]] = t
    return slots


# ----------------------------------------------------------------------------------------------
# the patching engine


@dataclass
class Patch:
    """One patched corrupt run: start at layer ``start`` from the cached corrupt residual (plus
    ``input_add``), with ``hooks`` = [(hook name, fn(activation rows) -> activation rows)]."""

    start: int
    hooks: list
    input_add: object = None  # (n, T or 1, d_model) added to the input residual


class PairRun:
    """Caches of the clean and corrupt runs of one pair, and batched patched runs."""

    CACHED = ("hook_pattern", "hook_v", "hook_z", "hook_resid_pre", "hook_resid_mid", "hook_resid_post")

    def __init__(self, model, pair: Pair):
        import torch

        self.model, self.pair = model, pair
        self.n, self.T = pair.clean.tokens.shape
        cfg = model.cfg
        self.L, self.H = cfg.n_layers, cfg.n_heads
        with torch.no_grad():
            logits_c, self.cc = model.run_with_cache(pair.clean.tokens, names_filter=self._cached)
            logits_x, self.cx = model.run_with_cache(pair.corrupt.tokens, names_filter=self._cached)
        self.t_clean, self.t_cf = pair.clean.targets, pair.corrupt.targets
        self.m_clean = self.metric(logits_c[:, -1])
        self.m_corrupt = self.metric(logits_x[:, -1])
        self.gap = float((self.m_clean - self.m_corrupt).mean())
        # anchor-position groups (clean anchor position) for the concentration test
        self.groups = pair.clean.anchor_pos
        self.group_ids = sorted(set(self.groups.tolist()))
        self.slots_c = slot_positions(pair.clean)
        self.slots_x = slot_positions(pair.corrupt)

    def _cached(self, name: str) -> bool:
        return name.endswith(self.CACHED)

    def metric(self, last_logits):
        """Per-row logit difference clean target - counterfactual target; last_logits (rows, V)."""
        reps = last_logits.shape[0] // self.n
        tc, tx = self.t_clean.repeat(reps), self.t_cf.repeat(reps)
        return last_logits.gather(1, tc[:, None])[:, 0] - last_logits.gather(1, tx[:, None])[:, 0]

    def final(self, resid):
        """Logits from the final residual (the model's own ln_final and unembed; only the rows given)."""
        if self.model.cfg.normalization_type is not None:
            resid = self.model.ln_final(resid)
        return self.model.unembed(resid)

    def input_resid(self, start: int):
        if start >= self.L:
            return self.cx[f"blocks.{self.L - 1}.hook_resid_post"][:, -1:]
        return self.cx[f"blocks.{start}.hook_resid_pre"]

    def run(self, patches: list[Patch]):
        """Per-row patched metric, (len(patches), n). Patches with the same start run batched."""
        import torch

        out = torch.empty(len(patches), self.n, device=self.m_clean.device)
        by_start: dict[int, list[int]] = {}
        for i, p in enumerate(patches):
            by_start.setdefault(p.start, []).append(i)
        per = max(1, ROWS_PER_FORWARD // self.n)
        for start, idxs in sorted(by_start.items()):
            base = self.input_resid(start)
            for c in range(0, len(idxs), per):
                chunk = idxs[c : c + per]
                x = base.repeat(len(chunk), 1, 1)
                hooks: dict[str, list] = {}
                for j, i in enumerate(chunk):
                    p = patches[i]
                    rows = slice(j * self.n, (j + 1) * self.n)
                    if p.input_add is not None:
                        x[rows] = x[rows] + p.input_add[:, -x.shape[1]:]
                    for name, fn in p.hooks:
                        hooks.setdefault(name, []).append((rows, fn))
                fwd = [(name, self._hook(fns)) for name, fns in hooks.items()]
                with torch.no_grad():
                    resid = self.model.run_with_hooks(x, start_at_layer=start, stop_at_layer=self.L, fwd_hooks=fwd)
                    out[chunk] = self.metric(self.final(resid[:, -1:])[:, -1]).view(len(chunk), self.n)
        return out

    @staticmethod
    def _hook(fns):
        def hook(act, hook):
            act = act.clone()
            for rows, fn in fns:
                act[rows] = fn(act[rows])
            return act

        return hook

    def effect(self, patched) -> list[float]:
        """Normalised effect of each row of ``patched`` (k, n)."""
        return ((patched - self.m_corrupt).mean(1) / self.gap).tolist()

    def concentration(self, patched) -> list[float]:
        """Share of each patch's (positive) effect carried by its largest anchor-position group."""
        import torch

        d = patched - self.m_corrupt  # (k, n)
        per_group = torch.stack([d[:, self.groups == g].sum(1) for g in self.group_ids], 1).clamp(min=0)
        tot = per_group.sum(1)
        share = per_group.max(1).values / tot
        return [float(s) if t > 0 else float("nan") for s, t in zip(share.tolist(), tot.tolist(), strict=True)]

    # ------------------------------------------------------------------ sources

    def source_masks(self):
        """name -> (clean mask, corrupt mask), each (n, T_dest, T_src) bool, for every source."""
        import torch

        T, n, dev = self.T, self.n, self.m_clean.device
        d = torch.arange(T, device=dev)
        rel = d[None, :] - d[:, None]  # rel[dest, src] = src - dest
        masks = {"all": (torch.ones(n, T, T, dtype=torch.bool, device=dev),) * 2}
        last = (d == T - 1)[None, :, None]  # (1, T_dest, 1)
        for k in range(-(T - 1), T):
            m = (rel == k)[None].expand(n, T, T)
            masks[f"offset{k:+d}"] = (m, m)
        for k in range(-(T - 1), T):  # the same terms at every destination but the last (scored) row
            m = (rel == k)[None].expand(n, T, T) & ~last
            masks[f"offset{k:+d}@nonlast"] = (m, m)

        def slot_mask(pos, only_last: bool):
            m = (d[None, None, :] == pos[:, None, None]).expand(n, T, T)
            return m & last if only_last else m

        names = list(self.slots_c)
        for only_last in (False, True):
            for name in names:
                masks[f"{name}@{'last' if only_last else 'all'}"] = (
                    slot_mask(self.slots_c[name], only_last), slot_mask(self.slots_x[name], only_last))
            # "other": positions in no slot of that run
            oc = ~torch.stack([slot_mask(self.slots_c[s], False) for s in names]).any(0)
            ox = ~torch.stack([slot_mask(self.slots_x[s], False) for s in names]).any(0)
            if only_last:
                oc, ox = oc & last, ox & last
            masks[f"other@{'last' if only_last else 'all'}"] = (oc, ox)
        return masks

    def dz(self, layer: int, head: int, mc, mx):
        """Change of the head's z, (n, T, d_head): clean terms of mask mc in, corrupt terms of mx out."""
        a_c = self.cc[f"blocks.{layer}.attn.hook_pattern"][:, head]  # (n, Td, Ts)
        a_x = self.cx[f"blocks.{layer}.attn.hook_pattern"][:, head]
        v_c = self.cc[f"blocks.{layer}.attn.hook_v"][:, :, head]  # (n, Ts, d_head)
        v_x = self.cx[f"blocks.{layer}.attn.hook_v"][:, :, head]
        return (a_c * mc) @ v_c - (a_x * mx) @ v_x


# ----------------------------------------------------------------------------------------------
# receivers


def receivers(model, layer: int, per_head: bool = True) -> list[tuple[str, int, str, object]]:
    """(name, start layer, hook name, which) of every receiver downstream of a layer-``layer`` head.

    which: ("qkv", L', heads, "q"|"k"|"v"), ("mlp", L'), ("logits",). Receivers: the q, k and v inputs
    of all heads of each later layer at once ("L1.k"), and with ``per_head`` of each head ("L1H2.k");
    a 1-head layer has only the per-head names. Every later MLP's input ("L1.mlp"); "logits"."""
    cfg = model.cfg
    out = []
    for lr in range(layer + 1, cfg.n_layers):
        for c in "qkv":
            if cfg.n_heads > 1:
                out.append((f"L{lr}.{c}", lr, f"blocks.{lr}.attn.hook_{c}", ("qkv", lr, tuple(range(cfg.n_heads)), c)))
            if per_head or cfg.n_heads == 1:
                for h in range(cfg.n_heads):
                    out.append((f"L{lr}H{h}.{c}", lr, f"blocks.{lr}.attn.hook_{c}", ("qkv", lr, (h,), c)))
    if not cfg.attn_only:
        for lr in range(layer, cfg.n_layers):
            out.append((f"L{lr}.mlp", lr, f"blocks.{lr}.hook_mlp_in", ("mlp", lr)))
    out.append(("logits", cfg.n_layers, None, ("logits",)))
    return out


def route_patch(model, run: PairRun, rec, delta, ln_cache: dict | None = None) -> Patch:
    """Path patch of the residual change ``delta`` (n, T, d_model) into receiver ``rec`` only.

    ``ln_cache`` (layer -> ln1(corrupt resid_pre + delta)) lets the receivers of one delta share it."""
    import torch

    name, start, hook_name, which = rec
    if which[0] == "logits":
        return Patch(start=start, hooks=[], input_add=delta)
    if which[0] == "mlp":
        return Patch(start=start, hooks=[(hook_name, lambda act, d=delta: act + d)])
    _, lr, heads, c = which
    block = model.blocks[lr]
    W = getattr(block.attn, f"W_{c.upper()}")  # (H, d_model, d_head)
    b = getattr(block.attn, f"b_{c.upper()}")  # (H, d_head)
    if ln_cache is not None and lr in ln_cache:
        new = ln_cache[lr]
    else:
        new = block.ln1(run.cx[f"blocks.{lr}.hook_resid_pre"] + delta)  # (n, T, d_model): the receiver's input
        if ln_cache is not None:
            ln_cache[lr] = new
    hs = list(heads)
    vals = torch.einsum("npd,hde->nphe", new, W[hs]) + b[hs]  # (n, T, len(hs), d_head)

    def fn(act, hs=hs, vals=vals):
        act = act.clone()
        act[:, :, hs] = vals
        return act

    return Patch(start=start, hooks=[(hook_name, fn)])


# ----------------------------------------------------------------------------------------------
# the analysis


def check_model(model) -> None:
    cfg = model.cfg
    problems = []
    if cfg.positional_embedding_type not in ("standard",):
        problems.append(f"positional_embedding_type={cfg.positional_embedding_type!r}")
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        problems.append("grouped-query attention")
    for flag in ("use_attn_result", "parallel_attn_mlp", "use_normalization_before_and_after", "use_attn_in",
                 "use_split_qkv_input", "use_attention_sinks"):
        if getattr(cfg, flag, False):
            problems.append(f"{flag}=True")
    if problems:
        raise OracleError("the oracle does not support this model: " + "; ".join(problems))


def analyse_pair(model, run: PairRun, progress=None) -> dict:
    """Every source x (total, every receiver) effect for every head, for one counterfactual pair."""
    import torch

    with torch.no_grad():
        return _analyse_pair(model, run, progress)


def _analyse_pair(model, run: PairRun, progress) -> dict:
    cfg = model.cfg
    out = {}
    masks = run.source_masks()
    for layer in range(cfg.n_layers):
        recs_head = receivers(model, layer, per_head=True)  # the whole head's output: every receiver
        recs_src = receivers(model, layer, per_head=False)  # one source's output: per layer q/k/v, mlp, logits
        W_O = model.blocks[layer].attn.W_O  # (H, d_head, d_model)
        for head in range(cfg.n_heads):
            patches, keys = [], []
            zero = {}
            for src, (mc, mx) in masks.items():
                dz = run.dz(layer, head, mc, mx)
                if not bool(dz.abs().amax() > 0):  # structurally zero (e.g. s > d under a causal mask)
                    zero[src] = True
                    continue
                delta = dz @ W_O[head]  # (n, T, d_model)
                patches.append(Patch(start=layer, hooks=[(f"blocks.{layer}.attn.hook_z",
                                                          _add_head(head, dz))]))
                keys.append((src, "total"))
                ln_cache: dict = {}
                recs = recs_head if src == "all" else recs_src
                for rec in recs:
                    patches.append(route_patch(model, run, rec, delta, ln_cache))
                    keys.append((src, rec[0]))
            patched = run.run(patches)
            eff, conc = run.effect(patched), run.concentration(patched)
            res: dict[str, dict] = {}
            for (src, tgt), e, s in zip(keys, eff, conc, strict=True):
                res.setdefault(src, {})[tgt] = e
                if tgt == "total":
                    res[src]["share"] = s
            for src in zero:
                res[src] = {"total": 0.0, "share": float("nan"), **{r[0]: 0.0 for r in recs_src}}
            out[(layer, head)] = {src: res[src] for src in masks}  # in source order
            if progress:
                progress(f"L{layer}H{head}")
    return out


def _add_head(head: int, dz):
    def fn(act):
        act = act.clone()
        act[:, :, head] = act[:, :, head] + dz
        return act

    return fn


def _offset_of(src: str) -> int:
    return int(src[len("offset"):].split("@")[0])


def best_route(res_src: dict, recs: list) -> tuple[str, float]:
    cands = [(r[0], res_src.get(r[0], 0.0)) for r in recs]
    return max(cands, key=lambda t: t[1]) if cands else ("-", 0.0)


def route_summary(res_src: dict, model, layer: int) -> dict[str, float]:
    """Receivers aggregated for printing: per later layer q/k/v (all heads), mlp, logits."""
    cfg = model.cfg
    out = {}
    for lr in range(layer + 1, cfg.n_layers):
        for c, word in (("q", "queries"), ("k", "keys"), ("v", "values")):
            key = f"L{lr}.{c}" if cfg.n_heads > 1 else f"L{lr}H0.{c}"
            out[f"L{lr} {word}"] = res_src.get(key, 0.0)
    if not cfg.attn_only:
        for lr in range(layer, cfg.n_layers):
            out[f"L{lr} mlp"] = res_src.get(f"L{lr}.mlp", 0.0)
    out["logits"] = res_src.get("logits", 0.0)
    return out


def label_of(roles: list[dict]) -> dict:
    """A head's label from its roles (largest effect first): the shift or broadcast role with the largest
    effect; the copy (label ``neither``, kind ``copy``) only when the head has neither; ``offsets``: every
    shift offset, the label's first."""
    ops = [r for r in roles if r["role"] in ("shift", "broadcast")]
    top = ops[0] if ops else (roles[0] if roles else None)
    role = top["role"] if top else None
    shifts = [r["offset"] for r in roles if r["role"] == "shift"]  # largest effect first, so the label's first
    return {"label": "neither" if role in (None, "copy") else role, "kind": "copy" if role == "copy" else None,
            "effect": top["effect"] if top else 0.0, "counterfactual": top["counterfactual"] if top else None,
            "offsets": list(dict.fromkeys(shifts))}


def _candidate(src: str, r: dict, res: dict, run, check_spread: bool, route_e: float):
    """(role, extra fields, tests) for a source that could carry a role, else None. Each test is (name,
    value, threshold, passes): ``effect``, ``spread`` (share of the largest anchor-position group, must not
    exceed ``CONCENTRATION_MAX``), ``away`` (shift: the effect without the last row), ``route`` (``route_e``:
    the source's best receiver effect)."""
    e, share = r["total"], r["share"]
    tests = [("effect", e, EFFECT_MIN, e >= EFFECT_MIN)]
    if check_spread:
        ok = not math.isnan(share) and share <= CONCENTRATION_MAX
        tests.append(("spread", 1.0 if math.isnan(share) else share, CONCENTRATION_MAX, ok))
    if src == "offset+0":
        return "copy", {"offset": 0}, tests
    if src.startswith("offset") and "@" not in src:
        # a shift must exist away from the scored row: a broadcast head's last row reads the slot at an
        # offset that changes with the row, and each such offset alone can carry EFFECT_MIN; the same
        # terms without the last row carry nothing
        away = res[f"{src}@nonlast"]["total"]
        tests += [("away", away, EFFECT_MIN, away >= EFFECT_MIN), ("route", route_e, ROUTE_MIN, route_e >= ROUTE_MIN)]
        return "shift", {"offset": _offset_of(src), "effect_nonlast": away}, tests
    if src.endswith("@last") and not src.startswith(("other", "all")):
        slot = src[: -len("@last")]
        pos = run.slots_c[slot]
        offsets = sorted(set((pos[pos >= 0] - (run.T - 1)).tolist()))
        if len(offsets) < 2:
            return None
        tests.append(("route", route_e, ROUTE_MIN, route_e >= ROUTE_MIN))
        return "broadcast", {"slot": slot, "offsets": offsets}, tests
    return None


def _near_misses(near: list[dict], best: dict) -> list[dict]:
    """Near misses of roles the head does not have, one per role (the largest), largest first."""
    out: dict[tuple, dict] = {}
    for r in near:
        key = (r["role"], r.get("offset"), r.get("slot"))
        if key not in best and (key not in out or r["effect"] > out[key]["effect"]):
            out[key] = r
    return sorted(out.values(), key=lambda r: -r["effect"])


def at_edge(roles: list[dict], near: list[dict]) -> list[str]:
    """Why the oracle's own label sits within ``NEAR`` of a threshold (empty: it does not): a test of the
    label's role passes by less than ``NEAR``, or a near-miss operation would take the label (any, when the
    label is a copy or none; a larger one of the other kind otherwise)."""
    lab = label_of(roles)
    top = next((r for r in roles if r["role"] in ("shift", "broadcast")), roles[0] if roles else None)
    why = [f"{_role_name(top)} {t}" for t in (top or {}).get("edge", [])]
    for r in near:
        if r["role"] == "copy":
            continue
        if lab["label"] == "neither" or (r["role"] != top["role"] and r["effect"] > top["effect"]):
            why.append(f"{_role_name(r)} fails {'/'.join(r['failed'])} by < {NEAR}")
    return why


def reads_at_edge(reads: dict[str, float]) -> bool:
    """Whether which anchors the head reads sits at an edge: an anchor's effect within ``NEAR`` of
    ``EFFECT_MIN`` (``reads``: anchor -> its ``@all`` effect, largest over the kinds)."""
    return any(abs(v - EFFECT_MIN) < NEAR for v in reads.values())


def decide(model, per_kind: dict, runs: dict, slot_names: list[str]) -> list[dict]:
    """Apply the decision rule to every head. per_kind[kind][(L, H)] = analyse_pair output."""
    cfg = model.cfg
    heads = []
    for layer in range(cfg.n_layers):
        recs = receivers(model, layer, per_head=False)
        for head in range(cfg.n_heads):
            roles, near = [], []
            for kind, res_all in per_kind.items():
                res = res_all[(layer, head)]
                run = runs[kind]
                check_spread = len(run.group_ids) >= MIN_GROUPS

                for src, r in res.items():
                    route_name, route_e = best_route(r, recs)
                    cand = _candidate(src, r, res, run, check_spread, route_e)
                    if cand is None:
                        continue
                    role, extra, tests = cand
                    failed = [t for t in tests if not t[3]]
                    close = [t for t in tests if abs(t[1] - t[2]) < NEAR]
                    entry = {"counterfactual": kind, "source": src, "effect": r["total"], "share": r["share"],
                             "best_route": [route_name, route_e], "route": route_summary(r, model, layer),
                             **extra}
                    if not failed:
                        roles.append({"role": role, **entry, "edge": [t[0] for t in close]})
                    elif all(abs(t[1] - t[2]) < NEAR for t in failed) and r["total"] >= EFFECT_MIN - NEAR:
                        near.append({"role": role, **entry, "failed": [t[0] for t in failed]})
            # one entry per role (shift per offset, broadcast per slot): the counterfactual with the largest effect
            best: dict[tuple, dict] = {}
            for r in roles:
                key = (r["role"], r.get("offset"), r.get("slot"))
                if key not in best or r["effect"] > best[key]["effect"]:
                    best[key] = r
            roles = sorted(best.values(), key=lambda r: -r["effect"])
            near = _near_misses(near, best)
            entry = {"head": f"L{layer}H{head}", "layer": layer, "head_index": head, **label_of(roles), "roles": roles,
                     "near_misses": near, "at_edge": at_edge(roles, near),
                     "full_head": {kind: res_all[(layer, head)]["all"] for kind, res_all in per_kind.items()}}
            if "anchor2" in slot_names:
                reads = {s: max(per_kind[k][(layer, head)].get(f"{s}@all", {}).get("total", 0.0) for k in per_kind)
                         for s in ("anchor", "anchor2")}
                entry["reads"] = reads
                above = [s for s, v in sorted(reads.items(), key=lambda t: -t[1]) if v >= EFFECT_MIN]
                entry["reads_anchor"] = "+".join(above) if above else "-"
                entry["reads_at_edge"] = reads_at_edge(reads)
            heads.append(entry)
    return heads


def run_oracle(model, task, *, n_samples: int = 512, seed: int = 0, split: str = "test",
               kinds: list[str] | None = None, all_rows: bool = False, progress=None) -> dict:
    """The oracle's full result (a JSON-serialisable dict). Raises OracleError on bad input.

    ``all_rows``: keep every valid pair, also those the model gets wrong (default: only the pairs it
    solves, right on the clean and on the corrupt row)."""
    import torch

    check_model(model)
    if n_samples < 1:
        raise OracleError(f"--n-samples must be >= 1; got {n_samples}")
    if seed < 0:
        raise OracleError(f"--seed must be >= 0; got {seed}")
    t0 = time.perf_counter()
    auto_kinds, notes = available_kinds(task)
    kinds = list(kinds) if kinds else auto_kinds
    if not kinds:
        raise OracleError(f"task {task.name!r} offers no usable counterfactual kind")
    model.eval()
    pairs, runs, per_kind, pair_info = {}, {}, {}, {}
    slot_names: list[str] = []
    for i, kind in enumerate(kinds):
        try:
            pair = make_pair(model, task, kind, n_samples, seed, split, i, all_rows=all_rows)
        except ValueError as e:  # TaskError: the task cannot build this kind
            notes.append(f"{kind}: skipped ({e})")
            continue
        info = {"rows_sampled": pair.rows_sampled, "rows_invalid": pair.rows_invalid,
                "rows_unsolved": pair.rows_unsolved, "rows": len(pair.clean)}
        pair_info[kind] = info
        n_valid = pair.rows_sampled - pair.rows_invalid
        if n_valid < MIN_ROWS:
            raise OracleError(
                f"counterfactual {kind!r}: only {n_valid} of {n_samples} {split} rows have a valid counterfactual "
                f"with a target (need {MIN_ROWS}); raise --n-samples or use --split train")
        if len(pair.clean) < MIN_ROWS:
            raise OracleError(
                f"counterfactual {kind!r}: only {len(pair.clean)} of {n_samples} {split} pairs are solved by the "
                f"model (right on both rows; need {MIN_ROWS}): the model does not solve task {task.name!r}, "
                f"or raise --n-samples")
        run = PairRun(model, pair)
        info.update(clean_logit_diff=float(run.m_clean.mean()), corrupt_logit_diff=float(run.m_corrupt.mean()),
                    anchor_positions=run.group_ids)
        pairs[kind], runs[kind] = pair, run
        slot_names = list(run.slots_c)
        per_kind[kind] = analyse_pair(model, run, progress=(lambda h, k=kind: progress(f"{k} {h}")) if progress else None)
    if not per_kind:
        raise OracleError(f"no counterfactual kind could be built for task {task.name!r}: {'; '.join(notes)}")
    heads = decide(model, per_kind, runs, slot_names)
    cfg = model.cfg
    return {
        "task": task.to_dict(),
        "model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model,
                  "attn_only": bool(cfg.attn_only), "attention_dir": cfg.attention_dir},
        "settings": {"n_samples": n_samples, "seed": seed, "split": split, "kinds": list(per_kind),
                     "all_rows": all_rows,
                     "EFFECT_MIN": EFFECT_MIN, "ROUTE_MIN": ROUTE_MIN, "CONCENTRATION_MAX": CONCENTRATION_MAX,
                     "MIN_GROUPS": MIN_GROUPS, "MIN_ROWS": MIN_ROWS, "torch_threads": torch.get_num_threads(),
                     "final_layernorm": "recomputed"},
        "notes": notes,
        "counterfactuals": pair_info,
        "heads": heads,
        "sources": {kind: {f"L{la}H{h}": res for (la, h), res in r.items()} for kind, r in per_kind.items()},
        "runtime_s": round(time.perf_counter() - t0, 2),
    }


# ----------------------------------------------------------------------------------------------
# output


def _fmt_route(route: dict) -> str:
    items = [(k, v) for k, v in sorted(route.items(), key=lambda t: -abs(t[1])) if abs(v) >= ROUTE_PRINT_MIN]
    return ", ".join(f"{k} {v:.2f}" for k, v in items) if items else "none"


def _role_name(r: dict) -> str:
    if r["role"] == "shift":
        return f"shift({r['offset']:+d})"
    if r["role"] == "broadcast":
        return f"broadcast({r['slot']})"
    return "copy(0)"


def format_table(result: dict) -> str:
    lines = []
    t = result["task"]
    s = result["settings"]
    lines.append(f"oracle: task {t['name']} {t.get('params', {})}; {result['model']['n_layers']}L x "
                 f"{result['model']['n_heads']}H {result['model']['attention_dir']}; {s['split']} split, "
                 f"{s['n_samples']} samples, seed {s['seed']}")
    for kind, info in result["counterfactuals"].items():
        extra = (f", logit diff clean {info['clean_logit_diff']:.2f} / corrupt {info['corrupt_logit_diff']:.2f}"
                 if "clean_logit_diff" in info else "")
        lines.append(f"  {kind}: {info['rows']} pairs used ({info['rows_invalid']} invalid, "
                     f"{info['rows_unsolved']} unsolved){extra}")
    for note in result["notes"]:
        lines.append(f"  note: {note}")
    lines.append("")
    multi = any("reads_anchor" in h for h in result["heads"])
    hdr = f"{'head':<6} {'label':<16} {'effect':>6}  {'counterfactual':<17} roles"
    lines.append(hdr + ("   [reads]" if multi else ""))
    lines.append("-" * len(hdr))
    for h in result["heads"]:
        label = h["label"] + (f"({h['kind']})" if h["kind"] else "")
        roles = "; ".join(f"{_role_name(r)} {r['effect']:.2f}" for r in h["roles"]) or "-"
        reads = f"   [reads {h['reads_anchor']}]" if multi else ""
        lines.append(f"{h['head']:<6} {label:<16} {h['effect']:>6.2f}  {h['counterfactual'] or '-':<17} {roles}{reads}")
        for r in h["roles"]:
            lines.append(f"{'':<8}{_role_name(r)} [{r['counterfactual']}] source {r['source']} {r['effect']:.2f} "
                         f"(largest anchor-position share {r['share']:.2f}) -> {_fmt_route(r['route'])}")
        for r in h.get("near_misses", []):
            lines.append(f"{'':<8}near miss: {_role_name(r)} [{r['counterfactual']}] {r['effect']:.2f}, fails "
                         f"{'/'.join(r['failed'])} by < {NEAR}")
        if h.get("at_edge"):
            lines.append(f"{'':<8}label at an edge: {'; '.join(h['at_edge'])}")
        full = "; ".join(f"{k} {v['total']:.2f} -> {_fmt_route(route_summary(v, _ModelCfg(result), h['layer']))}"
                         for k, v in h["full_head"].items())
        lines.append(f"{'':<8}whole head: {full}")
    lines.append("")
    lines.append(f"runtime {result['runtime_s']:.1f} s")
    return "\n".join(lines)


class _ModelCfg:
    """Just enough of a model for route_summary when printing from a result dict."""

    def __init__(self, result):
        m = result["model"]
        self.cfg = type("Cfg", (), {"n_layers": m["n_layers"], "n_heads": m["n_heads"], "attn_only": m["attn_only"]})


def _json_safe(x):
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_json(result: dict, path: Path) -> None:
    folder = path.resolve().parent
    if not folder.is_dir():
        raise OracleError(f"--json {str(path)!r}: folder {str(folder)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_json_safe(result), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--zoo", metavar="NAME", help="a shipped model: default, mechanism")
    src.add_argument("--checkpoint", type=Path, metavar="DIR", help="a checkpoint folder")
    ap.add_argument("--n-samples", type=int, default=512, help="sequences sampled per counterfactual kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="test", choices=("train", "test"))
    ap.add_argument("--kinds", nargs="+", metavar="KIND", help="counterfactual kinds (default: chosen per task)")
    ap.add_argument("--all-rows", action="store_true",
                    help="use every valid pair, also those the model gets wrong (default: solved pairs only)")
    ap.add_argument("--json", type=Path, metavar="OUT.json", help="write the full result here")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.n_samples < 1:
            raise OracleError(f"--n-samples must be >= 1; got {args.n_samples}")
        if args.seed < 0:
            raise OracleError(f"--seed must be >= 0; got {args.seed}")
        if args.threads < 1:
            raise OracleError(f"--threads must be >= 1; got {args.threads}")
        if args.json is not None and not args.json.resolve().parent.is_dir():
            raise OracleError(f"--json {str(args.json)!r}: folder {str(args.json.resolve().parent)!r} does not exist")
        import torch

        torch.set_num_threads(args.threads)
        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise OracleError(f"--device {args.device}: no CUDA GPU is visible; use --device cpu")
        if not (device == "cpu" or device.startswith("cuda")):
            raise OracleError(f"--device {args.device!r}: use cpu, cuda or auto")
        if args.zoo is not None:
            from anchor_interp.models import zoo

            model, task = zoo.load(args.zoo, device=device)
            source = f"zoo:{args.zoo}"
        else:
            from anchor_interp.models.checkpoint import load_checkpoint

            model, task = load_checkpoint(args.checkpoint, device=device)
            source = str(args.checkpoint)
        if args.kinds:
            offered = task.counterfactual_kinds()
            bad = [k for k in args.kinds if k not in offered or k == "anchor_remove"]
            if bad:
                raise OracleError(f"--kinds {bad}: not offered by task {task.name!r} (anchor_remove has no target); "
                                  f"it offers {[k for k in offered if k != 'anchor_remove']}")
        progress = None if args.quiet else (lambda msg: print(f"  ... {msg}", file=sys.stderr, flush=True))
        result = run_oracle(model, task, n_samples=args.n_samples, seed=args.seed, split=args.split,
                            kinds=args.kinds, all_rows=args.all_rows, progress=progress)
        result["source"] = source
        print(format_table(result))
        if args.json is not None:
            write_json(result, args.json)
            print(f"wrote {args.json}")
    except (ValueError, OSError) as e:  # OracleError, CheckpointError, TaskError are ValueErrors
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

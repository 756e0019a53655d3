"""find_heads: one call from a trained model to a JSON-serialisable result that names its heads.

    held-out batch -> accuracy per group -> label_heads -> patching heatmaps
                   -> ablation circuit checks -> example attention patterns -> FindHeadsResult

The orchestrator: it validates its options once and runs the stages in order (``anchor_interp.labels``,
``anchor_interp.patching``, ``anchor_interp.scores.ablation``); the schema it fills lives in
:mod:`anchor_interp.result`. Importing this module is cheap (no torch); ``find_heads`` imports what it
needs when called.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from anchor_interp.names import head_name, layer_hook_names
from anchor_interp.result import PATCHING_SWEEPS, SCHEMA_VERSION, FindHeadsResult, json_safe, key_scores

# held-out rows by default: 5 folds of ~100 rows settle most role rankings (256 rows left 17% of the tuning
# heads borderline, 512 9%, 1024 10%; docs/validation.md) and the no-argument run stays under 15 s
DEFAULT_N_SAMPLES = 512

__all__ = [
    "DEFAULT_N_SAMPLES",
    "PATCHING_SWEEPS",
    "SCHEMA_VERSION",
    "FindHeadsResult",
    "accuracy_by_group",
    "example_patterns",
    "find_heads",
    "json_safe",
    "key_scores",
    "mean_attention",
    "model_summary",
]


def find_heads(
    model,
    task,
    *,
    seed: int = 0,
    n_samples: int = DEFAULT_N_SAMPLES,
    n_examples: int = 3,
    patching: bool = True,
    ablation: bool = True,
    ablation_method: str = "mean",
    history: list[dict[str, Any]] | None = None,
    source: str = "",
    preset: str | None = None,
    command: str = "",
    device: str | None = None,
    allow_unsolved: bool = False,
    training: dict[str, Any] | None = None,
    log=None,
) -> FindHeadsResult:
    """Label every head of ``model`` on held-out data of ``task`` and gather the evidence for the report.

    ``model``: a HookedTransformer whose ``cfg.d_vocab`` / ``cfg.n_ctx`` fit ``task``. ``seed`` seeds
    every sample drawn (same seed, same result on CPU). ``n_samples`` held-out rows (20..1e6) feed
    accuracy, labels, patching and ablation, streamed in chunks of ``scores.cache.CHUNK_ROWS`` rows (memory
    flat in ``n_samples``; docs/performance.md, "Memory"); ``n_examples`` (0..16) of them keep their attention
    patterns for the report. ``patching`` / ``ablation`` switch those stages off. ``history``,
    ``source``, ``preset``, ``command`` and ``training`` (the checkpoint's recipe and steps, shown in the
    report's model card) are recorded as given. ``allow_unsolved``: label a model
    below the competence floor anyway (``result.competence["solved"]`` says whether it solves the task).
    ``log``: optional callable receiving progress lines. Raises ValueError for out-of-range options or
    a model that does not fit the task.

    The head evidence is computed once (``anchor_interp.labels``): the table, the JSON, the head-patching
    heatmaps (``head_out/<kind>``) and the circuit check all read it.
    """
    _check_int("seed", seed, lo=0)
    _check_int("n_samples", n_samples, lo=20, hi=1_000_000)
    _check_int("n_examples", n_examples, lo=0, hi=16)
    if ablation_method not in ("zero", "mean", "resample"):
        raise ValueError(f"ablation_method={ablation_method!r}; allowed: 'zero', 'mean', 'resample'")
    import torch

    from anchor_interp.models.validate import check_model_fits_task

    check_model_fits_task(model.cfg, task)

    log = log or (lambda msg: None)
    if device is None:
        device = str(next(model.parameters()).device)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t0
        t1 = time.perf_counter()
        timings[name] = round(t1 - t0, 4)
        t0 = t1

    model.eval()
    with torch.no_grad():
        batch = task.sample(n_samples, split="test", seed=seed, device=device)
        lap("sample")
        accuracy = accuracy_by_group(model, task, batch)
        lap("accuracy")
    log(f"labelling the heads on {len(batch)} held-out rows ...")  # the facts themselves: the caller's table
    analysis = _label(model, task, batch, seed=seed, method=ablation_method, allow_unsolved=allow_unsolved)
    heads = [r.to_dict() for r in analysis.records]
    lap("label_heads")
    log("patching heatmaps and circuit checks ..." if patching or ablation else "collecting examples ...")
    patch = _patching_heatmaps(model, task, batch, analysis, seed=seed) if patching else {}
    lap("patching")
    abl = _ablation_checks(model, batch, analysis, method=ablation_method, seed=seed) if ablation else {}
    lap("ablation")
    with torch.no_grad():
        examples = example_patterns(model, task, batch, n_examples)
        aligned = mean_attention(model, batch)
    lap("examples")
    return FindHeadsResult(
        seed=seed,
        model=model_summary(model, preset=preset, source=source),
        task=task.to_dict(),
        accuracy=accuracy,
        heads=heads,
        groups=[g.to_dict() for g in analysis.groups],
        patching=patch,
        ablation=abl,
        examples=examples,
        history=list(history or []),
        command=command,
        timings=timings,
        competence=_competence(analysis, allow_unsolved),
        training=dict(training or {}),
        mean_attention=aligned,
        labelling={"thresholds": dataclasses.asdict(analysis.thresholds), "circuit": analysis.circuit,
                   "counterfactuals": {k: {"rows": analysis.baseline.get(f"rows_{k}"),
                                           "logit_gap": analysis.baseline.get(f"logit_gap_{k}")}
                                       for k in analysis.head_effects}},
    )


def _check_int(name: str, value, *, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name}={value} is out of range; allowed: {lo}..{hi if hi is not None else 'inf'}")


def model_summary(model, *, preset: str | None = None, source: str = "") -> dict[str, Any]:
    """Architecture facts for the report header (all JSON scalars)."""
    cfg = model.cfg
    return {
        "preset": preset,
        "source": source,
        "n_layers": int(cfg.n_layers),
        "n_heads": int(cfg.n_heads),
        "d_model": int(cfg.d_model),
        "d_head": int(cfg.d_head),
        "d_mlp": None if cfg.attn_only or cfg.d_mlp is None else int(cfg.d_mlp),
        "attn_only": bool(cfg.attn_only),
        "causal": getattr(cfg, "attention_dir", "causal") != "bidirectional",
        "normalization_type": cfg.normalization_type,
        "n_ctx": int(cfg.n_ctx),
        "d_vocab": int(cfg.d_vocab),
        "n_params": int(sum(p.numel() for p in model.parameters())),
    }


def accuracy_by_group(model, task, batch) -> dict[str, Any]:
    """Held-out argmax accuracy at the last position, in [0, 1]: ``overall`` over the unmasked groups,
    ``masked_accuracy`` over the masked ones (never trained on; None when there are none), and per
    ``task.groups`` entry by name.

    This is the one meaning of "held-out accuracy" everywhere (training history's ``test_acc`` too).
    Rows whose target is -1 (no correct answer) are left out; a group with no scored rows has
    accuracy None. ``loss``: mean cross-entropy (nats) over the scored unmasked rows.
    """
    import torch
    import torch.nn.functional as F

    from anchor_interp.scores.cache import row_chunks

    correct, ce = [], []  # per-row scalars, chunk by chunk
    for sl in row_chunks(len(batch), desc="accuracy"):
        logits = model(batch.tokens[sl])[:, -1]  # (b, V)
        correct.append(logits.argmax(-1) == batch.targets[sl])
        ce.append(F.cross_entropy(logits, batch.targets[sl].clamp_min(0), reduction="none"))
    valid = batch.targets >= 0  # (B,)
    correct = torch.cat(correct) & valid  # (B,)
    ce = torch.cat(ce)  # (B,) nats
    masked_group = torch.tensor([bool(g.masked) for g in task.groups], device=batch.group.device)
    in_masked = masked_group[batch.group.clamp_min(0)] & (batch.group >= 0)  # (B,)
    seen, unseen = valid & ~in_masked, valid & in_masked
    if not bool(seen.any()):
        loss = torch.tensor(float("nan"))
    elif len(correct) == len(logits):  # one chunk: the batched mean, as before streaming
        loss = F.cross_entropy(logits[seen], batch.targets[seen])
    else:
        loss = ce[seen].mean()
    groups = []
    for gi, g in enumerate(task.groups):
        sel = (batch.group == gi) & valid
        n = int(sel.sum())
        groups.append({"name": g.name, "masked": bool(g.masked), "n": n,
                       "accuracy": float(correct[sel].float().mean()) if n else None})
    n_seen, n_unseen = int(seen.sum()), int(unseen.sum())
    return {
        "split": "test",
        "n": n_seen,
        "overall": float(correct[seen].float().mean()) if n_seen else None,
        "loss": float(loss),
        "n_masked": n_unseen,
        "masked_accuracy": float(correct[unseen].float().mean()) if n_unseen else None,
        "groups": groups,
    }


def _example_rows(batch, n: int) -> list[int]:
    """First rows with distinct anchor positions (so the examples show the operations in different places)."""
    seen, rows = set(), []
    anchor = batch.anchor_pos.tolist()
    for i, a in enumerate(anchor):
        if len(rows) == n:
            break
        if a not in seen:
            seen.add(a)
            rows.append(i)
    for i in range(len(anchor)):  # fewer distinct positions than n: fill in order
        if len(rows) == n:
            break
        if i not in rows:
            rows.append(i)
    return rows


def example_patterns(model, task, batch, n_examples: int, decimals: int = 3) -> list[dict[str, Any]]:
    """``n_examples`` rows of ``batch`` with their token labels, prediction and every layer's pattern.

    ``patterns`` maps ``blocks.L.attn.hook_pattern`` to ``[head][dest_pos][src_pos]`` attention
    weights in [0, 1], rounded to ``decimals``.
    """
    if n_examples == 0:
        return []
    rows = _example_rows(batch, n_examples)
    sub = batch.select(rows)
    names = layer_hook_names("pattern", model.cfg.n_layers)
    logits, cache = model.run_with_cache(sub.tokens, names_filter=lambda name: name in names)
    preds = logits[:, -1].argmax(-1).tolist()
    group_names = [g.name for g in task.groups]
    out = []
    for i in range(len(rows)):
        extra = {k: int(v[i]) for k, v in sub.extra.items()}
        anchor, key = int(sub.anchor_pos[i]), int(sub.key_pos[i])
        out.append({
            "tokens": [int(t) for t in sub.tokens[i].tolist()],
            "token_labels": task.token_labels(sub.tokens[i], anchor_pos=anchor, key_pos=key, extra=extra),
            "anchor_pos": anchor,
            "key_pos": key,
            "target": int(sub.targets[i]),
            "prediction": int(preds[i]),
            "group": group_names[int(sub.group[i])] if 0 <= int(sub.group[i]) < len(group_names) else None,
            "patterns": {name: cache[name][i].round(decimals=decimals).tolist() for name in names},
        })
    return out


def mean_attention(model, batch, decimals: int = 3, chunk: int = 2048) -> dict[str, Any]:
    """Every head's anchor-aligned mean attention over all rows of ``batch`` (the result's ``mean_attention``).

    Positions are re-indexed relative to each row's anchor (``batch.anchor_pos``) and the attention is
    averaged over the rows that reach each cell (:func:`anchor_interp.scores.patterns.anchor_aligned_sums`).
    Returns ``{"aligned_to": "anchor_pos", "offsets": [lo, hi], "rows": n, "values": [layer][head][q][k]}``:
    ``values[l][h][i][j]`` is the mean attention (in [0, 1], rounded to ``decimals``) from the position
    at anchor offset ``lo + i`` to the one at offset ``lo + j``; ``[lo, hi]`` is the range of offsets any
    row reaches (both axes), None marks a cell no row reaches. With no anchored row: ``rows`` 0, ``values``
    None. One extra forward pass over the batch (patterns only), in chunks of ``chunk`` rows.
    """
    import torch

    from anchor_interp.scores.patterns import anchor_aligned_sums, attention_patterns

    T = batch.tokens.shape[1]
    sums, counts = None, None
    with torch.no_grad():
        for start in range(0, len(batch.tokens), chunk):
            pats = attention_patterns(model, batch.tokens[start:start + chunk])  # (B, L, H, T, T)
            s, c = anchor_aligned_sums(pats, batch.anchor_pos[start:start + chunk])
            sums, counts = (s, c) if sums is None else (sums + s, counts + c)
    n = int((batch.anchor_pos >= 0).sum())
    if n == 0:
        return {"aligned_to": "anchor_pos", "offsets": None, "rows": 0, "values": None}
    reached = (counts > 0).any(0).nonzero().squeeze(-1)  # indices of reached offsets (one axis)
    lo, hi = int(reached.min()), int(reached.max())
    mean = (sums / counts.clamp_min(1)).round(decimals=decimals)[:, :, lo:hi + 1, lo:hi + 1]  # (L, H, Q, K)
    ok = (counts > 0)[lo:hi + 1, lo:hi + 1]
    values = [[[[float(mean[l_, h, i, j]) if ok[i, j] else None for j in range(hi - lo + 1)]
                for i in range(hi - lo + 1)] for h in range(mean.shape[1])] for l_ in range(mean.shape[0])]
    return {"aligned_to": "anchor_pos", "offsets": [lo - (T - 1), hi - (T - 1)], "rows": n, "values": values}


# The stages below call the analysis modules (heads, patching, ablation); see docs/interfaces.md.


def _label(model, task, batch, *, seed: int, method: str, allow_unsolved: bool):
    """The HeadAnalysis of anchor_interp.labels.analyse_heads (records ordered by (layer, head))."""
    from anchor_interp.labels import analyse_heads

    return analyse_heads(model, batch, task=task, seed=seed, method=method, allow_unsolved=allow_unsolved)


def _competence(analysis, allow_unsolved: bool) -> dict[str, Any]:
    """The competence gate's facts (accuracies in [0, 1]); ``solved`` False means no shift / broadcast labels
    unless ``allow_unsolved``."""
    b = analysis.baseline
    keys = ("competence_accuracy", "attainable_accuracy", "competence_floor", "solved")
    return {**{k.removeprefix("competence_"): b.get(k) for k in keys}, "allow_unsolved": allow_unsolved}




def _fixed_anchor_rows(batch) -> tuple[int, list[int]]:
    """(anchor position, row indices) of the rows sharing one anchor position: the position with at
    least 8 rows closest to the middle of the sequence (-1 and all rows if no position has 8)."""
    anchor = batch.anchor_pos.tolist()
    counts: dict[int, int] = {}
    for a in anchor:
        if a >= 0:
            counts[a] = counts.get(a, 0) + 1
    ok = [a for a, c in counts.items() if c >= 8]
    if not ok:
        return -1, list(range(len(anchor)))
    mid = (batch.tokens.shape[1] - 1) / 2
    p = min(ok, key=lambda a: (abs(a - mid), a))
    return p, [i for i, a in enumerate(anchor) if a == p]


def _patching_heatmaps(model, task, batch, analysis, *, seed: int) -> dict[str, dict[str, Any]]:
    """The heatmaps of PATCHING_SWEEPS: ``head_out/<kind>`` is the labels' own whole-head effect (layer x
    head, normalised), read from ``analysis``, not recomputed; ``resid_pre/<kind>`` is exact residual
    patching (layer x pos) on the rows whose anchor sits at one position, so that "pos" means the same
    token role in every row (over all rows the key's position varies and each position would restore
    only the rows whose key is there), among the first ``scores.cache.FIRST_ROWS`` rows.
    """
    import torch

    from anchor_interp import patching
    from anchor_interp.labels.evidence import first_rows
    from anchor_interp.patching import PatchResult

    out: dict[str, dict[str, Any]] = {}
    batch = first_rows(batch)
    anchor_p, rows = _fixed_anchor_rows(batch)
    for name, sweep, kind in PATCHING_SWEEPS:
        if sweep == "head_out":
            if kind not in analysis.head_effects:
                continue
            values = torch.tensor(analysis.head_effects[kind], dtype=torch.float32)  # (L, H)
            hooks = tuple(layer_hook_names("z", model.cfg.n_layers))
            out[name] = PatchResult(values, ("layer", "head"), hooks, "logit_diff", kind, True, extra={
                "rows": analysis.baseline.get(f"rows_{kind}"), "source": "labels"}).to_dict()
            continue
        clean = batch.select(rows)
        corr = task.counterfactual(clean, kind, seed=seed)
        d = patching.patch_resid_pre(model, clean, corr, counterfactual=kind).to_dict()
        key_p = int(clean.key_pos[0]) if len(rows) and bool((clean.key_pos == clean.key_pos[0]).all()) else -1
        labels = [str(i) for i in range(batch.tokens.shape[1])]
        if anchor_p >= 0:
            labels[anchor_p] = f"{anchor_p}:A"
        if key_p >= 0:
            labels[key_p] = f"{key_p}:K"
        d["extra"] = {**d.get("extra", {}), "pos_labels": labels,
                      "rows": f"{len(rows)} held-out rows with the anchor at position {anchor_p}"}
        out[name] = d
    return out


def _ablation_checks(model, batch, analysis, *, method: str, seed: int) -> dict[str, Any]:
    """Circuit checks (:func:`anchor_interp.scores.ablation.circuit_check`): ablate the circuit's heads
    together (accuracy should collapse), then every other head together (accuracy should stay). The
    circuit is ``analysis.circuit``: the shift and broadcast heads and the copy heads the model needs.
    Accuracy in [0, 1] and loss (nats) at the last position of the held-out batch, which is also the
    reference for mean/resample ablation. Per-head ablation effects are in each head's scores
    (``ablation_accuracy_drop``).
    """
    from anchor_interp.names import parse_head_name
    from anchor_interp.scores import ablation

    circuit = [parse_head_name(n) for n in analysis.circuit]
    out: dict[str, Any] = {
        "method": method,
        "thresholds": {"max_circuit_ablated_accuracy": ablation.MAX_CIRCUIT_ABLATED_ACCURACY,
                       "min_kept_fraction": ablation.MIN_KEPT_FRACTION},
        "circuit": list(analysis.circuit),
        "checks": [],
    }
    if not circuit:
        base = ablation.ablate(model, batch.tokens, [], targets=batch.targets, method=method, seed=seed)
        out["baseline"] = {"accuracy": base.base_accuracy, "loss": base.base_loss}
        out["note"] = "no head is labelled shift or broadcast, so there is no circuit to check"
        return out
    c = ablation.circuit_check(model, batch.tokens, batch.targets, circuit, method=method, seed=seed)
    out["baseline"] = {"accuracy": c.base_accuracy, "loss": c.base_loss}
    out["checks"].append({
        "name": "ablate the circuit", "heads": [head_name(*h) for h in c.heads],
        "accuracy": c.accuracy_without_circuit, "loss": c.loss_without_circuit, "kl": c.kl_without_circuit,
        "expected": f"accuracy <= {c.max_circuit_ablated_accuracy}", "passed": c.circuit_passes,
    })
    out["checks"].append({
        "name": "ablate all other heads", "heads": [head_name(*h) for h in c.rest],
        "accuracy": c.accuracy_without_rest, "loss": c.loss_without_rest, "kl": c.kl_without_rest,
        "kept_fraction": c.kept_fraction, "expected": f"accuracy >= {c.min_kept_fraction} x baseline",
        "passed": c.rest_passes,
    })
    if not c.rest:
        out["checks"][-1]["note"] = "every head is in the circuit: there is no other head to ablate"
        out["checks"][-1]["passed"] = None
    return out

"""Multi-seed head study: train a zoo spec on several seeds, label every head, run the circuit checks.

For each seed: train the spec's preset with its recipe (``anchor_interp.training.train_many``, all
seeds as one batched computation), label the heads on held-out data (``anchor_interp.labels``), and
check the issue-4 criteria:

- the shift and the broadcast are found (each a head, or a named group of heads);
- mean-ablating every labelled head brings held-out accuracy to <= 0.1;
- mean-ablating every other head keeps >= 95% of the held-out accuracy.

It also records, per head, raw attention masses (no normalisation: mean attention weight in [0, 1])
on the rows and columns the paper's description names (spec section 6) and patching at the task's
role positions (anchor / key / last row; :func:`role_patching`), so that the causal and the
bidirectional models can be compared with the paper; and a check of the labels that does not use the
labeller's rule: ``necessary_heads`` (mean-ablating the head alone costs >= 50% of held-out accuracy),
``necessary_missed`` (necessary but not labelled); ``<role>_carriers``, the heads whose patch at the
role's position restores >= 10% (shift: anchor_position at the key's row in a causal model, key_swap at
the anchor's row in a bidirectional one; broadcast: key_swap at the last row), and whether they equal
the labelled heads (``<role>_labels_match``); ``key_copy_heads`` (earlier-layer heads, not shift
carriers, that carry the key's value at the key's own row: key_swap there >= 10%) and the accuracy
with all of them ablated; and the circuit checks again on a label-free circuit (``alt_*``: the
heads necessary alone plus the labelled broadcast heads).

    python analyses/head_study.py                            # default + mechanism, seeds 0-4
    python analyses/head_study.py --spec default \\
        --model-override normalization_type=null --recipe-override weight_decay=1.0   # the committed run
    python analyses/head_study.py --spec default --seeds 0 --epochs 3 --n-train 200 --out /tmp/hs

Writes ``<out>/<spec>/seeds.csv`` (one row per seed), ``<out>/<spec>/seeds.json`` (the same plus every
head record and group) and ``<out>/summary.json``. Refuses to overwrite existing results without
``--force``. Bad arguments: one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "head_study"
SPECS = ("default", "mechanism")
ROLES = ("shift", "broadcast")
# the circuit checks' thresholds live in one place (anchor_interp.scores.ablation; torch-free constants here)
MAX_CIRCUIT_ACC = 0.1  # == anchor_interp.scores.ablation.MAX_CIRCUIT_ABLATED_ACCURACY (tests/analyses checks)
MIN_KEPT = 0.95  # == anchor_interp.scores.ablation.MIN_KEPT_FRACTION
LABEL_SEED_BASE = 10_000  # held-out rows for labelling: task.sample(n, "test", seed=LABEL_SEED_BASE + seed)
CSV_FIELDS = (
    "spec", "preset", "seed", "n_params", "epochs", "n_train", "train_seconds", "test_acc", "labels",
    "shift_heads", "broadcast_heads", "groups", "found_shift", "found_broadcast", "acc_without_labelled",
    "acc_without_rest", "kept_fraction", "passes", "best_shift_head", "best_shift_offset",
    "shift_key_row_to_anchor", "shift_key_row_to_anchor_uniform", "shift_anchor_row_to_key", "broadcast_last_to_key",
    "broadcast_rows_to_key", "necessary_heads", "necessary_missed", "shift_carriers", "shift_labels_match",
    "broadcast_carriers", "broadcast_labels_match", "key_copy_heads", "acc_without_key_copy", "alt_circuit", "alt_acc_without_circuit", "alt_acc_without_rest", "alt_passes",
    "shift_anchor_move_at_key", "shift_anchor_position_at_key", "shift_key_swap_at_anchor", "broadcast_key_swap_at_last",
)
NECESSARY_DROP = 0.5  # a head is "necessary" if mean-ablating it alone costs >= 50% of held-out accuracy
CARRIER = 0.1  # a head "carries" a role if patching it at the role's position restores >= 10% (role_patching)


class StudyError(ValueError):
    """A bad argument to the study (message names the parameter and the fix)."""


# ----------------------------------------------------------------------------------------------
# raw pattern masses named by the paper


def raw_masses(model, batch) -> dict[str, list[list[float]]]:
    """Mean raw attention weight (in [0, 1]) per head, ``[layer][head]``, on the task's rows/columns.

    - ``key_row_to_anchor``: the key's row on the anchor (causal shift, offset -1), rows whose key is
      not the last input; ``key_row_to_anchor_uniform`` is what a uniform head would put there;
    - ``anchor_row_to_key``: the anchor's row on the key (the paper's bidirectional shift, offset +1);
    - ``other_rows_to_anchor``: every row other than the anchor's and the key's, on the anchor (a
      "broadcast the anchor" layer; the paper's layer 1 in the bidirectional model);
    - ``last_row_to_key`` and ``last_row_to_anchor``: the scored row;
    - ``rows_to_key``: every row that can see the key (other than the key's own) on the key (the
      broadcast column); ``rows_to_anchor``: the same for the anchor;
    - ``self``: the diagonal; ``prev``: every row on the row before it.
    """
    import torch

    from anchor_interp.scores.patterns import attention_patterns, is_causal, visible_mask

    with torch.no_grad():
        pats = attention_patterns(model, batch.tokens).float()  # (B, L, H, T, T)
    B, n_layers, n_heads, T, _ = pats.shape
    causal = is_causal(model)
    a, k = batch.anchor_pos, batch.key_pos
    rows = torch.arange(B)
    pos = torch.arange(T)
    vis = visible_mask(T, causal)  # (T, T)
    mid = k < T - 1  # the key is not the last input
    out: dict[str, torch.Tensor] = {}
    P = pats.permute(0, 3, 4, 1, 2)  # (B, dest, src, L, H)
    out["key_row_to_anchor"] = P[rows, k, a][mid].mean(0)
    out["anchor_row_to_key"] = P[rows, a, k].mean(0)
    out["last_row_to_key"] = P[rows, T - 1, k][mid].mean(0)
    out["last_row_to_anchor"] = P[rows, T - 1, a].mean(0)
    other = (pos[None] != a[:, None]) & (pos[None] != k[:, None])  # (B, T) rows
    col_a = P[rows, :, a]  # (B, dest, L, H)
    col_k = P[rows, :, k]
    sees_a = vis[:, a].T & other  # (B, T)
    out["other_rows_to_anchor"] = (col_a * sees_a[..., None, None]).sum((0, 1)) / sees_a.sum().clamp_min(1)
    for name, col, c in (("rows_to_key", col_k, k), ("rows_to_anchor", col_a, a)):
        m = vis[:, c].T & (pos[None] != c[:, None])  # (B, T)
        out[name] = (col * m[..., None, None]).sum((0, 1)) / m.sum().clamp_min(1)
    out["self"] = torch.diagonal(pats, dim1=-2, dim2=-1).mean((0, 3))
    out["prev"] = torch.diagonal(pats, offset=-1, dim1=-2, dim2=-1).mean((0, 3))
    n_vis = vis.sum(-1).float()  # (T,)
    unif = (1.0 / n_vis[k][mid]).mean()
    res = {name: [[round(float(v), 4) for v in row] for row in t] for name, t in out.items()}
    res["key_row_to_anchor_uniform"] = round(float(unif), 4)
    return res


def role_patching(model, batch, task, seed: int) -> dict[str, list[list[float]]]:
    """Per-head patching at the task's role positions, ``[layer][head]``, normalised logit difference
    (1 = the clean answer fully restored, 0 = no effect; can leave [0, 1]).

    The clean ``blocks.L.attn.hook_z`` of one head is patched into the counterfactual run at one
    position per row only: the (clean) anchor's, the key's, or the last (for the anchor's and the key's,
    only rows where that position is not the last input count). ``key_swap@anchor`` is the
    paper's bidirectional shift (the key copied into the anchor's slot); ``anchor_position@key`` the causal
    shift (the anchor's flag written into the key's slot; the anchor moved, every token kept, so a head
    that only copies the key's value there does not count; rows without a valid move are left out);
    ``anchor_move@key`` the same with a fresh key value too (two factors, kept for comparison);
    ``key_swap@last`` the broadcast reaching the scored row. Rows are those of ``batch``; counterfactual seeds are ``seed + 1`` as in label_heads.
    """
    import torch

    cfg = model.cfg
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)]
    out: dict[str, list[list[float]]] = {}
    with torch.no_grad():
        for cf in ("key_swap", "anchor_move", "anchor_position"):
            pair = task.counterfactual_pair(batch, cf, seed=seed + 1)  # anchor_position keeps valid rows only
            clean, corrupt = pair.clean, pair.corrupt
            n = len(clean)
            rows = torch.arange(n)
            T = clean.tokens.shape[1]
            where = {"anchor": clean.anchor_pos, "key": clean.key_pos, "last": torch.full_like(clean.key_pos, T - 1)}
            clean_logits, cache = model.run_with_cache(clean.tokens, names_filter=lambda name: name in names)
            corrupt_logits = model(corrupt.tokens)
            for role, pos in where.items():
                # "@key" and "@anchor" use only the rows where that position is not the last input
                # (there, patching it is patching the last row)
                sel = pos < T - 1 if role != "last" else torch.ones(n, dtype=torch.bool)

                def gap(logits, corrupt=corrupt, sel=sel, rows=rows, clean=clean):  # clean answer - corrupt answer
                    last = logits[:, -1]
                    return (last[rows, clean.targets] - last[rows, corrupt.targets])[sel].mean().item()

                g_clean, g_corrupt = gap(clean_logits), gap(corrupt_logits)
                table = []
                for layer in range(cfg.n_layers):
                    clean_z = cache[names[layer]]  # (B, T, H, d_head)
                    line = []
                    for head in range(cfg.n_heads):
                        def hook(z, hook, head=head, pos=pos, clean_z=clean_z, rows=rows):
                            z[rows, pos, head] = clean_z[rows, pos, head]
                            return z
                        patched = model.run_with_hooks(corrupt.tokens, fwd_hooks=[(names[layer], hook)])
                        denom = g_clean - g_corrupt
                        ok = bool(sel.any()) and abs(denom) > 1e-9
                        line.append(round((gap(patched) - g_corrupt) / denom, 4) if ok else 0.0)
                    table.append(line)
                out[f"{cf}@{role}"] = table
    return out


# ----------------------------------------------------------------------------------------------
# one seed


def study_one(model, task, seed: int, n_samples: int) -> dict:
    """Label the heads of one trained model and run the circuit checks; a JSON-safe dict."""
    from anchor_interp.labels import analyse_heads
    from anchor_interp.names import parse_head_name
    from anchor_interp.scores.ablation import circuit_check

    batch = task.sample(n_samples, split="test", seed=LABEL_SEED_BASE + seed)
    analysis = analyse_heads(model, batch, task=task, seed=seed)
    recs = analysis.records
    labelled = [parse_head_name(n) for n in analysis.circuit]  # shift and broadcast heads + needed key copies
    by_role = {role: [r.name for r in recs if r.label == role] for role in ROLES}
    # found: a head labelled with the role, or a head with that role among its passing roles (a head can
    # do two things; its label names the larger, e.g. the mechanism model's layer 0 on some seeds)
    found = {role: bool(by_role[role]) or any(x.get("passes") and x.get("role") == role for r in recs for x in r.roles)
             for role in ROLES}
    row: dict = {"labels": " ".join(f"{r.name}:{_short(r)}" for r in recs)}
    for role in ROLES:
        row[f"{role}_heads"] = " ".join(by_role[role])
        row[f"found_{role}"] = found[role]
    row["groups"] = " ".join(f"{g.name}=[{','.join(g.heads)}]" for g in analysis.groups)
    if labelled and len(labelled) < model.cfg.n_layers * model.cfg.n_heads:
        cc = circuit_check(model, batch.tokens, batch.targets, labelled, method="mean", seed=seed,
                           max_circuit_ablated_accuracy=MAX_CIRCUIT_ACC, min_kept_fraction=MIN_KEPT)
        row.update(acc_without_labelled=cc.accuracy_without_circuit, acc_without_rest=cc.accuracy_without_rest,
                   kept_fraction=cc.kept_fraction)
        circuit_ok = cc.passes
    elif labelled:  # every head labelled: "all the other heads" is the empty set, nothing ablated
        from anchor_interp.scores.ablation import ablate

        r = ablate(model, batch.tokens, labelled, targets=batch.targets, method="mean", seed=seed)
        row.update(acc_without_labelled=r.accuracy, acc_without_rest=r.base_accuracy, kept_fraction=1.0)
        circuit_ok = r.accuracy <= MAX_CIRCUIT_ACC
    else:
        row.update(acc_without_labelled=float("nan"), acc_without_rest=float("nan"), kept_fraction=float("nan"))
        circuit_ok = False
    row["passes"] = bool(found["shift"] and found["broadcast"] and circuit_ok)
    masses = raw_masses(model, batch)
    shifts = [r for r in recs if r.label == "shift"]
    best = max(shifts, key=lambda r: r.causal_effect) if shifts else None
    bcs = [r for r in recs if r.label == "broadcast"]
    row["best_shift_head"] = best.name if best else ""
    row["best_shift_offset"] = best.offset if best else ""
    row["shift_key_row_to_anchor"] = _at(masses["key_row_to_anchor"], best)
    row["shift_key_row_to_anchor_uniform"] = masses["key_row_to_anchor_uniform"]
    row["shift_anchor_row_to_key"] = _at(masses["anchor_row_to_key"], best)
    row["broadcast_last_to_key"] = _mean_at(masses["last_row_to_key"], bcs)
    row["broadcast_rows_to_key"] = _mean_at(masses["rows_to_key"], bcs)
    # label-free evidence: which heads matter alone (ablation), and where each head acts (role patching)
    drop = {r.name: r.scores.get("ablation_accuracy_drop", float("nan")) for r in recs}
    necessary = [n for n, d in drop.items() if d >= NECESSARY_DROP]
    labelled_names = {r.name for r in recs if r.label in ROLES}
    row["necessary_heads"] = " ".join(necessary)
    row["necessary_missed"] = " ".join(n for n in necessary if n not in labelled_names)
    patching = role_patching(model, batch, task, seed)
    causal = model.cfg.attention_dir != "bidirectional"
    # the causal shift: the anchor moved, every token kept (single factor); anchor_move also writes a new
    # key value there, which key-copy heads carry too (kept below as shift_anchor_move_at_key, for comparison)
    shift_table = patching["anchor_position@key"] if causal else patching["key_swap@anchor"]
    last_layer = model.cfg.n_layers - 1
    carriers = {
        "shift": [r for r in recs if r.layer < last_layer and shift_table[r.layer][r.head] >= CARRIER],
        "broadcast": [r for r in recs if patching["key_swap@last"][r.layer][r.head] >= CARRIER],
    }
    key_copy = [r for r in recs if r.layer < last_layer and r not in carriers["shift"]
                and patching["key_swap@key"][r.layer][r.head] >= CARRIER]
    for role in ROLES:
        row[f"{role}_carriers"] = " ".join(r.name for r in carriers[role])
        row[f"{role}_labels_match"] = {r.name for r in carriers[role]} == {r.name for r in recs if r.label == role}
    row["key_copy_heads"] = " ".join(r.name for r in key_copy)
    if key_copy:
        from anchor_interp.scores.ablation import ablate

        res = ablate(model, batch.tokens, [(r.layer, r.head) for r in key_copy], targets=batch.targets,
                     method="mean", seed=seed)
        row["acc_without_key_copy"] = res.accuracy
    else:
        row["acc_without_key_copy"] = float("nan")
    # the circuit checks again on a label-free circuit: the heads necessary alone plus the labelled
    # broadcast heads (a broadcast spread over a layer has no head that is necessary alone)
    alt = sorted({(r.layer, r.head) for r in recs if drop[r.name] >= NECESSARY_DROP or r.label == "broadcast"})
    alt_names = " ".join(f"L{la}H{h}" for la, h in alt)
    if alt and len(alt) < len(recs):
        cc = circuit_check(model, batch.tokens, batch.targets, alt, method="mean", seed=seed,
                           max_circuit_ablated_accuracy=MAX_CIRCUIT_ACC, min_kept_fraction=MIN_KEPT)
        row.update(alt_circuit=alt_names, alt_acc_without_circuit=cc.accuracy_without_circuit,
                   alt_acc_without_rest=cc.accuracy_without_rest, alt_passes=cc.passes)
    else:
        # every head (or none) is in it: "ablate every other head" has nothing to test
        row.update(alt_circuit=alt_names, alt_acc_without_circuit=float("nan"),
                   alt_acc_without_rest=float("nan"), alt_passes=None)
    row["shift_anchor_move_at_key"] = _at(patching["anchor_move@key"], best)
    row["shift_anchor_position_at_key"] = _at(patching["anchor_position@key"], best)
    row["shift_key_swap_at_anchor"] = _at(patching["key_swap@anchor"], best)
    row["broadcast_key_swap_at_last"] = round(sum(patching["key_swap@last"][r.layer][r.head] for r in bcs), 4) if bcs else ""
    row["role_patching"] = patching
    row["heads"] = [r.to_dict() for r in recs]
    row["head_groups"] = [g.to_dict() for g in analysis.groups]
    row["baseline"] = analysis.to_dict()["baseline"]
    row["raw_masses"] = masses
    return row


def _short(rec) -> str:
    if rec.label == "shift":
        return f"shift({rec.offset:+d})"
    if rec.label == "broadcast":
        return "broadcast"
    return rec.kind or "neither"


def _at(table, rec):
    return "" if rec is None else table[rec.layer][rec.head]


def _mean_at(table, recs):
    if not recs:
        return ""
    return round(sum(table[r.layer][r.head] for r in recs) / len(recs), 4)


# ----------------------------------------------------------------------------------------------
# one spec, several seeds


def run_spec(spec_name: str, seeds: list[int], *, epochs: int | None, n_train: int | None, n_samples: int,
             progress: bool, model_overrides: dict | None = None, recipe_overrides: dict | None = None) -> list[dict]:
    """Train ``spec_name`` (a zoo spec, with optional extra model/recipe overrides) on every seed at once
    and study each; one dict per seed."""
    from anchor_interp.models import count_parameters, make_model, model_config
    from anchor_interp.models.zoo import ZOO
    from anchor_interp.tasks import make_task
    from anchor_interp.training import get_recipe, train_many

    spec = ZOO[spec_name]
    task = make_task(spec.task, **spec.task_params)
    overrides = dict(spec.recipe_overrides)
    overrides.update(recipe_overrides or {})
    model_over = dict(spec.model_overrides)
    model_over.update(model_overrides or {})
    if epochs is not None:
        overrides["epochs"] = epochs
        if "cosine_epochs" in overrides or epochs < get_recipe(spec.recipe).epochs:
            warm = get_recipe(spec.recipe, **{k: v for k, v in overrides.items() if k != "cosine_epochs"})
            overrides["warmup_epochs"] = min(warm.warmup_epochs, epochs / 10)
            overrides["cosine_epochs"] = max(epochs - overrides["warmup_epochs"], 1)
    if n_train is not None:
        overrides["n_train"] = n_train
    recipe = get_recipe(spec.recipe, **overrides)
    cfg = model_config(spec.preset, task, **model_over)
    models = [make_model(cfg, task, seed=s, init_gamma=spec.init_gamma) for s in seeds]
    t0 = time.perf_counter()
    results = train_many(models, task, recipe, seeds=seeds, progress=progress, preset=spec.preset)
    secs = (time.perf_counter() - t0) / len(seeds)
    rows = []
    for seed, res in zip(seeds, results, strict=True):
        row = {"spec": spec_name, "preset": spec.preset, "seed": seed, "n_params": count_parameters(res.model),
               "epochs": res.epoch, "n_train": recipe.n_train, "train_seconds": round(secs, 1),
               "test_acc": res.final.get("test_acc", float("nan"))}
        row.update(study_one(res.model, task, seed, n_samples))
        row["recipe"] = recipe.to_dict()
        row["init_gamma"] = spec.init_gamma
        row["model_overrides"] = model_over
        rows.append(row)
        print(f"{spec_name} seed {seed}: acc {row['test_acc']:.4f} | {row['labels']} | without labelled "
              f"{row['acc_without_labelled']:.3f}, without rest {row['acc_without_rest']:.3f} -> "
              f"{'PASS' if row['passes'] else 'FAIL'}", flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Counts of seeds that pass each criterion."""
    n = len(rows)
    return {
        "n_seeds": n,
        "found_shift": sum(r["found_shift"] for r in rows),
        "found_broadcast": sum(r["found_broadcast"] for r in rows),
        "circuit_ablated_le_0.1": sum(r["acc_without_labelled"] <= MAX_CIRCUIT_ACC for r in rows),
        "rest_ablated_kept_ge_0.95": sum(r["kept_fraction"] >= MIN_KEPT for r in rows),
        "passes": sum(r["passes"] for r in rows),
        "shift_labels_match": sum(r["shift_labels_match"] for r in rows),
        "broadcast_labels_match": sum(r["broadcast_labels_match"] for r in rows),
        "alt_circuit_applicable": sum(r["alt_passes"] is not None for r in rows),
        "alt_circuit_passes": sum(r["alt_passes"] is True for r in rows),
        "mean_test_acc": round(sum(r["test_acc"] for r in rows) / max(n, 1), 4),
    }


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items() if k in CSV_FIELDS})
    return buf.getvalue()


def _json_safe(x):
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


# ----------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None) -> argparse.Namespace:
    from anchor_interp.cli.args import _Parser, parse_nonneg_int, parse_pos_int

    ap = _Parser(prog="head_study.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", action="append", choices=SPECS, help="zoo spec(s) to study (default: both)")
    ap.add_argument("--seeds", type=parse_nonneg_int("--seeds"), nargs="+", default=[0, 1, 2, 3, 4],
                    help="distinct training seeds, each >= 0 (default 0-4)")
    ap.add_argument("--epochs", type=parse_pos_int("--epochs"), default=None,
                    help="override the spec's epochs (toy runs)")
    ap.add_argument("--n-train", type=parse_pos_int("--n-train"), default=None,
                    help="override the spec's training-set size")
    ap.add_argument("--n-samples", type=parse_pos_int("--n-samples"), default=500,
                    help="held-out rows for labelling (default 500)")
    ap.add_argument("--model-override", action="append", default=[], metavar="FIELD=JSON",
                    help='extra HookedTransformerConfig field, e.g. normalization_type=null (repeatable)')
    ap.add_argument("--recipe-override", action="append", default=[], metavar="FIELD=JSON",
                    help="extra recipe field, e.g. weight_decay=1.0 (repeatable)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    ap.add_argument("--force", action="store_true", help="overwrite existing results")
    ap.add_argument("--threads", type=parse_pos_int("--threads"), default=1,
                    help="torch CPU threads (default 1: shared machine)")
    ap.add_argument("--no-progress", action="store_true")
    try:
        args = ap.parse_args(argv)
        check_args(args)
    except ValueError as e:  # StudyError, UsageError: one line, exit 2
        ap.exit(2, f"head_study.py: error: {' '.join(str(e).split())}\n")
    return args


def check_args(args) -> None:
    """Raise StudyError / UsageError for values argparse cannot check."""
    from anchor_interp.cli.args import RECIPE_FIELD_TYPES, check_known_fields, check_writable_folder

    if len(set(args.seeds)) != len(args.seeds) or any(s < 0 for s in args.seeds):
        raise StudyError(f"--seeds: give distinct ints >= 0, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        raise StudyError(f"--epochs: must be >= 1, got {args.epochs}")
    if args.n_train is not None and args.n_train < 100:
        raise StudyError(f"--n-train: must be >= 100 (one batch), got {args.n_train}")
    if args.n_samples < 16:
        raise StudyError(f"--n-samples: must be >= 16 held-out rows, got {args.n_samples}")
    for flag in ("model_override", "recipe_override"):
        parsed = {}
        for item in getattr(args, flag):
            name, sep, value = item.partition("=")
            try:
                if not sep or not name:
                    raise ValueError
                parsed[name] = json.loads(value)
            except ValueError:
                raise StudyError(f"--{flag.replace('_', '-')}: expected FIELD=JSON (e.g. weight_decay=1.0, "
                                 f"normalization_type=null), got {item!r}") from None
        setattr(args, flag, parsed)
    check_known_fields(args.recipe_override, "--recipe-override", RECIPE_FIELD_TYPES, "recipe field")
    if args.threads < 1:
        raise StudyError(f"--threads: must be >= 1, got {args.threads}")
    specs = args.spec or list(SPECS)
    existing = [args.out / s / "seeds.csv" for s in specs if (args.out / s / "seeds.csv").exists()]
    if existing and not args.force:
        raise StudyError(f"--out: results exist ({', '.join(map(str, existing))}); use --force to overwrite")
    if args.out.exists() and not args.out.is_dir():
        raise StudyError(f"--out: {args.out} is a file, not a folder")
    check_writable_folder(args.out, "--out")


def check_model_overrides(overrides: dict) -> None:
    """StudyError (one line naming the field) for a --model-override that is not a HookedTransformerConfig
    field. Imports transformer_lens: call it after the torch-free checks, before any work."""
    import dataclasses

    from transformer_lens import HookedTransformerConfig

    known = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    for name in overrides:
        if name not in known:
            raise StudyError(f"--model-override {name}: not a HookedTransformerConfig field")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_model_overrides(args.model_override)
    except StudyError as e:
        print(f"head_study.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    import torch

    from anchor_interp.models.checkpoint import atomic_write_text

    torch.set_num_threads(args.threads)
    specs = args.spec or list(SPECS)
    command = "python analyses/head_study.py " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = {"criteria": {"max_circuit_ablated_accuracy": MAX_CIRCUIT_ACC, "min_kept_fraction": MIN_KEPT},
               "specs": {}}
    summary_path = args.out / "summary.json"
    if summary_path.exists():
        old = json.loads(summary_path.read_text())
        summary["specs"] = {k: v for k, v in old.get("specs", {}).items() if k not in specs}
    for spec_name in specs:
        rows = run_spec(spec_name, list(args.seeds), epochs=args.epochs, n_train=args.n_train,
                        n_samples=args.n_samples, progress=not args.no_progress,
                        model_overrides=args.model_override, recipe_overrides=args.recipe_override)
        folder = args.out / spec_name
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "seeds.csv", _csv_text(rows))
        atomic_write_text(folder / "seeds.json", json.dumps(_json_safe(rows), indent=1) + "\n")
        summary["specs"][spec_name] = {"command": command, **summarise(rows)}
        print(f"{spec_name}: {summary['specs'][spec_name]}")
    atomic_write_text(summary_path, json.dumps(_json_safe(summary), indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

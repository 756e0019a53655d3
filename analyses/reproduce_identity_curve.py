"""Reproduce the identity-learning curve: held-out accuracy versus training-set size N (paper Fig. 2a).

For each N, the seeds are trained together (one batched computation, anchor_interp.training.train_many),
each model on its own fixed training set of N sequences, and scored on the held-out split at the end.

    python analyses/reproduce_identity_curve.py --preset small --recipe fast --epochs 100
    python analyses/reproduce_identity_curve.py --preset paper --recipe fast --epochs 12 --tag paper
    python analyses/reproduce_identity_curve.py --sizes 100 200 --seeds 2 --epochs 2 --out /tmp/curve  # toy

Writes to --out (default analyses/results/identity_curve/):
  identity_curve_<tag>_runs.csv   one row per (N, seed): final and best held-out accuracy, train accuracy, ...
  identity_curve_<tag>.csv        one row per N: mean, std, min, max over seeds, and the paper's value
  identity_curve_<tag>.png        ours (mean +- std, every seed as a dot) beside the paper's curve
  identity_curve_<tag>.json       the exact settings (command, preset, recipe, seeds, timings)
Rows already in the runs CSV (same settings) are kept, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anchor_interp.cli.args import (  # noqa: E402  (after the path fix)
    RECIPE_NAMES,
    _Parser,
    add_device_argument,
    check_distinct,
    check_writable_folder,
    parse_field_value,
    parse_init_gamma,
    parse_nonneg_int,
    parse_or_exit,
    parse_pos_int,
    parse_recipe_values,
    resolve_cli_device,
)

DEFAULT_SIZES = (200, 300, 400, 500, 600, 800, 1000, 1500)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "identity_curve"

# Paper (arXiv 2401.08309, identity learning, 4L4H, mean final test accuracy over 10 seeds), as
# summarised in shared/spec/anchor_tasks.md section 5: ~0.04 at 200, ~0.25 at 300, ~0.77 at 400,
# ~0.95 at 500, >0.99 from 600, 1.00 at 1000-1800. 600 and 800 are drawn at 0.99 (">0.99").
PAPER_CURVE = {200: 0.04, 300: 0.25, 400: 0.77, 500: 0.95, 600: 0.99, 800: 0.99, 1000: 1.0, 1500: 1.0}

RUN_FIELDS = ("n_train", "seed", "test_acc", "best_test_acc", "train_acc", "train_loss", "test_loss",
              "epochs", "steps", "seconds")


def parse_args(argv=None):
    ap = _Parser(prog="reproduce_identity_curve.py", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=("small", "paper", "mechanism"))
    ap.add_argument("--recipe", default="fast", choices=RECIPE_NAMES)
    ap.add_argument("--sizes", type=parse_pos_int("--sizes"), nargs="+", default=list(DEFAULT_SIZES),
                    help="distinct training-set sizes N, each >= 1")
    ap.add_argument("--seeds", type=parse_pos_int("--seeds"), default=5,
                    help="number of seeds per N, >= 1: seeds 0 .. seeds-1 (default 5)")
    ap.add_argument("--init-gamma", type=parse_init_gamma, default="preset", metavar="GAMMA|tl|torch|preset",
                    help="init std = d_in ** -GAMMA for every weight matrix; 'tl': TransformerLens' init; "
                         "default 'preset': the preset's choice (0.75 for paper, TransformerLens' for the others)")
    ap.add_argument("--epochs", type=parse_pos_int("--epochs"),
                    help="shorter schedule: the recipe squeezed into this many epochs")
    ap.add_argument("--eval-every", type=parse_nonneg_int("--eval-every"), default=0,
                    help="held-out evaluation interval in epochs (0: only at the end; best_test_acc is then the final)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="recipe override")
    ap.add_argument("--tag", help="name of the output files (default: <preset>)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    add_device_argument(ap, default="auto")
    ap.add_argument("--together", action="store_true",
                    help="train every size and seed as one batched computation (meant for a GPU; on a CPU it is "
                         "no faster than one computation per size)")
    ap.add_argument("--threads", type=parse_nonneg_int("--threads"), default=1,
                    help="torch CPU threads (default 1; 0: torch's default)")
    ap.add_argument("--no-progress", action="store_true")
    return parse_or_exit(ap, argv, checks=(_check_values,))


def _check_values(args) -> None:
    """The checks argparse cannot do (UsageError, one line), all before anything is written."""
    check_distinct(args.sizes, "--sizes")
    args.set = parse_recipe_values(args.set, "--set")
    check_writable_folder(args.out, "--out")


def squeezed_recipe(name: str, epochs: int | None, overrides: dict):
    """The named recipe; with ``epochs``, its warm-up and cosine scaled by epochs / recipe.epochs."""
    from anchor_interp.training import get_recipe

    base = get_recipe(name)
    over = dict(overrides)
    if epochs is not None:
        f = epochs / base.epochs
        over.setdefault("epochs", epochs)
        over.setdefault("warmup_epochs", base.warmup_epochs * f)
        if base.cosine_epochs is not None:
            over.setdefault("cosine_epochs", base.cosine_epochs * f)
    recipe = get_recipe(base, **over)
    if recipe.cosine_epochs is None:  # write the schedule out in full (same lr at every step)
        recipe = recipe.replace(cosine_epochs=max(recipe.epochs - recipe.warmup_epochs, 1))
    return recipe


def read_runs(path: Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: parse_field_value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_csv(path: Path, rows: list[dict], fields) -> None:
    from anchor_interp.models.checkpoint import atomic_write_text

    lines = [",".join(fields)]
    for r in rows:
        lines.append(",".join(f"{r[f]:.6g}" if isinstance(r[f], float) else str(r[f]) for f in fields))
    atomic_write_text(path, "\n".join(lines) + "\n")


def summarise(runs: list[dict]) -> list[dict]:
    out = []
    for n in sorted({int(r["n_train"]) for r in runs}):
        accs = [float(r["test_acc"]) for r in runs if int(r["n_train"]) == n]
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        out.append({"n_train": n, "n_seeds": len(accs), "mean_test_acc": mean, "std_test_acc": std,
                    "min_test_acc": min(accs), "max_test_acc": max(accs),
                    "paper_mean_test_acc": PAPER_CURVE.get(n, float("nan"))})
    return out


def plot(summary: list[dict], runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anchor_interp.models.checkpoint import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ns = [s["n_train"] for s in summary]
    ax.errorbar(ns, [s["mean_test_acc"] for s in summary], yerr=[s["std_test_acc"] for s in summary],
                marker="o", capsize=3, label="ours: mean +- std over seeds")
    ax.scatter([r["n_train"] for r in runs], [r["test_acc"] for r in runs], s=10, alpha=0.4, color="C0",
               label="ours: each seed")
    pn = sorted(PAPER_CURVE)
    ax.plot(pn, [PAPER_CURVE[n] for n in pn], marker="s", ls="--", color="C3",
            label="paper (4L4H, 4000 epochs, 10 seeds)")
    ax.set_xlabel("training-set size N")
    ax.set_ylabel("held-out accuracy (final)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from anchor_interp.models import count_parameters, make_model
    from anchor_interp.models.checkpoint import atomic_write_text, ensure_writable_dir
    from anchor_interp.tasks import make_task
    from anchor_interp.training import train_many

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        recipe = squeezed_recipe(args.recipe, args.epochs, args.set)
        device = resolve_cli_device(args.device)
        out = ensure_writable_dir(args.out)
    except ValueError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    # held-out evaluation of k models on n_test sequences costs as much as an epoch at small N: by default
    # evaluate only at the end
    recipe = recipe.replace(eval_every=args.eval_every or recipe.epochs)
    from anchor_interp.models import PRESETS

    if args.init_gamma == "preset":
        args.init_gamma = PRESETS[args.preset].init_gamma
    tag = args.tag or args.preset
    task = make_task("identity")
    seeds = list(range(args.seeds))
    settings = {"command": "python analyses/reproduce_identity_curve.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv)),
                "preset": args.preset, "task": task.to_dict(), "recipe": {k: v for k, v in recipe.to_dict().items() if k != "n_train"},
                "init_gamma": args.init_gamma, "seeds": seeds, "sizes": sorted(args.sizes), "device": str(device), "torch_threads": args.threads}
    runs_path = out / f"identity_curve_{tag}_runs.csv"
    meta_path = out / f"identity_curve_{tag}.json"
    runs = []
    if runs_path.exists() and meta_path.exists():
        old = json.loads(meta_path.read_text())
        def key(d):  # everything that changes the weights or the score (not how often we evaluate)
            return (d.get("preset"), d.get("task"), d.get("init_gamma"),
                    {k: v for k, v in (d.get("recipe") or {}).items() if k != "eval_every"})

        if key(old) == key(settings):
            runs = read_runs(runs_path)
    done = {(int(r["n_train"]), int(r["seed"])) for r in runs}
    settings["n_params"] = count_parameters(make_model(args.preset, task, seed=0))
    atomic_write_text(meta_path, json.dumps(settings, indent=1) + "\n")
    todo = [(n, s) for n in sorted(args.sizes) for s in seeds if (n, s) not in done]
    # one batched computation per size (default), or every size and seed at once (--together)
    groups = [todo] if args.together else [[(n, s) for n, s in todo if n == size] for size in sorted(args.sizes)]
    for group in filter(None, groups):
        models = [make_model(args.preset, task, seed=s, init_gamma=args.init_gamma, device=device) for _, s in group]
        t0 = time.perf_counter()
        results = train_many(models, task, recipe, seeds=[s for _, s in group], n_train=[n for n, _ in group],
                             device=device, progress=not args.no_progress, preset=args.preset)
        secs = time.perf_counter() - t0
        for (n, _), r in zip(group, results, strict=True):
            f = r.final
            runs.append({"n_train": n, "seed": r.seed, "test_acc": f["test_acc"],
                         "best_test_acc": max(h["test_acc"] for h in r.history), "train_acc": f["train_acc"],
                         "train_loss": f["train_loss"], "test_loss": f["test_loss"], "epochs": r.epoch,
                         "steps": r.step, "seconds": round(secs / len(results), 1)})
        runs.sort(key=lambda r: (int(r["n_train"]), int(r["seed"])))
        write_csv(runs_path, runs, RUN_FIELDS)
        for size in sorted({n for n, _ in group}):
            accs = [(s, r.final["test_acc"]) for (n, s), r in zip(group, results, strict=True) if n == size]
            print(f"N={size}: held-out acc {sum(a for _, a in accs) / len(accs):.3f} (seeds "
                  f"{', '.join(f'{s}: {a:.3f}' for s, a in accs)}); {len(group)} model(s) together in {secs:.0f} s",
                  flush=True)
    runs = [r for r in runs if int(r["n_train"]) in set(args.sizes) and int(r["seed"]) in set(seeds)]
    summary = summarise(runs)
    write_csv(out / f"identity_curve_{tag}.csv", summary, tuple(summary[0]))
    gamma = "" if args.init_gamma is None else f", init gamma {args.init_gamma}"
    title = (f"identity learning: preset {args.preset} ({settings['n_params']:,} params{gamma}),\n"
             f"recipe {recipe.name} (lr {recipe.lr:g}, batch {recipe.batch_size}), {recipe.epochs} epochs, {len(seeds)} seeds")
    plot(summary, runs, out / f"identity_curve_{tag}.png", title)
    print(f"wrote {runs_path}, {out / f'identity_curve_{tag}.csv'}, {out / f'identity_curve_{tag}.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

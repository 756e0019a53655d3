"""Many models at once: k seeds trained as one batched computation vs k separate runs (issue 5.3).

    python benchmarks/bench_many_models.py [--preset paper] [--ks 1 4 16] [--steps 3] [--reps 3]
                                           [--figure-sizes 200 1200 2300] [--set FIELD=VALUE ...]
                                           [--json PATH] [--quick]

Part 1, throughput. For each k: ``training.train_many`` on k models (seeds 0..k-1) against k calls of
``training.train`` (one model each), the same recipe (default: the authors' ``paper`` recipe, batch 50),
``--set`` Recipe fields overridden in both (e.g. ``--set precision=bf16 --set fused_adamw=True``),
``--steps`` optimizer steps per model (n_train = steps x batch, one epoch, one held-out evaluation of
``batch`` sequences at its end). Timed: the whole ``train_many`` / ``train`` calls (data sampling,
stacking, steps, the evaluation); not timed: building the models. Reported: models x steps per second,
medians over ``--reps`` repetitions (together and separate alternate), and their ratio.

Part 2, the paper's identity figure (22 training-set sizes N = 200, 300, ..., 2300 x 10 seeds, 4000
epochs, batch 50: 4000 x 10 x sum(N) = 1.1e9 training sequences). A shortened schedule is run for real:
one epoch of 10 seeds together (``train_many``, k = 10) at each of ``--figure-sizes``, evaluation on the
recipe's 500 held-out sequences included. From it, seconds per batched step and per evaluation
(medians over the sizes) give the **extrapolated** time of the full figure:
sum over the 22 sizes of 4000 x (ceil(N / 50) x step + evaluation).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from anchor_interp import training
from anchor_interp.models import count_parameters, make_model, model_config
from anchor_interp.tasks import make_task

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/, for _provenance
from _provenance import machine_line, write_json  # noqa: E402  (after the path fix)

from anchor_interp.cli.args import (  # noqa: E402
    OneLineParser,
    parse_output_file,
    parse_pos_int,
    parse_recipe_values,
    run_main,
)

FIGURE_SIZES = tuple(range(200, 2301, 100))  # 22 sizes; 4000 x 10 x sum = 1.1e9 sequences
FIGURE_SEEDS, FIGURE_EPOCHS = 10, 4000


def build(task, cfg, k: int, seed0: int = 0) -> list:
    return [make_model(cfg, task, seed=seed0 + i) for i in range(k)]


def time_together(task, cfg, k, recipe, overrides) -> float:
    models = build(task, cfg, k)
    t0 = time.perf_counter()
    training.train_many(models, task, recipe, seeds=list(range(k)), progress=False, **overrides)
    return time.perf_counter() - t0


def time_separate(task, cfg, k, recipe, overrides) -> float:
    models = build(task, cfg, k)
    t0 = time.perf_counter()
    for i, m in enumerate(models):
        training.train(m, task, recipe, seed=i, progress=False, **overrides)
    return time.perf_counter() - t0


def throughput(task, cfg, ks, recipe, steps, reps, recipe_set: dict) -> list[dict]:
    batch = training.get_recipe(recipe, **recipe_set).batch_size
    overrides = dict(recipe_set, n_train=steps * batch, epochs=1, n_test=batch, eval_every=1, warmup_epochs=0)
    rows = []
    for k in ks:
        time_together(task, cfg, 1, recipe, overrides)  # warm-up (allocator, first-call costs)
        tog, sep = [], []
        for _ in range(reps):
            tog.append(time_together(task, cfg, k, recipe, overrides))
            sep.append(time_separate(task, cfg, k, recipe, overrides))
        t, s = statistics.median(tog), statistics.median(sep)
        rows.append({"k": k, "steps": steps, "batch": batch, "together_s": t, "separate_s": s,
                     "together_model_steps_per_s": k * steps / t, "separate_model_steps_per_s": k * steps / s,
                     "speedup": s / t, "together_all_s": tog, "separate_all_s": sep})
        print(f"  k={k:<3} together {t:7.2f} s ({k * steps / t:6.2f} model-steps/s)   separate {s:7.2f} s "
              f"({k * steps / s:6.2f} model-steps/s)   ratio {s / t:.2f}x", flush=True)
    return rows


def figure(task, cfg, recipe, sizes, seeds, epochs_short, recipe_set: dict) -> dict:
    rec = training.get_recipe(recipe, **recipe_set)
    runs = []
    real_eval = training.evaluate_stacked
    for n in sizes:
        models = build(task, cfg, seeds)
        eval_s = []

        def timed_eval(*a, _e=eval_s, **kw):
            e0 = time.perf_counter()
            out = real_eval(*a, **kw)
            _e.append(time.perf_counter() - e0)
            return out

        training.evaluate_stacked = timed_eval
        try:
            t0 = time.perf_counter()
            training.train_many(models, task, rec, seeds=list(range(seeds)), progress=False, n_train=n,
                                epochs=epochs_short)
            wall = time.perf_counter() - t0
        finally:
            training.evaluate_stacked = real_eval
        steps = epochs_short * math.ceil(n / rec.batch_size)
        ev = sum(eval_s)
        runs.append({"n_train": n, "epochs": epochs_short, "steps": steps, "wall_s": wall, "eval_s": ev,
                     "s_per_step": (wall - ev) / steps, "s_per_eval": ev / max(len(eval_s), 1)})
        print(f"  N={n:<5} {seeds} seeds x {epochs_short} epoch(s): {wall:6.1f} s ({steps} steps of {seeds} models, "
              f"{(wall - ev) / steps:.3f} s/step, evaluation {ev:.2f} s)", flush=True)
    step_s = statistics.median(r["s_per_step"] for r in runs)
    eval_s = statistics.median(r["s_per_eval"] for r in runs)
    full_steps = sum(FIGURE_EPOCHS * math.ceil(n / rec.batch_size) for n in FIGURE_SIZES)  # per group of seeds
    groups = math.ceil(FIGURE_SEEDS / seeds)  # batched runs per size (10 seeds in groups of `seeds`)
    full_s = groups * (full_steps * step_s + len(FIGURE_SIZES) * FIGURE_EPOCHS * eval_s)
    seqs = FIGURE_EPOCHS * FIGURE_SEEDS * sum(FIGURE_SIZES)
    return {"sizes_run": list(sizes), "seeds": seeds, "epochs_short": epochs_short, "runs": runs,
            "measured_total_s": sum(r["wall_s"] for r in runs), "s_per_step": step_s, "s_per_eval": eval_s,
            "full_figure_batched_steps": groups * full_steps, "groups_per_size": groups, "full_figure_sequences": seqs,
            "full_figure_extrapolated_s": full_s}


def main(argv=None) -> int:
    ap = OneLineParser(prog="bench_many_models.py", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper", choices=["small", "paper", "mechanism"])
    ap.add_argument("--recipe", default="paper", choices=sorted(training.RECIPES))
    ap.add_argument("--ks", type=parse_pos_int("--ks"), nargs="+", default=[1, 4, 16])
    ap.add_argument("--steps", type=parse_pos_int("--steps"), default=3, help="optimizer steps per model in part 1")
    ap.add_argument("--reps", type=parse_pos_int("--reps"), default=3)
    ap.add_argument("--figure-sizes", type=parse_pos_int("--figure-sizes"), nargs="*", default=[200, 1200, 2300],
                    help="training-set sizes run for part 2 (none: skip part 2)")
    ap.add_argument("--figure-seeds", type=parse_pos_int("--figure-seeds"), default=FIGURE_SEEDS)
    ap.add_argument("--figure-epochs", type=parse_pos_int("--figure-epochs"), default=1, help="epochs of the shortened schedule")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="Recipe field override, e.g. precision=bf16 (repeatable)")
    ap.add_argument("--threads", type=parse_pos_int("--threads"), default=1)
    ap.add_argument("--json", type=parse_output_file("--json"), default=None)
    ap.add_argument("--quick", action="store_true", help="toy size (< 60 s): d_model 32 small preset, k = 1, 4")
    args = ap.parse_args(argv)
    for name in ("steps", "reps", "figure_seeds", "figure_epochs", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if any(k < 1 for k in args.ks) or any(n < 1 for n in args.figure_sizes):
        ap.error("--ks and --figure-sizes must be positive ints")
    try:
        recipe_set = parse_recipe_values(args.set, "--set")
        training.get_recipe(args.recipe, **recipe_set)
    except (ValueError, argparse.ArgumentTypeError) as e:
        ap.error(str(e))
    torch.set_num_threads(args.threads)
    task = make_task("identity")
    over = {}
    if args.quick:
        args.preset, args.ks, args.steps, args.reps = "small", [1, 4], 2, 1
        args.figure_sizes, args.figure_seeds = [200], 2
        over = {"d_model": 32, "d_head": 8}
    cfg = model_config(args.preset, task, **over)
    n_params = count_parameters(make_model(cfg, task, seed=0))
    print(f"preset {args.preset} ({n_params} parameters), recipe {args.recipe} {recipe_set or ''}; part 1: throughput")
    rows = throughput(task, cfg, args.ks, args.recipe, args.steps, args.reps, recipe_set)
    fig = None
    if args.figure_sizes:
        print(f"part 2: the identity figure, shortened to {args.figure_epochs} epoch(s) at N in {args.figure_sizes}")
        fig = figure(task, cfg, args.recipe, args.figure_sizes, args.figure_seeds, args.figure_epochs, recipe_set)
        h = fig["full_figure_extrapolated_s"] / 3600
        print(f"  measured: {fig['measured_total_s']:.1f} s; {fig['s_per_step']:.3f} s per step of "
              f"{args.figure_seeds} models, {fig['s_per_eval']:.3f} s per evaluation")
        print(f"  EXTRAPOLATED full figure (22 sizes x {FIGURE_SEEDS} seeds x {FIGURE_EPOCHS} epochs, "
              f"{fig['full_figure_sequences']:.2e} sequences, {fig['full_figure_batched_steps']} batched steps): "
              f"{h:,.0f} h = {h / 24:,.1f} days on this machine")
    print(machine_line())
    if args.json:
        write_json(args.json, "bench_many_models.py", argv, preset=args.preset, n_params=n_params, recipe=args.recipe,
                   recipe_set=recipe_set, throughput=rows, figure=fig)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="bench_many_models.py"))

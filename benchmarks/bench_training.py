"""Time to accuracy: wall time until held-out accuracy first reaches 99% on identity learning (issue 5.2).

    python benchmarks/bench_training.py [--cases paper:paper paper:quick ...] [--seeds 0 1 2]
                                        [--target 0.99] [--cap-s 240] [--json PATH] [--quick]

Each case is ``preset:recipe`` or ``preset:recipe:field=value,...`` (Recipe fields overridden, e.g.
``paper:quick:precision=fp32,fused_adamw=False``) run by our trainer (``anchor_interp.training.train``)
on identity learning with N = 1000 fixed training sequences (``n_train=1000``), the recipe's own batch
size, schedule, precision and held-out set (fast: 1000 sequences, paper and quick: 500), held-out
accuracy evaluated in float32 after **every epoch**, and ``early_stop_acc=target``, so the run stops at
the first evaluation at or above the target.

Reported per case (median over ``--seeds``, one run each): wall seconds of the ``train`` call until the
crossing (data sampling + training + the per-epoch evaluations), the same minus the time spent in the
evaluations, the epoch of the crossing, and seconds per epoch. A run that has not crossed after
``--cap-s`` seconds is stopped (SIGALRM) and reported as "not reached within cap" with the best held-out
accuracy it had; ratios to it are then lower bounds (">="). The baseline for the ratios is the authors'
recipe on the same preset in our trainer (``paper:paper``, ``small:paper``), measured in the same run.
Model construction is not timed.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from pathlib import Path

import torch

from anchor_interp import training
from anchor_interp.cli import parse_field_values
from anchor_interp.models import count_parameters, make_model, model_config
from anchor_interp.tasks import make_task

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/, for _provenance
from _provenance import machine_line, write_json  # noqa: E402  (after the path fix)

from anchor_interp.cli.args import OneLineParser, parse_output_file, parse_pos_int, run_main  # noqa: E402

DEFAULT_CASES = ("paper:paper", "paper:quick", "paper:quick:precision=fp32,fused_adamw=False",
                 "paper:paper:precision=bf16,fused_adamw=True", "small:paper", "small:quick")


class _TimeCap(Exception):
    pass


def _alarm(signum, frame):
    raise _TimeCap()


def parse_case(case: str) -> tuple[str, str, dict]:
    """``preset:recipe[:field=value,...]`` -> (preset, recipe, recipe overrides); ValueError if malformed."""
    parts = case.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("small", "paper", "mechanism") or parts[1] not in training.RECIPES:
        raise ValueError(f"--cases entry {case!r}: use preset:recipe[:field=value,...] with preset in "
                         f"small/paper/mechanism and recipe in {sorted(training.RECIPES)}")
    try:
        overrides = parse_field_values(parts[2].split(",") if len(parts) == 3 else [], f"--cases entry {case!r}:")
    except argparse.ArgumentTypeError as e:
        raise ValueError(str(e)) from None
    try:
        training.get_recipe(parts[1], **overrides)  # unknown fields / bad values raise ValueError here
    except ValueError as e:
        raise ValueError(f"--cases entry {case!r}: {e}") from None
    return parts[0], parts[1], overrides


def run_case(preset: str, recipe: str, seed: int, target: float, cap_s: float, n_train: int,
             model_overrides: dict | None = None, max_epochs: int | None = None,
             recipe_overrides: dict | None = None) -> dict:
    """One training run; returns timings and the accuracy trace (one row per evaluation)."""
    task = make_task("identity")
    cfg = model_config(preset, task, **(model_overrides or {}))
    model = make_model(cfg, task, seed=seed)
    evals: list[dict] = []  # per evaluation: wall at its end, its own seconds, test accuracy
    real_eval = training.evaluate_stacked
    t0 = 0.0

    def timed_eval(*a, **kw):
        e0 = time.perf_counter()
        rows = real_eval(*a, **kw)
        e1 = time.perf_counter()
        evals.append({"wall_s": e1 - t0, "eval_s": e1 - e0, "test_acc": rows[0]["test_acc"] or 0.0})
        return rows

    overrides = dict(recipe_overrides or {}, n_train=n_train, eval_every=1, early_stop_acc=target)
    if max_epochs is not None:
        overrides["epochs"] = max_epochs
    training.evaluate_stacked = timed_eval  # the loop looks it up in the module at every epoch
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, cap_s)
    reached, stopped = False, "cap"
    t0 = time.perf_counter()
    try:
        res = training.train(model, task, recipe, seed=seed, progress=False, preset=preset, **overrides)
        reached = bool(res.stopped_early)
        stopped = "target" if reached else "recipe end"
    except _TimeCap:
        pass
    finally:
        wall = time.perf_counter() - t0
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        training.evaluate_stacked = real_eval
    n_ep = len(evals)
    eval_s = sum(e["eval_s"] for e in evals)
    if reached:
        wall = evals[-1]["wall_s"]  # the crossing evaluation's end (train() returns right after it)
    return {
        "preset": preset, "recipe": recipe, "seed": seed, "n_params": count_parameters(model),
        "recipe_fields": training.get_recipe(recipe, **overrides).to_dict(),
        "reached": reached, "stopped": stopped, "epochs": n_ep, "wall_s": wall, "eval_s": eval_s,
        "train_s": wall - eval_s, "s_per_epoch": (wall - eval_s) / max(n_ep, 1),
        "best_acc": max((e["test_acc"] for e in evals), default=0.0),
        "trace": [round(e["test_acc"], 4) for e in evals],
    }


def main(argv=None) -> int:
    ap = OneLineParser(prog="bench_training.py", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="preset:recipe pairs")
    ap.add_argument("--seeds", type=parse_pos_int("--seeds"), nargs="+", default=[0], help="one run per seed; medians over them")
    ap.add_argument("--target", type=float, default=0.99, help="held-out accuracy to reach, in (0, 1]")
    ap.add_argument("--cap-s", type=float, default=240.0, help="stop a run after this many seconds")
    ap.add_argument("--n-train", type=parse_pos_int("--n-train"), default=1000)
    ap.add_argument("--threads", type=parse_pos_int("--threads"), default=1)
    ap.add_argument("--json", type=parse_output_file("--json"), default=None, help="write every run (with its accuracy trace) to this file")
    ap.add_argument("--quick", action="store_true",
                    help="toy size (< 60 s): a d_model 32 small model, both recipes, cap 10 s")
    args = ap.parse_args(argv)
    if not 0 < args.target <= 1:
        ap.error(f"--target must be in (0, 1]; got {args.target}")
    if args.cap_s <= 0:
        ap.error(f"--cap-s must be > 0 seconds; got {args.cap_s}")
    if args.quick:
        args.cases, args.cap_s = ["small:paper", "small:quick", "small:quick:precision=fp32"], 10.0
    cases = {}
    for c in args.cases:
        try:
            cases[c] = parse_case(c)
        except ValueError as e:
            ap.error(str(e))
    torch.set_num_threads(args.threads)
    overrides, max_epochs = None, None
    if args.quick:
        max_epochs, overrides = 3, {"d_model": 32, "d_head": 8}

    runs = []
    for seed in args.seeds:  # seeds outermost: the cases of one seed run back to back, under similar load
        for case, (preset, recipe, rec_over) in cases.items():
            r = run_case(preset, recipe, seed, args.target, args.cap_s, args.n_train, overrides, max_epochs, rec_over)
            r["case"] = case
            runs.append(r)
            print(f"  {case} seed {seed}: {'reached' if r['reached'] else 'NOT reached'} "
                  f"at epoch {r['epochs']}, {r['wall_s']:.1f} s (eval {r['eval_s']:.1f} s), best {r['best_acc']:.3f}",
                  flush=True)

    def summary(case):
        rs = [r for r in runs if r["case"] == case]
        return {
            "case": case, "n_params": rs[0]["n_params"], "runs": len(rs),
            "reached": sum(r["reached"] for r in rs),
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "train_s": statistics.median(r["train_s"] for r in rs),
            "epochs": statistics.median(r["epochs"] for r in rs),
            "s_per_epoch": statistics.median(r["s_per_epoch"] for r in rs),
            "best_acc": statistics.median(r["best_acc"] for r in rs),
        }

    table = [summary(c) for c in cases]
    baselines = {s["case"].split(":")[0]: s for s in table if s["case"].count(":") == 1 and s["case"].endswith(":paper")}
    print(f"\ntarget: held-out accuracy >= {args.target} on identity, N = {args.n_train}; "
          f"cap {args.cap_s:.0f} s; medians over seeds {args.seeds}")
    print(f"{'case':<46}{'params':>10}{'reached':>9}{'epochs':>8}{'wall s':>9}{'train s':>9}{'s/epoch':>9}"
          f"{'best acc':>9}{'speed-up':>10}")
    for s in table:
        ratio = ""
        base = baselines.get(s["case"].split(":")[0])  # the authors' recipe on the same preset
        s["speedup"] = None
        if base is not None and s is not base and s["reached"] == s["runs"]:
            s["speedup"] = base["wall_s"] / s["wall_s"]
            s["speedup_is_lower_bound"] = base["reached"] < base["runs"]
            ratio = (">=" if s["speedup_is_lower_bound"] else "") + f"{s['speedup']:.1f}x"
        cap = "" if s["reached"] == s["runs"] else " (not all reached)"
        print(f"{s['case']:<46}{s['n_params']:>10}{s['reached']:>5}/{s['runs']:<3}{s['epochs']:>8.0f}"
              f"{s['wall_s']:>9.1f}{s['train_s']:>9.1f}{s['s_per_epoch']:>9.2f}{s['best_acc']:>9.3f}{ratio:>10}{cap}")
    print(machine_line())
    if args.json:
        write_json(args.json, "bench_training.py", argv, target=args.target, cap_s=args.cap_s, summary=table, runs=runs)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="bench_training.py"))

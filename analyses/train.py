"""Train anchor models (one, or several seeds at once as one batched computation).

    python analyses/train.py --task identity --preset small --recipe fast --seed 0 --out runs/small0
    python analyses/train.py --preset paper --recipe paper --n-train 1000 --epochs 200 --out runs/paper
    python analyses/train.py --seeds 0 1 2 3 --out runs/sweep        # 4 models together: runs/sweep/seed_<s>/
    python analyses/train.py --out runs/small0 --resume              # continue an interrupted run
    python analyses/train.py --set lr=3e-4 --set weight_decay=0.1 --early-stop 0.99 --out runs/x

Each output folder gets checkpoint.json, the weights (+ the optimizer state while the run is
unfinished; tensor files named by checkpoint.json), history.csv, history.json and history.png. A
resumable checkpoint is saved every 5 minutes (--checkpoint-every-minutes) and at Ctrl-C or SIGTERM.

--out must be a new or empty folder, unless --resume (continue the run saved there: task, preset,
recipe, seeds and data settings are read from its checkpoint; flags that contradict them are an error)
or --force (replace the run saved there). Training uses one CPU thread unless --threads says otherwise
(same seed, same bits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anchor_interp.cli.args import (  # noqa: E402  (after the path fix)
    PRESET_NAMES,
    RECIPE_NAMES,
    UsageError,
    _Parser,
    add_device_argument,
    check_distinct,
    check_writable_folder,
    parse_field_values,
    parse_init_gamma,
    parse_nonneg_float,
    parse_nonneg_int,
    parse_or_exit,
    parse_pos_int,
    parse_recipe_values,
    resolve_cli_device,
)

DEFAULTS = {"task": "identity", "preset": "small", "recipe": "fast", "seed": 0}  # a new run's defaults
META_FILE = "checkpoint.json"  # anchor_interp.models.checkpoint.META_FILE


UNSET = object()  # --init-gamma not given (None means TransformerLens' init)

def parse_args(argv=None) -> argparse.Namespace:
    ap = _Parser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", help="task name (anchor_interp.tasks.list_tasks()); default identity")
    ap.add_argument("--task-param", action="append", default=[], metavar="KEY=VALUE", help="task parameter")
    ap.add_argument("--preset", choices=PRESET_NAMES, help="model preset (default small)")
    ap.add_argument("--recipe", choices=RECIPE_NAMES, help="training recipe (default fast)")
    ap.add_argument("--seed", type=parse_nonneg_int("--seed"), help="seed, >= 0 (default 0)")
    ap.add_argument("--seeds", type=parse_nonneg_int("--seeds"), nargs="+",
                    help="train several distinct seeds together (overrides --seed)")
    ap.add_argument("--n-train", type=parse_pos_int("--n-train"), help="training-set size N (recipe default: 1000)")
    ap.add_argument("--epochs", type=parse_pos_int("--epochs"), help="number of epochs (passes over N sequences)")
    ap.add_argument("--data", choices=("fixed", "fresh"), help="fixed N sequences (default) or fresh every step")
    ap.add_argument("--early-stop", type=float, metavar="ACC", help="stop at this held-out accuracy, e.g. 0.99")
    ap.add_argument("--init-gamma", type=parse_init_gamma, metavar="GAMMA|tl|torch|preset", default=UNSET,
                    help="init std = d_in ** -GAMMA for every weight matrix; 'tl': TransformerLens' init; 'torch': "
                         "PyTorch's default init (the authors'); default 'preset': the preset's choice (0.75 for "
                         "paper, TransformerLens' for the others)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="any other recipe field, e.g. lr=3e-4, weight_decay=0.1, batch_size=50")
    ap.add_argument("--model-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="HookedTransformerConfig override, e.g. n_heads=1")
    ap.add_argument("--out", type=Path, required=True, help="output folder (created; must be new or empty)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run saved in --out (settings from it)")
    mode.add_argument("--force", action="store_true", help="replace the run saved in --out")
    ap.add_argument("--checkpoint-every-steps", type=parse_nonneg_int("--checkpoint-every-steps"), default=0)
    ap.add_argument("--checkpoint-every-minutes", type=parse_nonneg_float("--checkpoint-every-minutes"), default=5.0,
                    help="save a resumable checkpoint after this much wall time (default 5; 0: never)")
    add_device_argument(ap, default="auto")
    ap.add_argument("--threads", type=parse_nonneg_int("--threads"), default=1,
                    help="torch CPU threads (default 1: the same bits for the same seed; 0: torch's default)")
    ap.add_argument("--no-progress", action="store_true")
    return parse_or_exit(ap, argv)


def _check_values(args) -> None:
    """The checks argparse cannot do (UsageError, one line): distinct seeds, field=value items (--set: a
    known recipe field with a value of its kind), a writable --out."""
    check_distinct(args.seeds, "--seeds")
    args.set = parse_recipe_values(args.set, "--set")
    for opt in ("model_set", "task_param"):
        setattr(args, opt, parse_field_values(getattr(args, opt), "--" + opt.replace("_", "-")))
    check_writable_folder(args.out, "--out")


def check_out(args) -> list[Path]:
    """The run's checkpoint folders under --out (for --resume: those found there). Raises UsageError
    for an existing non-empty --out without --resume / --force, or --resume without a saved run."""
    out = args.out
    if args.resume:
        if (out / META_FILE).is_file():
            return [out]
        found = sorted((d for d in out.glob("seed_*") if (d / META_FILE).is_file()),
                       key=lambda d: int(d.name[5:]) if d.name[5:].isdigit() else 0)
        if not found:
            raise UsageError(f"--resume: {out} holds no saved run (no {META_FILE}); drop --resume to start one")
        return found
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise UsageError(f"--out {out} already exists and is not empty; pass --resume to continue the run "
                         f"saved there, --force to replace it, or choose a new folder")
    seeds = args.seeds or [args.seed if args.seed is not None else DEFAULTS["seed"]]
    return [out] if len(seeds) == 1 else [out / f"seed_{s}" for s in seeds]


def uncommit_old_run(out: Path) -> None:
    """--force: remove the old run's checkpoint.json files in ``out`` and ``out/seed_*/`` (the commit
    points: nothing of it can be resumed any more); its tensor files are deleted by the new run's first
    save, its history files replaced at the end, other files left alone."""
    for meta in [out / META_FILE, *out.glob(f"seed_*/{META_FILE}")]:
        if meta.is_file():
            meta.unlink()


def recipe_overrides(args, recipe_name: str) -> dict:
    """The recipe fields the command line sets (--set, --n-train, --epochs, --data, --early-stop)."""
    from anchor_interp.training import get_recipe

    overrides = dict(args.set)
    for field, value in (("n_train", args.n_train), ("epochs", args.epochs), ("data", args.data),
                         ("early_stop_acc", args.early_stop)):
        if value is not None:
            overrides[field] = value
    if args.epochs is not None and recipe_name == "paper" and not args.resume:
        # a shorter paper schedule keeps its shape: warm-up and cosine scaled by epochs / 4000
        base = get_recipe(recipe_name)
        overrides.setdefault("warmup_epochs", base.warmup_epochs * args.epochs / base.epochs)
        overrides.setdefault("cosine_epochs", base.cosine_epochs * args.epochs / base.epochs)
    return overrides


def _contradiction(field: str, given, saved, where) -> UsageError:
    return UsageError(f"--resume: {field} {given!r} contradicts the run saved in {where} ({field} {saved!r}); "
                      f"drop the flag (the run's settings are read from its checkpoint)")


def resumed_settings(args, dirs: list[Path]):
    """(task, preset, recipe, seeds, model config) of the run saved in ``dirs``; raises UsageError
    naming the field when a flag contradicts it."""
    from anchor_interp.models.adapter import config_from_dict
    from anchor_interp.models.checkpoint import read_meta
    from anchor_interp.tasks import Task
    from anchor_interp.training import get_recipe

    metas = [read_meta(d) for d in dirs]
    meta, where = metas[0], args.out
    task = Task.from_dict(meta["task"])
    recipe = get_recipe(meta["recipe"] or {})
    seeds = [m["seed"] for m in metas]
    checks = [("--task", args.task, task.name), ("--preset", args.preset, meta["preset"]),
              ("--recipe", args.recipe, recipe.name)]
    checks += [(f"--task-param {k}", v, task.params.get(k)) for k, v in args.task_param.items()]
    flags = {"n_train": "--n-train", "epochs": "--epochs", "data": "--data", "early_stop_acc": "--early-stop"}
    checks += [(flags.get(k, f"--set {k}"), v, getattr(recipe, k, None))
               for k, v in recipe_overrides(args, recipe.name).items()]
    checks += [(f"--model-set {k}", v, meta["model_config"].get(k)) for k, v in args.model_set.items()]
    if args.seeds is not None and sorted(args.seeds) != sorted(seeds):
        checks.append(("--seeds", args.seeds, seeds))
    if args.seed is not None and args.seeds is None:
        checks.append(("--seed", args.seed, seeds[0] if len(seeds) == 1 else seeds))
    for field, given, saved in checks:
        if given is not None and given != saved:
            raise _contradiction(field, given, saved, where)
    if args.init_gamma is not UNSET:
        raise UsageError("--resume: --init-gamma does not apply (the weights come from the checkpoint); drop it")
    return task, meta["preset"], recipe, seeds, config_from_dict(meta["model_config"])


def new_settings(args):
    """(task, preset, recipe, seeds, model config) of a new run from the flags and DEFAULTS."""
    from anchor_interp.models import model_config
    from anchor_interp.tasks import make_task
    from anchor_interp.training import get_recipe

    preset = args.preset or DEFAULTS["preset"]
    recipe_name = args.recipe or DEFAULTS["recipe"]
    recipe = get_recipe(recipe_name, **recipe_overrides(args, recipe_name))
    task = make_task(args.task or DEFAULTS["task"], **args.task_param)
    seeds = args.seeds or [args.seed if args.seed is not None else DEFAULTS["seed"]]
    return task, preset, recipe, seeds, model_config(preset, task, **args.model_set)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        _check_values(args)
        dirs = check_out(args)
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        task, preset, recipe, seeds, cfg = resumed_settings(args, dirs) if args.resume else new_settings(args)
        device = resolve_cli_device(args.device)
    except (UsageError, ValueError, TypeError, argparse.ArgumentTypeError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return train_and_report(args, dirs, task, preset, recipe, seeds, cfg, device)


def train_and_report(args, dirs, task, preset, recipe, seeds, cfg, device) -> int:
    from anchor_interp.models import count_parameters, make_model
    from anchor_interp.training import TrainingInterrupted, train_many

    gamma = "preset" if args.init_gamma is UNSET else args.init_gamma  # None: TransformerLens' init
    try:
        models = [make_model(cfg, task, seed=s, init_gamma=gamma, device=device) for s in seeds]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{preset}: {count_parameters(models[0]):,} parameters; task {task!r}; recipe {recipe.name} "
          f"(N={recipe.n_train}, {recipe.epochs} epochs, batch {recipe.batch_size}, data={recipe.data}); "
          f"{len(seeds)} model(s) on {device}" + ("; resuming" if args.resume else ""), flush=True)
    if args.force:
        uncommit_old_run(args.out)
    try:
        results = train_many(models, task, recipe, seeds=seeds, out_dirs=dirs, resume=args.resume,
                             device=device, progress=not args.no_progress, preset=preset,
                             checkpoint_every_steps=args.checkpoint_every_steps,
                             checkpoint_every_s=args.checkpoint_every_minutes * 60)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 128 + int(e.signum)
    except KeyboardInterrupt as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    for r in results:
        f = r.final
        print(f"seed {r.seed}: epoch {r.epoch} step {r.step} train_loss {f.get('train_loss', float('nan')):.4g} "
              f"held-out acc {f.get('test_acc') or 0:.4f}{' (early stop)' if r.stopped_early else ''} -> {r.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

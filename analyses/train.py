"""Train anchor models (one, or several seeds at once as one batched computation).

    python analyses/train.py --task identity --preset small --recipe fast --seed 0 --out runs/small0
    python analyses/train.py --preset paper --recipe paper --n-train 1000 --epochs 200 --out runs/paper
    python analyses/train.py --seeds 0 1 2 3 --out runs/sweep        # 4 models together: runs/sweep/seed_<s>/
    python analyses/train.py --out runs/small0 --resume              # continue an interrupted run
    python analyses/train.py --set lr=3e-4 --set weight_decay=0.1 --early-stop 0.99 --out runs/x

Each output folder gets checkpoint.json + model.safetensors (+ optimizer.safetensors while the run is
unfinished), history.csv, history.json and history.png. Ctrl-C saves a resumable checkpoint first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anchor_interp.cli.args import (  # noqa: E402  (after the path fix)
    RECIPE_NAMES,
    add_device_argument,
    parse_field_values,
    parse_init_gamma,
    resolve_cli_device,
)

PRESETS = ("small", "paper", "mechanism")  # anchor_interp.models.PRESETS, without importing torch for --help


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="identity", help="task name (anchor_interp.tasks.list_tasks())")
    ap.add_argument("--task-param", action="append", default=[], metavar="KEY=VALUE", help="task parameter")
    ap.add_argument("--preset", default="small", choices=PRESETS)
    ap.add_argument("--recipe", default="fast", choices=RECIPE_NAMES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", help="train several seeds together (overrides --seed)")
    ap.add_argument("--n-train", type=int, help="training-set size N (recipe default: 1000)")
    ap.add_argument("--epochs", type=int, help="number of epochs (passes over N sequences)")
    ap.add_argument("--data", choices=("fixed", "fresh"), help="fixed N sequences (default) or fresh every step")
    ap.add_argument("--early-stop", type=float, metavar="ACC", help="stop at this held-out accuracy, e.g. 0.99")
    ap.add_argument("--init-gamma", type=parse_init_gamma, default="preset", metavar="GAMMA|tl|preset",
                    help="init std = d_in ** -GAMMA for every weight matrix; 'tl': TransformerLens' init; "
                         "default 'preset': the preset's choice (0.75 for paper, TransformerLens' for the others)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="any other recipe field, e.g. lr=3e-4, weight_decay=0.1, batch_size=50")
    ap.add_argument("--model-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="HookedTransformerConfig override, e.g. n_heads=1")
    ap.add_argument("--out", type=Path, required=True, help="output folder (created)")
    ap.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    ap.add_argument("--checkpoint-every-steps", type=int, default=0)
    add_device_argument(ap, default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    for opt in ("set", "model_set", "task_param"):
        try:
            setattr(args, opt, parse_field_values(getattr(args, opt), "--" + opt.replace("_", "-")))
        except argparse.ArgumentTypeError as e:
            ap.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from anchor_interp.models import count_parameters, make_model, model_config
    from anchor_interp.tasks import make_task
    from anchor_interp.training import get_recipe, train_many

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = dict(args.set)
    for field, value in (("n_train", args.n_train), ("epochs", args.epochs), ("data", args.data),
                         ("early_stop_acc", args.early_stop)):
        if value is not None:
            overrides[field] = value
    if args.epochs is not None and args.recipe == "paper":
        # a shorter paper schedule keeps its shape: warm-up and cosine scaled by epochs / 4000
        base = get_recipe(args.recipe)
        overrides.setdefault("warmup_epochs", base.warmup_epochs * args.epochs / base.epochs)
        overrides.setdefault("cosine_epochs", base.cosine_epochs * args.epochs / base.epochs)
    try:
        recipe = get_recipe(args.recipe, **overrides)
        task = make_task(args.task, **args.task_param)
        device = resolve_cli_device(args.device)
        cfg = model_config(args.preset, task, **args.model_set)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seeds = args.seeds or [args.seed]
    out_dirs = [args.out] if len(seeds) == 1 else [args.out / f"seed_{s}" for s in seeds]
    models = [make_model(cfg, task, seed=s, init_gamma=args.init_gamma, device=device) for s in seeds]
    print(f"{args.preset}: {count_parameters(models[0]):,} parameters; task {task!r}; recipe {recipe.name} "
          f"(N={recipe.n_train}, {recipe.epochs} epochs, batch {recipe.batch_size}, data={recipe.data}); "
          f"{len(seeds)} model(s) on {device}", flush=True)
    try:
        results = train_many(models, task, recipe, seeds=seeds, out_dirs=out_dirs, resume=args.resume,
                             device=device, progress=not args.no_progress, preset=args.preset,
                             checkpoint_every_steps=args.checkpoint_every_steps)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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

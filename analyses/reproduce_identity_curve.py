"""The identity-learning curve (paper Fig. 2a) as a sweep: this script writes the sweep file of its options
and prints the analyses/sweep.py commands that run and plot it (docs/sweeps.md, docs/reproduction.md).

    python analyses/reproduce_identity_curve.py --preset paper --recipe fast --epochs 10 --set lr=3e-4 \
        --set lr_start=3e-5 --init-gamma 0.75 --eval-every 10 --tag paper   # = sweeps/identity_curve.toml
    python analyses/reproduce_identity_curve.py --sizes 100 200 --seeds 2 --epochs 2 --out /tmp/curve --run  # toy

Writes --out/identity_curve_<tag>.toml (default --out: analyses/results/identity_curve/) and prints
    python analyses/sweep.py run <that file> --out <--out>/identity_curve_<tag>
    python analyses/sweep.py plot <--out>/identity_curve_<tag>
``--run`` runs both. Each N's seeds train together (one train_many stack); ``--together`` packs every size and
seed into one stack (for a GPU). The sweep folder's table.csv has one row per (N, seed); its plot overlays the
paper's means. Re-running resumes: finished runs are kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anchor_interp.cli.args import (  # noqa: E402  (after the path fix)
    PRESET_NAMES,
    RECIPE_NAMES,
    _Parser,
    add_device_argument,
    check_distinct,
    check_writable_folder,
    parse_init_gamma,
    parse_nonneg_int,
    parse_or_exit,
    parse_pos_int,
    parse_recipe_values,
)

DEFAULT_SIZES = (200, 300, 400, 500, 600, 800, 1000, 1500)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "identity_curve"


def parse_args(argv=None):
    ap = _Parser(prog="reproduce_identity_curve.py", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=PRESET_NAMES)
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
    ap.add_argument("--run", action="store_true", help="also run the sweep and plot it (analyses/sweep.py run, plot)")
    return parse_or_exit(ap, argv, checks=(_check_values,))


def _check_values(args) -> None:
    """The checks argparse cannot do (UsageError, one line), all before anything is written."""
    check_distinct(args.sizes, "--sizes")
    args.set = parse_recipe_values(args.set, "--set")
    check_writable_folder(args.out, "--out")


def _toml_value(v) -> str:
    """A TOML literal of a recipe value (None is spelled "none" in sweep files)."""
    import json

    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


def sweep_text(args, name: str) -> str:
    """The sweep file of these options."""
    gamma = {"preset": '"preset"', None: '"tl"'}.get(args.init_gamma, _toml_value(args.init_gamma))
    fields = dict(args.set)
    fields.setdefault("eval_every", args.eval_every or args.epochs or _recipe_epochs(args.recipe))
    lines = [f'name = "{name}"', "", "[settings]", 'task = "identity"', f'preset = "{args.preset}"',
             f"init_gamma = {gamma}", f'recipe = "{args.recipe}"']
    if args.epochs is not None:
        lines += [f"epochs = {args.epochs}", "squeeze = true"]
    lines += ["", "[settings.recipe_fields]"] + [f"{k} = {_toml_value(v)}" for k, v in fields.items()]
    lines += ["", "[axes]", f"n_train = {sorted(args.sizes)}", f"seed = {{from = 0, to = {args.seeds - 1}}}", ""]
    return "\n".join(lines)


def _recipe_epochs(name: str) -> int:
    from anchor_interp.training import get_recipe

    return get_recipe(name).epochs


def main(argv=None) -> int:
    args = parse_args(argv)
    from anchor_interp.atomic import atomic_write_text

    name = f"identity_curve_{args.tag or args.preset}"
    path, folder = args.out / f"{name}.toml", args.out / name
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, sweep_text(args, name))
    run = ["run", str(path), "--out", str(folder), "--device", args.device, "--threads", str(args.threads)]
    if args.together:
        run += ["--workers", "1", "--max-stack", str(len(args.sizes) * args.seeds)]
    else:
        run += ["--max-stack", str(args.seeds)]
    if not args.no_progress:
        run += ["--progress"]
    print(f"wrote {path}; the curve is a sweep now:")
    print("    python analyses/sweep.py " + " ".join(run))
    print(f"    python analyses/sweep.py plot {folder}")
    if not args.run:
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sweep

    status = sweep.main(run)
    return status or sweep.main(["plot", str(folder)])


if __name__ == "__main__":
    raise SystemExit(main())

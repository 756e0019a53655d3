"""Sweeps: many training runs from one TOML file, resumable, on this machine or a Ray cluster (docs/sweeps.md).

    python analyses/sweep.py expand sweeps/identity_curve.toml        # the runs and their estimated CPU time
    python analyses/sweep.py run sweeps/identity_curve.toml [--executor local|ray] [--out DIR]
    python analyses/sweep.py status DIR                               # pending / running / done / failed
    python analyses/sweep.py table DIR                                # DIR/table.csv, one row per run
    python analyses/sweep.py plot DIR                                 # DIR/accuracy_vs_n.png, labels_mosaic.png

The default folder of a sweep is $XDG_CACHE_HOME/anchor_interp/sweeps/<name> (~/.cache/...). Running the
same command again skips finished runs and resumes interrupted ones from their checkpoints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anchor_interp.cli.args import (  # noqa: E402  (after the path fix)
    UsageError,
    _Parser,
    add_device_argument,
    check_writable_folder,
    parse_nonneg_float,
    parse_nonneg_int,
    parse_or_exit,
    parse_pos_int,
)


def parse_args(argv=None) -> argparse.Namespace:
    ap = _Parser(prog="sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("expand", help="list the runs and their estimated CPU time")
    p.add_argument("sweep", type=Path, help="sweep file (.toml)")
    p.add_argument("--max-stack", type=parse_pos_int("--max-stack"), default=8, help="runs per train_many stack")
    p = sub.add_parser("run", help="run or resume a sweep")
    p.add_argument("sweep", type=Path, help="sweep file (.toml)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--out", type=Path, help="sweep folder (default: ~/.cache/anchor_interp/sweeps/<name>)")
    add_device_argument(p, default="cpu")
    p.add_argument("--workers", type=parse_pos_int("--workers"),
                   help="local: processes (default: CPU cores; 1 = in this process); ray: CPUs of a local instance")
    p.add_argument("--threads", type=parse_nonneg_int("--threads"), default=1,
                   help="torch threads per worker (default 1; 0: torch's default)")
    p.add_argument("--max-stack", type=parse_pos_int("--max-stack"), default=8, help="runs per train_many stack")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again (default: skip them)")
    p.add_argument("--address", help="ray: address of a running cluster (e.g. auto, ray://head:10001)")
    p.add_argument("--gpus-per-stack", type=parse_nonneg_float("--gpus-per-stack"), default=0.0,
                   help="ray: GPUs each stack task asks for (e.g. 0.25: four stacks per GPU)")
    p.add_argument("--checkpoint-every-s", type=parse_nonneg_float("--checkpoint-every-s"), default=300.0,
                   help="seconds of training between resumable checkpoints (default 300; 0: only at epoch "
                        "checkpoints and the end)")
    p.add_argument("--checkpoint-every-steps", type=parse_nonneg_int("--checkpoint-every-steps"), default=0,
                   help="also checkpoint every that many optimizer steps (0: off)")
    p.add_argument("--progress", action="store_true", help="tqdm bars (in-process runs)")
    for name, what in (("status", "show the runs' states"), ("table", "write the tidy CSV"),
                       ("plot", "draw accuracy vs N and the label mosaic")):
        p = sub.add_parser(name, help=what)
        p.add_argument("folder", type=Path, help="sweep folder")
        if name == "table":
            p.add_argument("--out", type=Path, help="CSV path (default: FOLDER/table.csv)")
        if name == "plot":
            p.add_argument("--out", type=Path, help="folder for the PNGs (default: FOLDER)")
    return parse_or_exit(ap, argv, checks=(_check,))


def _check(args) -> None:
    """Checks before anything is written: the sweep file parses and expands, folders are usable."""
    from anchor_interp.sweeps.spec import SweepError, expand, load_spec

    if args.command in ("expand", "run"):
        try:
            args.spec = load_spec(args.sweep)
        except SweepError as e:
            raise UsageError(str(e)) from None
    if args.command == "run":
        from anchor_interp.cli.args import resolve_cli_device
        from anchor_interp.sweeps.driver import default_folder

        args.out = args.out or default_folder(args.spec.name)
        check_writable_folder(args.out, "--out")
        resolve_cli_device(args.device)
        if args.executor == "ray":
            from anchor_interp.sweeps.ray_executor import import_ray

            if args.device.startswith("cuda") and not args.gpus_per_stack:
                raise UsageError(f"--device {args.device} with --executor ray: give --gpus-per-stack (e.g. 1 or "
                                 f"0.25) so that Ray gives each stack task a GPU")

            try:
                import_ray()
            except ImportError as e:
                raise UsageError(f"--executor ray: {e}") from None
        from anchor_interp.sweeps.manifest import Manifest

        if Manifest(args.out).exists():
            sweep = Manifest(args.out).read().get("sweep")
            if sweep != args.spec.name:
                raise UsageError(f"--out {args.out}: holds the sweep {sweep!r}, not {args.spec.name!r}; "
                                 f"give another --out folder")
    if args.command in ("expand", "run"):
        try:
            args.runs = expand(args.spec)  # every run resolved and checked (imports torch, TransformerLens)
        except SweepError as e:
            raise UsageError(str(e)) from None
    if args.command in ("status", "table", "plot"):
        from anchor_interp.sweeps.manifest import Manifest

        try:
            Manifest(args.folder).read()
        except ValueError as e:
            raise UsageError(str(e)) from None
        if getattr(args, "out", None) is not None:
            check_writable_folder(args.out.parent if args.command == "table" else args.out, "--out")


def _hours(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def cmd_expand(args) -> int:
    from anchor_interp.sweeps.estimate import SECONDS_PER_SEQUENCE, estimate
    from anchor_interp.sweeps.pack import pack
    from anchor_interp.sweeps.spec import axis_value

    keys = [k for k in args.spec.axes if k not in ("n_train", "seed")]
    est = estimate(args.runs)
    print(f"sweep {args.spec.name}: {len(args.runs)} runs")
    print("  ".join(["id          ", "n_train", "seed"] + keys + ["steps", "est. CPU"]))
    for r, e in zip(args.runs, est, strict=True):
        vals = [r.id, f"{r.n_train:7d}", f"{r.seed:4d}"] + [str(axis_value(r, k)) for k in keys]
        print("  ".join(vals + [f"{e['steps']:5d}", _hours(e["cpu_s"])]))
    total = sum(e["cpu_s"] for e in est)
    stacks = pack(args.runs, args.max_stack)
    presets = sorted({r.settings["preset"] for r in args.runs})
    print(f"total: {sum(e['steps'] for e in est)} steps, about {_hours(total)} of CPU time on one core "
          f"({', '.join(f'{p}: {SECONDS_PER_SEQUENCE.get(p, 0):.2g} s/sequence' for p in presets)}; "
          f"anchor_interp/sweeps/estimate.py); {len(stacks)} stack(s) of <= {args.max_stack} runs")
    return 0


def cmd_run(args) -> int:
    from anchor_interp.sweeps.driver import run_sweep
    from anchor_interp.sweeps.execute import ExecOptions
    from anchor_interp.sweeps.spec import SweepError

    opts = ExecOptions(device=args.device, checkpoint_every_s=args.checkpoint_every_s or None,
                       checkpoint_every_steps=args.checkpoint_every_steps, progress=args.progress)
    try:
        s = run_sweep(args.spec, args.out, executor=args.executor, workers=args.workers, max_stack=args.max_stack,
                      opts=opts, threads=args.threads, retry_failed=args.retry_failed, ray_address=args.address,
                      gpus_per_stack=args.gpus_per_stack, log=lambda m: print(m, flush=True))
    except SweepError as e:  # the folder cannot take this sweep (another sweep's, or foreign files)
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        print(f"interrupted; checkpoints kept: rerun the same command to resume ({args.out})", file=sys.stderr)
        return 130
    counts = ", ".join(f"{n} {k}" for k, n in sorted(s.counts.items()))
    print(f"sweep {args.spec.name}: {counts} ({s.stacks_run} stack(s) trained in {s.seconds:.0f} s) -> {s.folder}")
    if s.held_elsewhere:
        print(f"{len(s.held_elsewhere)} run(s) are held by another executor (see: sweep.py status {s.folder})")
    print(f"wrote {s.folder / 'table.csv'}")
    return 1 if s.counts.get("failed") else 0


def cmd_status(args) -> int:
    from anchor_interp.sweeps.manifest import STATUSES, Manifest, is_stale

    doc = Manifest(args.folder).read()
    rows = doc["runs"]
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    print(f"sweep {doc.get('sweep')}: {len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for r in rows:
        if r["status"] == "failed":
            print(f"  failed  {r['id']}: {r['reason']}")
        elif r["status"] == "running":
            lk = r.get("lock") or {}
            state = "stale (will be resumed)" if is_stale(lk) else "live"
            print(f"  running {r['id']}: pid {lk.get('pid')} on {lk.get('host')}, stack {lk.get('stack')}, {state}")
    return 0


def cmd_table(args) -> int:
    from anchor_interp.sweeps.table import write_table

    print(f"wrote {write_table(args.folder, args.out)}")
    return 0


def cmd_plot(args) -> int:
    from anchor_interp.sweeps.plot import write_plots

    try:
        paths = write_plots(args.folder, args.out)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return {"expand": cmd_expand, "run": cmd_run, "status": cmd_status, "table": cmd_table, "plot": cmd_plot
            }[args.command](args)


if __name__ == "__main__":
    from anchor_interp.cli.args import run_main

    raise SystemExit(run_main(main, prog="sweep.py"))

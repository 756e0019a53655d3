"""Which inductive bias sets the small-N threshold? HookedTransformer variants vs the authors' model.

The paper's post-LN model generalises at small N where our pre-LN HookedTransformer memorises
(docs/reproduction.md). This study trains, under one trainer and one recipe (the authors'), the
plain-PyTorch reference model (anchor_interp.models.reference: post-LN, no biases, PyTorch init) and
HookedTransformer variants that change one inductive bias at a time (VARIANTS), at N = 400 and 600,
and compares their held-out accuracy with each other and with the authors' published histories.

    python analyses/inductive_bias.py study --device cuda                # the study (GPU: minutes)
    python analyses/inductive_bias.py choose RESULTS/study               # the closest HookedTransformer variant
    python analyses/inductive_bias.py figure --variant V --device cuda   # identity figure, 9 sizes x 5 seeds
    python analyses/inductive_bias.py summarise RESULTS/study            # table.txt + summary.json
    python analyses/inductive_bias.py study --preset small --epochs 2 --sizes 60 --seeds 0 --workers 1 --out /tmp/ib

Runs that share an architecture and a recipe train as one batched computation (a "stack", one
``train_many`` call: the init variants and seeds of one architecture share a stack); stacks run in
parallel processes (``--workers``). Every held-out evaluation is appended to
``OUT/<variant>/n<N>_seed<S>.jsonl`` as it happens, so a run stopped at ``--deadline-s`` (or killed)
still leaves its history; ``summarise`` reads those files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anchor_interp.cli.args import (  # noqa: E402  (after the path fix)
    _Parser,
    add_device_argument,
    check_distinct,
    check_writable_folder,
    parse_nonneg_float,
    parse_nonneg_int,
    parse_or_exit,
    parse_pos_int,
    resolve_cli_device,
    run_main,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "inductive_bias"
BIASES = ["blocks.*.b_*"]  # attention and MLP biases (fnmatch * spans dots); the authors have none

# name -> (architecture, normalization_type, init, recipe overrides, what it changes).
# init: "preset" (the paper preset's std = d_in^-0.75), None (TransformerLens' init), "torch" (PyTorch's).
VARIANTS: dict[str, dict] = {
    "paper": dict(arch="hooked", norm="LN", init="preset", recipe={},
                  what="the paper preset: pre-LN + final LN, biases, init std d_in^-0.75"),
    "tl_init": dict(arch="hooked", norm="LN", init=None, recipe={}, what="paper preset with TransformerLens' init"),
    "torch_init": dict(arch="hooked", norm="LN", init="torch", recipe={},
                       what="paper preset with PyTorch's init (embeddings N(0,1), linears U(+-1/sqrt(fan_in)))"),
    "no_bias": dict(arch="hooked", norm="LN", init="preset", recipe={"freeze": BIASES},
                    what="paper preset with attention/MLP biases zeroed and frozen"),
    "torch_init_no_bias": dict(arch="hooked", norm="LN", init="torch", recipe={"freeze": BIASES},
                               what="PyTorch's init + biases zeroed and frozen"),
    "torch_init_no_bias_lnpre": dict(arch="hooked", norm="LNPre", init="torch", recipe={"freeze": BIASES},
                                     what="as torch_init_no_bias, LayerNorm without weights (LNPre)"),
    "torch_init_no_bias_no_norm": dict(arch="hooked", norm=None, init="torch", recipe={"freeze": BIASES},
                                       what="as torch_init_no_bias, no normalisation at all"),
    "paper_wd_0.1": dict(arch="hooked", norm="LN", init="preset", recipe={"weight_decay": 0.1},
                         what="paper preset with weight decay 0.1 (authors: 0.01)"),
    "reference": dict(arch="reference", norm="post-LN", init="torch", recipe={},
                      what="the authors' model: post-LN, no final LN, no biases but the output's, PyTorch init"),
}
# The authors' published training histories (identity learning, their recipe; docs/reproduction.md):
# held-out accuracy at N = 400 by epoch 400 and at N = 600 by epoch 100, and the final means (10 seeds).
AUTHORS = {(400, 400): (0.55, 0.69), (600, 100): (0.92, 0.95)}
PAPER_FINAL = {200: 0.039, 300: 0.251, 400: 0.773, 500: 0.954, 600: 0.992, 800: 0.999, 1000: 1.0,
               1400: 1.0, 1600: 1.0}
FIGURE_SIZES = (200, 300, 400, 500, 600, 800, 1000, 1400, 1600)


def parse_args(argv=None):
    ap = _Parser(prog="inductive_bias.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("study", "figure"):
        p = sub.add_parser(name, help=f"train the {name}")
        p.add_argument("--out", type=Path, default=None, help=f"default: {DEFAULT_OUT}/<{name}>")
        p.add_argument("--preset", default="paper", choices=("paper", "small"),
                       help="model sizes (the reference model takes the same sizes); small is for smoke tests")
        p.add_argument("--epochs", type=parse_pos_int("--epochs"), default=400 if name == "study" else 4000,
                       help="stop after this many epochs of the authors' 4000-epoch schedule (the schedule itself is "
                            "unchanged)")
        p.add_argument("--sizes", type=parse_pos_int("--sizes"), nargs="+",
                       default=[400, 600] if name == "study" else list(FIGURE_SIZES))
        p.add_argument("--seeds", type=parse_nonneg_int("--seeds"), nargs="+",
                       default=[0, 1, 2] if name == "study" else [0, 1, 2, 3, 4])
        p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
        p.add_argument("--workers", type=parse_pos_int("--workers"), default=None,
                       help="stacks trained at once, one process each (default: every stack at once; 1: in this process)")
        p.add_argument("--deadline-s", type=parse_nonneg_float("--deadline-s"), default=0,
                       help="stop every stack after this many seconds (0: none); histories so far are kept")
        p.add_argument("--force", action="store_true", help="replace the results already in --out")
        add_device_argument(p, default="auto")
        if name == "study":
            p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
        else:
            p.add_argument("--variant", required=True, choices=list(VARIANTS))
            p.add_argument("--full", type=parse_pos_int("--full"), nargs="*", default=[400, 600],
                           help="sizes also trained (seed 0) without early stopping, to the end of the schedule")
    helps = dict(summarise="table of a study folder", plot="figure.png of a figure folder: accuracy vs N, the paper's "
                 "means overlaid", choose="print the HookedTransformer variant closest to the authors' histories")
    for name, text in helps.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("folder", type=Path)

    def check(args):
        if args.cmd in ("study", "figure"):
            check_distinct(args.sizes, "--sizes")
            check_distinct(args.seeds, "--seeds")
            args.out = args.out or DEFAULT_OUT / args.cmd
            check_writable_folder(args.out, "--out")
            if args.out.is_dir() and any(args.out.iterdir()):
                from anchor_interp.cli.args import UsageError

                if not (args.out / "plan.json").is_file():
                    raise UsageError(f"--out {args.out}: is a non-empty folder that holds no study; choose another --out")
                if not args.force:
                    raise UsageError(f"--out {args.out}: holds results already; pass --force to replace them "
                                     "(or choose another --out)")
        elif not (args.folder / "plan.json").is_file():
            from anchor_interp.cli.args import UsageError

            raise UsageError(f"{args.folder}: no plan.json here; give the --out folder of a study or figure run")

    return parse_or_exit(ap, argv, checks=(check,))


# ----------------------------------------------------------------------------------------------
# plan: runs -> stacks


def plan_stacks(cmd: str, args) -> list[dict]:
    """The stacks to train: each a dict(key, runs=[dict(variant, n_train, seed, recipe, file)]). Runs
    share a stack when their architecture, normalisation and recipe overrides are equal."""
    runs = []
    if cmd == "study":
        for v in args.variants:
            runs += [dict(variant=v, n_train=n, seed=s, recipe=dict(VARIANTS[v]["recipe"]), file=f"{v}/n{n}_seed{s}.jsonl")
                     for n in args.sizes for s in args.seeds]
    else:
        v, s0 = args.variant, args.seeds[0]
        early = {**VARIANTS[v]["recipe"], "early_stop_acc": 1.0}
        runs += [dict(variant=v, n_train=n, seed=s, recipe=early, file=f"{v}/n{n}_seed{s}.jsonl")
                 for n in args.sizes for s in args.seeds]
        runs += [dict(variant=v, n_train=n, seed=s0, recipe=dict(VARIANTS[v]["recipe"]),
                      file=f"{v}/n{n}_seed{s0}_full.jsonl") for n in args.full]
    stacks: dict[str, list] = {}
    for run in runs:
        spec = VARIANTS[run["variant"]]
        stacks.setdefault(json.dumps([spec["arch"], spec["norm"], run["recipe"]], sort_keys=True), []).append(run)
    return [dict(key=k, runs=r) for k, r in stacks.items()]


def build_model(variant: str, preset: str, task, seed: int):
    """A fresh model of ``variant`` (VARIANTS) with the sizes of ``preset``."""
    from anchor_interp.models import PRESETS, make_model, model_config
    from anchor_interp.models.reference import ReferenceTransformer, reference_config

    spec, p = VARIANTS[variant], PRESETS[preset]
    if spec["arch"] == "reference":
        return ReferenceTransformer(reference_config(preset, task), seed=seed)
    cfg = model_config(preset, task, normalization_type=spec["norm"])
    init = spec["init"]
    return make_model(cfg, task, seed=seed, init_gamma=p.init_gamma if init == "preset" else init)


def train_stack(stack: dict, out: str, preset: str, epochs: int, precision: str, device: str) -> None:
    """Train one stack with the authors' recipe (stopping after ``epochs``), streaming every held-out
    evaluation to its run's JSONL file, and an end marker when the run stopped by itself."""
    import torch

    from anchor_interp.tasks import make_task
    from anchor_interp.training import train_many

    torch.set_num_threads(1)
    task, runs = make_task("identity"), stack["runs"]
    models = [build_model(r["variant"], preset, task, r["seed"]).to(device) for r in runs]
    paths = [Path(out) / r["file"] for r in runs]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    files = [p.open("a") for p in paths]
    t0 = time.perf_counter()

    def on_eval(i, row):
        files[i].write(json.dumps({**row, "wall_s": round(time.perf_counter() - t0, 2)}) + "\n")
        files[i].flush()

    stop = max(epochs * math.ceil(r["n_train"] / 50) for r in runs)  # the paper recipe's batch is 50
    results = train_many(models, task, "paper", seeds=[r["seed"] for r in runs], n_train=[r["n_train"] for r in runs],
                         device=device, progress=False, precision=precision, fused_adamw=device != "cpu",
                         stop_after_step=None if epochs >= 4000 else stop, on_eval=on_eval, eval_every=min(10, epochs),
                         **runs[0]["recipe"])
    for f, r in zip(files, results, strict=True):
        f.write(json.dumps({"end": True, "epoch": r.epoch, "step": r.step, "stopped_early": r.stopped_early,
                            "wall_s": round(time.perf_counter() - t0, 2)}) + "\n")
        f.close()


def run_plan(cmd: str, args) -> None:
    """Write plan.json, then train every stack (in parallel processes unless --workers 1) until done or
    the deadline."""
    import multiprocessing as mp

    stacks = plan_stacks(cmd, args)
    device = str(resolve_cli_device(args.device))
    if args.out.is_dir():  # empty, or a study folder with --force: the old results go only now
        import shutil

        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    plan = dict(cmd=cmd, preset=args.preset, epochs=args.epochs, precision=args.precision, device=device,
                recipe="paper", command=" ".join(sys.argv), stacks=stacks)
    tmp = args.out / "plan.json.tmp"
    tmp.write_text(json.dumps(plan, indent=1))
    os.replace(tmp, args.out / "plan.json")
    job = (str(args.out), args.preset, args.epochs, args.precision, device)
    workers = args.workers or len(stacks)
    print(f"{cmd}: {len(stacks)} stack(s), {sum(len(s['runs']) for s in stacks)} runs, {workers} worker(s), "
          f"device {device}", flush=True)
    if workers == 1 and not args.deadline_s:  # with a deadline, even one stack runs in a process it can stop
        for s in stacks:
            train_stack(s, *job)
        return
    ctx = mp.get_context("spawn")
    t0, pending, live = time.time(), list(stacks), []
    while pending or live:
        while pending and len(live) < workers:
            p = ctx.Process(target=train_stack, args=(pending.pop(0), *job))
            p.start()
            live.append(p)
        time.sleep(1.0)
        live = [p for p in live if p.is_alive()]
        if args.deadline_s and time.time() - t0 > args.deadline_s:
            for p in live:
                p.terminate()
            print(f"deadline {args.deadline_s:.0f} s: stopped {len(live)} stack(s), {len(pending)} never started")
            break


# ----------------------------------------------------------------------------------------------
# summaries


def read_histories(folder: Path) -> dict[tuple[str, int, int, bool], list[dict]]:
    """(variant, n_train, seed, full) -> its evaluation rows (and the end marker, when it finished)."""
    out = {}
    for f in sorted(folder.glob("*/n*_seed*.jsonl")):
        stem = f.stem.removesuffix("_full")
        n, seed = stem.removeprefix("n").split("_seed")
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out[(f.parent.name, int(n), int(seed), f.stem.endswith("_full"))] = rows
    return out


def acc_at(rows: list[dict], epoch: int) -> float | None:
    """Held-out accuracy at ``epoch`` (the last evaluation at or before it; a run that stopped early, at
    held-out 1.0, keeps its last value); None when the run had not reached it."""
    evals = [r for r in rows if "test_acc" in r]
    early = any(r.get("stopped_early") for r in rows)  # stopped at held-out 1.0: that value stands after
    at = [r for r in evals if r["epoch"] <= epoch]
    reached = early or any(r["epoch"] >= epoch for r in evals)
    return at[-1]["test_acc"] if at and reached else None


def summarise(folder: Path) -> dict:
    """summary.json + table.txt of a study/figure folder: per (variant, N) the mean, std and seeds of
    held-out accuracy at epochs 100, 400, 1000, 4000 and at the last evaluation."""
    hist = read_histories(folder)
    cells: dict = {}
    for (v, n, seed, full), rows in hist.items():
        c = cells.setdefault(f"{v}|{n}|{'full' if full else 'main'}", dict(variant=v, n_train=n, full=full, runs=[]))
        evals = [r for r in rows if "test_acc" in r]
        c["runs"].append(dict(seed=seed, epochs=evals[-1]["epoch"] if evals else 0,
                              finished=any(r.get("end") for r in rows),
                              last=evals[-1]["test_acc"] if evals else None,
                              best=max((r["test_acc"] for r in evals), default=None),
                              train_acc=evals[-1]["train_acc"] if evals else None,
                              **{f"at_{e}": acc_at(rows, e) for e in (100, 400, 1000, 4000)}))
    for c in cells.values():
        for k in ("last", "at_100", "at_400", "at_1000", "at_4000"):
            vals = [r[k] for r in c["runs"] if r[k] is not None]
            c[k] = dict(mean=statistics.fmean(vals) if vals else None,
                        std=statistics.pstdev(vals) if len(vals) > 1 else 0.0, n=len(vals))
        c["paper_final"] = PAPER_FINAL.get(c["n_train"])
        c["authors"] = {f"epoch_{e}": list(AUTHORS[(n, e)]) for (n, e) in AUTHORS if n == c["n_train"]}
    summary = dict(plan=json.loads((folder / "plan.json").read_text()), cells=sorted(
        cells.values(), key=lambda c: (c["variant"], c["n_train"], c["full"])))
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    (folder / "table.txt").write_text(_table(summary))
    return summary


def _fmt(s: dict) -> str:
    return "-" if s["mean"] is None else f"{s['mean']:.3f} +- {s['std']:.3f} ({s['n']})"


def _table(summary: dict) -> str:
    lines = ["| variant | N | runs | epochs reached | acc @100 | acc @400 | acc @1000 | acc @4000 | last | paper final |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in summary["cells"]:
        ep = sorted({r["epochs"] for r in c["runs"]})
        lines.append(f"| {c['variant']}{' (full)' if c['full'] else ''} | {c['n_train']} | {len(c['runs'])} | "
                     f"{ep[0]}-{ep[-1]} | {_fmt(c['at_100'])} | {_fmt(c['at_400'])} | {_fmt(c['at_1000'])} | "
                     f"{_fmt(c['at_4000'])} | {_fmt(c['last'])} | {c['paper_final']} |")
    lines.append("")
    lines.append("Authors' published histories: N = 400: 0.55-0.69 at epoch 400; N = 600: 0.92-0.95 at epoch 100.")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> Path:
    """Held-out accuracy vs N: each variant's last evaluation (mean +- std over seeds, seed points, the
    epochs reached under each N), and the paper's final means. Written atomically; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    from anchor_interp.atomic import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4.2))
    sizes = sorted(PAPER_FINAL)
    ax.plot(sizes, [PAPER_FINAL[n] for n in sizes], "k--o", ms=4, label="paper (final, 10 seeds)")
    for v in sorted({c["variant"] for c in summary["cells"]}):
        cells = [c for c in summary["cells"] if c["variant"] == v and not c["full"] and c["last"]["mean"] is not None]
        ns = [c["n_train"] for c in cells]
        ax.errorbar(ns, [c["last"]["mean"] for c in cells], yerr=[c["last"]["std"] for c in cells], marker="o",
                    capsize=3, label=f"{v} (last evaluation, {len(cells[0]['runs']) if cells else 0} seeds)")
        for c in cells:
            ax.scatter([c["n_train"]] * len(c["runs"]), [r["last"] for r in c["runs"]], s=8, alpha=0.4, color="grey")
            ep = sorted({r["epochs"] for r in c["runs"]})
            ax.annotate(f"{ep[0]}" if ep[0] == ep[-1] else f"{ep[0]}-{ep[-1]}", (c["n_train"], 0.02), fontsize=6,
                        ha="center", rotation=90)
    ax.set(xlabel="training-set size N", ylabel="held-out accuracy", ylim=(0, 1.05),
           title="identity task: held-out accuracy vs N (epochs reached at the bottom)")
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def choose(summary: dict) -> str:
    """The HookedTransformer variant whose mean held-out accuracy is closest to the middle of the
    authors' published range at (N = 400, epoch 400) and (N = 600, epoch 100): the sum of absolute
    distances. A run cut short before a comparison epoch counts with its last accuracy (said on stderr)."""
    best, best_d = None, math.inf
    for v, spec in VARIANTS.items():
        if spec["arch"] != "hooked":
            continue
        d = 0.0
        for (n, e), (lo, hi) in AUTHORS.items():
            c = next((c for c in summary["cells"] if c["variant"] == v and c["n_train"] == n and not c["full"]), None)
            if c is None or c["last"]["mean"] is None:
                d = math.inf
                break
            m = c[f"at_{e}"]["mean"]
            if m is None:
                m = c["last"]["mean"]
                print(f"choose: {v} at N = {n} did not reach epoch {e}; its last accuracy counts", file=sys.stderr)
            d += abs(m - (lo + hi) / 2)
        if d < best_d:
            best, best_d = v, d
    if best is None:
        raise SystemExit("choose: no HookedTransformer variant was trained at both N = 400 and N = 600")
    return best


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cmd in ("study", "figure"):
        run_plan(args.cmd, args)
        print(summarise(args.out) and (args.out / "table.txt").read_text())
    elif args.cmd == "summarise":
        summarise(args.folder)
        print((args.folder / "table.txt").read_text())
    elif args.cmd == "plot":
        print(f"wrote {plot(summarise(args.folder), args.folder / 'figure.png')}")
    else:
        print(choose(summarise(args.folder)))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="inductive_bias.py"))

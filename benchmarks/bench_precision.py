"""Precision and the optimizer update: what bf16 mixed precision and the fused AdamW kernel buy (issue 5.2).

    python benchmarks/bench_precision.py [--presets paper small] [--reps 7] [--json PATH] [--quick]

Three measurements, each float32 against its alternative in the same run, medians over ``--reps``
(the two alternate), ratios of medians:

1. matmul throughput (GFLOP/s) of the ``paper`` preset's MLP shape, (rows, 400) @ (400, 1200), for
   rows = 450 (batch 50 x 9 positions) and 4500, in float32 and bfloat16;
2. one training step (forward + backward of ``training.stacked_forward`` and the loss, batch 50, one
   model) per preset, float32 against ``torch.autocast(dtype=torch.bfloat16)`` (the ``quick`` recipe's
   ``precision="bf16"``);
3. one AdamW update of the preset's stacked parameters, ``training.StackedAdamW`` unfused against
   ``fused_adamw=True``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from anchor_interp import training
from anchor_interp.models import make_model, model_config
from anchor_interp.tasks import make_task

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/, for _provenance
from _provenance import machine_line, write_json  # noqa: E402  (after the path fix)

from anchor_interp.cli.args import OneLineParser, parse_output_file, parse_pos_int, run_main  # noqa: E402


def _median_ms(fn, reps: int, inner: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        out.append((time.perf_counter() - t0) / inner * 1e3)
    return out


def paired(name: str, fns: dict, reps: int, inner: int) -> dict:
    """Time each of ``fns`` (first = baseline) alternately; medians in ms and ratios to the baseline."""
    for fn in fns.values():  # warm-up
        for _ in range(2):
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k] += _median_ms(fn, 1, inner)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = next(iter(med))
    row = {"case": name, "median_ms": med, "all_ms": times,
           "speedup": {k: med[base] / v for k, v in med.items() if k != base}}
    print(f"  {name:<38}" + "  ".join(f"{k} {v:8.2f} ms" for k, v in med.items())
          + "  " + "  ".join(f"{k}: {r:.2f}x" for k, r in row["speedup"].items()), flush=True)
    return row


def matmul_row(m: int, reps: int) -> dict:
    a32, b32 = torch.randn(m, 400), torch.randn(400, 1200)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    row = paired(f"matmul ({m}, 400) @ (400, 1200)", {"fp32": lambda: a32 @ b32, "bf16": lambda: a16 @ b16},
                 reps, inner=20)
    row["gflops"] = {k: 2 * m * 400 * 1200 / (v * 1e-3) / 1e9 for k, v in row["median_ms"].items()}
    return row


def preset_rows(preset: str, reps: int, over: dict) -> list[dict]:
    task = make_task("identity")
    model = make_model(model_config(preset, task, **over), task, seed=0)
    params = {n: t.requires_grad_(True) for n, t in training.stack_models([model]).items()}
    batch = task.sample(50, "train", seed=0)
    tok, tgt = batch.tokens[None], batch.targets[None]  # (1, 50, T), (1, 50)

    def step(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = training.stacked_forward(params, model.cfg, tok).float()  # (1, 50, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        for p in params.values():
            p.grad = None
        loss.backward()

    rows = [paired(f"{preset}: training step, batch 50", {"fp32": lambda: step(False), "bf16": lambda: step(True)},
                   reps, inner=5)]
    opts = {name: training.StackedAdamW(params, training.get_recipe("quick", fused_adamw=fused))
            for name, fused in (("unfused", False), ("fused", True))}
    rows.append(paired(f"{preset}: AdamW update", {k: (lambda o=o: o.step(1e-4)) for k, o in opts.items()},
                       reps, inner=5))
    return rows


def main(argv=None) -> int:
    ap = OneLineParser(prog="bench_precision.py", description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["paper", "small"], choices=["small", "paper", "mechanism"])
    ap.add_argument("--reps", type=parse_pos_int("--reps"), default=7)
    ap.add_argument("--threads", type=parse_pos_int("--threads"), default=1)
    ap.add_argument("--json", type=parse_output_file("--json"), default=None)
    ap.add_argument("--quick", action="store_true", help="toy size (< 30 s): d_model 32 small preset, 2 reps")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps must be >= 1; got {args.reps}")
    torch.set_num_threads(args.threads)
    over, sizes = {}, (450, 4500)
    if args.quick:
        args.presets, args.reps, over, sizes = ["small"], 2, {"d_model": 32, "d_head": 8}, (450,)
    print("1. matmul throughput")
    mm = [matmul_row(m, args.reps) for m in sizes]
    for r in mm:
        print(f"     {r['case']}: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in r["gflops"].items()))
    print("2-3. training step and optimizer update")
    steps = [row for preset in args.presets for row in preset_rows(preset, args.reps, over)]
    print(machine_line())
    if args.json:
        write_json(args.json, "bench_precision.py", argv, matmul=mm, steps=steps)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="bench_precision.py"))

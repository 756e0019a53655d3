"""A training step as one CUDA graph (training/graph.py) against the eager step, on the reference figure's stack.

    python benchmarks/bench_graph_step.py --device cuda [--steps 200] [--json PATH]   # on a GPU machine
    python benchmarks/bench_graph_step.py --quick                                     # tiny, CPU (tests)

The stack: the reference model (the authors' architecture, anchor_interp.models.reference) at the
paper's 9 listed sizes (N = 200-1600) x 5 seeds = 45 models, the authors' recipe (batch 50, bf16 mixed
precision, a held-out evaluation every 10 epochs), as ``analyses/inductive_bias.py figure --variant
reference`` trains it. Per step: the time of a run of 2 x ``--steps`` steps minus that of a run of
``--steps`` steps, over ``--steps`` (set-up cancels), eager (``cuda_graph=False``) and graphed
(``cuda_graph=True``) in the same process; the ratio is the speed-up.

Correctness on the device: two tiny reference models (N = 100 and 200, 3 epochs, fp32) trained eagerly
and graphed; the largest weight difference is reported (float tolerance expected, ~1e-6).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/, for _provenance
from _provenance import machine_line, write_json  # noqa: E402  (after the path fix)

from anchor_interp.cli.args import (  # noqa: E402
    OneLineParser,
    add_device_argument,
    parse_output_file,
    parse_pos_int,
    resolve_cli_device,
    run_main,
)

SIZES, SEEDS = (200, 300, 400, 500, 600, 800, 1000, 1400, 1600), 5


def parse_args(argv):
    ap = OneLineParser(prog="bench_graph_step.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=parse_pos_int("--steps"), default=200, help="steps per timed run (default 200)")
    ap.add_argument("--json", type=parse_output_file("--json"), default=None)
    ap.add_argument("--quick", action="store_true", help="tiny models, 2 sizes x 2 seeds, 8 steps (a smoke test)")
    add_device_argument(ap, default="auto")
    return ap.parse_args(argv)


def _models(task, seeds, device, tiny: bool):
    from anchor_interp.models.reference import make_reference_model

    sizes = dict(n_layers=2, n_heads=2, d_model=32, d_head=8, d_mlp=48) if tiny else {}
    return [make_reference_model(task, seed=s, device=device, **sizes) for s in seeds]


def time_run(task, sizes, seeds, steps, device, graph: bool, tiny: bool) -> float:
    """Seconds of ``train_many`` stopped after ``steps`` steps (fresh models each call)."""
    from anchor_interp.training import train_many

    models = _models(task, seeds, device, tiny)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_many(models, task, "paper", seeds=seeds, n_train=sizes, device=device, progress=False, precision="bf16",
               stop_after_step=steps, checkpoint_every_s=None, eval_every=10, cuda_graph=graph)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def max_weight_difference(task, device) -> float:
    """Largest |eager - graphed| weight after 3 epochs of two tiny fp32 models."""
    from anchor_interp.training import train_many

    out = []
    for graph in (False, True):
        models = _models(task, (0, 1), device, tiny=True)
        train_many(models, task, "fast", seeds=[0, 1], n_train=[100, 200], batch_size=50, epochs=3, n_test=100,
                   device=device, progress=False, cuda_graph=graph)
        out.append([p.detach().cpu() for m in models for p in m.parameters()])
    return max(float((a - b).abs().max()) for a, b in zip(*out, strict=True))


def main(argv=None) -> int:
    args = parse_args(argv)
    from anchor_interp.tasks import make_task

    device = resolve_cli_device(args.device)
    task = make_task("identity")
    fig_sizes, n_seeds, steps = ((200, 300), 2, 8) if args.quick else (SIZES, SEEDS, args.steps)
    sizes = [n for n in fig_sizes for _ in range(n_seeds)]
    seeds = [s for _ in fig_sizes for s in range(n_seeds)]
    diff = max_weight_difference(task, device)
    per_step = {}
    for graph in (False, True):
        time_run(task, sizes, seeds, 2, device, graph, args.quick)  # warm-up: kernels, caches, the first capture
        short = time_run(task, sizes, seeds, steps, device, graph, args.quick)
        per_step[graph] = (time_run(task, sizes, seeds, 2 * steps, device, graph, args.quick) - short) / steps
    res = dict(device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               models=len(sizes), sizes=list(fig_sizes), seeds=n_seeds, steps=steps,
               step_eager_ms=round(1000 * per_step[False], 3), step_graph_ms=round(1000 * per_step[True], 3),
               speedup=round(per_step[False] / per_step[True], 2) if per_step[True] > 0 else None,
               max_weight_difference=diff)
    print(f"{len(sizes)} reference models on {res['gpu'] or device}: eager {res['step_eager_ms']} ms/step, "
          f"CUDA graph {res['step_graph_ms']} ms/step (x{res['speedup']}); graphed vs eager weights differ by "
          f"at most {diff:.2e}")
    print(machine_line())
    if args.json:
        write_json(args.json, "bench_graph_step.py", argv, results=res)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="bench_graph_step.py"))

"""The paper's whole identity figure as ONE batched computation on a GPU: a measured slice, extrapolated.

    python benchmarks/bench_figure_gpu.py --device cuda [--steps 156] [--json PATH]   # on a GPU machine
    python benchmarks/bench_figure_gpu.py --quick                                     # tiny, CPU (tests)

The figure: 22 training-set sizes (N = 200-800 in steps of 50, 1000-2600 in steps of 200) x 10 seeds =
220 paper-preset models, the authors' recipe (4000 epochs, batch 50; bf16 mixed precision here). All
220 train as one ``train_many`` stack: at global step s every model still inside its schedule
(4000 x ceil(N / 50) steps) takes one step, so the stack shrinks as the small-N models finish.

Measured (slice 1): the full stack of 220 models, per step (held-out evaluations at every model's
epoch ends included): the time of a run of 2 x ``--steps`` steps minus that of a run of ``--steps``
steps, over ``--steps``, so set-up (data, held-out sets, stacking) cancels (after a 2-step warm-up run). Measured (slice 2): the
same for the 10 models of the largest N alone. With t(k) linear in the number of active models between those two points, the **extrapolated**
time of the whole run is the sum over its 208,000 steps of t(k_active(s)). Also reported: the upper
bound (every step at the full stack's cost) and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import math
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

FIGURE_SIZES = tuple(range(200, 801, 50)) + tuple(range(1000, 2601, 200))  # the paper's 22 sizes
SEEDS, EPOCHS, BATCH = 10, 4000, 50


def parse_args(argv):
    ap = OneLineParser(prog="bench_figure_gpu.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=parse_pos_int("--steps"), default=156,
                    help="steps per slice (default 156 = 3 epochs of N = 2600)")
    ap.add_argument("--json", type=parse_output_file("--json"), default=None)
    ap.add_argument("--quick", action="store_true", help="tiny models, 2 sizes x 2 seeds, 6 steps (a smoke test)")
    add_device_argument(ap, default="auto")
    return ap.parse_args(argv)


def time_slice(models, task, sizes, seeds, steps, device, preset) -> float:
    """Seconds of ``train_many`` on ``models`` (n_train ``sizes``) stopped after ``steps`` steps."""
    from anchor_interp.training import train_many

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_many(models, task, "paper", seeds=seeds, n_train=sizes, device=device, progress=False, precision="bf16",
               fused_adamw=device.type == "cuda", stop_after_step=steps, checkpoint_every_s=None)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def extrapolate(sizes: list[int], t_full: float, t_small: float, k_small: int, epochs: int) -> dict:
    """Seconds of the whole run from per-step costs at k = len(sizes) and k = k_small (linear in k)."""
    k_full = len(sizes)
    totals = sorted(epochs * math.ceil(n / BATCH) for n in sizes)  # each model's schedule, in steps
    seconds, prev = 0.0, 0
    for j, end in enumerate(totals):  # between two model ends, k_active is constant
        k = k_full - j
        t = t_small + (t_full - t_small) * (k - k_small) / max(k_full - k_small, 1)
        seconds += (end - prev) * max(t, 0.0)
        prev = end
    return dict(total_steps=totals[-1], extrapolated_s=seconds, upper_bound_s=totals[-1] * t_full)


def main(argv=None) -> int:
    args = parse_args(argv)
    from anchor_interp.models import make_model, model_config
    from anchor_interp.tasks import make_task

    device = resolve_cli_device(args.device)
    task = make_task("identity")
    if args.quick:
        preset, fig_sizes, n_seeds, steps = "small", (60, 100), 2, 6
        cfg = model_config("small", task, d_model=32, d_head=8)
    else:
        preset, fig_sizes, n_seeds, steps = "paper", FIGURE_SIZES, SEEDS, args.steps
        cfg = model_config("paper", task)
    sizes = [n for n in fig_sizes for _ in range(n_seeds)]
    seeds = [s for _ in fig_sizes for s in range(n_seeds)]
    t_build = time.perf_counter()
    models = [make_model(cfg, task, seed=s, init_gamma="preset" if preset == "paper" else None) for s in seeds]
    t_build = time.perf_counter() - t_build
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    time_slice(models, task, sizes, seeds, 2, device, preset)  # warm-up: first-call costs (kernels, caches)
    t_one = time_slice(models, task, sizes, seeds, steps, device, preset)
    t_full = time_slice(models, task, sizes, seeds, 2 * steps, device, preset) - t_one  # ``steps`` steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    big = [i for i, n in enumerate(sizes) if n == max(sizes)]
    small = ([make_model(cfg, task, seed=seeds[i]) for i in big], task, [sizes[i] for i in big], [seeds[i] for i in big])
    t_small = time_slice(*small, 2 * steps, device, preset) - time_slice(*small, steps, device, preset)
    ex = extrapolate(sizes, t_full / steps, t_small / steps, len(big), EPOCHS)
    res = dict(device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               preset=preset, models=len(models), sizes=list(fig_sizes), seeds=n_seeds, steps_per_slice=steps,
               build_models_s=round(t_build, 2), first_slice_with_setup_s=round(t_one, 3), slice_full_s=round(t_full, 3), slice_largest_n_s=round(t_small, 3),
               step_full_ms=round(1000 * t_full / steps, 3), step_largest_n_ms=round(1000 * t_small / steps, 3),
               peak_gpu_gib=None if peak is None else round(peak, 2), **{k: round(v, 1) if isinstance(v, float) else v
                                                                         for k, v in ex.items()})
    print(f"{len(models)} models ({preset}) on {res['gpu'] or device}: {steps} steps in {t_full:.2f} s "
          f"({res['step_full_ms']} ms/step); the {len(big)} models of N = {max(sizes)} alone: "
          f"{res['step_largest_n_ms']} ms/step")
    print(f"whole run ({ex['total_steps']} steps, {EPOCHS} epochs): EXTRAPOLATED {ex['extrapolated_s'] / 60:.1f} min "
          f"(upper bound {ex['upper_bound_s'] / 60:.1f} min); peak GPU memory {res['peak_gpu_gib']} GiB")
    print(machine_line())
    if args.json:
        write_json(args.json, "bench_figure_gpu.py", argv, results=res)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="bench_figure_gpu.py"))

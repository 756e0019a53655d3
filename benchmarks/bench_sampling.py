"""Sampling speed of anchor_interp.tasks (issue 2: identity, one call of n = 1,000,000, aim >= 1e6 seq/s).

    .venv/bin/python benchmarks/bench_sampling.py [--n 1000000] [--repeats 5] [--threads 1]

Prints, per measurement, the median wall time of ``--repeats`` runs and sequences per second, and
ratios against two baselines measured in the same run:
  floor:  torch.randint of the (n, 9) filler block alone (the least any generator must do);
  python: a per-sequence Python loop in the style of the authors' generator (measured on n // 50 rows
          and scaled), i.e. what the vectorised generator replaces.
"""

from __future__ import annotations

import random
import statistics
import sys
import time

import torch

from anchor_interp.cli.args import OneLineParser, parse_pos_int, run_main  # noqa: E402


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def python_loop_identity(n: int, seed: int = 0) -> torch.Tensor:
    """One sequence at a time, like the authors' generator (reference only)."""
    rng = random.Random(seed)
    train = [b for b in range(20, 100) if b % 8]
    rows = []
    for _ in range(n):
        seq = [rng.randint(20, 99) for _ in range(10)]
        p = rng.randint(0, 7)
        x = rng.choice(train) + p
        seq[p], seq[p + 1], seq[-1] = 3, x, x
        rows.append(seq)
    return torch.tensor(rows)


def main(argv=None):
    ap = OneLineParser(prog="bench_sampling.py", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=parse_pos_int("--n"), default=1_000_000)
    ap.add_argument("--repeats", type=parse_pos_int("--repeats"), default=5)
    ap.add_argument("--threads", type=parse_pos_int("--threads"), default=1)
    ap.add_argument("--tasks", default="identity,composition,reading_comprehension,multi_anchor_multi_interval")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from anchor_interp.tasks import COUNTERFACTUAL_KINDS, make_task

    n = args.n
    gen = torch.Generator().manual_seed(0)
    floor = median_time(lambda: torch.randint(20, 100, (n, 9), generator=gen), args.repeats)
    m = max(1, n // 50)
    py = median_time(lambda: python_loop_identity(m), max(1, args.repeats // 2)) * (n / m)
    print(f"threads={args.threads} n={n:,} repeats={args.repeats} (medians)")
    print(f"baseline floor  randint (n, 9):         {floor:8.3f} s  {n / floor:14,.0f} seq/s")
    print(f"baseline python per-sequence loop:      {py:8.3f} s  {n / py:14,.0f} seq/s (scaled from n={m:,})")
    for name in args.tasks.split(","):
        task = make_task(name)
        t = median_time(lambda task=task: task.sample(n, split="train", seed=0), args.repeats)
        print(f"{name:28s} sample:     {t:8.3f} s  {n / t:14,.0f} seq/s  "
              f"x{floor / t:5.2f} of floor  x{py / t:6.1f} vs python")
        batch = task.sample(n, split="train", seed=0)
        for kind in COUNTERFACTUAL_KINDS:
            if kind == "anchor_move" and name == "identity_distance":
                continue
            t = median_time(lambda task=task, kind=kind, batch=batch: task.counterfactual(batch, kind, seed=1), args.repeats)
            print(f"{name:28s} {kind:13s} {t:7.3f} s  {n / t:14,.0f} seq/s")


if __name__ == "__main__":
    sys.exit(run_main(main, prog="bench_sampling.py"))

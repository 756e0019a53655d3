"""Benchmark: activation-patching sweeps, anchor_interp.patching vs transformer_lens.patching.

Sweeps (issue 5, item 1): every head x every position head-output patching
(``patch_head_out(by_pos=True)`` vs ``get_act_patch_attn_head_out_by_pos``) and the residual-stream
sweep (``patch_resid_pre`` vs ``get_act_patch_resid_pre``), on the zoo's default model (or, with
``--model random`` or when the zoo model is absent, a random 2L x 4H attention-only d_model 128 model),
same inputs, logit-difference metric, no gradients, no progress bar. Each repetition times both
(interleaved); we report medians of wall time and their ratio (and the ratio of median CPU times,
``time.process_time``, which other jobs on a shared machine disturb less), and check that the
outputs agree to ``--atol``.

    .venv/bin/python benchmarks/bench_patching.py                 # batch 64 and 4, 7 repetitions
    .venv/bin/python benchmarks/bench_patching.py --corrupt resample     # pairs differing everywhere
    .venv/bin/python benchmarks/bench_patching.py --batch 64 --reps 3 --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/, for _provenance
from _provenance import machine_line, write_json  # noqa: E402  (after the path fix)

from anchor_interp.cli.args import OneLineParser, parse_nonneg_int, parse_output_file, parse_pos_int, run_main  # noqa: E402

os.environ["TQDM_DISABLE"] = "1"  # before tqdm is imported: transformer_lens.patching's progress bar


def load_model(which: str, seed: int):
    """(model, task or None, description)."""
    import torch

    if which == "default":
        try:
            from anchor_interp.models import zoo

            model, task = zoo.load("default")
            return model, task, "zoo default"
        except Exception as err:  # the zoo model may not be built yet
            print(f"zoo.load('default') failed ({type(err).__name__}: {err}); using a random model", file=sys.stderr)
    from anchor_interp.models.adapter import HookedTransformerConfig, build_model

    cfg = HookedTransformerConfig(
        n_layers=2, n_heads=4, d_model=128, d_head=32, n_ctx=9, d_vocab=201, attn_only=True, act_fn="relu",
        seed=seed, init_weights=True, dtype=torch.float32,
    )
    return build_model(cfg).eval(), None, "random 2L4H attn-only d_model 128"


def make_inputs(model, task, batch: int, seed: int, corrupt_kind: str = "key_swap"):
    """Clean and corrupted inputs: the task's counterfactual (``key_swap``, ``anchor_move``), or
    ``resample`` = an independent sample (the two then differ at every position; the worst case for
    our row skipping). Without a task: random tokens and targets (also differing everywhere)."""
    import torch

    if task is not None:
        clean = task.sample(batch, split="test", seed=seed)
        if corrupt_kind == "resample":
            corrupt = task.sample(batch, split="test", seed=seed + 1000)
        else:
            corrupt = task.counterfactual(clean, corrupt_kind, seed=seed + 1)
        return clean, corrupt
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(seed)
    T, V = model.cfg.n_ctx, model.cfg.d_vocab
    clean = SimpleNamespace(tokens=torch.randint(0, V, (batch, T), generator=g), targets=torch.randint(0, V, (batch,), generator=g))
    corrupt = SimpleNamespace(tokens=torch.randint(0, V, (batch, T), generator=g), targets=torch.randint(0, V, (batch,), generator=g))
    return clean, corrupt


def time_sweep(sweep: str, model, clean, corrupt, reps: int, atol: float) -> dict:
    import torch
    import transformer_lens.patching as tlp

    from anchor_interp import patching

    def metric(logits):
        return patching.logit_diff(logits[:, -1], clean.targets, corrupt.targets)

    def ours():
        if sweep == "head_out_by_pos":
            return patching.patch_head_out(model, clean, corrupt, "logit_diff", by_pos=True, normalise=False).values
        return patching.patch_resid_pre(model, clean, corrupt, "logit_diff", normalise=False).values

    def theirs():
        with torch.no_grad():
            _, cache = model.run_with_cache(clean.tokens)
            if sweep == "head_out_by_pos":
                return tlp.get_act_patch_attn_head_out_by_pos(model, corrupt.tokens, cache, metric).permute(0, 2, 1)
            return tlp.get_act_patch_resid_pre(model, corrupt.tokens, cache, metric)

    a, b = ours(), theirs()  # warm-up, and the equality check
    max_diff = float((a.double() - b.double()).abs().max())
    t_ours, t_tl, c_ours, c_tl = [], [], [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        ours()
        t1, c1 = time.perf_counter(), time.process_time()
        theirs()
        t2, c2 = time.perf_counter(), time.process_time()
        t_ours.append(t1 - t0)
        t_tl.append(t2 - t1)
        c_ours.append(c1 - c0)
        c_tl.append(c2 - c1)
    m_ours, m_tl = statistics.median(t_ours), statistics.median(t_tl)
    cpu_ours, cpu_tl = statistics.median(c_ours), statistics.median(c_tl)
    return {
        "sweep": sweep,
        "batch": len(clean.tokens),
        "patched_sites": a.numel(),
        "ours_median_s": m_ours,
        "tl_median_s": m_tl,
        "speedup": m_tl / m_ours,
        "ours_cpu_median_s": cpu_ours,
        "tl_cpu_median_s": cpu_tl,
        "cpu_speedup": cpu_tl / cpu_ours,
        "max_abs_diff": max_diff,
        "equal": max_diff <= atol,
        "ours_s": t_ours,
        "tl_s": t_tl,
    }


def memory_child(impl: str, sweep: str, batch: int, which: str, corrupt_kind: str, seed: int) -> None:
    """Run one sweep once in this (fresh) process; print the rise of the peak resident set (MiB): the
    kernel's high-water mark is reset just before the sweep (Linux ``/proc/self/clear_refs``), so
    start-up (imports, model loading) does not hide it."""
    import torch

    def status(field: str) -> float:  # MiB
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith(field + ":"))
        return int(line.split()[1]) / 1024

    torch.set_num_threads(1)
    model, task, _ = load_model(which, seed)
    clean, corrupt = make_inputs(model, task, batch, seed, corrupt_kind)
    import transformer_lens.patching as tlp

    from anchor_interp import patching

    def metric(logits):
        return patching.logit_diff(logits[:, -1], clean.targets, corrupt.targets)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = status("VmRSS")
    if impl == "ours" and sweep == "head_out_by_pos":
        patching.patch_head_out(model, clean, corrupt, "logit_diff", by_pos=True, normalise=False)
    elif impl == "ours":
        patching.patch_resid_pre(model, clean, corrupt, "logit_diff", normalise=False)
    else:
        with torch.no_grad():
            _, cache = model.run_with_cache(clean.tokens)
            fn = tlp.get_act_patch_attn_head_out_by_pos if sweep == "head_out_by_pos" else tlp.get_act_patch_resid_pre
            fn(model, corrupt.tokens, cache, metric)
    print(json.dumps({"peak_rise_mib": status("VmHWM") - before}))


def peak_memory(impl: str, sweep: str, batch: int, args) -> float:
    import subprocess

    cmd = [sys.executable, __file__, "--_memory-child", impl, sweep, str(batch), "--model", args.model,
           "--corrupt", args.corrupt, "--seed", str(args.seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["peak_rise_mib"]


def main(argv=None) -> int:
    p = OneLineParser(prog="bench_patching.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["default", "random"], default="default")
    p.add_argument("--batch", type=parse_pos_int("--batch"), nargs="+", default=[64, 4])
    p.add_argument("--sweeps", nargs="+", choices=["head_out_by_pos", "resid_pre"], default=["head_out_by_pos", "resid_pre"])
    p.add_argument("--corrupt", choices=["key_swap", "anchor_move", "resample"], default="key_swap",
                   help="how the corrupted batch is made (with a task; default key_swap)")
    p.add_argument("--reps", type=parse_pos_int("--reps"), default=7)
    p.add_argument("--threads", type=parse_pos_int("--threads"), default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--seed", type=parse_nonneg_int("--seed"), default=0)
    p.add_argument("--memory", action="store_true",
                   help="also measure each sweep's peak memory (rise of the peak RSS, in a fresh process; Linux)")
    p.add_argument("--json", type=parse_output_file("--json"), help="write the results here (temp file + rename)")
    p.add_argument("--_memory-child", nargs=3, metavar=("IMPL", "SWEEP", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._memory_child:
        impl, sweep, batch = args._memory_child
        memory_child(impl, sweep, int(batch), args.model, args.corrupt, args.seed)
        return 0
    if args.reps < 1 or any(b < 1 for b in args.batch):
        p.error("--reps and --batch must be >= 1")

    import torch

    torch.set_num_threads(args.threads)
    model, task, desc = load_model(args.model, args.seed)
    rows = []
    pairs = args.corrupt if task is not None else "random tokens"
    print(f"model: {desc}; pairs: {pairs}; torch {torch.__version__}, {args.threads} thread(s), {args.reps} reps, medians")
    print(f"{'sweep':16} {'batch':>5} {'sites':>5} {'ours ms':>9} {'TL ms':>9} {'speedup':>8} "
          f"{'CPU-time speedup':>16} {'max|diff|':>10}")
    for sweep in args.sweeps:
        for batch in args.batch:
            clean, corrupt = make_inputs(model, task, batch, args.seed, args.corrupt)
            r = time_sweep(sweep, model, clean, corrupt, args.reps, args.atol)
            if args.memory:
                r["ours_peak_rise_mib"] = peak_memory("ours", sweep, batch, args)
                r["tl_peak_rise_mib"] = peak_memory("tl", sweep, batch, args)
            rows.append(r)
            print(
                f"{sweep:16} {batch:5d} {r['patched_sites']:5d} {1e3 * r['ours_median_s']:9.2f} "
                f"{1e3 * r['tl_median_s']:9.2f} {r['speedup']:7.1f}x {r['cpu_speedup']:15.1f}x "
                f"{r['max_abs_diff']:10.2e}"
                + ("" if r["equal"] else "  NOT EQUAL")
                + (f"  peak RSS rise: ours {r['ours_peak_rise_mib']:.1f} MiB, TL {r['tl_peak_rise_mib']:.1f} MiB"
                   if args.memory else "")
            )
    print(machine_line())
    if args.json:
        write_json(args.json, "bench_patching.py", argv, benchmark="patching", model=desc, pairs=pairs,
                   reps=args.reps, results=rows)
    return 0 if all(r["equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(run_main(main, prog="bench_patching.py"))

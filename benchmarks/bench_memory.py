"""Peak memory of find_heads and of the patching sweeps, and what their activation caches hold (issue 5.5).

    python benchmarks/bench_memory.py [--batch 64] [--json PATH] [--quick]
    python benchmarks/bench_memory.py --cases find_heads --n-samples 2048 8192 100000   # memory flat in n

Every case runs once in a fresh Python process (Linux; memory from ``/proc/self/status``, in MiB):

- ``baseline``: ``import anchor_interp.models.adapter`` + ``zoo.load("default")`` (what any analysis pays first);
- ``find_heads``: the CLI run on the shipped default model (report, JSON and PNGs written to a temporary
  folder), through ``anchor_interp.cli.main``, once per ``--n-samples`` value (0: the CLI default, 256);
  its ``wall_s`` is the CLI call's wall time (one thread, as the CLI sets);
- ``patch_head_out`` / ``patch_resid_pre``: our every-head x every-position head-output sweep and our
  residual sweep (``key_swap`` pairs, ``--batch`` rows), and the same two sweeps with
  ``transformer_lens.patching`` (``get_act_patch_attn_head_out_by_pos`` / ``get_act_patch_resid_pre``
  with a full clean ``run_with_cache``) as the reference.

For each: ``peak``, the process's peak resident set (VmHWM) over its whole life (what ``/usr/bin/time``
shows a user), and ``rise``, the peak during the measured call above the resident set just before it
(the high-water mark is reset with ``/proc/self/clear_refs`` after imports and model loading).

Cache audit: during each case every ``HookedTransformer.run_with_cache`` and patch-engine
``Engine.run_cached`` call is recorded (hooks kept, tensor MiB), against the full cache of the same input
(every hook point that fires in a plain forward pass), so that "caches hold only the hooks an analysis needs" is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/, for _provenance
from _provenance import machine_line, write_json  # noqa: E402  (after the path fix)

from anchor_interp.cli.args import OneLineParser, parse_nonneg_int, parse_output_file, parse_pos_int, run_main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CASES = ("baseline", "find_heads", "ours:patch_head_out", "tl:patch_head_out", "ours:patch_resid_pre",
         "tl:patch_resid_pre")


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB -> MiB


def _mib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def child(case: str, batch: int, n_samples: int) -> dict:
    """Run one case in this (fresh) process and return its memory figures and cache records."""
    import torch

    torch.set_num_threads(1)
    from anchor_interp.models import adapter as _tl
    from anchor_interp.models import zoo
    from anchor_interp.patching import engine as patch_engine

    model, task = zoo.load("default")
    records: list[dict] = []
    orig_rwc = _tl.HookedTransformer.run_with_cache
    orig_rc = patch_engine.Engine.run_cached

    def rwc(self, *a, **kw):
        out = orig_rwc(self, *a, **kw)
        cache = out[1]
        tokens = a[0] if a else kw.get("input")
        records.append({"via": "run_with_cache", "hooks": len(cache), "hook_points": full_hooks,
                        "names": sorted(cache.keys()), "mib": _mib(cache.values()),
                        "rows": int(tokens.shape[0]) if hasattr(tokens, "shape") else None})
        return out

    def rc(self, tokens, names, **kw):
        out = orig_rc(self, tokens, names, **kw)
        records.append({"via": "Engine.run_cached", "hooks": len(out[1]), "hook_points": full_hooks,
                        "names": sorted(out[1]), "mib": _mib(out[1].values()), "rows": int(tokens.shape[0])})
        return out

    _tl.HookedTransformer.run_with_cache = rwc
    patch_engine.Engine.run_cached = rc
    with torch.no_grad():  # the full cache (every hook point that fires) of 8 rows, for comparison
        _, full = orig_rwc(model, task.sample(8, split="test", seed=0).tokens)
    full_mib_per_row, full_hooks = _mib(full.values()) / 8, len(full)
    del full
    tmp = tempfile.mkdtemp()
    if case != "baseline" and not case.endswith("find_heads"):
        from anchor_interp import patching

        clean = task.sample(batch, split="test", seed=0)
        corrupt = task.counterfactual(clean, "key_swap", seed=1)
        if case.startswith("tl:"):
            import transformer_lens.patching as tlp

            def metric(logits):
                return patching.logit_diff(logits[:, -1], clean.targets, corrupt.targets)
    if case == "find_heads":
        from anchor_interp import cli  # noqa: F401  (imported before the reset, as the CLI would be)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    records.clear()
    before = _status("VmRSS")
    t0 = time.perf_counter()
    if case == "find_heads":
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            argv = ["--force", "--quiet"] + (["--n-samples", str(n_samples)] if n_samples else [])
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                rc_ = cli.main(argv)
            if rc_ != 0:
                raise RuntimeError(f"find_heads exited with {rc_}")
        finally:
            os.chdir(cwd)
    elif case == "ours:patch_head_out":
        patching.patch_head_out(model, clean, corrupt, "logit_diff", by_pos=True, normalise=False)
    elif case == "ours:patch_resid_pre":
        patching.patch_resid_pre(model, clean, corrupt, "logit_diff", normalise=False)
    elif case.startswith("tl:"):
        import os as _os

        _os.environ["TQDM_DISABLE"] = "1"
        with torch.no_grad():
            _, cache = model.run_with_cache(clean.tokens)
            fn = tlp.get_act_patch_attn_head_out_by_pos if case.endswith("head_out") else tlp.get_act_patch_resid_pre
            fn(model, corrupt.tokens, cache, metric)
    wall = time.perf_counter() - t0
    rise = _status("VmHWM") - before
    peak = max(_status("VmHWM"), _peak_life())
    return {"case": case, "n_samples": n_samples or None, "wall_s": wall, "rise_mib": rise, "peak_mib": peak,
            "rss_before_mib": before,
            "full_cache_mib_per_row": full_mib_per_row, "hook_points": full_hooks, "caches": records}


def _peak_life() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB -> MiB (not reset)


def run_case(case: str, batch: int, n_samples: int) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1")
    cmd = [sys.executable, __file__, "--_child", case, "--batch", str(batch), "--n-samples", str(n_samples)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise_caches(rec: list[dict], full_per_row: float) -> str:
    if not rec:
        return "no caches"
    kept = max(r["hooks"] for r in rec)
    pts = rec[0]["hook_points"]
    mib = sum(r["mib"] for r in rec)
    full = sum(full_per_row * (r["rows"] or 0) for r in rec)
    return (f"{len(rec)} cache(s), at most {kept} of the {pts} hooks of a full cache, {mib:.2f} MiB in all "
            f"(a full cache of the same rows: {full:.2f} MiB)")


def main(argv=None) -> int:
    ap = OneLineParser(prog="bench_memory.py", description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=parse_pos_int("--batch"), default=64, help="rows of the patching sweeps")
    ap.add_argument("--n-samples", type=parse_nonneg_int("--n-samples"), nargs="+", default=[0],
                    help="find_heads --n-samples, one run per value (0: its default)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--json", type=parse_output_file("--json"), default=None)
    ap.add_argument("--quick", action="store_true", help="< 60 s: our head-output sweep at batch 4 and find_heads on 40 rows")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.batch < 1 or min(args.n_samples) < 0:
        ap.error("--batch must be >= 1 and --n-samples >= 0")
    if args._child:
        print(json.dumps(child(args._child, args.batch, args.n_samples[0])))
        return 0
    if not Path("/proc/self/clear_refs").exists():
        print("needs Linux (/proc/self/clear_refs)", file=sys.stderr)
        return 2
    if args.quick:  # our head-output sweep at batch 4, find_heads on 40 rows
        args.cases, args.batch, args.n_samples = ["ours:patch_head_out", "find_heads"], 4, [40]
    results = []
    print(f"{'case':<26}{'peak (MiB)':>11}{'rise (MiB)':>11}{'wall (s)':>10}   caches")
    runs = [(c, n) for c in args.cases for n in (args.n_samples if c == "find_heads" else [0])]
    for case, n in runs:
        r = run_case(case, args.batch, n)
        results.append(r)
        name = case + (f" n={n}" if case == "find_heads" and n else "")
        print(f"{name:<26}{r['peak_mib']:>11.0f}{r['rise_mib']:>11.1f}{r['wall_s']:>10.1f}   "
              f"{summarise_caches(r['caches'], r['full_cache_mib_per_row'])}", flush=True)
    names = sorted({n for r in results for c in r["caches"] for n in c["names"]})
    print(f"hooks ever cached: {names}")
    print(f"patching batch {args.batch}; {machine_line()}")
    if args.json:
        write_json(args.json, "bench_memory.py", argv, results=results)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="bench_memory.py"))

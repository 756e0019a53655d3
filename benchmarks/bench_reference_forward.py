"""The reference model's stacked forward + backward: one bmm per projection against the weight-broadcast baseline.

    python benchmarks/bench_reference_forward.py [--models 3] [--device cpu|cuda] [--json PATH]

The baseline is the formulation the reference model had until 2026-11-30 (kept here, as the baseline
only): each projection a matmul of (k, B, T, d) activations with (k, 1, d, out) weights, which torch
evaluates by copying every model's weight once per batch row (on the H200 that copying was 40% of a
training step of 25 paper-size models: 539 of 1330 ms of CUDA time over 40 steps, torch.profiler). The
library's :func:`reference_stacked_forward` reshapes activations to (k, B*T, d) and runs one bmm per
projection. Paper-size models (4 layers x 4 heads, d_model 400, d_mlp 1200), batch 50, identity task
(9 tokens); best of ``--reps`` forward + backward passes; the outputs must agree to float tolerance.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from einops import rearrange

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
from anchor_interp.models.blocks import ACTIVATIONS, masked_softmax, stacked_embed  # noqa: E402
from anchor_interp.models.reference import _layer_norm, reference_stacked_forward  # noqa: E402


def broadcast_forward(params, cfg, tokens):
    """The baseline: last-position logits (k, B, V) with weights broadcast over the batch axis."""
    k, B, T = tokens.shape
    x = stacked_embed(params["embed.W_E"], tokens) + params["pos_embed.W_pos"][:, None, :T, :]  # (k, B, T, d)
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        hq = x[:, :, -1:] if layer == cfg.n_layers - 1 else x  # (k, B, Tq, d)
        q = torch.einsum("kbtd,khde->kbhte", hq, params[p + "attn.W_Q"])  # (k, B, nh, Tq, hs)
        kk = torch.einsum("kbtd,khde->kbhte", x, params[p + "attn.W_K"])  # (k, B, nh, T, hs)
        v = torch.einsum("kbtd,khde->kbhte", x, params[p + "attn.W_V"])  # (k, B, nh, T, hs)
        att = masked_softmax(q @ kk.transpose(-1, -2) / math.sqrt(cfg.d_head), cfg.attention_dir == "causal")
        z = rearrange(att @ v, "k B nh Tq hs -> k B Tq (nh hs)")  # (k, B, Tq, nh*hs)
        x = _layer_norm(hq + z @ rearrange(params[p + "attn.W_O"], "k nh hs d -> k 1 (nh hs) d"),
                        params[p + "ln1.w"], params[p + "ln1.b"], cfg.eps)
        pre = x @ params[p + "mlp.W_in"][:, None]  # (k, B, Tq, d_mlp)
        x = _layer_norm(x + ACTIVATIONS[cfg.act_fn](pre) @ params[p + "mlp.W_out"][:, None],
                        params[p + "ln2.w"], params[p + "ln2.b"], cfg.eps)  # (k, B, Tq, d)
    return x[:, :, -1] @ params["unembed.W_U"] + params["unembed.b_U"][:, None, :]  # (k, B, V)


def best_time(fn, params, cfg, tokens, reps: int, device) -> tuple[torch.Tensor, float]:
    """The output and the best seconds of ``reps`` forward + backward passes."""
    best, out = math.inf, None
    for _ in range(reps):
        for t in params.values():
            t.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(params, cfg, tokens)
        out.float().pow(2).mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return out.detach(), best


def main(argv=None) -> int:
    ap = OneLineParser(prog="bench_reference_forward.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=parse_pos_int("--models"), default=3)
    ap.add_argument("--reps", type=parse_pos_int("--reps"), default=5)
    ap.add_argument("--d-model", type=parse_pos_int("--d-model"), default=400, help="400 (default): the paper's sizes (d_head 64, d_mlp 1200); else d_head d/4, d_mlp 3d")
    ap.add_argument("--json", type=parse_output_file("--json"), default=None)
    add_device_argument(ap, default="cpu")
    args = ap.parse_args(argv)
    from anchor_interp.models.reference import make_reference_model
    from anchor_interp.tasks import make_task

    device = resolve_cli_device(args.device)
    task = make_task("identity")
    d = args.d_model
    sizes = {} if d == 400 else dict(d_model=d, d_head=max(2, d // 4), d_mlp=3 * d)  # 400: the paper's sizes
    models = [make_reference_model(task, seed=s, **sizes) for s in range(args.models)]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).to(device).requires_grad_(True)
              for n, _ in models[0].named_parameters()}
    tokens = torch.stack([task.sample(50, seed=s).tokens for s in range(args.models)]).to(device)
    base, t_base = best_time(broadcast_forward, params, models[0].cfg, tokens, args.reps, device)
    new, t_new = best_time(reference_stacked_forward, params, models[0].cfg, tokens, args.reps, device)
    diff = float((base - new).abs().max())
    res = dict(device=str(device), models=args.models, d_model=d, batch=50, broadcast_ms=round(1000 * t_base, 2),
               bmm_ms=round(1000 * t_new, 2), speedup=round(t_base / t_new, 2), max_abs_diff=diff)
    print(f"{args.models} reference models (d_model {d}), forward + backward, batch 50 on {device}: weight broadcast "
          f"{res['broadcast_ms']} ms, one bmm per projection {res['bmm_ms']} ms (x{res['speedup']}); "
          f"outputs differ by {diff:.1e}")
    print(machine_line())
    if args.json:
        write_json(args.json, "bench_reference_forward.py", argv, results=res)
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(run_main(main, prog="bench_reference_forward.py"))

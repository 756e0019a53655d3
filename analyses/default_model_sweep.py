"""The sweep behind docs/findings.md section 1: which small causal model shows shift and broadcast most clearly.

Each configuration is trained on identity learning for two seeds (``train_many``, seeds stacked) and
measured on 1000 held-out rows (test split, seed 12345) with plain hooks:

- raw attention masses per head (key row -> anchor, its selectivity, self, last row -> key, ...);
- mean ablation (``hook_z`` -> its batch mean, per position) of each head alone and of each layer;
- patching of one head's clean ``hook_z`` into the ``key_swap`` / ``anchor_move`` runs, at all
  positions, at the key's position only, and at the last position only (normalised logit difference).

    python analyses/default_model_sweep.py run h4_noln H=4 ln=none    # one config
    python analyses/default_model_sweep.py all                        # every config below
    python analyses/default_model_sweep.py table                      # the markdown table

Config keys: L, H, d (d_model), wd, gamma (init_gamma), ep (epochs), lr, seeds (comma list), ln (LN|none),
mlp (d_mlp, 0 = attention only), bidir (0|1), n (n_train), bs (batch). Results are appended, one JSON
line per seed, to analyses/results/head_study/default_model_sweep.jsonl (the committed file is from the real run,
2026-11-27, on the shared 2-core CPU; timings are per model under load ~5-7).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "head_study" / "default_model_sweep.jsonl"
CONFIGS = """\
h1 H=1
h2 H=2
h4 H=4
h1_wd0.1 H=1 wd=0.1
h1_wd1 H=1 wd=1.0
h4_wd0.1 H=4 wd=0.1
h4_wd1 H=4 wd=1.0
h1_g1 H=1 gamma=1.0
h1_g0.5 H=1 gamma=0.5
h4_g1 H=4 gamma=1.0
h4_g0.5 H=4 gamma=0.5
h1_noln H=1 ln=none
h4_noln H=4 ln=none
h1_d64 H=1 d=64
h4_d64 H=4 d=64
h1_ep300 H=1 ep=300
h4_mlp H=4 mlp=512
h2_wd0.1 H=2 wd=0.1
h4_noln_g1 H=4 ln=none gamma=1.0
h2_noln H=2 ln=none
h4_noln_n2000 H=4 ln=none n=2000 ep=60
h2_g1 H=2 gamma=1.0
h2_noln_g1 H=2 ln=none gamma=1.0
h4_noln_wd1 H=4 ln=none wd=1.0
h4_n2000 H=4 n=2000 ep=60
h1_g1.5 H=1 gamma=1.5
h4_noln_g0.75 H=4 ln=none gamma=0.75
h4_noln_wd1_n2000 H=4 ln=none wd=1.0 n=2000 ep=60 seeds=2,3
"""


def run(name: str, opts: list[str]) -> list[dict]:
    """Train one configuration (two seeds by default) and measure it; one dict per seed."""
    from anchor_interp.models import make_model, model_config
    from anchor_interp.tasks import make_task
    from anchor_interp.training import train_many

    args = dict(a.split("=") for a in opts)
    L, H, d = int(args.pop("L", 2)), int(args.pop("H", 4)), int(args.pop("d", 128))
    wd = float(args.pop("wd", 0.01))
    gamma = args.pop("gamma", None)
    gamma = float(gamma) if gamma else None
    epochs, lr = int(args.pop("ep", 100)), float(args.pop("lr", 1e-3))
    seeds = [int(s) for s in args.pop("seeds", "0,1").split(",")]
    ln = args.pop("ln", "LN")
    ln = None if ln == "none" else ln
    mlp, bidir = int(args.pop("mlp", 0)), args.pop("bidir", "0") == "1"
    n_train, bs = int(args.pop("n", 1000)), int(args.pop("bs", 100))
    if args:
        raise ValueError(f"unknown config keys {sorted(args)}; see the module docstring")
    task = make_task("identity")
    ov = dict(n_layers=L, n_heads=H, d_model=d, d_head=d // H, normalization_type=ln,
              attention_dir="bidirectional" if bidir else "causal")
    if mlp:
        ov.update(attn_only=False, d_mlp=mlp, act_fn="relu")
    models = [make_model(model_config("small", task, **ov), task, seed=s, init_gamma=gamma) for s in seeds]
    t0 = time.time()
    warm = min(2, epochs / 10)
    train_many(models, task, "fast", seeds=seeds, progress=False, epochs=epochs, weight_decay=wd, lr=lr,
               warmup_epochs=warm, cosine_epochs=epochs - warm, batch_size=bs, n_train=n_train)
    t_train = (time.time() - t0) / len(seeds)
    meta = {"name": name, "L": L, "H": H, "d": d, "wd": wd, "gamma": gamma, "ep": epochs, "lr": lr, "ln": ln,
            "mlp": mlp, "bidir": bidir, "t_train": round(t_train, 1)}
    return [{**meta, "seed": s, **measure(m, task, bidir)} for m, s in zip(models, seeds, strict=True)]


def measure(m, task, bidir: bool) -> dict:
    """Accuracy, per-head pattern masses, single-head ablations and patching, layer ablations."""
    L, H = m.cfg.n_layers, m.cfg.n_heads
    test = task.sample(1000, "test", seed=12345)
    ks = task.counterfactual(test, "key_swap", seed=1)
    am = task.counterfactual(test, "anchor_move", seed=2)
    p, k = test.anchor_pos, test.key_pos
    T = test.tokens.shape[1]
    last = T - 1
    rows = torch.arange(len(test))
    pos = torch.arange(T)

    def acc_of(logits):
        return (logits[:, -1].argmax(-1) == test.targets).float().mean().item()

    def ld(logits, other):  # mean logit difference clean answer - corrupt answer, last position
        lg = logits[:, -1]
        return (lg[rows, test.targets] - lg[rows, other]).mean().item()

    out: dict = {}
    heads: dict[str, dict] = {}
    with torch.no_grad():
        logits, cache = m.run_with_cache(
            test.tokens, names_filter=lambda n: n.endswith("hook_pattern") or n.endswith("hook_z"))
        out["acc"] = round(acc_of(logits), 4)
        mid = p <= T - 3  # the key is not the last input
        for layer in range(L):
            pat = cache[f"blocks.{layer}.attn.hook_pattern"]  # (B, H, dest, src)
            for h in range(H):
                P = pat[:, h]
                after = (pos[None, :] > k[:, None]).float()  # (B, T) rows after the key
                col_k = (P[rows, :, k] * after).sum(1) / after.sum(1).clamp(min=1)
                col_a = (P[rows, :, p] * after).sum(1) / after.sum(1).clamp(min=1)
                other = (pos[None, :] >= p[:, None]) & (pos[None, :] != k[:, None])
                oth = (P[rows, :, p] * other).sum(1) / other.sum(1)
                sc = {
                    "kr>A": P[rows, k, p][mid].mean().item(),  # key row -> anchor (shift -1 at the key)
                    "kr>A_unif": (1 / (k[mid] + 1).float()).mean().item() if not bidir else 1 / T,
                    "prev": torch.stack([P[:, i, i - 1] for i in range(1, T)], 1).mean().item(),
                    "last>A": P[rows, last, p].mean().item(),
                    "last>K": P[rows, last, k][mid].mean().item(),
                    "rowsafterK>K": col_k[mid].mean().item(),
                    "rowsafterK>A": col_a[mid].mean().item(),
                    "self": torch.diagonal(P, dim1=1, dim2=2).mean().item(),
                    "sink0": P[:, :, 0].mean().item(),
                    "A_sel": (P[rows, k, p] - oth)[mid].mean().item(),  # key row vs other rows, on the anchor
                }
                heads[f"L{layer}H{h}"] = {kk: round(v, 3) for kk, v in sc.items()}
        z_mean = {layer: cache[f"blocks.{layer}.attn.hook_z"].mean(0, keepdim=True) for layer in range(L)}

        def ablation_hooks(hs):
            hooks = []
            for layer in range(L):
                sel = [h for (ll, h) in hs if ll == layer]
                if sel:
                    def f(z, hook, sel=sel, layer=layer):
                        z[:, :, sel] = z_mean[layer][:, :, sel]
                        return z
                    hooks.append((f"blocks.{layer}.attn.hook_z", f))
            return hooks

        every = [(layer, h) for layer in range(L) for h in range(H)]
        for layer, h in every:
            lg = m.run_with_hooks(test.tokens, fwd_hooks=ablation_hooks([(layer, h)]))
            heads[f"L{layer}H{h}"]["abl_acc"] = round(acc_of(lg), 3)
        for cname, cb in (("ks", ks), ("am", am)):
            base_c, base_x = ld(logits, cb.targets), ld(m(cb.tokens), cb.targets)
            for layer, h in every:
                clean_z = cache[f"blocks.{layer}.attn.hook_z"]

                def f(z, hook, h=h, clean_z=clean_z):
                    z[:, :, h] = clean_z[:, :, h]
                    return z
                lg = m.run_with_hooks(cb.tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", f)])
                heads[f"L{layer}H{h}"][f"patch_{cname}"] = round((ld(lg, cb.targets) - base_x) / (base_c - base_x), 3)
                for pname, where in (("K", k), ("last", torch.full_like(k, last))):
                    def g(z, hook, h=h, where=where, clean_z=clean_z):
                        z[rows, where, h] = clean_z[rows, where, h]
                        return z
                    lg = m.run_with_hooks(cb.tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", g)])
                    heads[f"L{layer}H{h}"][f"patch_{cname}@{pname}"] = round(
                        (ld(lg, cb.targets) - base_x) / (base_c - base_x), 3)
        out["abl_layer_acc"] = [
            round(acc_of(m.run_with_hooks(test.tokens, fwd_hooks=ablation_hooks([(layer, h) for h in range(H)]))), 3)
            for layer in range(L)]
    out["heads"] = heads
    return out


def table(path: Path = RESULTS) -> str:
    """The markdown table of docs/findings.md section 1 (two seeds per cell: "a / b")."""
    by: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        d = json.loads(line)
        by.setdefault(d["name"], []).append(d)
    lines = ["| config | held-out acc | L0 shift head: key row->anchor (uniform) | selectivity | anchor_move "
             "patch @key row | acc if ablated alone | L0 heads with am@K>=0.1 | L0 self (mean) | L1 last row->key "
             "(mean of heads) | L1 largest key_swap share @last | acc, L0 / L1 all ablated | train s/model |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, ds in by.items():
        cells = []
        for d in ds:
            L0 = {h: v for h, v in d["heads"].items() if h.startswith("L0")}
            L1 = {h: v for h, v in d["heads"].items() if h.startswith("L1")}
            b = max(L0, key=lambda h, L0=L0: L0[h]["patch_am@K"])
            cells.append(dict(
                acc=d["acc"], kr=L0[b]["kr>A"], u=L0[b]["kr>A_unif"], sel=L0[b]["A_sel"], am=L0[b]["patch_am@K"],
                abl=L0[b]["abl_acc"], nsh=sum(v["patch_am@K"] >= 0.1 for v in L0.values()),
                self=sum(v["self"] for v in L0.values()) / len(L0),
                lk=sum(v["last>K"] for v in L1.values()) / len(L1), ks=max(v["patch_ks@last"] for v in L1.values()),
                a0=d["abl_layer_acc"][0], a1=d["abl_layer_acc"][1], t=d["t_train"]))

        def f(key, fmt="{:.2f}", cells=cells):
            return " / ".join(fmt.format(c[key]) for c in cells)
        lines.append(f"| {name} | {f('acc', '{:.3f}')} | {f('kr')} ({cells[0]['u']:.2f}) | {f('sel')} | {f('am')} | "
                     f"{f('abl')} | {f('nsh', '{}')} | {f('self')} | {f('lk')} | {f('ks')} | {f('a0')}, {f('a1')} | "
                     f"{cells[0]['t']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    if not argv or argv[0] not in ("run", "all", "table"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "table":
        print(table())
        return 0
    jobs = [line.split() for line in CONFIGS.splitlines()] if argv[0] == "all" else [argv[1:]]
    for name, *opts in jobs:
        for row in run(name, opts):
            with RESULTS.open("a") as fh:  # append-only log of measurements, one line per seed
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

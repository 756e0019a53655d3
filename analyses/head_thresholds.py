"""Measurements behind the head labeller's thresholds (docs/concepts.md quotes this script's output).

    python analyses/head_thresholds.py                 # tuning seeds 0-2
    python analyses/head_thresholds.py --seeds 3 4 5   # check seeds
    python analyses/head_thresholds.py --wider-only    # train 2Lx1H, 2Lx8H, 3Lx4H once, label them (~5 min)

Prints, for the given seeds:
1. randomly initialised models (presets small, mechanism; TransformerLens init and init_gamma 0.5): the
   largest role pattern score (shift_pattern / broadcast_pattern) of any head, with and without the
   identity task, and any head that is not labelled "neither";
2. the hand-set ground-truth models: the smallest role pattern score and causal effect of a true
   shift/broadcast head, the largest of every other head, and whether every label is right;
3. the zoo models (default, mechanism): each head's label, pattern scores and effects;
4. with ``--wider`` / ``--wider-only``: a 2L x 1H (d_head 128, n_train 1000, 100 epochs), a 2L x 8H
   and a 3L x 4H model (n_train 2000, 60 epochs), preset small with overrides, recipe fast, seed 0,
   trained here and labelled the same way.
5. with ``--study FILE`` (a ``seeds.json`` written by analyses/head_study.py; default
   analyses/results/head_study/default/seeds.json when it exists): for every head below the last layer,
   its generic ``shift`` score, ``task_shift`` (key row -> anchor lift), ``anchor_move`` patching effect
   and ablation drop, split into the study's label-free shift carriers and the rest (the ranges that
   justified the pattern-based soft-shift thresholds of 0.1; stored studies of 0.1 have these scores).
   Reads stored scores only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
DEFAULT_STUDY = Path(__file__).resolve().parent / "results" / "head_study" / "default" / "seeds.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=256, help="rows per labelling batch")
    ap.add_argument("--skip-zoo", action="store_true")
    ap.add_argument("--wider", action="store_true", help="also train and label 2Lx1H, 2Lx8H and 3Lx4H models")
    ap.add_argument("--wider-only", action="store_true", help="only section 4")
    ap.add_argument("--study", type=str, default=str(DEFAULT_STUDY),
                    help="head_study seeds.json for section 5 ('' to skip)")
    ap.add_argument("--study-only", action="store_true", help="only section 5")
    args = ap.parse_args(argv)
    if args.study_only:
        return study_section(Path(args.study))
    if args.wider_only:
        return wider(args.n)

    import torch

    torch.set_num_threads(1)
    from anchor_interp.labels import analyse_heads, label_heads
    from anchor_interp.models import make_model
    from anchor_interp.models import planted as gt
    from anchor_interp.tasks import make_task

    task = make_task("identity")
    print("## 1. random initialisation (max role pattern score over heads and seeds; non-neither heads)")
    for preset in ("small", "mechanism"):
        for gamma in (None, 0.5):
            worst, wrong, gap = 0.0, [], 0.0
            for seed in args.seeds:
                model = make_model(preset, task, seed=seed, init_gamma=gamma)
                batch = task.sample(args.n, split="test", seed=seed)
                analysis = analyse_heads(model, batch, task, seed=seed)
                gap = max([gap] + [abs(v) for k, v in analysis.baseline.items() if k.startswith("logit_gap")])
                for mode, recs in (("task", analysis.records),
                                   ("no-task", label_heads(model, batch.tokens, seed=seed))):
                    for r in recs:
                        worst = max(worst, r.scores["shift_pattern"], r.scores["broadcast_pattern"])
                        if r.label != "neither":
                            wrong.append(f"seed{seed}/{mode}/{r.name}={r.label}")
            print(f"{preset:10s} init_gamma={gamma!s:5s} max_role_pattern={worst:.3f} max_abs_logit_gap={gap:.3f} "
                  f"not_neither={wrong or 'none'}")

    print("\n## 2. hand-set ground truth")
    cases = [("head zoo (causal, no task)", gt.make_head_zoo_model(), gt.expected_labels(), None)]
    bidir = (gt.GroundTruthHead("prev", "shift", -1), gt.GroundTruthHead("next", "shift", 1),
             gt.GroundTruthHead("next2", "shift", 2), gt.GroundTruthHead("broadcast", "broadcast"),
             gt.GroundTruthHead("sink", "sink"), gt.GroundTruthHead("decoy", "decoy", 1))
    cases.append(("head zoo (bidirectional, no task)", gt.make_head_zoo_model(bidir, attention_dir="bidirectional"),
                  gt.expected_labels(bidir), None))
    cases.append(("identity circuit (task)", gt.make_identity_circuit_model(task), list(gt.CIRCUIT_EXPECTED), task))
    for name, model, expected, t in cases:
        for seed in args.seeds:
            data = t.sample(args.n, split="test", seed=seed) if t is not None else gt.sample_tokens(args.n, seed=seed)
            recs = label_heads(model, data, t, seed=seed)
            ok = [(r.label, r.offset, r.kind) for r in recs] == list(expected)
            true = [r for r, e in zip(recs, expected, strict=True) if e[0] != "neither"]
            other = [r for r, e in zip(recs, expected, strict=True) if e[0] == "neither"]

            def role(r):
                return max(r.scores["shift_pattern"], r.scores["broadcast_pattern"])

            print(f"{name:34s} seed={seed} all_right={ok} "
                  f"true: min_pattern={min(role(r) for r in true):.3f} min_effect={min(r.causal_effect for r in true):.3f} | "
                  f"others: max_pattern={max(role(r) for r in other):.3f} "
                  f"max_effect={max(r.causal_effect for r in other):.3f} (inert max_effect="
                  f"{max([r.causal_effect for r in other if r.kind == 'inert'], default=float('nan')):.3f})")

    if not args.skip_zoo:
        from anchor_interp.models import zoo
        from anchor_interp.scores.ablation import circuit_check

        print("\n## 3. zoo models")
        for name in ("default", "mechanism"):
            model, t = zoo.load(name)
            for seed in args.seeds:
                batch = t.sample(512, split="test", seed=seed)
                a = analyse_heads(model, batch, t, seed=seed)
                print(f"{name} seed={seed} baseline={ {k: round(v, 3) for k, v in a.baseline.items()} }")
                for r in a.records:
                    s = r.scores
                    print(f"  {r.name} {r.label:9s} offset={r.offset!s:4s} kind={r.kind!s:7s} group={r.group!s:18s} "
                          f"shift={s['shift']:.2f} task_shift={s['task_shift']:.2f} bc={s['broadcast']:.2f} "
                          f"task_bc={s['task_broadcast']:.2f} self={s['self']:.2f} sink={s['sink']:.2f} "
                          f"anchor_position={s.get('patch_anchor_position', float('nan')):.2f} "
                          f"key_value={s.get('patch_key_value', float('nan')):.2f} "
                          f"abl_drop={s['ablation_accuracy_drop']:.2f} qk={s['qk_positional_shift']:.2f} "
                          f"conf={r.confidence:.2f} roles={_roles(r)}")
                _print_raw_key_row(model, batch)
                if seed == args.seeds[0]:
                    _print_attribution_vs_exact(model, t, batch, seed)
                for g in a.groups:
                    print(f"  group {g.name}: {g.heads} joint={g.joint_effect:.3f} singles="
                          f"{ {k: round(v, 3) for k, v in g.individual_effects.items()} } needed_together={g.needed_together}")
                labelled = [(r.layer, r.head) for r in a.records if r.label != "neither"]
                ref = t.sample(512, split="train", seed=seed + 1).tokens
                c = circuit_check(model, batch.tokens, batch.targets, labelled, reference=ref)
                print(f"  circuit_check: acc={c.base_accuracy:.3f} without_labelled={c.accuracy_without_circuit:.3f} "
                      f"without_rest={c.accuracy_without_rest:.3f} kept={c.kept_fraction:.3f} passes={c.passes}")
    if args.wider:
        wider(args.n)
    if args.study and Path(args.study).is_file():
        study_section(Path(args.study))
    return 0


def study_section(path: Path) -> int:
    """Section 5: shift carriers vs the other early-layer heads in a stored head_study run."""
    import json

    if not path.is_file():
        raise SystemExit(f"--study: no such file {path} (run analyses/head_study.py first)")
    rows = json.loads(path.read_text())
    print(f"\n## 5. stored head study {path} (heads below the last layer)")
    groups: dict[str, list[dict]] = {"carrier": [], "other": []}
    for row in rows:
        carriers = set(row["shift_carriers"].split())
        last = max(h["layer"] for h in row["heads"])
        for h in row["heads"]:
            if h["layer"] == last:
                continue
            s = h["scores"]
            which = "carrier" if h["name"] in carriers else "other"
            groups[which].append(s)
            print(f"  seed {row['seed']} {h['name']} {which:7s} label={h['label']:9s} kind={h['kind']!s:7s} "
                  f"shift={s['shift']:.2f} task_shift={s['task_shift']:.2f} "
                  f"anchor_move={s.get('patch_anchor_move', float('nan')):.2f} "
                  f"abl_drop={s['ablation_accuracy_drop']:.2f}")
    for which, ss in groups.items():
        if ss:
            rng = {k: (min(s[k] for s in ss), max(s[k] for s in ss))
                   for k in ("shift", "task_shift", "patch_anchor_move", "ablation_accuracy_drop") if k in ss[0]}
            print(f"  {which}s ({len(ss)}): " + " ".join(f"{k}=[{lo:.2f}, {hi:.2f}]" for k, (lo, hi) in rng.items()))
    return 0


def _roles(r) -> str:
    """The record's passing roles, e.g. ``shift(-1) 0.38 [L1.k], copy 0.17 [L1.v]``."""
    return ", ".join(f"{x['name']} {x['effect']:.2f} [{max(x['routes'], key=x['routes'].get)}]"
                     for x in r.roles if x.get("passes")) or "-"


def _print_attribution_vs_exact(model, task, batch, seed: int) -> None:
    """Per-head normalised logit-difference patching: exact (patch_head_out) vs gradient (attribution)."""
    from anchor_interp.patching import patch_head_out
    from anchor_interp.patching.attribution import attribution_patch_heads

    for kind in ("anchor_move", "key_swap"):
        corrupt = task.counterfactual(batch, kind, seed=seed + 1)
        exact = patch_head_out(model, batch, corrupt, metric="logit_diff", counterfactual=kind).values.flatten()
        grad = attribution_patch_heads(model, batch, corrupt, metric="logit_diff", counterfactual=kind).values.flatten()
        print(f"  {kind}: exact {[round(float(x), 2) for x in exact]} attribution {[round(float(x), 2) for x in grad]}")


def _print_raw_key_row(model, batch) -> None:
    """Raw (unnormalised) mean attention of each head's key row: on itself, on the anchor, and uniform."""
    import torch

    from anchor_interp.scores.patterns import attention_patterns

    pats = attention_patterns(model, batch.tokens)  # (B, L, H, T, T)
    b = torch.arange(len(batch))
    k, a = batch.key_pos, batch.anchor_pos
    self_mass = pats[b, :, :, k, k].mean(0)  # (L, H)
    anchor_mass = pats[b, :, :, k, a].mean(0)
    n_vis = (k + 1).float() if model.cfg.attention_dir == "causal" else torch.full_like(k, pats.shape[-1]).float()
    uniform = (1.0 / n_vis).mean().item()
    for layer in range(pats.shape[1]):
        print(f"  raw key row, layer {layer}: on itself {[round(x, 2) for x in self_mass[layer].tolist()]}, "
              f"on the anchor {[round(x, 2) for x in anchor_mass[layer].tolist()]} (uniform {uniform:.2f})")


def _print_analysis(model, task, seed: int) -> None:
    from anchor_interp.labels import analyse_heads
    from anchor_interp.scores.ablation import circuit_check

    batch = task.sample(512, split="test", seed=seed)
    a = analyse_heads(model, batch, task, seed=seed)
    print(f"  baseline={ {k: round(v, 3) for k, v in a.baseline.items()} }")
    for r in a.records:
        s = r.scores
        print(f"  {r.name} {r.label:9s} offset={r.offset!s:4s} kind={r.kind!s:7s} group={r.group!s:18s} "
              f"shift_pattern={s['shift_pattern']:.2f} broadcast_pattern={s['broadcast_pattern']:.2f} "
              f"anchor_position={s.get('patch_anchor_position', float('nan')):.2f} "
              f"key_value={s.get('patch_key_value', float('nan')):.2f} abl_drop={s['ablation_accuracy_drop']:.2f} "
              f"roles={_roles(r)}")
    for g in a.groups:
        print(f"  group {g.name}: {g.heads} joint={g.joint_effect:.3f} singles="
              f"{ {k: round(v, 3) for k, v in g.individual_effects.items()} } needed_together={g.needed_together}")
    labelled = [(r.layer, r.head) for r in a.records if r.label != "neither"]
    c = circuit_check(model, batch.tokens, batch.targets, labelled,
                      reference=task.sample(512, split="train", seed=seed + 1).tokens)
    print(f"  circuit_check: acc={c.base_accuracy:.3f} without_labelled={c.accuracy_without_circuit:.3f} "
          f"without_rest={c.accuracy_without_rest:.3f} kept={c.kept_fraction:.3f} passes={c.passes}")


def wider(n: int) -> int:
    """Section 4: train a 2L x 1H, a 2L x 8H and a 3L x 4H model once (seed 0) and label them."""
    import time

    import torch

    torch.set_num_threads(1)
    from anchor_interp import models, training
    from anchor_interp.tasks import make_task

    task = make_task("identity")
    print("\n## 4. other shapes (preset small + overrides, recipe fast, seed 0)")
    specs = (  # (model overrides, recipe overrides)
        ({"n_heads": 1, "d_head": 128}, {"n_train": 1000, "epochs": 100}),  # the spec's soft-shift 2L x 1H model
        ({"n_heads": 8}, {"n_train": 2000, "epochs": 60, "cosine_epochs": 58}),
        ({"n_layers": 3}, {"n_train": 2000, "epochs": 60, "cosine_epochs": 58}),
    )
    for overrides, recipe in specs:
        cfg = models.model_config("small", task, **overrides)
        n_layers, n_heads = cfg.n_layers, cfg.n_heads
        model = models.make_model(cfg, task, seed=0)
        t0 = time.perf_counter()
        res = training.train(model, task, "fast", seed=0, progress=False, **recipe)
        model.eval()
        last = res.history[-1] if getattr(res, "history", None) else {}
        print(f"{n_layers}L x {n_heads}H {recipe}: trained in {time.perf_counter() - t0:.0f} s, "
              f"held-out accuracy {last.get('test_acc', float('nan')):.3f}")
        _print_analysis(model, task, seed=0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

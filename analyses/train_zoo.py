"""Recreate the zoo models shipped in anchor_interp/zoo/<name>/ from their specs (fixed seeds).

    python analyses/train_zoo.py                 # every entry of anchor_interp.models.zoo.ZOO
    python analyses/train_zoo.py default         # one entry
    python analyses/train_zoo.py default --out /tmp/zoo   # write elsewhere (e.g. to compare)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    from anchor_interp.models.zoo import ZOO, ZOO_DIR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"zoo entries to train (default: all of {sorted(ZOO)})")
    ap.add_argument("--out", type=Path, default=ZOO_DIR, help="parent folder (default: the package's zoo/)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machine)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in ZOO]
    if unknown:
        ap.error(f"unknown zoo name(s) {unknown}; known: {sorted(ZOO)}")

    import torch

    from anchor_interp.models import count_parameters, make_model, model_config
    from anchor_interp.models.checkpoint import save_checkpoint
    from anchor_interp.tasks import make_task
    from anchor_interp.training import get_recipe, train, write_history

    torch.set_num_threads(args.threads)
    for name in args.names or sorted(ZOO):
        spec = ZOO[name]
        task = make_task(spec.task, **spec.task_params)
        cfg = model_config(spec.preset, task, **spec.model_overrides)
        model = make_model(cfg, task, seed=spec.seed, init_gamma=spec.init_gamma)
        recipe = get_recipe(spec.recipe, **spec.recipe_overrides)
        t0 = time.perf_counter()
        result = train(model, task, recipe, seed=spec.seed, progress=not args.no_progress, preset=spec.preset)
        secs = time.perf_counter() - t0
        out = args.out / name
        save_checkpoint(out, model, task, preset=spec.preset, recipe=recipe.to_dict(), seed=spec.seed,
                        step=result.step, epoch=result.epoch, n_train=recipe.n_train, history=result.history,
                        extra={"zoo": {"name": name, "init_gamma": spec.init_gamma,
                                       "model_overrides": spec.model_overrides, "train_seconds": round(secs, 1)}})
        write_history(result.history, out)
        (out / "history.json").unlink(missing_ok=True)  # the history is in checkpoint.json already
        f = result.final
        print(f"{name}: preset={spec.preset} params={count_parameters(model)} epochs={result.epoch} "
              f"held-out acc={f['test_acc']:.4f} train loss={f['train_loss']:.4g} ({secs:.0f} s) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

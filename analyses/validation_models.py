"""Train the validation set of issue 12: models whose head roles the oracle and the labeller both judge.

    python analyses/validation_models.py                          # everything: 7 configurations x seeds 0-6
    python analyses/validation_models.py --tasks identity --seeds 0        # identity (small and mechanism), seed 0
    python analyses/validation_models.py --tasks composition --presets small --seeds 0 1 --epochs 2 --out /tmp/val
    python analyses/validation_models.py --list                   # the configurations and their folders
    python analyses/validation_models.py --summary-only           # rewrite summary.csv / summary.json

The set: the ``small`` preset (2L x 4H attention-only, causal) on identity, identity_key_before,
identity_distance (d=3), composition, multi_anchor_multi_interval and the mixed forward+reverse
recitation, plus the ``mechanism`` preset (2L x 1H bidirectional) on identity; seeds 0-6 each.

Recipe (docs/validation.md): the ``fast`` recipe (AdamW lr 1e-3, warm-up 1e-4 -> 1e-3 over 2 epochs,
cosine to 1e-5 ending with the run, batch 100, weight decay 0.01, clip 1.0) with ``data="fresh"``
(new training sequences every step, never repeated), ``n_train=2000`` (an epoch = 2000 fresh
sequences = 20 steps, as many steps per epoch as the shipped zoo models) and ``epochs=80``: 1600
steps, 160,000 sequences per model. Held-out accuracy on 1000 test-split sequences per model.

Checkpoints: ``<out>/<task>__<preset>__seed<k>/`` (default out: ~/.cache/anchor_interp/validation),
each a normal checkpoint folder (``anchor_interp.models.checkpoint.load_checkpoint`` reads it). The
run is resumable: finished folders with the same recipe are skipped, interrupted ones (Ctrl-C, or a
checkpoint every 10 epochs) resume, folders trained with another recipe are retrained. Seeds of one
configuration train together as one batched computation. ``summary.csv`` and ``summary.json`` list
the held-out accuracy of every finished model in the folder.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anchor_interp.atomic import atomic_write_text  # noqa: E402  (torch-free; after the path fix)
from anchor_interp.cli.args import add_device_argument  # noqa: E402

DEFAULT_OUT = Path.home() / ".cache" / "anchor_interp" / "validation"
DEFAULT_SEEDS = tuple(range(7))
EPOCHS = 80
RECIPE = "fast"
RECIPE_OVERRIDES = {"data": "fresh", "n_train": 2000, "checkpoint_every": 10}
RECITATION_NAMES = ("recitation_mixed", "recitation")  # the mixed forward+reverse task, first one registered
SUMMARY_FIELDS = ("name", "task", "task_params", "preset", "seed", "epochs", "step", "test_acc", "test_acc_masked",
                  "train_loss", "train_acc", "train_seconds", "folder")


@dataclass(frozen=True)
class Config:
    """One configuration of the validation set: a task (with params) and a preset."""

    task: str
    preset: str = "small"
    task_params: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        params = "".join(f"-{k}{v}" for k, v in sorted(self.task_params.items()))
        return f"{self.task}{params}"

    def folder(self, out: Path, seed: int) -> Path:
        return out / f"{self.slug}__{self.preset}__seed{seed}"


def recitation_task() -> str:
    from anchor_interp.tasks import list_tasks

    names = list_tasks()
    for n in RECITATION_NAMES:
        if n in names:
            return n
    raise ValueError(f"no mixed forward+reverse recitation task in anchor_interp.tasks (looked for {RECITATION_NAMES})")


def validation_set() -> list[Config]:
    return [
        Config("identity"),
        Config("identity_key_before"),
        Config("identity_distance", task_params={"d": 3}),
        Config("composition"),
        Config("multi_anchor_multi_interval"),
        Config(recitation_task()),
        Config("identity", preset="mechanism"),
    ]


def recipe_for(epochs: int):
    from anchor_interp.training import get_recipe

    return get_recipe(RECIPE, epochs=epochs, **RECIPE_OVERRIDES)


def folder_state(folder: Path, task, recipe, seed: int) -> tuple[str, dict | None]:
    """("missing" | "done" | "resumable" | "stale", meta) of a model folder."""
    from anchor_interp.models.checkpoint import CheckpointError, read_meta

    if not (folder / "checkpoint.json").exists():
        return "missing", None
    try:
        meta = read_meta(folder)
    except CheckpointError:
        return "stale", None
    same = (meta.get("task") == task.to_dict() and meta.get("seed") == seed
            and _recipe_dict(meta.get("recipe")) == recipe.to_dict())
    if not same:
        return "stale", meta
    return ("resumable" if meta.get("resume") else "done"), meta


def _recipe_dict(d):
    from anchor_interp.training import get_recipe

    try:  # through Recipe, so that fields added since the checkpoint was written get their defaults
        return get_recipe(d or {}).to_dict()
    except (ValueError, TypeError):
        return d


def train_config(cfg: Config, seeds: list[int], out: Path, epochs: int, device: str, progress: bool,
                 log=print) -> list[dict]:
    """Train (or skip, or resume) the models of one configuration; returns one record per seed trained."""
    from anchor_interp.models import make_model, model_config
    from anchor_interp.tasks import make_task
    from anchor_interp.training import train_many

    task = make_task(cfg.task, **cfg.task_params)
    recipe = recipe_for(epochs)
    mcfg = model_config(cfg.preset, task)
    states = {s: folder_state(cfg.folder(out, s), task, recipe, s) for s in seeds}
    done = [s for s in seeds if states[s][0] == "done"]
    if done:
        log(f"{cfg.slug}/{cfg.preset}: seeds {done} already trained, skipped")
    groups: dict[object, list[int]] = {}
    for s in seeds:
        state, meta = states[s]
        if state == "resumable":
            groups.setdefault(("resume", meta["resume"]["global_step"]), []).append(s)
        elif state in ("missing", "stale"):
            if state == "stale":
                log(f"{cfg.slug}/{cfg.preset} seed {s}: {cfg.folder(out, s)} holds another run; retraining")
            groups.setdefault(("new", 0), []).append(s)
    records = []
    for (how, step), group in sorted(groups.items(), key=lambda t: (t[0][0] != "resume", t[0][1])):
        models = [make_model(mcfg, task, seed=s, device=device) for s in group]
        dirs = [cfg.folder(out, s) for s in group]
        log(f"{cfg.slug}/{cfg.preset}: {'resuming from step ' + str(step) if how == 'resume' else 'training'} "
            f"seeds {group} ({recipe.epochs} epochs, {recipe.data} data) on {device}")
        t0 = time.perf_counter()
        results = train_many(models, task, recipe, seeds=group, out_dirs=dirs, resume=how == "resume",
                             device=device, progress=progress, preset=cfg.preset)
        secs = time.perf_counter() - t0
        for r in results:
            f = r.final
            log(f"  seed {r.seed}: held-out acc {f.get('test_acc') or 0:.4f} after {r.epoch} epochs -> {r.out_dir}")
            records.append({"seed": r.seed, "seconds": secs, "models_in_batch": len(group)})
    return records


def summarise(out: Path) -> list[dict]:
    """One row per finished model folder under ``out`` (sorted by name)."""
    from anchor_interp.models.checkpoint import CheckpointError, read_meta

    rows = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and "__seed" in p.name):
        try:
            meta = read_meta(folder)
        except CheckpointError:
            continue
        if meta.get("resume"):
            continue  # unfinished
        hist = meta.get("history") or [{}]
        last = hist[-1]
        rows.append({
            "name": folder.name,
            "task": meta["task"]["name"],
            "task_params": json.dumps({k: v for k, v in meta["task"].get("params", {}).items() if k != "seq_len"},
                                      sort_keys=True),
            "preset": meta.get("preset"),
            "seed": meta.get("seed"),
            "epochs": meta.get("epoch"),
            "step": meta.get("step"),
            "test_acc": _num(last.get("test_acc")),
            "test_acc_masked": _num(last.get("test_acc_masked")),
            "train_loss": _num(last.get("train_loss")),
            "train_acc": _num(last.get("train_acc")),
            "train_seconds": _num(last.get("time_s")),
            "folder": str(folder),
        })
    return rows


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if v != v else v  # NaN -> None


def write_summary(out: Path, rows: list[dict]) -> tuple[Path, Path]:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in SUMMARY_FIELDS})
    paths = (out / "summary.csv", out / "summary.json")
    atomic_write_text(paths[0], buf.getvalue())
    atomic_write_text(paths[1], json.dumps({"recipe": RECIPE, "recipe_overrides": RECIPE_OVERRIDES, "models": rows},
                                       indent=1) + "\n")
    return paths


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"parent folder (default {DEFAULT_OUT})")
    ap.add_argument("--tasks", nargs="+", metavar="TASK", help="only these tasks (names as in the set)")
    ap.add_argument("--presets", nargs="+", metavar="PRESET", help="only these presets (small, mechanism)")
    ap.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS), help="seeds (default 0-6)")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs of fresh data (default {EPOCHS})")
    add_device_argument(ap, default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machine)")
    ap.add_argument("--list", action="store_true", help="print the configurations and exit")
    ap.add_argument("--summary-only", action="store_true", help="only rewrite summary.csv / summary.json")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1; got {args.epochs}")
        if any(s < 0 for s in args.seeds):
            raise ValueError(f"--seeds must be >= 0; got {args.seeds}")
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1; got {args.threads}")
        configs = validation_set()
        if args.tasks:
            known = sorted({c.task for c in configs} | {c.slug for c in configs})
            bad = [t for t in args.tasks if t not in known]
            if bad:
                raise ValueError(f"--tasks {bad}: not in the validation set; known: {known}")
            configs = [c for c in configs if c.task in args.tasks or c.slug in args.tasks]
        if args.presets:
            known = sorted({c.preset for c in validation_set()})
            bad = [p for p in args.presets if p not in known]
            if bad:
                raise ValueError(f"--presets {bad}: unknown; known: {known}")
            configs = [c for c in configs if c.preset in args.presets]
        if not configs:
            raise ValueError("no configuration left after --tasks / --presets")
        seeds = sorted(set(args.seeds))
        if args.list:
            for c in configs:
                print(f"{c.slug:<30} {c.preset:<10} {c.folder(args.out, seeds[0]).parent}/{c.slug}__{c.preset}__seed<k>")
            return 0
        from anchor_interp.models.checkpoint import ensure_writable_dir

        out = ensure_writable_dir(args.out)
        if not args.summary_only:
            import torch

            torch.set_num_threads(args.threads)
            from anchor_interp.cli.args import resolve_cli_device

            device = str(resolve_cli_device(args.device))
            for c in configs:
                train_config(c, seeds, out, args.epochs, device, progress=not args.no_progress)
        rows = summarise(out)
        csv_path, json_path = write_summary(out, rows)
        print(f"summary of {len(rows)} finished model(s): {csv_path}, {json_path}")
    except ValueError as e:  # TaskError, CheckpointError, bad arguments
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\n{e}; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sweeps: many training runs described by one TOML file, run resumably by a local or Ray executor.

    spec.py          sweep file -> SweepSpec -> RunSpec list (settings resolved, ids = hashes)
    estimate.py      runs -> optimizer steps and estimated CPU seconds
    pack.py          runs -> train_many stacks (deterministic)
    manifest.py      the sweep folder's manifest.json: rows, atomic writes, locks and heartbeats
    execute.py       one stack: build_models, train_many with resume, metrics, find_heads label summary
    driver.py        claim stacks, hand them to a backend, record outcomes (run_sweep)
    local.py         in-process / process-pool backends
    ray_executor.py  Ray backend (optional extra: pip install anchor-interp[ray])
    table.py         manifest -> tidy CSV (one row per run)
    plot.py          table -> accuracy vs N figure, layers x heads label mosaic

docs/sweeps.md describes the sweep file, the commands (analyses/sweep.py) and the table's columns.
"""

from anchor_interp.sweeps.driver import SweepSummary, default_folder, run_sweep
from anchor_interp.sweeps.execute import ExecOptions, build_models, train_stack
from anchor_interp.sweeps.manifest import Manifest
from anchor_interp.sweeps.pack import Stack, pack
from anchor_interp.sweeps.spec import RunSpec, SweepError, SweepSpec, expand, load_spec, parse_spec
from anchor_interp.sweeps.table import write_table

__all__ = ["ExecOptions", "Manifest", "RunSpec", "Stack", "SweepError", "SweepSpec", "SweepSummary", "build_models",
           "default_folder", "expand", "load_spec", "pack", "parse_spec", "run_sweep", "train_stack", "write_table"]

"""sweeps/ray_executor.py on a local Ray instance (2 CPUs): a worker killed mid-run is retried, resumes from
its checkpoints, and the sweep gives the local executor's table. Skipped without Ray, except in CI (CI=true)."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest

from anchor_interp.sweeps.table import TIME_COLUMNS

try:
    import ray  # noqa: F401  (the fixture uses it)
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise  # CI installs the ray extra: a missing Ray is a failure there
    pytest.skip("Ray is not installed (pip install 'anchor-interp[ray]'); the ray executor tests need it",
                allow_module_level=True)


def _table(path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)]


def die_once_after_a_checkpoint(runs, folder, opts):
    """A stack task that, the first time (marked by a file), saves checkpoints at step 2 and kills its worker."""
    import dataclasses

    from anchor_interp.sweeps.execute import train_stack

    marker = Path(folder) / f".died-{runs[0].id}"
    if not marker.exists():
        marker.write_text("1")
        train_stack(runs, folder, dataclasses.replace(opts, stop_after_step=2))
        os._exit(1)  # the worker process dies: Ray retries the task on a new worker
    return train_stack(runs, folder, opts)


@pytest.fixture(scope="module")
def ray_instance():
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    root, before = str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, before]))  # workers import this checkout
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        os.environ.pop("PYTHONPATH") if before is None else os.environ.update(PYTHONPATH=before)
    yield ray
    ray.shutdown()


def test_ray_sweep_survives_a_killed_worker_and_matches_the_local_table(ray_instance, tiny_done, tiny_spec, tmp_path):
    from anchor_interp.sweeps.driver import drive, prepare
    from anchor_interp.sweeps.execute import ExecOptions
    from anchor_interp.sweeps.manifest import Manifest
    from anchor_interp.sweeps.ray_executor import RayBackend
    from anchor_interp.sweeps.table import write_table

    local_folder, _ = tiny_done
    _, stacks = prepare(tiny_spec, tmp_path)
    backend = RayBackend(tmp_path, ExecOptions(after=dict(tiny_spec.after)), train_fn=die_once_after_a_checkpoint)
    assert not backend.started and backend.window == 2  # uses the running instance and its 2 CPUs
    summary = drive(tmp_path, stacks, backend, log=lambda m: None)
    assert summary.counts == {"done": 4}
    assert list(tmp_path.glob(".died-*"))  # the first attempt did die
    write_table(tmp_path)
    assert _table(tmp_path / "table.csv") == _table(local_folder / "table.csv")
    assert all(r["lock"] is None for r in Manifest(tmp_path).rows())


def test_run_sweep_with_the_ray_executor(ray_instance, tiny_done, tiny_spec, tmp_path):
    from anchor_interp.sweeps import run_sweep

    s = run_sweep(tiny_spec, tmp_path, executor="ray", log=lambda m: None)
    assert s.counts == {"done": 4} and s.stacks_run == 1
    assert _table(tmp_path / "table.csv") == _table(tiny_done[0] / "table.csv")

"""The Ray executor: each stack is a Ray task (``num_cpus`` 1, ``num_gpus`` ``gpus_per_stack``) on a running
cluster (``address``, e.g. ``"auto"`` or ``"ray://head:10001"``) or on a local Ray instance started here.

A task whose worker dies mid-run (killed, out of memory, node lost) is retried by Ray (``max_retries``,
default 3); the retry resumes from the stack's checkpoints, so only the steps since the last checkpoint
are repeated. Errors raised by training itself are not retried: they are recorded as the runs' reasons.
On a multi-machine cluster the sweep folder must be on storage every node sees (the same path everywhere).
Ray is an optional extra: ``pip install anchor-interp[ray]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from anchor_interp.sweeps.execute import ExecOptions, train_stack
from anchor_interp.sweeps.spec import RunSpec

__all__ = ["RayBackend", "import_ray"]

RAY_HINT = "the ray executor needs Ray: pip install 'anchor-interp[ray]' (or pip install ray)"


def import_ray():
    """The ray module; ImportError with the install command when it is missing."""
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_HINT) from None
    return ray


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _stack_task(train_fn, runs: list[RunSpec], folder: str, opts: ExecOptions, threads: int) -> dict:
    """What a Ray worker runs: one torch thread (or ``threads``), then ``train_fn`` (train_stack)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return train_fn(runs, folder, opts)


class RayBackend:
    """Stacks as Ray tasks. Starts a local Ray instance (``num_cpus`` CPUs, default all) unless Ray is already
    initialised or ``address`` names a cluster; shuts down only an instance it started. ``train_fn``
    replaces :func:`~anchor_interp.sweeps.execute.train_stack` (fault-injection tests)."""

    def __init__(self, folder: Path, opts: ExecOptions, *, address: str | None = None, num_cpus: int | None = None,
                 gpus_per_stack: float = 0.0, threads: int = 1, max_retries: int = 3, train_fn=train_stack):
        ray = import_ray()
        self.ray, self.folder, self.opts, self.threads = ray, str(folder), opts, threads
        self.started = False
        if not ray.is_initialized():
            if address is None:  # workers must import this anchor_interp, whatever is installed
                root, before = str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")
                os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, before]))
                try:  # the instance's processes inherit the environment now
                    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
                finally:
                    _restore_env("PYTHONPATH", before)
            else:
                ray.init(address=address, log_to_driver=False)
            self.started = True
        if gpus_per_stack > 0 and opts.device == "cpu":
            opts.device = "cuda"
        self.remote = ray.remote(_stack_task).options(num_cpus=1, num_gpus=gpus_per_stack, max_retries=max_retries,
                                                       retry_exceptions=False)
        res = ray.cluster_resources()
        slots = int(res.get("CPU", 1))
        if gpus_per_stack > 0:
            slots = min(slots, int(res.get("GPU", 0) / gpus_per_stack) or 1)
        self.window = max(slots, 1)
        self.train_fn = train_fn

    def submit(self, runs: list[RunSpec]):
        return self.remote.remote(self.train_fn, runs, self.folder, self.opts, self.threads)

    def wait(self, handles: list) -> list[tuple[Any, dict | None, BaseException | None]]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        out = []
        for ref in ready:
            try:
                out.append((ref, self.ray.get(ref), None))
            except Exception as e:  # noqa: BLE001 - a task that failed after its retries: the runs' reason
                cause = getattr(e, "cause", None)
                out.append((ref, None, cause if isinstance(cause, BaseException) else e))
        return out

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()

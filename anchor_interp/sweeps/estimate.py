"""What a sweep costs before it runs: optimizer steps per run and an estimate of CPU seconds.

steps = epochs * ceil(n_train / batch_size) per run (the whole schedule; early stopping only shortens it).
CPU seconds = (training sequences + held-out sequences / 3) * the preset's seconds per sequence
(:data:`SECONDS_PER_SEQUENCE`: one core, one torch thread, fp32, measured once by ``measure_cost``,
see docs/sweeps.md), scaled by the model's non-embedding parameters over its preset's when a run
overrides the model. Held-out sequences: ``n_test`` per evaluation (every ``eval_every`` epochs and at
the end); a forward pass costs about a third of a training step.
"""

from __future__ import annotations

import math
from typing import Any

from anchor_interp.sweeps.spec import RunSpec

__all__ = ["SECONDS_PER_SEQUENCE", "estimate", "measure_cost", "run_steps"]

# Seconds per training sequence (forward + backward + AdamW share), identity task, one thread on the
# shared 2-core CPU of 2026-11-30 (torch 2.13, niced): measure_cost(preset) for small (batch 100),
# paper (batch 50) and mechanism (batch 100), 2 models stacked, 20 steps each.
SECONDS_PER_SEQUENCE = {"small": 2.9e-4, "paper": 3.6e-3, "mechanism": 2.7e-4}
_FALLBACK = "paper"  # an unknown preset is costed like the largest one


def run_steps(r: RunSpec) -> int:
    """Optimizer steps of the run's whole schedule: epochs * ceil(n_train / batch_size)."""
    rec = r.settings["recipe"]
    return rec["epochs"] * math.ceil(rec["n_train"] / rec["batch_size"])


def _scale(r: RunSpec, cache: dict) -> float:
    """Non-embedding parameters of the run's model over its preset's (1.0 without model overrides)."""
    s = r.settings
    if not s["model"]:
        return 1.0
    key = (s["preset"], str(sorted(s["model"].items())), s["task"]["name"], str(s["task"]["params"]))
    if key not in cache:
        from anchor_interp.models import model_config
        from anchor_interp.tasks import make_task

        task = make_task(s["task"]["name"], **s["task"]["params"])
        ours, base = model_config(s["preset"], task, **s["model"]), model_config(s["preset"], task)
        cache[key] = max(ours.n_params, 1) / max(base.n_params, 1)
    return cache[key]


def estimate(runs: list[RunSpec]) -> list[dict[str, Any]]:
    """Per run: ``steps`` and ``cpu_s`` (estimated CPU seconds on one core; see the module docstring)."""
    cache: dict = {}
    out = []
    for r in runs:
        rec = r.settings["recipe"]
        evals = math.ceil(rec["epochs"] / rec["eval_every"]) + 1
        seqs = rec["epochs"] * rec["n_train"] + evals * rec["n_test"] / 3
        per = SECONDS_PER_SEQUENCE.get(r.settings["preset"], SECONDS_PER_SEQUENCE[_FALLBACK])
        out.append({"id": r.id, "steps": run_steps(r), "cpu_s": seqs * per * _scale(r, cache)})
    return out


def measure_cost(preset: str, batch_size: int, steps: int = 20, k: int = 2) -> float:
    """Measured seconds per training sequence of ``preset`` on the identity task (this process's threads):
    the time of ``k`` stacked models over 2 * steps minus steps of training, per model and sequence."""
    import time

    from anchor_interp.models import make_model
    from anchor_interp.tasks import make_task
    from anchor_interp.training import train_many

    task = make_task("identity")
    times = []
    for epochs in (1, 3):
        models = [make_model(preset, task, seed=s) for s in range(k)]
        t = time.perf_counter()
        train_many(models, task, "fast", seeds=list(range(k)), n_train=batch_size * steps // 2, epochs=epochs,
                   batch_size=batch_size, eval_every=100, n_test=100, progress=False)
        times.append(time.perf_counter() - t)
    return (times[1] - times[0]) / (k * steps * batch_size)

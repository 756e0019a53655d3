"""Anchor-function tasks (Zhang et al., arXiv 2401.08309): sampling, held-out splits, counterfactuals.

    from anchor_interp.tasks import make_task
    task = make_task("identity")
    batch = task.sample(1000, split="train", seed=0)
    corrupt = task.counterfactual(batch, "key_value", seed=1)
    clean, moved, kept, n_dropped = task.counterfactual_pair(batch, "anchor_position", seed=1)

The catalogue (every task, its layout and its counterfactuals) is docs/tasks.md.
"""

from anchor_interp.tasks.base import (
    ALL_COUNTERFACTUAL_KINDS,
    COUNTERFACTUAL_KINDS,
    KIND_FACTORS,
    SINGLE_FACTOR_KINDS,
    SPLITS,
    CounterfactualPair,
    DataGroup,
    Task,
    TaskError,
)
from anchor_interp.tasks.batch import Batch
from anchor_interp.tasks.registry import list_tasks, make_task, task_param_names

__all__ = [
    "ALL_COUNTERFACTUAL_KINDS",
    "Batch",
    "COUNTERFACTUAL_KINDS",
    "CounterfactualPair",
    "DataGroup",
    "KIND_FACTORS",
    "SINGLE_FACTOR_KINDS",
    "SPLITS",
    "Task",
    "TaskError",
    "list_tasks",
    "make_task",
    "task_param_names",
]

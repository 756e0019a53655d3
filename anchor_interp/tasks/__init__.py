"""Anchor-function tasks (Zhang et al., arXiv 2401.08309): sampling, held-out splits, counterfactuals.

    from anchor_interp.tasks import make_task
    task = make_task("identity")
    batch = task.sample(1000, split="train", seed=0)
    corrupt = task.counterfactual(batch, "key_swap", seed=1)

The catalogue (every task, its layout and its counterfactuals) is docs/tasks.md.
"""

from anchor_interp.tasks.base import (
    COUNTERFACTUAL_KINDS,
    SPLITS,
    DataGroup,
    Task,
    TaskError,
)
from anchor_interp.tasks.batch import Batch
from anchor_interp.tasks.registry import list_tasks, make_task, task_param_names

__all__ = [
    "Batch",
    "COUNTERFACTUAL_KINDS",
    "DataGroup",
    "SPLITS",
    "Task",
    "TaskError",
    "list_tasks",
    "make_task",
    "task_param_names",
]

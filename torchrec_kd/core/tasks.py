"""A run's prediction tasks (``tasks``): names, types, spaces and the per-task hard loss.

One binary task (``tasks`` empty or of one entry) is the run as it always was: labels and
logits ``[B]``. Two or more tasks make a multi-task run: labels ``[B, T]`` float32 and model
outputs ``[B, T]`` in the order of ``tasks`` (a binary head's column is a logit, a regression
head's a value). A task with ``only_where: <task>`` is observed only on the rows where that
binary task's label is 1 (conversion on clicks): its loss, its metrics and, by default, its
distillation terms count those rows only — its label elsewhere is 0 and means nothing.

Example::

    tasks = run_tasks(cfg)                       # [Task("click", ...), Task("conversion", ...)]
    i = task_index(tasks, "conversion", "distill.losses[1].task")
    mask = task_space(labels, tasks, i)          # [B] bool: rows where click == 1
    loss = hard_task_loss(logits, labels, tasks)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from torchrec_kd.errors import ConfigError

BINARY, REGRESSION = "binary", "regression"
# The name of the single task of a run that lists none (what metrics.json has always meant).
DEFAULT_TASK = "label"


@dataclass(frozen=True)
class Task:
    """One resolved task.

    Attributes:
        name (str): its name (unique in the run).
        type (str): ``binary`` or ``regression``.
        weight (float): its weight in the training loss and in a mean selection metric.
        space (Optional[int]): index of the binary task whose label must be 1 for this task's
            label to count (``only_where``), or None (every row).
    """

    name: str
    type: str = BINARY
    weight: float = 1.0
    space: Optional[int] = None

    @property
    def binary(self) -> bool:
        """Whether the head is a logit with a 0/1 label."""
        return self.type == BINARY


def run_tasks(cfg: Any) -> List[Task]:
    """The run's tasks in order (one binary ``label`` task when ``cfg.tasks`` is empty).

    Args:
        cfg (RunConfig): the run config (only ``cfg.tasks`` is read).

    Returns:
        List[Task]: the tasks, ``only_where`` resolved to indices (the loader checked them).
    """
    specs = list(getattr(cfg, "tasks", None) or [])
    if not specs:
        return [Task(DEFAULT_TASK)]
    names = [t.name for t in specs]
    return [Task(t.name, t.type, float(t.weight), names.index(t.only_where) if t.only_where else None)
            for t in specs]


def is_multitask(cfg_or_tasks: Any) -> bool:
    """Whether labels and outputs are ``[B, T]`` (two or more tasks)."""
    tasks = cfg_or_tasks if isinstance(cfg_or_tasks, (list, tuple)) else run_tasks(cfg_or_tasks)
    return len(tasks) > 1


def task_names(tasks: Sequence[Task]) -> List[str]:
    """The tasks' names in order."""
    return [t.name for t in tasks]


def nearest(name: str, names: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``names``, or the list of them."""
    near = difflib.get_close_matches(str(name), list(names), n=1)
    return f"did you mean '{near[0]}'?" if near else f"the tasks are: {', '.join(names)}"


def task_index(tasks: Sequence[Task], name: str, where: str) -> int:
    """The position of task ``name``.

    Args:
        tasks (Sequence[Task]): the run's tasks.
        name (str): a task name from the config.
        where (str): the config key that named it (for the error).

    Returns:
        int: its column in labels and outputs.

    Raises:
        ConfigError: no task has that name (the message names the nearest one).
    """
    names = task_names(tasks)
    if name not in names:
        raise ConfigError(f"{where}: no task named '{name}'; {nearest(name, names)}")
    return names.index(name)


def column(values: Tensor, tasks: Sequence[Task], i: int) -> Tensor:
    """Task ``i``'s column of labels or outputs ``[B]`` (``values`` itself in a one-task run)."""
    return values.reshape(-1) if len(tasks) == 1 else values[:, i]


def task_space(labels: Tensor, tasks: Sequence[Task], i: int) -> Tensor:
    """``[B]`` bool: the rows where task ``i`` is observed (its ``only_where`` label is 1; all rows without one)."""
    space = tasks[i].space
    rows = labels.shape[0]
    if space is None:
        return torch.ones(rows, dtype=torch.bool, device=labels.device)
    return column(labels, tasks, space) > 0.5


def masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """``sum(values * weights) / max(sum(weights), 1)``: zero (with a gradient) when no row counts."""
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def hard_task_loss(outputs: Tensor, labels: Tensor, tasks: Sequence[Task]) -> Tensor:
    """The weighted sum over tasks of BCE (binary, on logits) or MSE (regression), each over its space.

    A one-task run gives exactly ``binary_cross_entropy_with_logits(outputs, labels)``.

    Args:
        outputs (Tensor): ``[B]`` or ``[B, T]`` logits / values.
        labels (Tensor): the same shape.
        tasks (Sequence[Task]): the run's tasks.

    Returns:
        Tensor: the scalar loss.
    """
    if len(tasks) == 1 and tasks[0].binary and tasks[0].space is None:
        return F.binary_cross_entropy_with_logits(outputs.reshape(labels.shape), labels.float())
    total = outputs.new_zeros(())
    for i, task in enumerate(tasks):
        out, lab = column(outputs, tasks, i), column(labels, tasks, i).float()
        per_row = (F.binary_cross_entropy_with_logits(out, lab, reduction="none") if task.binary
                   else (out - lab) ** 2)
        total = total + task.weight * masked_mean(per_row, task_space(labels, tasks, i))
    return total

"""Which task columns a loss term reads in a multi-task run, and how its rows are weighted.

A logit term (``hard_bce``, ``soft_bce``, ``kl``, ``logit_mse``, ``hard_mse``, a plugin's) is
given per task: ``distill.losses[i].task`` names the one column it reads; without a task it
reads every task's column separately, each in that task's own space, and the per-task values
are summed with the tasks' weights. Inside a column, a row in the task's space (its
``only_where`` label holds; every row when it has none) counts ``in_space_weight``, a row
outside ``out_space_weight`` (default 0: ignored), through a masked mean. Terms reading
intermediate outputs (hint, embedding) are not per task (``KDLoss.per_task = False``).

A one-binary-task run never comes here: its terms see ``[B]`` logits exactly as always.

Example::

    targets = term_targets(cfg.distill.losses, terms, run_tasks(cfg))
    value = task_value(term, targets[1], x, tasks)     # soft_bce on conversion, clicked rows only
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from torch import Tensor

from torchrec_kd.config import LossTermConfig
from torchrec_kd.core.tasks import Task, masked_mean, task_index, task_space
from torchrec_kd.errors import ConfigError

# The terms and inputs are registry.KDLoss / KDInputs; typed Any here: the registry imports this module
KDLoss = KDInputs = Any


@dataclass(frozen=True)
class TermTarget:
    """The task columns one term reads and its row weights.

    Attributes:
        tasks (Tuple[int, ...]): the columns (task indices) it reads, in order.
        in_space_weight (float): weight of a row inside the task's space.
        out_space_weight (float): weight of a row outside it.
        task_weighted (bool): multiply each task's value by the task's weight (a term without
            ``task``, applied to every task, as the hard loss weights them).
    """

    tasks: Tuple[int, ...]
    in_space_weight: float = 1.0
    out_space_weight: float = 0.0
    task_weighted: bool = False


def single_binary(tasks: Optional[Sequence[Task]]) -> bool:
    """Whether the run is one binary task (labels and logits ``[B]``: every term as it always was)."""
    return tasks is None or (len(tasks) == 1 and tasks[0].binary and tasks[0].space is None)


def term_targets(configs: Sequence[LossTermConfig], terms: Sequence[KDLoss],
                 tasks: Sequence[Task]) -> List[Optional[TermTarget]]:
    """Each term's :class:`TermTarget` (None for a term that is not per task), checked against the tasks.

    Args:
        configs (Sequence[LossTermConfig]): ``distill.losses``.
        terms (Sequence[KDLoss]): the built terms, in the same order.
        tasks (Sequence[Task]): the run's tasks.

    Returns:
        List[Optional[TermTarget]]: one per term.

    Raises:
        ConfigError: an unknown task name; a binary-only term on a regression task; a term that
            computes only a batch value asked to weight rows by a task's space.
    """
    out: List[Optional[TermTarget]] = []
    for i, (cfg, term) in enumerate(zip(configs, terms)):
        where = f"distill.losses[{i}]"
        if not term.per_task:
            if cfg.task is not None or (cfg.in_space_weight, cfg.out_space_weight) != (1.0, 0.0):
                raise ConfigError(f"{where} ({cfg.name}): the term reads features, not a task's outputs; task, "
                                  "in_space_weight and out_space_weight do not apply to it: leave them out")
            out.append(None)
            continue
        cols = (task_index(tasks, cfg.task, f"{where}.task"),) if cfg.task is not None else tuple(range(len(tasks)))
        for j in cols:
            task = tasks[j]
            if term.binary_only and not task.binary:
                every = "" if cfg.task is not None else " (a term without task applies to every task)"
                raise ConfigError(f"{where} ({cfg.name}): task '{task.name}' is a regression task{every}; {cfg.name} "
                                  f"needs a 0/1 label: give it task: <a binary task> and distil '{task.name}' with "
                                  "hard_mse / logit_mse")
            if (task.space is not None and cfg.in_space_weight != cfg.out_space_weight
                    and not term.has_rows):
                raise ConfigError(f"{where} ({cfg.name}): the term gives one batch value, not one per row, so it "
                                  f"cannot be restricted to task '{task.name}''s space; set in_space_weight equal to "
                                  "out_space_weight, or give the term a rows() method")
        out.append(TermTarget(cols, float(cfg.in_space_weight), float(cfg.out_space_weight), cfg.task is None))
    return out


def task_value(term: KDLoss, target: TermTarget, x: KDInputs, tasks: Sequence[Task]) -> Tensor:
    """The term's value on its task columns: per task a masked mean over its rows, summed.

    Args:
        term (KDLoss): the term.
        target (TermTarget): its columns and row weights.
        x (KDInputs): the batch, logits and labels ``[B, T]``.
        tasks (Sequence[Task]): the run's tasks.

    Returns:
        Tensor: a scalar.
    """
    total: Optional[Tensor] = None
    for j in target.tasks:
        xj = x.task_column(tasks, j)
        space = tasks[j].space
        if space is None or target.in_space_weight == target.out_space_weight:
            # every row counts the same: the term's own batch mean (0 when no row counts)
            value = term.compute(xj) if target.in_space_weight > 0 else xj.student.sum() * 0.0
        else:
            inside = task_space(x.labels, tasks, j)
            weights = inside.to(xj.student.dtype) * (target.in_space_weight - target.out_space_weight) \
                + target.out_space_weight
            value = masked_mean(term.rows(xj), weights)
        if target.task_weighted and tasks[j].weight != 1.0:
            value = tasks[j].weight * value
        total = value if total is None else total + value
    assert total is not None  # a target names at least one task
    return total


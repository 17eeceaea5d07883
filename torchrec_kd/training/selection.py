"""Model selection on the validation split: the best step so far and when to stop.

Each validation is offered to :class:`ModelSelector`; it says whether the model is the
best so far (the recipe then keeps a copy of it) and, after ``patience`` validations in a
row without an improvement of more than ``min_delta``, that training should stop. Its
state is plain data, saved with the training state, so a resumed run keeps its
best-so-far and its patience count.

Example::

    sel = ModelSelector(EarlyStoppingConfig(metric="auc", patience=3))
    if sel.observe(step, {"auc": 0.81, "ne": 0.8}):
        keep_copy_of_model(step)
    if sel.should_stop:
        break

A multi-task run selects on the same top-level metric: :func:`~torchrec_kd.training.evaluate.evaluate`
puts there the metrics of the task :func:`selection_task` names (``train.early_stopping.task``:
a binary task, the first task when null, or ``"mean"``, the task-weighted mean over the binary
tasks), so the selector itself does not change.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Sequence

from torchrec_kd.config import EarlyStoppingConfig
from torchrec_kd.core.tasks import Task, task_names
from torchrec_kd.errors import ConfigError

HIGHER_IS_BETTER = {"auc": True, "ne": False, "logloss": False}
# retrieval metrics (recall@K, ndcg@K, hr@K, mrr, gauc) select too, higher being better
RANKING_PREFIXES = ("recall@", "ndcg@", "hr@")


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better (auc, retrieval metrics) or worse (ne, logloss)."""
    if metric in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[metric]
    return metric.startswith(RANKING_PREFIXES) or metric in ("mrr", "gauc")
# ``train.early_stopping.task``: select on the task-weighted mean over the binary tasks
MEAN = "mean"


def selection_task(tasks: Sequence[Task], choice: Optional[str]) -> str:
    """The task whose validation metrics select the model (``train.early_stopping.task`` resolved).

    Args:
        tasks (Sequence[Task]): the run's tasks.
        choice (Optional[str]): ``train.early_stopping.task``: None (the first task), a task name or ``"mean"``.

    Returns:
        str: a binary task's name, or ``"mean"``.

    Raises:
        ConfigError: the choice is a regression task, names no task, or is "mean" without a binary task.
    """
    names = task_names(tasks)
    if choice == MEAN:
        if not any(t.binary for t in tasks):
            raise ConfigError("train.early_stopping.task: 'mean' averages the binary tasks' metrics, "
                              "but this run has none; name a task or add a binary one")
        return MEAN
    name = names[0] if choice is None else choice
    if name not in names:
        raise ConfigError(f"train.early_stopping.task: no task named '{name}'; the tasks are: {', '.join(names)}")
    if not tasks[names.index(name)].binary:
        hint = "" if choice is not None else " (null means the first task)"
        raise ConfigError(f"train.early_stopping.task: '{name}' is a regression task{hint}; the selection metric "
                          "(auc, ne or logloss) needs a binary task: name one, or 'mean'")
    return name


@dataclass
class SelectionState:
    """What model selection knows so far (JSON-serialisable).

    Attributes:
        best_step (Optional[int]): step of the best validation (None: none yet).
        best (Dict[str, float]): the validation metrics at ``best_step``.
        evals_since_best (int): validations since the best one.
        stopped_early (bool): training stopped before its budget.
    """

    best_step: Optional[int] = None
    best: Dict[str, float] = field(default_factory=dict)
    evals_since_best: int = 0
    stopped_early: bool = False


class ModelSelector:
    """Track the best validation step and decide early stopping.

    Args:
        cfg (EarlyStoppingConfig): metric, patience (0: never stop early), min delta.
        state (Optional[SelectionState | dict]): the state of a resumed run.
    """

    def __init__(self, cfg: EarlyStoppingConfig, state: Optional[Any] = None) -> None:
        self.cfg = cfg
        self._metric = cfg.metric
        if isinstance(state, dict):
            state = SelectionState(**state)
        self.state = state or SelectionState()

    @property
    def metric(self) -> str:
        """The validation metric that selects."""
        return self._metric

    def select_on(self, metric: str) -> None:
        """Select on ``metric`` instead of ``early_stopping.metric`` (a retrieval model: ``recall@20``)."""
        self._metric = metric

    def improves(self, value: float) -> bool:
        """True when ``value`` beats the best so far by more than ``min_delta`` (a NaN/Inf value never does)."""
        if not math.isfinite(value):
            return False  # a model with NaN/Inf validation metrics is never the one kept
        best = self.state.best.get(self.metric)
        if best is None or not math.isfinite(best):  # a non-finite best: from a state saved before this rule
            return True
        gain = value - best if higher_is_better(self.metric) else best - value
        return gain > self.cfg.min_delta

    def observe(self, step: int, metrics: Dict[str, float]) -> bool:
        """Record the validation at ``step``.

        Args:
            step (int): the training step validated.
            metrics (Dict[str, float]): its validation metrics (must hold ``metric``).

        Returns:
            bool: True when this step is the new best (keep a copy of the model); never when
            any of its metrics (auc, ne, logloss) is NaN/Inf: such a model is broken.
        """
        kept = [k for k in metrics if k in HIGHER_IS_BETTER or k == self.metric]
        finite = all(math.isfinite(float(metrics[k])) for k in kept)
        if finite and self.improves(float(metrics[self.metric])):
            self.state.best_step = step
            self.state.best = {k: float(metrics[k]) for k in kept}
            self.state.evals_since_best = 0
            return True
        self.state.evals_since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        """``patience`` validations in a row brought no improvement."""
        return bool(self.cfg.patience) and self.state.evals_since_best >= self.cfg.patience

    def to_dict(self) -> Dict[str, Any]:
        """The state as plain data (for the training state and ``metrics.json``)."""
        return asdict(self.state)

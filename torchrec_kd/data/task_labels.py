"""How a reader turns a run's tasks (``tasks``) into label columns: one column per task.

No ``tasks``, or one task that asks for nothing else, is the reader's usual label, ``[n]``,
read exactly as before (:func:`read_tasks`); one task naming its own column or threshold is
read by the rules below, still ``[n]``; two or more give ``[n, T]`` float32 in the order of
``tasks``. Each reader resolves
a task's source column with its own default (:func:`label_specs`):

* table: the task's ``column``, else its name; the first task with no ``column`` is
  ``data.table.label`` with its ``positive`` / ``negative`` / ``label_threshold``;
* MovieLens: ``rating`` (the only label column); a binary task is ``rating >= at_least``
  (default ``data.movielens.positive_threshold``), a regression task the rating;
* synthetic: one of the world's tasks (:data:`SYNTHETIC_TASKS`).

A binary task is 1 where the value is in ``positive`` (text) or ``>= at_least`` (numbers),
else the column must hold 0/1; a regression task is the number. A task with ``only_where``
is 0 outside its space (:func:`zero_outside_spaces`), whatever the file says there.

Example::

    specs = label_specs(cfg.tasks, default_column=None)
    labels = zero_outside_spaces(np.stack(columns, axis=1), specs)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from torchrec_kd.errors import ConfigError

# The synthetic multi-task world's tasks and their types (data/synthetic.py).
SYNTHETIC_TASKS = {"click": "binary", "conversion": "binary", "like": "binary", "dwell": "regression"}


@dataclass(frozen=True)
class LabelSpec:
    """One task's label column as a reader reads it.

    Attributes:
        name (str): the task's name.
        type (str): ``binary`` or ``regression``.
        column (Optional[str]): the source column (None: the source's usual label).
        at_least (Optional[float]): binary from numbers: ``value >= at_least``.
        positive (Tuple[str, ...]): binary from text: the values that are 1.
        space (Optional[int]): index of the task whose label must be 1 (``only_where``).
    """

    name: str
    type: str = "binary"
    column: Optional[str] = None
    at_least: Optional[float] = None
    positive: Tuple[str, ...] = ()
    space: Optional[int] = None

    @property
    def binary(self) -> bool:
        """Whether the label is 0/1."""
        return self.type == "binary"


def multitask(tasks: Optional[Sequence[Any]]) -> bool:
    """Whether ``tasks`` (``cfg.tasks``) asks for ``[n, T]`` labels (two or more tasks)."""
    return tasks is not None and len(tasks) > 1


def read_tasks(tasks: Optional[Sequence[Any]], source: str) -> Optional[List[Any]]:
    """The tasks a reader reads itself, or None: no task, or one that is the source's usual label.

    Args:
        tasks (Optional[Sequence[TaskConfig]]): ``cfg.tasks``.
        source (str): ``data.source`` (a synthetic task named after a world task other than
            click is not the usual label).

    Returns:
        Optional[List[TaskConfig]]: None keeps the reader's one-label code path, byte for byte.
    """
    tasks = list(tasks or [])
    if len(tasks) == 1:
        t = tasks[0]
        plain = t.column is None and t.at_least is None and not t.positive and t.type == "binary" and not t.only_where
        if plain and (source != "synthetic" or t.name not in SYNTHETIC_TASKS or t.name == "click"):
            return None
    return tasks or None


def one_column(labels: np.ndarray) -> np.ndarray:
    """``[n, 1]`` labels as ``[n]`` (a run of one task); ``[n, T]`` with T >= 2 as they are."""
    return labels[:, 0] if labels.ndim == 2 and labels.shape[1] == 1 else labels


def label_specs(tasks: Sequence[Any], first_default: Optional[str] = None,
                default: Optional[str] = None) -> List[LabelSpec]:
    """The tasks' label columns with a source's defaults.

    Args:
        tasks (Sequence[TaskConfig]): ``cfg.tasks`` (as :func:`read_tasks` keeps them).
        first_default (Optional[str]): the column of the first task that names none (None: the
            source's usual label, e.g. ``data.table.label`` with its values).
        default (Optional[str]): the column of the other tasks that name none (None: their name).

    Returns:
        List[LabelSpec]: one per task, in order.
    """
    names = [t.name for t in tasks]
    out = []
    for i, t in enumerate(tasks):
        col = t.column if t.column is not None else (first_default if i == 0 else (default or t.name))
        out.append(LabelSpec(t.name, t.type, col, t.at_least, tuple(str(v) for v in t.positive or ()),
                             names.index(t.only_where) if t.only_where else None))
    return out


def zero_outside_spaces(labels: np.ndarray, specs: Sequence[LabelSpec]) -> np.ndarray:
    """``labels`` [n, T] with each ``only_where`` task's label set to 0 where its space's label is 0.

    Args:
        labels (np.ndarray): [n, T] float32 labels.
        specs (Sequence[LabelSpec]): the tasks.

    Returns:
        np.ndarray: the same array, changed in place.
    """
    for i, s in enumerate(specs):
        if s.space is not None:
            labels[labels[:, s.space] <= 0.5, i] = 0.0
    return labels


def rating_labels(rating: np.ndarray, specs: Sequence[LabelSpec], threshold: float) -> np.ndarray:
    """MovieLens: ``[n, T]`` labels from the ratings (binary: ``rating >= at_least``, regression: the rating).

    Args:
        rating (np.ndarray): [n] ratings.
        specs (Sequence[LabelSpec]): the tasks (column ``rating``).
        threshold (float): ``data.movielens.positive_threshold``, the ``at_least`` of a binary task naming none.

    Returns:
        np.ndarray: [n, T] float32.
    """
    cols = [(rating >= (s.at_least if s.at_least is not None else threshold)) if s.binary else rating
            for s in specs]
    return zero_outside_spaces(np.stack(cols, axis=1).astype(np.float32), specs)


def check_rating_specs(specs: Sequence[LabelSpec]) -> None:
    """MovieLens has one label column, ``rating``: a task naming another, or a text ``positive``, is a ConfigError."""
    for i, s in enumerate(specs):
        if s.column not in (None, "rating"):
            raise ConfigError(f"tasks[{i}] ({s.name}): column '{s.column}' is not a MovieLens label column; MovieLens "
                              "tasks read 'rating' (binary: at_least, e.g. like = 4, love = 5; regression: the rating)")
        if s.positive:
            raise ConfigError(f"tasks[{i}] ({s.name}): MovieLens ratings are numbers; use at_least instead of positive")


def check_synthetic_specs(specs: Sequence[LabelSpec]) -> None:
    """The synthetic world knows :data:`SYNTHETIC_TASKS`: a task's column (default its name) must be one, of its type."""
    known = ", ".join(f"{k} ({v})" for k, v in SYNTHETIC_TASKS.items())
    for i, s in enumerate(specs):
        col = s.column or s.name
        if col not in SYNTHETIC_TASKS:
            raise ConfigError(f"tasks[{i}] ({s.name}): the synthetic world has no task '{col}'; set tasks[{i}].column "
                              f"to one of: {known}")
        if SYNTHETIC_TASKS[col] != s.type:
            raise ConfigError(f"tasks[{i}] ({s.name}): the synthetic world's '{col}' is {SYNTHETIC_TASKS[col]}, "
                              f"not {s.type}; set tasks[{i}].type: {SYNTHETIC_TASKS[col]}")
        if s.at_least is not None or s.positive:
            raise ConfigError(f"tasks[{i}] ({s.name}): the synthetic world draws its own labels; remove at_least / "
                              "positive")


__all__ = ["LabelSpec", "SYNTHETIC_TASKS", "check_rating_specs", "check_synthetic_specs", "label_specs",
           "multitask", "one_column", "rating_labels", "read_tasks", "zero_outside_spaces"]

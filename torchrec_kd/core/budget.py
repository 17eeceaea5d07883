"""How many steps a model may train: its maximum budget in steps, or in epochs of finite data.

Early stopping ends most runs before this; the budget is what the student alone and the
distilled student share, so neither gets more data than the other.
"""

from __future__ import annotations

from typing import Any, Dict

from torchrec_kd.config import TrainConfig
from torchrec_kd.config.schema import AUTO_EVAL_EVERY_STREAM
from torchrec_kd.errors import ConfigError


def budget_spec(train: TrainConfig, role: str = "student") -> Dict[str, int]:
    """The role's maximum budget as configured: ``{"epochs": n}`` or ``{"steps": n}``.

    The teacher's own ``teacher_epochs`` or ``teacher_steps`` (in that order) win over the
    student's ``epochs`` / ``steps``; an epochs budget wins over a steps budget.
    """
    if role == "teacher" and train.teacher_epochs is not None:
        return {"epochs": train.teacher_epochs}
    if role == "teacher" and train.teacher_steps is not None:
        return {"steps": train.teacher_steps}
    return {"epochs": train.epochs} if train.epochs is not None else {"steps": train.steps}


def max_steps(train: TrainConfig, data: Any, batch_size: int, role: str = "student") -> int:
    """The ``role`` model's maximum training steps.

    An epochs budget is epochs times the full global batches of one pass over the train
    split, and wins over a steps budget. The teacher's own ``train.teacher_epochs`` or
    ``train.teacher_steps`` (in that order) win over the student's ``train.epochs`` /
    ``train.steps``, which it takes when it has neither.

    Args:
        train (TrainConfig): the ``train`` section.
        data: the role's data source (``num_batches("train", batch_size)``).
        batch_size (int): the global batch size.
        role (str): "teacher" or "student" (alone and distilled share the student's budget).

    Returns:
        int: the maximum number of optimizer steps.

    Raises:
        ConfigError: an epochs budget on an endless train stream.
    """
    spec = budget_spec(train, role)
    if "steps" in spec:
        return spec["steps"]
    epochs = spec["epochs"]
    per_epoch = data.num_batches("train", batch_size)
    if per_epoch is None:
        raise ConfigError("train.epochs / train.teacher_epochs need a finite train split, but the synthetic stream "
                          "is endless: set data.synthetic.train_rows, or give the budget in train.steps")
    return epochs * per_epoch


def eval_interval(train: TrainConfig, data: Any, batch_size: int) -> int:
    """Steps between validations: ``train.eval_every``, or for null its automatic value.

    Null (the default) validates every half epoch of finite train data, so no model is
    trained on finite data without model selection unless a config says ``eval_every: 0``;
    an endless stream has no epoch, and validates every ``AUTO_EVAL_EVERY_STREAM`` steps.

    Args:
        train (TrainConfig): the ``train`` section.
        data: the role's data source (``num_batches("train", batch_size)``; None: endless).
        batch_size (int): the global batch size.

    Returns:
        int: validate every this many steps (and at the last one); 0: never.
    """
    if train.eval_every is not None:
        return train.eval_every
    per_epoch = data.num_batches("train", batch_size)
    if per_epoch is None:
        return AUTO_EVAL_EVERY_STREAM
    return max(1, per_epoch // 2)

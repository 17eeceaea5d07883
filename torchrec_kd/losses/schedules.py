"""Schedules of a loss term's weight and temperature over training steps.

With ``t = clamp((step - delay) / steps, 0, 1)`` and ``end`` the term's configured value:

=========  ===========================================
kind       value at ``step``
=========  ===========================================
constant   ``end``
linear     ``start + (end - start) * t``
cosine     ``end + (start - end) * (1 + cos(pi * t)) / 2``
warmup     ``end * t`` (a ramp from 0; ``start`` ignored)
=========  ===========================================

Example::

    cfg = ScheduleConfig(kind="warmup", steps=100)
    schedule_value(cfg, end=0.8, step=50)   # 0.4
"""

from __future__ import annotations

import math

from torchrec_kd.config import ScheduleConfig

__all__ = ["ScheduleClock", "ScheduleConfig", "check_schedule", "schedule_value"]


class ScheduleClock:
    """The optimizer step a loss's schedules are at, shared by the weighted sum and its terms.

    The training loop sets it before each step (``driven``); a caller that never does
    (an own loop) has it advanced by one per training-mode forward of the sum.
    """

    def __init__(self) -> None:
        self.step = 0
        self.driven = False

    def set(self, step: int) -> None:
        """Put the schedules at ``step`` (0-based optimizer step) and stop advancing on forwards."""
        if step < 0:
            raise ValueError(f"schedule step must be >= 0, got {step}")
        self.step = int(step)
        self.driven = True


def check_schedule(cfg: ScheduleConfig, where: str) -> None:
    """Refuse a schedule that cannot be evaluated.

    Args:
        cfg (ScheduleConfig): the schedule.
        where (str): its config key, e.g. ``distill.losses[1].weight_schedule``.

    Raises:
        ValueError: naming ``where`` and the field.
    """
    if cfg.kind not in ("constant", "linear", "cosine", "warmup"):
        raise ValueError(f"{where}.kind: {cfg.kind!r} is not a schedule; use constant, linear, cosine or warmup")
    if cfg.kind != "constant" and cfg.steps < 1:
        raise ValueError(f"{where}.steps must be >= 1 for a {cfg.kind} schedule, got {cfg.steps}")
    if cfg.delay < 0:
        raise ValueError(f"{where}.delay must be >= 0, got {cfg.delay}")
    if not math.isfinite(cfg.start):
        raise ValueError(f"{where}.start must be finite, got {cfg.start}")


def schedule_value(cfg: ScheduleConfig, end: float, step: int) -> float:
    """The scheduled value at ``step`` (0-based optimizer step).

    Args:
        cfg (ScheduleConfig): the schedule.
        end (float): the value reached at the end (the term's configured weight or temperature).
        step (int): the optimizer step.

    Returns:
        float: the value (see the module table).
    """
    if step < 0:
        raise ValueError(f"schedule step must be >= 0, got {step}")
    if cfg.kind == "constant":
        return end
    check_schedule(cfg, "schedule")
    t = min(max((step - cfg.delay) / cfg.steps, 0.0), 1.0)
    if cfg.kind == "linear":
        return cfg.start + (end - cfg.start) * t
    if cfg.kind == "cosine":
        return end + (cfg.start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    return end * t  # warmup

"""Catch non-finite losses inside the pipeline without a host sync per step.

``NonFiniteGuard`` is passed to ``TrainPipelineSparseDist`` as ``custom_model_fwd``:
it runs the model, counts non-finite losses in a tensor (no ``.item()``), and with
policy ``skip`` replaces such a loss by zero before backward, so the step changes
nothing (fused and dense Adagrad both leave weights alone under a zero gradient).
The loop calls :meth:`check` at its logging and checkpoint steps, where a host sync
happens anyway: with policy ``stop`` the run ends there with a clear error, before any
checkpoint of the affected weights is written.
"""

from __future__ import annotations

import logging
from typing import Any, Tuple

import torch
from torch import nn

from torchrec_kd.errors import ConfigError, UserError

logger = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN/Inf loss and the policy is ``stop`` (the message says which settings to change)."""


class NonFiniteGuard:
    """Wrap a model's forward to detect (and optionally neutralise) non-finite losses.

    Args:
        model (nn.Module): the (sharded) training model, ``forward(batch) -> (loss, out)``.
        policy (str): "stop" or "skip".
    """

    def __init__(self, model: nn.Module, policy: str = "stop") -> None:
        if policy not in ("stop", "skip"):
            raise ConfigError(f"train.on_nonfinite: {policy!r} is not accepted; use 'stop' or 'skip'")
        self.model = model
        self.policy = policy
        self.count = torch.zeros((), dtype=torch.long)
        self.reported = 0

    def __call__(self, batch: Any) -> Tuple[torch.Tensor, Any]:
        loss, out = self.model(batch)
        finite = torch.isfinite(loss)
        self.count = self.count.to(loss.device) + (~finite).long()
        if self.policy == "skip":
            loss = torch.where(finite, loss, torch.zeros_like(loss))
        return loss, out

    def check(self, step: int) -> None:
        """Act on non-finite losses seen so far (call where a host sync is acceptable).

        Args:
            step (int): the current step, for the message.

        Raises:
            NonFiniteLossError: with policy ``stop`` when any loss was NaN/Inf.
        """
        seen = int(self.count)
        if seen == self.reported:
            return
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"non-finite loss at or before step {step} ({seen} step(s)); stopping without checkpointing these "
                "weights. Lower train.embedding_lr / train.dense_lr, check the input data, or set "
                "train.on_nonfinite=skip to skip such steps")
        logger.warning("skipped %d step(s) with a non-finite loss up to step %d", seen - self.reported, step)
        self.reported = seen

"""Catch non-finite losses inside the pipeline; with ``skip``, make such a step change nothing.

``NonFiniteGuard`` is passed to ``TrainPipelineSparseDist`` as ``custom_model_fwd``: it
runs the model and looks at the loss before the pipeline calls ``backward`` and
``optimizer.step()`` on it.

- ``stop`` (the default) counts non-finite losses in a tensor, without a host sync per
  step. The loop calls :meth:`check` at its logging and checkpoint steps, where a host
  sync happens anyway, and the run ends there with a clear error, before any checkpoint
  of the affected weights is written.
- ``skip`` decides on the host at every step (``bool(isfinite(loss))``, all-reduced so
  every rank skips the same steps): one host sync (and, on several ranks, one tiny
  all-reduce) per step is skip's cost. For a non-finite loss the pipeline gets a zero
  leaf tensor that depends on no parameter, so ``backward`` never reaches the model:
  no table backward (the fused row-wise Adagrad update runs inside it), no dense
  gradient (``zero_grad`` left them None and Adagrad steps only parameters with one).
  Every weight and all optimizer state stay bit-identical. Replacing the loss by
  ``where(finite, loss, 0)`` would not do: backward multiplies that 0 by the NaN/Inf
  intermediate gradients and NaN still reaches the weights.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from torchrec_kd.errors import ConfigError, UserError

logger = logging.getLogger(__name__)

# the evaluation metrics a model is selected and reported by
CHECKED_METRICS = ("auc", "ne", "logloss")


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN/Inf loss and the policy is ``stop`` (the message says which settings to change)."""


class NonFiniteGuard:
    """Wrap a model's forward to detect non-finite losses (and, with ``skip``, skip their steps).

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
        """Run the model on ``batch``.

        Args:
            batch (Any): what the pipeline feeds the model.

        Returns:
            Tuple[Tensor, Any]: the loss to back-propagate (with ``skip`` and a non-finite
            loss: a zero leaf on no parameter) and the model's output, untouched.
        """
        loss, out = self.model(batch)
        bad = (~torch.isfinite(loss)).any().long()
        if self.policy == "stop":
            self.count = self.count.to(loss.device) + bad  # no host sync: check() reads it
            return loss, out
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every rank must skip the same steps: a backward on some ranks only would wait
            # forever for the others in the gradient all-reduce and the tables' all-to-all
            bad = bad.reshape(1)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bool(bad):  # the host sync skip costs
            return loss, out
        self.count = self.count + 1
        # the forward's graph (and its NaN) is dropped with ``loss``; backward ends at this leaf
        return torch.zeros(loss.shape, dtype=loss.dtype, device=loss.device, requires_grad=True), out

    @property
    def nonfinite_steps(self) -> int:
        """Steps whose loss was NaN/Inf so far (skipped ones with ``skip``; a host sync)."""
        return int(self.count)

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
        logger.warning("skipped %d step(s) with a non-finite loss up to step %d (weights and optimizer state "
                       "unchanged by them)", seen - self.reported, step)
        self.reported = seen


def nonfinite_metrics(metrics: Dict[str, Any]) -> List[str]:
    """Names of the evaluation metrics (auc, ne, logloss) that are NaN/Inf.

    Args:
        metrics (Dict[str, Any]): evaluation metrics.

    Returns:
        List[str]: the non-finite ones, in ``CHECKED_METRICS`` order (empty: all finite or absent).
    """
    out = []
    for key in CHECKED_METRICS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            out.append(key)
    return out


def nonfinite_entry(name: str, metrics: Dict[str, Any], guard: Optional[NonFiniteGuard]) -> Dict[str, Any]:
    """What a model's ``metrics.json`` entry says about non-finite numbers, with a warning for NaN/Inf metrics.

    A run whose evaluation metrics are NaN/Inf still writes its entry (so it can be inspected),
    but it says so: a loud warning on the console (rank 0) and ``nonfinite_metrics`` in the entry.

    Args:
        name (str): the model, for the warning.
        metrics (Dict[str, Any]): its evaluation (test) metrics.
        guard (Optional[NonFiniteGuard]): the run's guard (its count of non-finite-loss steps).

    Returns:
        Dict[str, Any]: ``nonfinite_metrics`` (names) when any metric is NaN/Inf, and
        ``nonfinite_steps`` when any training loss was; empty when everything was finite.
    """
    out: Dict[str, Any] = {}
    steps = guard.nonfinite_steps if guard is not None else 0
    if steps:
        out["nonfinite_steps"] = steps
    bad = nonfinite_metrics(metrics)
    if bad:
        out["nonfinite_metrics"] = bad
        if not dist.is_initialized() or dist.get_rank() == 0:
            logger.warning("%s: %s %s NaN/Inf: this model is not usable (%d training step(s) had a non-finite loss); "
                           "lower train.embedding_lr / train.dense_lr or check the input data (metrics.json marks it "
                           "in nonfinite_metrics)", name, ", ".join(bad), "is" if len(bad) == 1 else "are", steps)
    return out

"""How a ranking model is called and what it returns: its own forward, logits out.

Every model of a run (teacher, student, a user's own) is called through its own
``forward``: by default ``model(batch.dense_features, batch.sparse_features)`` like
TorchRec's DLRM and DeepFM, or through a ``call`` adapter for other signatures. A model
declares whether that output is a logit or a probability (TorchRec's ``SimpleDeepFMNN``
ends in a sigmoid); :meth:`ModelIO.logits` always returns logits, so soft-label and KL
targets are never probabilities taken for logits.

Example::

    io = ModelIO(output="probability")
    logits = io.logits(deepfm, batch)                      # [B] logit(p)
    io = ModelIO(call=lambda m, b: m(b.sparse_features))   # a model that reads only the KJT
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import torch
from torch import Tensor, nn

OutputKind = Literal["logit", "probability"]
OUTPUT_KINDS = ("logit", "probability")

# Probabilities are clamped to [EPS, 1 - EPS] before the logit: a saturated sigmoid (0 or 1
# in float32) would otherwise give an infinite target.
PROBABILITY_EPS = 1e-7


def probability_to_logit(p: Tensor) -> Tensor:
    """``log(p / (1 - p))`` of ``p`` clamped to ``[1e-7, 1 - 1e-7]``.

    Args:
        p (Tensor): probabilities.

    Returns:
        Tensor: logits (finite).
    """
    return torch.logit(p.float(), eps=PROBABILITY_EPS)


@dataclass(frozen=True)
class ModelIO:
    """A model's calling convention and output kind.

    Args:
        output (str): ``logit`` or ``probability``: what the model's forward returns.
        call (Optional[Callable[[nn.Module, Any], Tensor]]): ``call(model, batch) -> [B] or
            [B, 1]``; None: ``model(batch.dense_features, batch.sparse_features)``.
    """

    output: OutputKind = "logit"
    call: Optional[Callable[[nn.Module, Any], Tensor]] = None

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"ModelIO output must be one of {OUTPUT_KINDS}, got {self.output!r}")

    def forward(self, model: nn.Module, batch: Any) -> Tensor:
        """The model's own output on ``batch`` (whatever kind it is)."""
        if self.call is not None:
            return self.call(model, batch)
        return model(batch.dense_features, batch.sparse_features)

    def logits(self, model: nn.Module, batch: Any) -> Tensor:
        """The model's logits [B] on ``batch`` (a probability head's output converted).

        Args:
            model (nn.Module): the model (sharded or not).
            batch (Batch): dense_features, sparse_features (and whatever ``call`` reads).

        Returns:
            Tensor: [B] logits.
        """
        out = self.forward(model, batch)
        # [B, 1] or [B] -> [B] without branching on shapes (TorchRec's pipeline fx-traces this)
        out = out.reshape(out.size(0), -1).squeeze(1)
        return probability_to_logit(out) if self.output == "probability" else out


LOGIT = ModelIO()

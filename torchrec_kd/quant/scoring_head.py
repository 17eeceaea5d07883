"""The served form of a model: ``(dense, kjt) -> {"logit": [B], "probability": [B]}``, no autograd.

A ranking model returns a logit or a probability, as ``[B]`` or ``[B, 1]``; a server wants
both, flat, and never a ``grad_fn``. :class:`ScoringHead` wraps the (quantized) model once,
so the TorchScript program, :func:`torchrec_kd.load_model` and ``predict`` all score with the
same arithmetic. Its parameters are frozen (``requires_grad=False``), so even a program
called outside ``torch.inference_mode`` builds no graph.

Example::

    head = ScoringHead(qmodel, output="logit")
    out = head(dense, kjt)            # {"logit": [B], "probability": [B]}
"""

from typing import Dict

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.models.io import PROBABILITY_EPS

# (no ``from __future__ import annotations``: TorchScript reads these annotations)


class ScoringHead(nn.Module):
    """A model called as ``model(dense, kjt)``, returning logits and probabilities.

    Args:
        model (nn.Module): the (quantized) ranking model.
        output (str): ``logit`` or ``probability``: what ``model`` returns.
    """

    def __init__(self, model: nn.Module, output: str = "logit") -> None:
        super().__init__()
        self.model = model
        self.is_probability = output == "probability"
        self.model.requires_grad_(False)

    def forward(self, dense: Tensor, kjt: KeyedJaggedTensor) -> Dict[str, Tensor]:
        """Score one batch.

        Args:
            dense (Tensor): [B, D] float32 dense features.
            kjt (KeyedJaggedTensor): sparse features, keys in the contract's order.

        Returns:
            Dict[str, Tensor]: ``logit`` [B] and ``probability`` [B], float32.
        """
        out = self.model(dense, kjt)
        out = out.reshape(out.size(0), -1).squeeze(1).float()
        if self.is_probability:
            return {"logit": torch.logit(out, eps=PROBABILITY_EPS), "probability": out}
        return {"logit": out, "probability": torch.sigmoid(out)}

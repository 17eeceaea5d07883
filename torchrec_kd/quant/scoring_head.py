"""The served form of a model: ``(dense, kjt) -> {"logit": [B], "probability": [B]}``, no autograd.

A ranking model returns a logit or a probability, as ``[B]`` or ``[B, 1]``; a server wants
both, flat, and never a ``grad_fn``. :class:`ScoringHead` wraps the (quantized) model once,
so the TorchScript program, :func:`torchrec_kd.load_model` and ``predict`` all score with the
same arithmetic. Its parameters are frozen (``requires_grad=False``), so even a program
called outside ``torch.inference_mode`` builds no graph.

A multi-task model (``tasks`` of two or more) returns ``[B, T]`` (or a dict ``{task: [B]}``);
the head then returns ``logit`` and ``probability`` as ``[B, T]`` in task order, a regression
column holding its value in both.

Example::

    head = ScoringHead(qmodel, output="logit")
    out = head(dense, kjt)            # {"logit": [B], "probability": [B]}
    head = ScoringHead(qmodel, tasks=[("click", "binary"), ("dwell", "regression")])
    out = head(dense, kjt)            # {"logit": [B, 2], "probability": [B, 2]}
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.core.tasks import Task
from torchrec_kd.models.io import PROBABILITY_EPS

# (no ``from __future__ import annotations``: TorchScript reads these annotations)


def head_tasks(tasks: Sequence[Task]) -> Optional[List[Tuple[str, str]]]:
    """``(name, type)`` per output column for :class:`ScoringHead` (None for one task: ``[B]`` as always).

    Args:
        tasks (Sequence[Task]): a model's tasks (``meta_tasks(meta)``).

    Returns:
        Optional[List[Tuple[str, str]]]: the ``tasks`` argument of :class:`ScoringHead`.
    """
    return [(t.name, t.type) for t in tasks] if len(tasks) > 1 else None


class ScoringHead(nn.Module):
    """A model called as ``model(dense, kjt)``, returning logits and probabilities.

    Args:
        model (nn.Module): the (quantized) ranking model.
        output (str): ``logit`` or ``probability``: what ``model`` returns.
        tasks (Optional[Sequence[Tuple[str, str]]]): ``(name, type)`` of each output column
            (``binary`` or ``regression``); None or one task: one column ``[B]`` as always.
    """

    def __init__(self, model: nn.Module, output: str = "logit",
                 tasks: Optional[Sequence[Tuple[str, str]]] = None) -> None:
        super().__init__()
        self.model = model
        self.is_probability = output == "probability"
        self.names: List[str] = [name for name, _ in tasks] if tasks else []
        binary = [kind != "regression" for _, kind in tasks] if tasks else [True]
        self.num_tasks = len(binary)
        self.all_binary = all(binary)
        # which columns are logits/probabilities (the others are regression values, passed through)
        self.register_buffer("binary", torch.tensor(binary, dtype=torch.bool), persistent=False)
        self.model.requires_grad_(False)

    def forward(self, dense: Tensor, kjt: KeyedJaggedTensor) -> Dict[str, Tensor]:
        """Score one batch.

        Args:
            dense (Tensor): [B, D] float32 dense features.
            kjt (KeyedJaggedTensor): sparse features, keys in the contract's order.

        Returns:
            Dict[str, Tensor]: ``logit`` [B] and ``probability`` [B], float32 (``[B, T]`` for T tasks).
        """
        out = self.model(dense, kjt)
        if isinstance(out, dict):  # a plugin's {task: [B]}, in task order
            out = torch.stack([out[n].reshape(out[n].size(0)) for n in self.names], dim=1)
        if self.num_tasks == 1:
            out = out.reshape(out.size(0), -1).squeeze(1).float()
            if self.is_probability:
                return {"logit": torch.logit(out, eps=PROBABILITY_EPS), "probability": out}
            return {"logit": out, "probability": torch.sigmoid(out)}
        out = out.reshape(out.size(0), self.num_tasks).float()
        if self.is_probability:
            return {"logit": self._binary_columns(torch.logit(out, eps=PROBABILITY_EPS), out), "probability": out}
        return {"logit": out, "probability": self._binary_columns(torch.sigmoid(out), out)}

    def _binary_columns(self, converted: Tensor, values: Tensor) -> Tensor:
        """``converted`` in the binary columns, ``values`` in the regression ones."""
        if self.all_binary:
            return converted
        return torch.where(self.binary, converted, values)

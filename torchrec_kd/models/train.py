"""``RankerTrain``: any ranking model behind TorchRec's training-wrapper contract.

TorchRec's ``DLRMTrain`` calls ``model(dense, kjt)`` and takes the output for logits. This
wrapper calls the model through its :class:`~torchrec_kd.models.io.ModelIO` (its own forward,
an adapter if needed) and so trains a probability head (``SimpleDeepFMNN``) on the right
loss. Like ``DLRMTrain`` it holds the model as ``.model``, so checkpoints keep the
``model.`` prefix.

Example::

    module = RankerTrain(build_model(cfg.teacher, tables, dense_in), model_io(cfg.teacher))
    loss, (loss_, logits, labels) = module(batch)
"""

from __future__ import annotations

from typing import Tuple

import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.datasets.utils import Batch

from torchrec_kd.models.io import LOGIT, ModelIO


class RankerTrain(nn.Module):
    """Binary cross-entropy on a ranking model's logits.

    Args:
        model (nn.Module): the model.
        io (ModelIO): how it is called and what it returns (default: ``model(dense, kjt)`` -> logits).
    """

    def __init__(self, model: nn.Module, io: ModelIO = LOGIT) -> None:
        super().__init__()
        self.model = model
        self.io = io

    def forward(self, batch: Batch) -> Tuple[Tensor, Tuple[Tensor, Tensor, Tensor]]:
        """Score the batch and compute the loss.

        Args:
            batch (Batch): dense_features, sparse_features, labels.

        Returns:
            Tuple[Tensor, Tuple[Tensor, Tensor, Tensor]]: ``loss`` and ``(loss, logits, labels)`` detached.
        """
        logits = self.io.logits(self.model, batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels.float())
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())

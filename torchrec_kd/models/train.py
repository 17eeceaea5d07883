"""``RankerTrain``: any ranking model behind TorchRec's training-wrapper contract.

TorchRec's ``DLRMTrain`` calls ``model(dense, kjt)`` and takes the output for logits. This
wrapper calls the model through its :class:`~torchrec_kd.models.io.ModelIO` (its own forward,
an adapter if needed) and so trains a probability head (``SimpleDeepFMNN``) on the right
loss. Like ``DLRMTrain`` it holds the model as ``.model``, so checkpoints keep the
``model.`` prefix. With several tasks (``io.tasks``) the loss is
:func:`~torchrec_kd.core.tasks.hard_task_loss` over ``[B, T]`` outputs and labels (each task in
its space, weighted); with one task it is the same binary cross-entropy as always.

Example::

    module = RankerTrain(build_model(cfg.teacher, tables, dense_in), model_io(cfg.teacher))
    loss, (loss_, logits, labels) = module(batch)
"""

from __future__ import annotations

from typing import Tuple

from torch import Tensor, nn
from torchrec.datasets.utils import Batch

from torchrec_kd.core.tasks import DEFAULT_TASK, Task, hard_task_loss
from torchrec_kd.models.io import LOGIT, ModelIO


class RankerTrain(nn.Module):
    """Binary cross-entropy on a ranking model's logits (per task, in its space, with several tasks).

    Args:
        model (nn.Module): the model.
        io (ModelIO): how it is called and what it returns (default: ``model(dense, kjt)`` -> logits);
            ``io.tasks`` are the run's tasks (``model_io(cfg, run_tasks(cfg))``).
    """

    def __init__(self, model: nn.Module, io: ModelIO = LOGIT) -> None:
        super().__init__()
        self.model = model
        self.io = io
        self.tasks = list(io.tasks) if io.tasks else [Task(DEFAULT_TASK)]

    def forward(self, batch: Batch) -> Tuple[Tensor, Tuple[Tensor, Tensor, Tensor]]:
        """Score the batch and compute the loss.

        Args:
            batch (Batch): dense_features, sparse_features, labels.

        Returns:
            Tuple[Tensor, Tuple[Tensor, Tensor, Tensor]]: ``loss`` and ``(loss, logits, labels)`` detached
            (``[B]``, or ``[B, T]`` with several tasks).
        """
        logits = self.io.logits(self.model, batch)
        # one task: exactly binary_cross_entropy_with_logits(logits, labels), as always
        loss = hard_task_loss(logits, batch.labels, self.tasks)
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())

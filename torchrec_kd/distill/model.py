"""``DistillationModel``: teacher + student behind TorchRec's training-wrapper contract.

Both DLRMs read the same ``Batch``; wrapped by one ``DistributedModelParallel``,
``TrainPipelineSparseDist`` finds both sharded embedding collections (their inputs
come straight from ``batch.sparse_features``) and pipelines the input distribution
of both: the teacher's lookups overlap the previous step like the student's.

Example::

    model = DistillationModel(teacher_dlrm, student_dlrm, build_loss(cfg.distill.losses))
    loss, (loss_, student_logits, teacher_logits, labels) = model(batch)
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.models.dlrm import DLRM

from torchrec_kd.losses import WeightedKDLoss

Output = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class DistillationModel(nn.Module):
    """A frozen teacher and a trainable student scored on the same batch.

    The teacher always runs in eval mode under ``torch.no_grad()`` and its parameters
    have ``requires_grad=False``; keep its fused tables out of the training optimizer
    with :func:`torchrec_kd.distill.freeze.freeze_teacher_tables` before sharding
    and ``build_optimizer(..., frozen_prefix="teacher.")`` after.

    Args:
        teacher (DLRM): the teacher (``forward(dense, kjt) -> [B, 1]`` logits).
        student (DLRM): the student, same inputs.
        loss (WeightedKDLoss): ``forward(student_logits, teacher_logits, labels)``.
    """

    def __init__(self, teacher: DLRM, student: DLRM, loss: WeightedKDLoss) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student
        self.loss_fn = loss
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> "DistillationModel":
        """Switch the student's mode; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Output]:
        """Score the batch with both models and compute the distillation loss.

        Args:
            batch (Batch): dense_features, sparse_features (KJT), labels.

        Returns:
            Tuple[Tensor, Tuple[Tensor, Tensor, Tensor, Tensor]]: ``loss`` and
            ``(loss.detach(), student_logits, teacher_logits, labels)`` (all detached).
        """
        with torch.no_grad():
            teacher_logits = self.teacher(batch.dense_features, batch.sparse_features).squeeze(-1)
        student_logits = self.student(batch.dense_features, batch.sparse_features).squeeze(-1)
        loss = self.loss_fn(student_logits, teacher_logits, batch.labels)
        return loss, (loss.detach(), student_logits.detach(), teacher_logits, batch.labels.detach())

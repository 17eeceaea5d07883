"""Built-in distillation terms: hard_bce, hard_mse, soft_bce, logit_mse, kl.

Teacher logits are detached in every term: the teacher is frozen, and a stray
gradient into it would waste memory or, worse, train it through the student loss.
Each term's ``forward`` is its batch value (a one-task run's loss, unchanged); ``per_row``
gives the values whose mean it is, which a multi-task run weights by the task's space.
``hard_bce``, ``soft_bce`` and ``kl`` read 0/1 labels or logits (binary tasks only);
``hard_mse`` and ``logit_mse`` suit a regression head's value too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from torchrec_kd.losses.registry import KDLoss, register_loss


@register_loss("hard_bce")
class HardBCE(KDLoss):
    """BCE-with-logits of the student against the true 0/1 labels (teacher ignored)."""

    binary_only = True

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """Binary cross-entropy with the ground truth.

        Args:
            student (Tensor): student logits [B].
            teacher (Tensor): unused.
            labels (Tensor): [B] 0/1 labels (any dtype).

        Returns:
            Tensor: mean BCE, a scalar.
        """
        return F.binary_cross_entropy_with_logits(student, labels.to(student.dtype))

    def per_row(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """BCE of each row [B]."""
        return F.binary_cross_entropy_with_logits(student, labels.to(student.dtype), reduction="none")


@register_loss("hard_mse")
class HardMSE(KDLoss):
    """Squared error of the student's value against the true label (a regression head; teacher ignored)."""

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """Mean squared error with the ground truth.

        Args:
            student (Tensor): student values [B].
            teacher (Tensor): unused.
            labels (Tensor): [B] true values.

        Returns:
            Tensor: mean of ``(student - labels)**2``, a scalar.
        """
        return F.mse_loss(student, labels.to(student.dtype))

    def per_row(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """Squared error of each row [B]."""
        return (student - labels.to(student.dtype)) ** 2


@register_loss("soft_bce")
class SoftBCE(KDLoss):
    """BCE of ``student / T`` against the soft target ``sigmoid(teacher / T)``, times ``T**2``."""

    binary_only = True

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """Binary soft-label distillation loss.

        Args:
            student (Tensor): student logits [B] (or [B, C] of independent binary logits).
            teacher (Tensor): teacher logits, same shape; detached.
            labels (Tensor): unused.

        Returns:
            Tensor: mean soft BCE times ``T**2``, a scalar.
        """
        t = self.temperature
        target = torch.sigmoid(teacher.detach() / t)
        # T**2 keeps gradient magnitudes comparable across temperatures (Hinton et al., 2015).
        return F.binary_cross_entropy_with_logits(student / t, target) * (t * t)

    def per_row(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """Soft BCE times ``T**2`` of each row [B]."""
        t = self.temperature
        target = torch.sigmoid(teacher.detach() / t)
        return F.binary_cross_entropy_with_logits(student / t, target, reduction="none") * (t * t)


@register_loss("logit_mse")
class LogitMSE(KDLoss):
    """Mean squared error between student and teacher logits (or a regression head's values)."""

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """Logit matching.

        Args:
            student (Tensor): student logits [B] or [B, C].
            teacher (Tensor): teacher logits, same shape; detached.
            labels (Tensor): unused.

        Returns:
            Tensor: mean over all elements of ``(student - teacher)**2``, a scalar.
        """
        return F.mse_loss(student, teacher.detach())

    def per_row(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """Squared logit difference of each row [B]."""
        return (student - teacher.detach()) ** 2


def _as_two_class(logits: Tensor) -> Tensor:
    """[B] binary logits z -> [B, 2] logits [0, z], whose softmax is [1 - sigmoid(z), sigmoid(z)]."""
    return torch.stack([torch.zeros_like(logits), logits], dim=-1) if logits.dim() == 1 else logits


@register_loss("kl")
class KLDiv(KDLoss):
    """``KL(softmax(teacher / T) || softmax(student / T)) * T**2``, averaged over the batch."""

    binary_only = True

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """Softened-distribution KL divergence.

        Args:
            student (Tensor): student logits [B, C], or [B] binary logits (treated as 2 classes).
            teacher (Tensor): teacher logits, same shape; detached.
            labels (Tensor): unused.

        Returns:
            Tensor: batch-mean KL times ``T**2``, a scalar.
        """
        t = self.temperature
        log_q = F.log_softmax(_as_two_class(student) / t, dim=-1)
        # log-space target avoids log(0) when the teacher is very confident.
        log_p = F.log_softmax(_as_two_class(teacher.detach()) / t, dim=-1)
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)

    def per_row(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        """KL times ``T**2`` of each row [B]."""
        t = self.temperature
        log_q = F.log_softmax(_as_two_class(student) / t, dim=-1)
        log_p = F.log_softmax(_as_two_class(teacher.detach()) / t, dim=-1)
        return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1) * (t * t)

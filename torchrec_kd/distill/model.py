"""``DistillationModel``: teacher(s) + student behind TorchRec's training-wrapper contract.

All models read the same ``Batch``; wrapped by one ``DistributedModelParallel``,
``TrainPipelineSparseDist`` finds every sharded embedding collection (their inputs
come straight from ``batch.sparse_features``) and pipelines their input distribution:
the teachers' lookups overlap the previous step like the student's.

Variants, all through the same forward:

* one teacher, or an ensemble (weighted mean of the teachers' logits; DLRM and DLRM_DCN mix);
* no teacher at all: offline distillation reads the teacher outputs stored with each
  row from a :class:`~torchrec_kd.distill.scored_batch.ScoredBatch`;
* privileged features: the student's tables leave the sparse ones out (the KJT still
  carries them for the teachers) and its dense arch skips the dense ones' columns
  (:class:`~torchrec_kd.models.dlrm.DenseColumnsArch`);
* hint / embedding / ranking terms get the intermediate outputs and group ids they require.

Example::

    model = DistillationModel([teacher_dlrm], student_dlrm, build_loss(cfg.distill.losses))
    loss, (loss_, student_logits, teacher_logits, labels) = model(batch)
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchrec.datasets.utils import Batch
from torchrec.models.dlrm import DLRM
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.losses import WeightedKDLoss
from torchrec_kd.losses.ranking import group_ids_from_jagged
from torchrec_kd.models.dlrm import forward_with_features

Output = Tuple[Tensor, Tensor, Tensor, Tensor]


class GroupIds(nn.Module):
    """[B] group id of each row: the first id of one sparse feature (rank_* terms).

    A module of its own so TorchRec's pipeline tracer keeps it a leaf.

    Args:
        feature (str): KJT key holding the session / query / user id.
    """

    def __init__(self, feature: str) -> None:
        super().__init__()
        self.feature = feature

    def forward(self, kjt: KeyedJaggedTensor) -> Tensor:
        jt = kjt[self.feature]
        return group_ids_from_jagged(jt.values(), jt.lengths())


def ensemble_outputs(teachers: Sequence[DLRM], weights: Sequence[float], batch: Batch) -> Tuple[Tensor, Tensor, Tensor]:
    """Teachers' weighted-mean logits [B] and the first teacher's hint and pooled embeddings (no grad).

    Args:
        teachers (Sequence[DLRM]): at least one teacher.
        weights (Sequence[float]): normalised ensemble weights.
        batch (Batch): the batch.

    Returns:
        Tuple[Tensor, Tensor, Tensor]: logits [B], hint [B, H], embeddings [B, F, D].
    """
    with torch.no_grad():
        outs = [forward_with_features(t, batch.dense_features, batch.sparse_features) for t in teachers]
        logits = outs[0][0] if len(outs) == 1 else sum(w * o[0] for w, o in zip(weights, outs))
    return logits, outs[0][1], outs[0][2]


def normalised_weights(count: int, weights: Optional[Sequence[float]]) -> List[float]:
    """Ensemble weights summing to 1 (equal by default); refuses negative or all-zero weights."""
    ws = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(ws) != count or any(w < 0 for w in ws) or (count and sum(ws) <= 0):
        raise ValueError(f"teacher_weights must be {count} non-negative numbers with a positive sum, got {ws}")
    total = sum(ws) or 1.0
    return [w / total for w in ws]


class TeacherEnsemble(nn.Module):
    """Frozen teachers alone (e.g. to score data for offline distillation).

    Args:
        teachers (Sequence[DLRM]): the teachers; state-dict keys ``teachers.<i>.…`` as in
            :class:`DistillationModel`.
        teacher_weights (Optional[Sequence[float]]): ensemble weights (normalised); default equal.
    """

    def __init__(self, teachers: Sequence[DLRM], teacher_weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        self.teacher_weights = normalised_weights(len(self.teachers), teacher_weights)
        self.requires_grad_(False)
        self.eval()

    def forward(self, batch: Batch) -> Tuple[Tensor, Tensor, Tensor]:
        """Ensemble logits [B], first teacher's hint [B, H] and embeddings [B, F, D]."""
        return ensemble_outputs(self.teachers, self.teacher_weights, batch)


class DistillationModel(nn.Module):
    """Frozen teacher(s) and a trainable student scored on the same batch.

    Teachers always run in eval mode under ``torch.no_grad()`` with ``requires_grad=False``;
    keep their fused tables out of the training optimizer with
    :func:`torchrec_kd.distill.freeze.freeze_teacher_tables` before sharding and
    ``build_optimizer(..., frozen_prefix="teachers.")`` after.

    Args:
        teachers (Sequence[DLRM]): the teachers (``forward(dense, kjt) -> [B, 1]``); empty for
            offline distillation from a :class:`ScoredBatch`.
        student (DLRM): the student, same inputs (it may read fewer sparse features).
        loss (WeightedKDLoss): the weighted terms.
        teacher_weights (Optional[Sequence[float]]): ensemble weights (normalised); default equal.
        group_feature (Optional[str]): KJT key of the group id, needed by rank_* terms.
    """

    def __init__(self, teachers: Sequence[DLRM], student: DLRM, loss: WeightedKDLoss,
                 teacher_weights: Optional[Sequence[float]] = None, group_feature: Optional[str] = None) -> None:
        super().__init__()
        if isinstance(teachers, nn.Module):  # one teacher passed bare
            teachers = [teachers]
        self.teachers = nn.ModuleList(teachers)
        self.student = student
        self.loss_fn = loss
        self.teacher_weights = normalised_weights(len(self.teachers), teacher_weights)
        if "groups" in loss.requires and group_feature is None:
            raise ValueError("a rank_* loss term needs distill.group_feature (the sparse feature holding the group id)")
        self.group_ids = GroupIds(group_feature) if group_feature is not None else None
        for teacher in self.teachers:
            teacher.requires_grad_(False)
            teacher.eval()

    @property
    def teacher(self) -> DLRM:
        """The first teacher (the one hint and embedding terms read)."""
        return self.teachers[0]

    def train(self, mode: bool = True) -> "DistillationModel":
        """Switch the student's mode; teachers stay in eval mode."""
        super().train(mode)
        for teacher in self.teachers:
            teacher.eval()
        return self

    def _teacher_outputs(self, batch: Batch) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """Ensemble logits [B], and the first teacher's hint and pooled embeddings."""
        if not self.teachers:  # offline: the outputs travel with the batch
            return batch.teacher_logits, batch.teacher_hint, batch.teacher_embeddings  # type: ignore[attr-defined]
        return ensemble_outputs(self.teachers, self.teacher_weights, batch)

    def forward(self, batch: Batch) -> Tuple[Tensor, Output]:
        """Score the batch with every model and compute the distillation loss.

        Args:
            batch (Batch): dense_features, sparse_features (KJT), labels (a ``ScoredBatch``
                offline).

        Returns:
            Tuple[Tensor, Tuple[Tensor, Tensor, Tensor, Tensor]]: ``loss`` and
            ``(loss.detach(), student_logits, teacher_logits, labels)`` (all detached).
        """
        teacher_logits, teacher_hint, teacher_emb = self._teacher_outputs(batch)
        student_logits, student_hint, student_emb = forward_with_features(
            self.student, batch.dense_features, batch.sparse_features)
        needs = self.loss_fn.requires
        loss = self.loss_fn(
            student_logits, teacher_logits, batch.labels,
            student_hint=student_hint if "hint" in needs else None,
            teacher_hint=teacher_hint if "hint" in needs else None,
            student_embeddings=student_emb if "embeddings" in needs else None,
            teacher_embeddings=teacher_emb if "embeddings" in needs else None,
            groups=self.group_ids(batch.sparse_features) if self.group_ids is not None else None)
        return loss, (loss.detach(), student_logits.detach(), teacher_logits.detach(), batch.labels.detach())

"""Feature distillation terms: hint (intermediate representation), embedding, ranking.

* ``hint_mse`` / ``hint_cosine`` — FitNets-style: the student's over-arch input (the
  output of its interaction arch) through a learned linear projection to the teacher's
  width, against the teacher's over-arch input; mean squared error or ``1 - cosine``.
* ``embedding_mse`` / ``embedding_cosine`` — per sparse feature, the student's pooled
  embedding against a learned per-feature projection of the teacher's pooled embedding
  (``D_t -> D_s``). Privileged features (teacher only) are left out.
* ``rank_pairwise`` / ``rank_listwise`` — within each group (``distill.group_feature``),
  the teacher's order of the rows: RankNet-style pairwise soft labels or a ListNet
  softmax over the group (see :mod:`torchrec_kd.losses.ranking`).

Projections are trained with the student's dense parameters and dropped at export.

Example::

    dims = FeatureDims(student_hint=367, teacher_hint=415, student_dim=16, teacher_dim=64,
                       student_features=names, teacher_features=names)
    loss = build_loss([LossTermConfig("hard_bce", 0.5), LossTermConfig("hint_mse", 0.1)], dims)
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchrec_kd.losses.ranking import listwise_rank_distill, pairwise_rank_distill
from torchrec_kd.losses.registry import FeatureDims, KDInputs, KDLoss, register_loss


def _need_dims(name: str, dims: Optional[FeatureDims]) -> FeatureDims:
    if dims is None:
        raise ValueError(f"loss term '{name}' has a learned projection and needs the models' shapes: "
                         "build it with build_loss(terms, FeatureDims(...)) (the distill recipe does)")
    return dims


def _require(x: KDInputs, field: str, term: str) -> Tensor:
    value = getattr(x, field)
    if value is None:
        raise ValueError(f"loss term '{term}' needs '{field}' but the model did not provide it")
    return value


class _HintLoss(KDLoss):
    """Projected student hint against the teacher hint; subclasses pick the distance."""

    requires = frozenset({"hint"})
    name = "hint"

    def __init__(self, student_hint: int, teacher_hint: int, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        self.proj = nn.Linear(student_hint, teacher_hint)

    @classmethod
    def build(cls, temperature: float, dims: Optional[FeatureDims]) -> KDLoss:
        d = _need_dims(cls.name, dims)
        return cls(d.student_hint, d.teacher_hint, temperature)

    def distance(self, projected: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def compute(self, x: KDInputs) -> Tensor:
        """Distance between ``proj(student_hint)`` [B, Ht] and ``teacher_hint`` [B, Ht] (detached)."""
        student = _require(x, "student_hint", self.name)
        teacher = _require(x, "teacher_hint", self.name).detach()
        return self.distance(self.proj(student), teacher)


@register_loss("hint_mse")
class HintMSE(_HintLoss):
    """``mean((W s_hint + b - t_hint)**2)`` over rows and hint dims."""

    name = "hint_mse"

    def distance(self, projected: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(projected, target)


@register_loss("hint_cosine")
class HintCosine(_HintLoss):
    """``mean(1 - cos(W s_hint + b, t_hint))`` over rows."""

    name = "hint_cosine"

    def distance(self, projected: Tensor, target: Tensor) -> Tensor:
        return (1.0 - F.cosine_similarity(projected, target, dim=-1)).mean()


class _EmbeddingLoss(KDLoss):
    """Per-feature pooled student embedding against a learned projection of the teacher's."""

    requires = frozenset({"embeddings"})
    name = "embedding"

    def __init__(self, dims: FeatureDims, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        missing = [f for f in dims.student_features if f not in dims.teacher_features]
        if missing:
            raise ValueError(f"loss term '{self.name}': the teacher has no embedding for student feature(s) {missing}")
        idx = [dims.teacher_features.index(f) for f in dims.student_features]
        self.register_buffer("teacher_index", torch.tensor(idx, dtype=torch.long), persistent=False)
        bound = 1.0 / math.sqrt(dims.teacher_dim)  # nn.Linear's default init
        self.proj = nn.Parameter(torch.empty(len(idx), dims.teacher_dim, dims.student_dim).uniform_(-bound, bound))

    @classmethod
    def build(cls, temperature: float, dims: Optional[FeatureDims]) -> KDLoss:
        return cls(_need_dims(cls.name, dims), temperature)

    def distance(self, student: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def compute(self, x: KDInputs) -> Tensor:
        """Distance between student [B, Fs, Ds] and ``teacher[:, idx] @ W_f`` [B, Fs, Ds]."""
        student = _require(x, "student_embeddings", self.name)
        teacher = _require(x, "teacher_embeddings", self.name).detach()
        target = torch.einsum("bfd,fde->bfe", teacher.index_select(1, self.teacher_index), self.proj)
        return self.distance(student, target)


@register_loss("embedding_mse")
class EmbeddingMSE(_EmbeddingLoss):
    """``mean((s_f - W_f t_f)**2)`` over rows, features and dims."""

    name = "embedding_mse"

    def distance(self, student: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(student, target)


@register_loss("embedding_cosine")
class EmbeddingCosine(_EmbeddingLoss):
    """``mean(1 - cos(s_f, W_f t_f))`` over rows and features (scale-free: no shrinking to 0)."""

    name = "embedding_cosine"

    def distance(self, student: Tensor, target: Tensor) -> Tensor:
        return (1.0 - F.cosine_similarity(student, target, dim=-1)).mean()


@register_loss("rank_pairwise")
class RankPairwise(KDLoss):
    """RankNet soft labels: per pair in a group, BCE of the student's order against the teacher's."""

    requires = frozenset({"groups"})

    def compute(self, x: KDInputs) -> Tensor:
        groups = _require(x, "groups", "rank_pairwise")
        return pairwise_rank_distill(x.student, x.teacher, groups, self.temperature)


@register_loss("rank_listwise")
class RankListwise(KDLoss):
    """ListNet: cross-entropy of the student's in-group softmax against the teacher's."""

    requires = frozenset({"groups"})

    def compute(self, x: KDInputs) -> Tensor:
        groups = _require(x, "groups", "rank_listwise")
        return listwise_rank_distill(x.student, x.teacher, groups, self.temperature)

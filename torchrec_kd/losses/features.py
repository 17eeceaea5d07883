"""Feature distillation terms: hint (intermediate representation), embedding, ranking.

* ``hint_mse`` / ``hint_cosine`` — FitNets-style: the output of one student submodule
  through a learned linear projection to the width of one teacher submodule's output;
  mean squared error or ``1 - cosine``. ``args: {student: <path>, teacher: <path>}`` name
  the modules (default: each model's declared hint module, the DLRMs' ``inter_arch``, whose
  output is the over-arch input).
* ``embedding_mse`` / ``embedding_cosine`` — per sparse feature, the student's pooled
  embedding against a learned per-feature projection of the teacher's (``D_t -> D_s``).
  ``args`` name the modules whose outputs are the pooled embeddings (default: the
  models' ``sparse_arch``; ``[B, F, D]`` or a ``KeyedTensor``). Privileged features
  (teacher only) are left out.
* ``rank_pairwise`` / ``rank_listwise`` — within each group (``distill.group_feature``),
  the teacher's order of the rows: RankNet-style pairwise soft labels or a ListNet
  softmax over the group (see :mod:`torchrec_kd.losses.ranking`).

Projections are sized from the tapped shapes (:class:`~torchrec_kd.losses.taps.FeatureDims`),
trained with the student's dense parameters and dropped at export.

Example::

    loss = build_loss([LossTermConfig("hard_bce", 0.5),
                       LossTermConfig("hint_mse", 0.1, args={"student": "inter_arch", "teacher": "over_arch.model.0"})],
                      dims)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchrec_kd.losses.ranking import listwise_rank_distill, pairwise_rank_distill
from torchrec_kd.losses.registry import KDInputs, KDLoss, register_loss
from torchrec_kd.losses.taps import FeatureDims, Tap, as_feature


@dataclass
class TapArgs:
    """Which submodule's output a feature term reads in each model (module paths; null: the model's default)."""

    student: Optional[str] = None
    teacher: Optional[str] = None


def _need_dims(name: str, dims: Optional[FeatureDims]) -> FeatureDims:
    if dims is None:
        raise ValueError(f"loss term '{name}' has a learned projection and needs the models' shapes: "
                         "build it with build_loss(terms, FeatureDims(...)) (the distill recipe does)")
    return dims


def _tapped(x: KDInputs, tap: Tap, term: str) -> Tensor:
    taps = x.student_taps if tap.role == "student" else x.teacher_taps
    if taps.get(tap.key) is None:
        raise ValueError(f"loss term '{term}' reads the {tap.role}'s '{tap.path}' but the model did not provide it")
    return as_feature(taps[tap.key], tap.kind, f"{term}: {tap.role} '{tap.path}'")


def _resolve(name: str, dims: Optional[FeatureDims], args: Any, kind: str) -> tuple:
    d = _need_dims(name, dims)
    args = args or TapArgs()
    where = f"loss term '{name}'"
    s, t = d.resolve("student", kind, args.student, where), d.resolve("teacher", kind, args.teacher, where)
    return s, t, d.info(s, where), d.info(t, where)


class _HintLoss(KDLoss):
    """Projected student hint against the teacher hint; subclasses pick the distance."""

    name = "hint"
    args = TapArgs
    per_task = False  # reads tapped outputs, not a task's logits

    def __init__(self, student_hint: int, teacher_hint: int, temperature: float = 1.0,
                 student_tap: Tap = Tap("student", "inter_arch", "hint"),
                 teacher_tap: Tap = Tap("teacher", "inter_arch", "hint")) -> None:
        super().__init__(temperature)
        self.proj = nn.Linear(student_hint, teacher_hint)
        self.student_tap, self.teacher_tap = student_tap, teacher_tap
        self.taps = [student_tap, teacher_tap]

    @classmethod
    def build(cls, temperature: float, dims: Optional[FeatureDims], args: Any = None) -> KDLoss:
        s, t, s_info, t_info = _resolve(cls.name, dims, args, "hint")
        return cls(math.prod(s_info.shape), math.prod(t_info.shape), temperature, s, t)

    def distance(self, projected: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def compute(self, x: KDInputs) -> Tensor:
        """Distance between ``proj(student hint)`` [B, Ht] and the teacher hint [B, Ht] (detached)."""
        student = _tapped(x, self.student_tap, self.name)
        teacher = _tapped(x, self.teacher_tap, self.name).detach()
        return self.distance(self.proj(student.to(self.proj.weight.dtype)), teacher.to(self.proj.weight.dtype))

    def extra_repr(self) -> str:
        return f"student={self.student_tap.path}, teacher={self.teacher_tap.path}"


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

    name = "embedding"
    args = TapArgs
    per_task = False

    def __init__(self, student_features: list, teacher_features: list, student_dim: int, teacher_dim: int,
                 temperature: float = 1.0, student_tap: Tap = Tap("student", "sparse_arch", "embeddings"),
                 teacher_tap: Tap = Tap("teacher", "sparse_arch", "embeddings")) -> None:
        super().__init__(temperature)
        missing = [f for f in student_features if f not in teacher_features]
        if missing:
            raise ValueError(f"loss term '{self.name}': the teacher has no embedding for student feature(s) {missing}")
        idx = [teacher_features.index(f) for f in student_features]
        self.register_buffer("teacher_index", torch.tensor(idx, dtype=torch.long), persistent=False)
        bound = 1.0 / math.sqrt(teacher_dim)  # nn.Linear's default init
        self.proj = nn.Parameter(torch.empty(len(idx), teacher_dim, student_dim).uniform_(-bound, bound))
        self.student_tap, self.teacher_tap = student_tap, teacher_tap
        self.taps = [student_tap, teacher_tap]

    @classmethod
    def build(cls, temperature: float, dims: Optional[FeatureDims], args: Any = None) -> KDLoss:
        s, t, s_info, t_info = _resolve(cls.name, dims, args, "embeddings")
        for tap, info in ((s, s_info), (t, t_info)):
            if len(info.shape) != 2 or not info.features:
                raise ValueError(f"loss term '{cls.name}': the {tap.role}'s '{tap.path}' is not pooled embeddings "
                                 f"[B, F, D] of named features (shape {info.shape}); tap the module whose output they are")
        return cls(list(s_info.features), list(t_info.features), s_info.shape[1], t_info.shape[1], temperature, s, t)

    def distance(self, student: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def compute(self, x: KDInputs) -> Tensor:
        """Distance between student [B, Fs, Ds] and ``teacher[:, idx] @ W_f`` [B, Fs, Ds]."""
        student = _tapped(x, self.student_tap, self.name)
        teacher = _tapped(x, self.teacher_tap, self.name).detach().to(self.proj.dtype)
        target = torch.einsum("bfd,fde->bfe", teacher.index_select(1, self.teacher_index), self.proj)
        return self.distance(student.to(self.proj.dtype), target)

    def extra_repr(self) -> str:
        return f"student={self.student_tap.path}, teacher={self.teacher_tap.path}"


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
        groups = _groups(x, "rank_pairwise")
        return pairwise_rank_distill(x.student, x.teacher, groups, self.temperature)


@register_loss("rank_listwise")
class RankListwise(KDLoss):
    """ListNet: cross-entropy of the student's in-group softmax against the teacher's."""

    requires = frozenset({"groups"})

    def compute(self, x: KDInputs) -> Tensor:
        groups = _groups(x, "rank_listwise")
        return listwise_rank_distill(x.student, x.teacher, groups, self.temperature)


def _groups(x: KDInputs, term: str) -> Tensor:
    if x.groups is None:
        raise ValueError(f"loss term '{term}' needs 'groups' but the model did not provide it")
    return x.groups

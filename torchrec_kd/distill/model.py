"""``DistillationModel``: teacher(s) + student behind TorchRec's training-wrapper contract.

All models read the same ``Batch`` and are called through their own forward
(:class:`~torchrec_kd.models.io.ModelIO`: ``model(dense, kjt)`` by default, an adapter
otherwise; a probability head's output is turned into logits). Wrapped by one
``DistributedModelParallel``, ``TrainPipelineSparseDist`` finds every sharded embedding
collection (their inputs come straight from ``batch.sparse_features``) and pipelines their
input distribution: the teachers' lookups overlap the previous step like the student's.

Variants, all through the same forward:

* one teacher, or an ensemble (weighted mean of the teachers' logits; any architectures mix);
* several tasks: the teachers' outputs become the student's ``[B, T]`` per task, from the
  teachers teaching each task (:mod:`~torchrec_kd.distill.task_teachers`: a multi-task
  teacher, or one single-task teacher per task);
* no teacher at all: offline distillation reads the teacher outputs stored with each
  row from a :class:`~torchrec_kd.distill.scored_batch.ScoredBatch`;
* privileged features: the student's tables leave the sparse ones out (the KJT still
  carries them for the teachers) and its dense arch skips the dense ones' columns;
* hint / embedding terms read submodules' outputs by module path
  (:class:`~torchrec_kd.distill.taps.FeatureTaps`, forward hooks attached on the first
  forward, i.e. after sharding); ranking terms get group ids;
* retrieval terms (``inbatch_kd``, ``topk_rd``: ``requires = {"candidates"}``) get each row's
  user scored against the batch's items (and random corpus items) by the student's towers
  and by the teachers on the (user, item) pair rows
  (:class:`~torchrec_kd.distill.candidates.CandidateScorer`, built once per step; both models'
  pointwise logits are then the candidate matrices' diagonals).

Example::

    model = DistillationModel([teacher], student, build_loss(cfg.distill.losses, dims),
                              teacher_io=[ModelIO()], student_io=ModelIO(output="probability"))
    loss, (loss_, student_logits, teacher_logits, labels) = model(batch)
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.distill.candidates import CandidateScorer, CandidateSpec, check_candidates
from torchrec_kd.distill.taps import FeatureTaps
from torchrec_kd.distill.task_teachers import TaskSource, assemble
from torchrec_kd.errors import ConfigError
from torchrec_kd.losses import Tap, WeightedKDLoss
from torchrec_kd.losses.ranking import group_ids_from_jagged
from torchrec_kd.models.io import LOGIT, ModelIO

Output = Tuple[Tensor, Tensor, Tensor, Tensor]
TaskPlan = Optional[Sequence[Sequence[TaskSource]]]


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


def normalised_weights(count: int, weights: Optional[Sequence[float]]) -> List[float]:
    """Ensemble weights summing to 1 (equal by default); refuses negative or all-zero weights."""
    ws = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(ws) != count or any(w < 0 for w in ws) or (count and sum(ws) <= 0):
        raise ValueError(f"teacher_weights must be {count} non-negative numbers with a positive sum, got {ws}")
    total = sum(ws) or 1.0
    return [w / total for w in ws]


def _ios(count: int, ios: Union[None, ModelIO, Sequence[ModelIO]]) -> List[ModelIO]:
    if ios is None:
        return [LOGIT] * count
    if isinstance(ios, ModelIO):
        return [ios] * count
    if len(ios) != count:
        raise ValueError(f"teacher_io lists {len(ios)} entries for {count} teachers")
    return list(ios)


class _Teachers(nn.Module):
    """Frozen teachers, their logits' weighted mean and the first teacher's taps (shared by both wrappers)."""

    def __init__(self, teachers: Sequence[nn.Module], teacher_weights: Optional[Sequence[float]],
                 teacher_io: Union[None, ModelIO, Sequence[ModelIO]], taps: Sequence[Tap],
                 task_plan: TaskPlan = None) -> None:
        super().__init__()
        if isinstance(teachers, nn.Module):  # one teacher passed bare
            teachers = [teachers]
        self.teachers = nn.ModuleList(teachers)
        # per-task weights live in the plan (renormalised per task); without one, the plain ensemble mean
        self.task_plan = None if task_plan is None else [list(p) for p in task_plan]
        self.teacher_weights = normalised_weights(len(self.teachers), teacher_weights if task_plan is None else None)
        self.teacher_ios = _ios(len(self.teachers), teacher_io)
        self.teacher_tap_specs = [t for t in taps if t.role == "teacher"]
        self._teacher_hooks = FeatureTaps([t.path for t in self.teacher_tap_specs])
        for teacher in self.teachers:
            teacher.requires_grad_(False)
            teacher.eval()

    @property
    def teacher(self) -> nn.Module:
        """The first teacher (the one hint and embedding terms read)."""
        return self.teachers[0]

    def train(self, mode: bool = True) -> "_Teachers":
        """Switch the student's mode (if any); teachers stay in eval mode."""
        super().train(mode)
        for teacher in self.teachers:
            teacher.eval()
        return self

    def _teacher_outputs(self, batch: Batch) -> Tuple[Tensor, Dict[str, Any]]:
        """Ensemble logits [B] ([B, T] per the task plan) and the first teacher's tapped outputs by tap key (no grad)."""
        if not self._teacher_hooks.attached:  # now, after sharding replaced the embedding collections
            self._teacher_hooks.attach(self.teachers[0], "teacher")
        with torch.no_grad(), self._teacher_hooks.collect() as out:
            logits = [io.logits(t, batch) for t, io in zip(self.teachers, self.teacher_ios)]
        if self.task_plan is not None:
            mean = assemble(logits, self.task_plan)
        else:
            mean = logits[0] if len(logits) == 1 else sum(w * x for w, x in zip(self.teacher_weights, logits))
        return mean, {t.key: out.get(t.path) for t in self.teacher_tap_specs}


class TeacherEnsemble(_Teachers):
    """Frozen teachers alone (e.g. to score data for offline distillation).

    Args:
        teachers (Sequence[nn.Module]): the teachers; state-dict keys ``teachers.<i>.…`` as in
            :class:`DistillationModel`.
        teacher_weights (Optional[Sequence[float]]): ensemble weights (normalised); default equal.
        teacher_io (ModelIO | Sequence[ModelIO] | None): how each teacher is called (default logits from
            ``model(dense, kjt)``).
        taps (Sequence[Tap]): the first teacher's outputs to return too (``role == "teacher"``).
        task_plan (Optional[Sequence[Sequence[TaskSource]]]): several tasks: which teachers' columns
            make each task (:func:`~torchrec_kd.distill.task_teachers.task_plan`); None: the weighted mean.
    """

    def __init__(self, teachers: Sequence[nn.Module], teacher_weights: Optional[Sequence[float]] = None,
                 teacher_io: Union[None, ModelIO, Sequence[ModelIO]] = None, taps: Sequence[Tap] = (),
                 task_plan: TaskPlan = None) -> None:
        super().__init__(teachers, teacher_weights, teacher_io, taps, task_plan)
        self.requires_grad_(False)
        self.eval()

    def forward(self, batch: Batch) -> Tuple[Tensor, Dict[str, Any]]:
        """Ensemble logits [B] ([B, T]) and the first teacher's tapped outputs by :attr:`Tap.key`."""
        return self._teacher_outputs(batch)


class DistillationModel(_Teachers):
    """Frozen teacher(s) and a trainable student scored on the same batch.

    Teachers always run in eval mode under ``torch.no_grad()`` with ``requires_grad=False``;
    keep their fused tables out of the training optimizer with
    :func:`torchrec_kd.distill.freeze.freeze_teacher_tables` before sharding and
    ``build_optimizer(..., frozen_prefix="teachers.")`` after.

    Args:
        teachers (Sequence[nn.Module]): the teachers (any ranking models); empty for offline
            distillation from a :class:`ScoredBatch`.
        student (nn.Module): the student, same inputs (it may read fewer sparse features).
        loss (WeightedKDLoss): the weighted terms (its ``taps`` say which submodules are read).
        teacher_weights (Optional[Sequence[float]]): ensemble weights (normalised); default equal.
        group_feature (Optional[str]): KJT key of the group id, needed by rank_* terms.
        teacher_io (ModelIO | Sequence[ModelIO] | None): how each teacher is called and what it returns.
        student_io (Optional[ModelIO]): the same for the student.
        task_plan (Optional[Sequence[Sequence[TaskSource]]]): several tasks: which teachers' columns
            make each student task (:func:`~torchrec_kd.distill.task_teachers.task_plan`).
        candidates (Optional[CandidateSpec]): a retrieval run's user / item keys (and corpus), needed
            by terms that require ``candidates``.
    """

    def __init__(self, teachers: Sequence[nn.Module], student: nn.Module, loss: WeightedKDLoss,
                 teacher_weights: Optional[Sequence[float]] = None, group_feature: Optional[str] = None,
                 teacher_io: Union[None, ModelIO, Sequence[ModelIO]] = None,
                 student_io: Optional[ModelIO] = None, task_plan: TaskPlan = None,
                 candidates: Optional[CandidateSpec] = None) -> None:
        taps = loss.taps
        super().__init__(teachers, teacher_weights, teacher_io, taps, task_plan)
        self.student = student
        self.loss_fn = loss
        self.student_io = student_io or LOGIT
        self.student_tap_specs = [t for t in taps if t.role == "student"]
        self._student_hooks = FeatureTaps([t.path for t in self.student_tap_specs])
        if "groups" in loss.requires and group_feature is None:
            raise ValueError("a rank_* loss term needs distill.group_feature (the sparse feature holding the group id)")
        self.group_ids = GroupIds(group_feature) if group_feature is not None else None
        self.candidates: Optional[CandidateScorer] = None
        if "candidates" in loss.requires:
            settings = check_candidates(loss, student, candidates, self.teachers)
            if taps or task_plan is not None:
                raise ConfigError("distill.losses: candidate terms (inbatch_kd, topk_rd) do not mix with hint / "
                                  "embedding terms or several tasks yet; drop those")
            assert candidates is not None
            self.candidates = CandidateScorer(student, self.teachers, self.teacher_ios, self.teacher_weights,
                                              candidates, settings)

    def set_step(self, step: int) -> None:
        """The training loop's optimizer step (0-based), for the loss terms' schedules."""
        self.loss_fn.set_step(step)

    def score(self, batch: Batch) -> Tensor:
        """The student's logits [B] ([B, T]) alone (evaluation: no teacher work, no taps)."""
        return self.student_io.logits(self.student, batch)

    def forward(self, batch: Batch) -> Tuple[Tensor, Output]:
        """Score the batch with every model and compute the distillation loss.

        Args:
            batch (Batch): dense_features, sparse_features (KJT), labels (a ``ScoredBatch``
                offline).

        Returns:
            Tuple[Tensor, Tuple[Tensor, Tensor, Tensor, Tensor]]: ``loss`` and
            ``(loss.detach(), student_logits, teacher_logits, labels)`` (all detached).
        """
        if self.candidates is not None:  # retrieval terms: every model's one call is the candidate step
            student_logits, teacher_logits, scores = self.candidates(batch)
            if not self.teachers:  # offline (only label terms read candidates): the teacher's logits travel with the batch
                teacher_logits = batch.teacher_logits  # type: ignore[attr-defined]
            loss = self.loss_fn(student_logits, teacher_logits, batch.labels, candidates=scores)
            return loss, (loss.detach(), student_logits.detach(), teacher_logits.detach(), batch.labels.detach())
        if self.teachers:
            teacher_logits, teacher_taps = self._teacher_outputs(batch)
        else:  # offline: the outputs travel with the batch
            teacher_logits, teacher_taps = batch.teacher_logits, batch.teacher_taps  # type: ignore[attr-defined]
        if not self._student_hooks.attached:
            self._student_hooks.attach(self.student, "student")
        with self._student_hooks.collect() as out:
            student_logits = self.student_io.logits(self.student, batch)
        # raw outputs go to the loss (a leaf of the pipeline's tracer), which reads them as features
        student_taps = {t.key: out.get(t.path) for t in self.student_tap_specs}
        loss = self.loss_fn(student_logits, teacher_logits, batch.labels, student_taps=student_taps,
                            teacher_taps=teacher_taps,
                            groups=self.group_ids(batch.sparse_features) if self.group_ids is not None else None)
        return loss, (loss.detach(), student_logits.detach(), teacher_logits.detach(), batch.labels.detach())

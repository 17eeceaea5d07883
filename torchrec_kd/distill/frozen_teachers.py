"""The frozen teachers of a run, built once for both callers (``distill`` and ``score-teacher``).

The steps are always the same: resolve the checkpoints, measure the tapped shapes, build the
loss (which says what the teachers must return), build the teachers on ``meta`` with frozen
tables, shard (the caller: with or without the student), then freeze the sharded copies,
load each checkpoint and, with ``distill.teacher_dtype=int8``, quantize their tables.

Example::

    parts = distill_parts(cfg, data)
    teachers = build_frozen_teachers(parts.teachers, len(data.dense_names))
    model = shard(TeacherEnsemble(teachers, ...), env, local_batch, constraints)
    load_frozen_teachers(cfg, model, parts.teachers)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_kd.checkpoint.model_io import load_module
from torchrec_kd.config import RunConfig
from torchrec_kd.core.tasks import Task, is_multitask, run_tasks
from torchrec_kd.distill.dims import run_feature_dims
from torchrec_kd.distill.freeze import freeze_sharded, freeze_teacher_tables
from torchrec_kd.distill.task_teachers import TaskSource
from torchrec_kd.distill.teachers import TEACHERS, TeacherSpec, resolve_teachers, store_teachers_as_int8, teacher_task_plan
from torchrec_kd.errors import ConfigError
from torchrec_kd.losses import FeatureDims, WeightedKDLoss, build_loss
from torchrec_kd.models.build import build_model, model_io
from torchrec_kd.models.dlrm import MODEL_PREFIX, make_tables
from torchrec_kd.models.inputs import ModelInputs, model_inputs
from torchrec_kd.models.io import ModelIO
from torchrec_kd.models.registry import FeatureRoles, feature_roles


@dataclass
class DistillParts:
    """What a distillation run's teachers and loss are, before anything is built on a device.

    Attributes:
        teachers (List[TeacherSpec]): the checked teacher checkpoints.
        inputs (ModelInputs): what the student reads.
        student_tables (List[EmbeddingBagConfig]): its tables.
        dims (FeatureDims): the models' tapped shapes.
        loss (WeightedKDLoss): the configured terms (their taps say what teachers return).
        tasks (List[Task]): the run's tasks.
        task_plan (Optional[List[List[TaskSource]]]): per student task, the teachers' columns (None: one task).
    """

    teachers: List[TeacherSpec]
    inputs: ModelInputs
    student_tables: List[EmbeddingBagConfig]
    dims: FeatureDims
    loss: WeightedKDLoss
    tasks: List[Task]
    task_plan: Optional[List[List[TaskSource]]]

    @property
    def student_tasks(self) -> Optional[List[Task]]:
        """The tasks the student is built and called with (None in a one-task run: as always)."""
        return self.tasks if is_multitask(self.tasks) else None


def distill_parts(cfg: RunConfig, data: Any) -> DistillParts:
    """Resolve the teachers, measure the tapped shapes and build the loss, exactly as ``distill`` does.

    Args:
        cfg (RunConfig): the run config.
        data: the student's data source (``sparse_names``, ``num_embeddings``, ``dense_names``).

    Returns:
        DistillParts: the parts.

    Raises:
        ConfigError: a bad teacher, loss term or task assignment (one line).
    """
    sparse, rows, dense = list(data.sparse_names), list(data.num_embeddings), list(data.dense_names)
    teachers = resolve_teachers(cfg, sparse, rows)
    inputs = model_inputs(cfg, "student", sparse, rows, dense)
    student_tables = make_tables(cfg.student, inputs.sparse_features, inputs.num_embeddings)
    first = teachers[0]
    dims = run_feature_dims(cfg.student, student_tables, inputs, first.model, first.tables, sparse, len(dense),
                            roles=feature_roles(cfg.data.retrieval))
    tasks = run_tasks(cfg)
    try:
        # a tower student's own label terms (train.tower_losses) as the student alone has them
        loss = build_loss(list(cfg.distill.losses) + list(cfg.train.tower_losses), dims, tasks)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"distill.losses: {e}") from None
    return DistillParts(teachers, inputs, student_tables, dims, loss, tasks, teacher_task_plan(cfg, teachers))


def teacher_ios(teachers: Sequence[TeacherSpec]) -> List[ModelIO]:
    """How each teacher is called (``[B, T_k]`` for a multi-task one, by its own task names)."""
    return [model_io(t.model, t.build_tasks) for t in teachers]


def build_frozen_teachers(teachers: Sequence[TeacherSpec], dense_in: int,
                          roles: Optional[FeatureRoles] = None) -> List[nn.Module]:
    """Each teacher on ``meta``, frozen, its tables given a stateless fused optimizer (before sharding).

    Args:
        teachers (Sequence[TeacherSpec]): from :func:`distill_parts`.
        dense_in (int): the dense input's width.
        roles (Optional[FeatureRoles]): a retrieval run's user / item features (a two-tower teacher's towers).

    Returns:
        List[nn.Module]: the teachers, in order (state-dict prefix ``teachers.<i>.`` once wrapped).
    """
    built = []
    for t in teachers:
        model = build_model(t.model, t.tables, dense_in, where=f"teacher {t.checkpoint}", tasks=t.build_tasks,
                            roles=roles)
        model.requires_grad_(False)
        freeze_teacher_tables(model)
        built.append(model)
    return built


def load_frozen_teachers(cfg: RunConfig, model: nn.Module, teachers: Sequence[TeacherSpec]) -> None:
    """After sharding: freeze the teachers' sharded tables, load each checkpoint, store int8 if configured.

    Args:
        cfg (RunConfig): the run (``distill.teacher_dtype``).
        model (nn.Module): the sharded model holding the teachers under ``teachers.``.
        teachers (Sequence[TeacherSpec]): in the order they were built.
    """
    freeze_sharded(model, TEACHERS)
    for i, spec in enumerate(teachers):
        load_module(model, spec.checkpoint, model_prefix=f"{TEACHERS}{i}.", ckpt_prefix=MODEL_PREFIX)
    store_teachers_as_int8(cfg, model)

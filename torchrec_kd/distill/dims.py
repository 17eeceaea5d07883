"""The tapped shapes of a run's models, measured on small CPU copies (what feature terms are sized from).

Example::

    dims = run_feature_dims(cfg.student, student_tables, inputs, teachers[0], data.sparse_names, dense_in)
    loss = build_loss(cfg.distill.losses, dims)
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig

from torchrec_kd.config import ModelConfig
from torchrec_kd.distill.taps import probe_batch, probe_feature_dims
from torchrec_kd.losses.taps import FeatureDims
from torchrec_kd.models.build import build_model, model_builder, model_io
from torchrec_kd.models.inputs import ModelInputs
from torchrec_kd.models.registry import FeatureRoles

# Rows per table of the probe copies: shapes do not depend on table sizes.
PROBE_ROWS = 2
CPU = torch.device("cpu")


def _small(tables: Sequence[EmbeddingBagConfig]) -> list:
    return [dataclasses.replace(t, num_embeddings=min(t.num_embeddings, PROBE_ROWS), data_type=DataType.FP32)
            for t in tables]


def run_feature_dims(student: ModelConfig, student_tables: Sequence[EmbeddingBagConfig], inputs: ModelInputs,
                     teacher: Optional[ModelConfig], teacher_tables: Sequence[EmbeddingBagConfig],
                     sparse_names: Sequence[str], dense_in: int, roles: Optional[FeatureRoles] = None) -> FeatureDims:
    """A :class:`FeatureDims` measuring each tap with one forward of a small copy of the student or teacher.

    Args:
        student (ModelConfig): the student's section.
        student_tables (Sequence[EmbeddingBagConfig]): its tables.
        inputs (ModelInputs): what it reads (privileged dense columns left out).
        teacher (Optional[ModelConfig]): the (first) teacher's model, None without one.
        teacher_tables (Sequence[EmbeddingBagConfig]): its tables.
        sparse_names (Sequence[str]): the data's sparse features (the probe batch's keys).
        dense_in (int): the dense input's width.

    Returns:
        FeatureDims: defaults from each builder, shapes on first use.
    """
    models = {"student": lambda: build_model(student, _small(student_tables), dense_in, CPU,
                                             inputs.dense_columns, "student", roles=roles)}
    ios = {"student": model_io(student)}
    defaults = {"student": _defaults(student)}
    if teacher is not None:
        models["teacher"] = lambda: build_model(teacher, _small(teacher_tables), dense_in, CPU, None, "teacher",
                                                roles=roles)
        ios["teacher"] = model_io(teacher)
        defaults["teacher"] = _defaults(teacher)
    return probe_feature_dims(models, probe_batch(sparse_names, dense_in), ios, defaults)


def _defaults(cfg: ModelConfig) -> dict:
    builder = model_builder(cfg.arch)
    return {"hint": builder.hint, "embeddings": builder.embeddings}


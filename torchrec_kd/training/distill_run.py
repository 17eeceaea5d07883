"""Distil trained teacher(s) into the student inside ``TrainPipelineSparseDist``.

Setup builds the teacher(s) and the student on ``meta``, wraps them in one
``DistillationModel``, freezes the teachers' tables (stateless fused SGD, left out of
the optimizer), shards everything with one ``DistributedModelParallel``, loads each
teacher checkpoint (resharded to this plan) and initialises the student exactly as
``train-student`` does (from ``train.warm_start`` when set), so "student alone" and "distilled" differ only in the loss.
Offline, no teacher is built: its stored outputs ride with each batch. With QAT the
student's embedding bag collections are :class:`~torchrec_kd.quant.qat.FakeQuantEmbeddingBagCollection` s.
Teachers and student are any registered architectures, called through their own forward;
feature terms read the submodules they name, with shapes measured on small copies.
``recipes.distill`` is its entry point.

Example::

    run = DistillRun(cfg, qat="int4")
    run.setup(); run.train()
    entry = run.save(run.evaluate("test"))
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
from torchrec.datasets.utils import Batch

from torchrec_kd.checkpoint.model_io import read_meta, save_model
from torchrec_kd.config import RunConfig, config_to_dict
from torchrec_kd.core.console import FILE_ONLY
from torchrec_kd.core.fingerprint import read_recorded, step_fingerprint
from torchrec_kd.core.layout import RunLayout, distilled_name
from torchrec_kd.distill.candidates import spec_from_data
from torchrec_kd.distill.frozen_teachers import build_frozen_teachers, distill_parts, load_frozen_teachers, teacher_ios
from torchrec_kd.distill.model import DistillationModel
from torchrec_kd.distill.offline import OfflineScores
from torchrec_kd.distill.teachers import STUDENT, TEACHERS, teacher_digests
from torchrec_kd.distributed.sharding import add_fused_embedding_optimizer, build_optimizer, planner_constraints, shard
from torchrec_kd.errors import ConfigError
from torchrec_kd.models.build import build_model, model_io, model_meta
from torchrec_kd.models.dlrm import MODEL_PREFIX, count_params, embedding_bytes
from torchrec_kd.models.init import init_weights
from torchrec_kd.models.registry import feature_roles
from torchrec_kd.quant.qat import set_fake_quant_step, use_fake_quant
from torchrec_kd.reporting.lineage import split_lineage
from torchrec_kd.reporting.metrics_file import metrics_table, read_metrics, update_metrics
from torchrec_kd.reporting.summary import announce_once, teacher_warning
from torchrec_kd.training.pipelined_run import PipelinedRun
from torchrec_kd.training.warm_start import warm_start

logger = logging.getLogger(__name__)


def warn_if_teacher_not_better(cfg: RunConfig, teacher_checkpoint: Path) -> Optional[str]:
    """Log (and return) a warning when the teacher does not score above the student alone.

    The student alone is taken only from this config's lineage (``split_lineage``: a student
    left in ``metrics.json`` by another config says nothing about this one). The comparison is
    the report's own (``teacher_warning``): best validation AUCs, else test AUCs when either
    model had no validation. The teacher's selection comes from its checkpoint; its test
    metrics from ``metrics.json`` only when that entry records this very checkpoint.

    Args:
        cfg (RunConfig): the run (its ``metrics.json`` may hold the student alone).
        teacher_checkpoint (Path): the (first) teacher's checkpoint; its meta records its selection.

    Returns:
        Optional[str]: the warning, or None (teacher better, or nothing to compare yet).
    """
    layout = RunLayout(cfg.out_dir)
    current = split_lineage(read_metrics(layout.metrics), cfg, layout.root).current
    student = current.get("student")
    meta = read_meta(teacher_checkpoint)
    teacher = dict(meta.get("selection") or {})
    recorded, own = read_recorded(meta), current.get("teacher") or {}
    if recorded and own.get("fingerprint") == recorded["digest"]:  # this checkpoint's entry: its test metrics too
        teacher = {**own, **teacher}
    if not student or not teacher:
        return None
    warning = teacher_warning({"teacher": teacher, "student": student})
    if warning and announce_once(warning):  # experiment's report states it: not printed there a second time
        logger.warning("distill: %s", warning)
    return warning


class DistillRun(PipelinedRun):
    """Distill the teacher(s) into ``cfg.student``, online or from stored scores, optionally QAT.

    Args:
        cfg (RunConfig): the validated run config.
        qat (Optional[str]): fake-quantize the student's rows as this format (``int4``, …)
            while it learns; the result is saved as ``distilled_qat``.
    """

    def __init__(self, cfg: RunConfig, qat: Optional[str] = None) -> None:
        super().__init__(cfg, "distill" if qat is None else "distill_qat", distilled_name(qat), trained_prefix=STUDENT,
                         data_role="student")
        self.qat = qat
        self.offline: Optional[OfflineScores] = None

    @property
    def teacher_checkpoint(self) -> Path:
        """The (first) teacher's checkpoint."""
        return self.teachers[0].checkpoint

    def setup(self) -> None:
        """Process group, data, models, freezing, sharding, teacher load, optimizer, pipeline."""
        cfg = self.cfg
        env = self.setup_run()
        dense_in = len(self.data.dense_names)
        parts = distill_parts(cfg, self.data)
        self.teachers, self.inputs, self.student_tables = parts.teachers, parts.inputs, parts.student_tables
        self.tasks = parts.tasks
        self.fingerprint = step_fingerprint(cfg, self.entry_name, {"teachers": teacher_digests(self.teachers)})
        if env.is_main:
            warn_if_teacher_not_better(cfg, self.teachers[0].checkpoint)
        loss = parts.loss
        if cfg.distill.offline:
            self.offline = OfflineScores.open(cfg, self.teachers, loss.taps, env, self.steps)
            self.teachers_built: List[torch.nn.Module] = []
        else:
            self.teachers_built = build_frozen_teachers(self.teachers, dense_in, roles=feature_roles(cfg.data.retrieval))
        student = build_model(cfg.student, self.student_tables, dense_in, dense_columns=self.inputs.dense_columns,
                              where="student", tasks=parts.student_tasks, roles=feature_roles(cfg.data.retrieval))
        if self.qat is not None:
            try:
                use_fake_quant(student, self.qat, cfg.distill.qat_start)
            except ValueError as e:
                raise ConfigError(f"distill.qat: {e}") from None
        online = bool(self.teachers_built)
        try:
            module = DistillationModel(self.teachers_built, student, loss,
                                       teacher_weights=[t.weight for t in self.teachers] if online else None,
                                       group_feature=cfg.distill.group_feature,
                                       teacher_io=teacher_ios(self.teachers) if online else None,
                                       student_io=model_io(cfg.student, parts.student_tasks),
                                       task_plan=parts.task_plan if online else None,
                                       candidates=spec_from_data(self.data) if "candidates" in loss.requires else None)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if cfg.distill.group_feature is not None and cfg.distill.group_feature not in self.data.sparse_names:
            raise ConfigError(f"distill.group_feature: '{cfg.distill.group_feature}' is not a sparse feature of this data; "
                              f"it has {list(self.data.sparse_names)[:8]}")
        add_fused_embedding_optimizer(module.student, cfg.train)
        all_tables = [t for spec in (self.teachers if online else []) for t in spec.tables] + self.student_tables
        constraints = planner_constraints(cfg.sharding, all_tables, env.device.type)
        self.model = shard(module, env, self.local_batch, constraints)
        init_weights(self.model, cfg.seed, prefix=STUDENT)
        if cfg.train.warm_start and self.qat is not None:
            raise ConfigError("train.warm_start: a quantization-aware student cannot be warm-started yet; "
                              "warm-start `distill` (without QAT) or leave train.warm_start out")
        warm_start(self.model, cfg.train.warm_start, cfg.student, self.student_tables, self.inputs.dense_in_features,
                   model_prefix=STUDENT)
        if online:
            load_frozen_teachers(cfg, self.model, self.teachers)
        self.optimizer = build_optimizer(self.model, cfg.train, frozen_prefix=TEACHERS)
        self.make_pipeline()

    def _resume(self) -> int:
        start = super()._resume()
        assert self.model is not None
        self.model.module.loss_fn.step = start  # schedules continue where the run stopped
        if self.qat is not None:  # and so does the QAT start
            set_fake_quant_step(self.model.module.student, start)
        return start

    def before_step(self, step: int) -> None:
        """The loss terms' schedules follow the loop's step (no clock of their own)."""
        assert self.model is not None
        self.model.module.set_step(step)

    def train_batches(self, start: int) -> Iterator[Batch]:
        """Offline, each batch carries the stored teacher outputs of its rows."""
        batches = super().train_batches(start)
        if self.offline is None:
            return batches
        assert self.env is not None
        return self.offline.attach(batches, start, self.env.rank, self.env.world_size)

    @torch.no_grad()
    def score(self, batch: Batch) -> torch.Tensor:
        """The student alone scores evaluation batches (no teacher work, no stored scores needed)."""
        assert self.model is not None
        return self.model.module.score(batch)

    def scored_model(self) -> torch.nn.Module:
        """The student (inside the DMP and the ``DistillationModel``)."""
        assert self.model is not None
        return self.model.module.student

    def save(self, metrics: Dict[str, float]) -> Dict[str, Any]:
        """Checkpoint the student (in ``train-student``'s layout) and record its metrics."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None
        out = cfg.out_dir
        meta = {"role": "student", "distilled_from": [str(t.checkpoint) for t in self.teachers],
                "offline": cfg.distill.offline, "qat": self.qat, "config": config_to_dict(cfg),
                "selection": self.selection(), "fingerprint": self.fingerprint,
                "world_size": env.world_size, "tables": [t.name for t in self.student_tables],
                **model_meta(cfg.student, self.student_tables, dense_in_features=self.inputs.dense_in_features,
                             dense_columns=self.inputs.dense_columns, tasks=self.tasks,
                             roles=feature_roles(cfg.data.retrieval))}
        save_model(self.model, out / self.entry_name, meta, model_prefix=STUDENT, ckpt_prefix=MODEL_PREFIX)
        emb = embedding_bytes(self.student_tables)
        entry = {**self.entry(metrics, count_params(emb, self.model, STUDENT), emb),
                 "losses": [config_to_dict(t) for t in cfg.distill.losses], "qat": self.qat,
                 "offline": cfg.distill.offline, "teachers": len(self.teachers)}
        if env.is_main:
            data = update_metrics(out, self.entry_name, entry)
            logger.info("wrote %s\n%s", RunLayout(out).metrics, metrics_table(data), extra=FILE_ONLY)
        return entry

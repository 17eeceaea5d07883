"""Recipe: distill trained teacher(s) into the student inside ``TrainPipelineSparseDist``.

Example::

    python -m torchrec_kd.cli distill --config configs/dlrm_teacher_synthetic.yaml
    python -m torchrec_kd.cli distill-qat --config configs/dlrm_teacher_synthetic.yaml   # int4-aware
    python -m torchrec_kd.cli distill --config … distill.offline=true                  # from score-teacher's cache

Setup builds the teacher(s) and the student on ``meta``, wraps them in one
``DistillationModel``, freezes the teachers' tables (stateless fused SGD, left out of
the optimizer), shards everything with one ``DistributedModelParallel``, loads each
teacher checkpoint (resharded to this plan) and initialises the student exactly as
``train-student`` does, so "student alone" and "distilled" differ only in the loss.
Offline, no teacher is built: its stored outputs ride with each batch. With QAT the
student's tables sit in a :class:`~torchrec_kd.qat.sparse_arch.FakeQuantSparseArch`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
from torchrec.datasets.utils import Batch
from torchrec.models.dlrm import DLRM

from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_kd.checkpoint import load_module, read_meta, save_model
from torchrec_kd.config import ConfigError, ModelConfig, RunConfig, config_to_dict
from torchrec_kd.distill.freeze import freeze_sharded, freeze_teacher_tables
from torchrec_kd.distill.model import DistillationModel
from torchrec_kd.distributed.init import init_weights
from torchrec_kd.distributed.sharding import add_fused_embedding_optimizer, build_optimizer, planner_constraints, shard
from torchrec_kd.distill.offline import OfflineScores, checkpoint_fingerprint
from torchrec_kd.fingerprint import read_recorded, step_fingerprint
from torchrec_kd.distill.quantized_teacher import quantize_frozen_tables
from torchrec_kd.losses import FeatureDims, build_loss
from torchrec_kd.models.dlrm import (build_dlrm, embedding_bytes, interaction_dim, make_tables, model_meta,
                                     tables_stored_as)
from torchrec_kd.qat.sparse_arch import use_fake_quant_sparse_arch
from torchrec_kd.recipes.pipelined import PipelinedRecipe
from torchrec_kd.recipes.train_model import MODEL_PREFIX, count_params, model_inputs
from torchrec_kd.results import METRICS_FILE, metrics_table, update_metrics
from torchrec_kd.summary import teacher_warning

logger = logging.getLogger(__name__)

TEACHERS, STUDENT = "teachers.", "student."
DISTILLED = "distilled"


def entry_name(qat: Optional[str]) -> str:
    """``metrics.json`` key and checkpoint directory of a distillation run."""
    return DISTILLED if qat is None else f"{DISTILLED}_qat"


def check_teacher_checkpoint(path: Path, teacher: ModelConfig, tables: List[EmbeddingBagConfig]) -> None:
    """Refuse a teacher checkpoint that does not match the configured teacher.

    Args:
        path (Path): teacher checkpoint directory (``train-teacher``'s output).
        teacher (ModelConfig): the ``teacher`` section of this run.
        tables (List[EmbeddingBagConfig]): the teacher tables this run builds.

    Raises:
        ConfigError: naming what differs (tables or architecture fields).
    """
    meta = read_meta(path)
    if meta.get("role") != "teacher":
        raise ConfigError(f"distill.teacher_checkpoint: {path} holds a {meta.get('role')!r} model, not a teacher")
    saved, wanted = meta.get("tables", []), [t.name for t in tables]
    if saved != wanted:
        raise ConfigError(f"distill.teacher_checkpoint: {path} has tables {saved[:3]}… but the teacher config builds "
                         f"{wanted[:3]}…; use the data/teacher config that trained it")
    saved_rows, wanted_rows = meta.get("num_embeddings"), [t.num_embeddings for t in tables]
    if saved_rows is not None and saved_rows != wanted_rows:
        diff = [(t.name, a, b) for t, a, b in zip(tables, saved_rows, wanted_rows) if a != b]
        raise ConfigError(f"distill.teacher_checkpoint: {path} has table rows {diff[:3]} (table, saved, configured); "
                          "use the data config the teacher was trained with")
    saved_cfg, wanted_cfg = meta.get("config", {}).get("teacher", {}), config_to_dict(teacher)
    diff = [k for k in wanted_cfg if k in saved_cfg and saved_cfg[k] != wanted_cfg[k]]
    if diff:
        raise ConfigError(f"distill.teacher_checkpoint: {path} was trained with teacher "
                         + ", ".join(f"{k}={saved_cfg[k]}" for k in diff) + " but this config says "
                         + ", ".join(f"{k}={wanted_cfg[k]}" for k in diff))


class TeacherSpec:
    """One teacher of this run: where it comes from and how it is built.

    Args:
        checkpoint (Path): its ``train-teacher`` checkpoint.
        weight (float): its ensemble weight.
        model (ModelConfig): architecture.
        tables (List[EmbeddingBagConfig]): its tables.
    """

    def __init__(self, checkpoint: Path, weight: float, model: ModelConfig, tables: List[EmbeddingBagConfig]) -> None:
        self.checkpoint, self.weight, self.model, self.tables = checkpoint, weight, model, tables

    @property
    def features(self) -> List[str]:
        return [t.feature_names[0] for t in self.tables]


def sharded_dtype(cfg: RunConfig) -> str:
    """The precision the teachers' tables are sharded (and loaded) in.

    An int8 teacher is loaded in fp16 (half the fp32 transient) and then quantized in
    place (:func:`~torchrec_kd.distill.quantized_teacher.quantize_frozen_tables`).
    """
    return "fp16" if cfg.distill.teacher_dtype == "int8" else cfg.distill.teacher_dtype


def store_teachers_as_int8(cfg: RunConfig, model: torch.nn.Module) -> None:
    """``distill.teacher_dtype=int8``: quantize the loaded, frozen teachers' tables in place.

    Args:
        cfg (RunConfig): the run config (nothing happens unless ``teacher_dtype`` is int8).
        model (nn.Module): the sharded model holding the teachers under ``teachers.``.

    Raises:
        ConfigError: the teachers' tables are sharded in a way the int8 kernel cannot replace.
    """
    if cfg.distill.teacher_dtype != "int8":
        return
    try:
        quantize_frozen_tables(model, TEACHERS)
    except ValueError as e:
        raise ConfigError(f"distill.teacher_dtype=int8: {e}; or use teacher_dtype fp16") from None


def resolve_teachers(cfg: RunConfig, sparse_names: List[str], num_embeddings: List[int]) -> List[TeacherSpec]:
    """The run's teachers: ``distill.teachers`` if listed, else the configured teacher.

    Args:
        cfg (RunConfig): the run config.
        sparse_names (List[str]): the data's sparse features.
        num_embeddings (List[int]): their table sizes.

    Returns:
        List[TeacherSpec]: checked against the data and each other.

    Raises:
        ConfigError: a checkpoint that is not a teacher, does not fit the data, or shares a
            table prefix with another model of the run.
    """
    if not cfg.distill.teachers:
        path = Path(cfg.distill.teacher_checkpoint or cfg.out_dir / "teacher")
        tables = make_tables(cfg.teacher, sparse_names, num_embeddings)
        check_teacher_checkpoint(path, cfg.teacher, tables)
        return [TeacherSpec(path, 1.0, cfg.teacher, tables_stored_as(tables, sharded_dtype(cfg)))]
    sizes = dict(zip(sparse_names, num_embeddings))
    specs: List[TeacherSpec] = []
    for i, entry in enumerate(cfg.distill.teachers):
        where = f"distill.teachers[{i}]"
        if not entry.checkpoint:
            raise ConfigError(f"{where}.checkpoint is empty; give a train-teacher output directory")
        if not entry.weight >= 0:
            raise ConfigError(f"{where}.weight must be >= 0, got {entry.weight}")
        meta = read_meta(Path(entry.checkpoint))
        if meta.get("role") != "teacher":
            raise ConfigError(f"{where}.checkpoint: {entry.checkpoint} holds a {meta.get('role')!r} model, not a teacher")
        model = ModelConfig(**meta["model"])
        feats, rows = meta["sparse_features"], meta["num_embeddings"]
        bad = [(f, r, sizes.get(f)) for f, r in zip(feats, rows) if sizes.get(f) != r]
        if bad:
            raise ConfigError(f"{where}.checkpoint: {entry.checkpoint} does not fit this data: (feature, its rows, the data's) "
                              f"{bad[:3]}; distill on the data the teacher was trained on")
        tables = tables_stored_as(make_tables(model, feats, rows), sharded_dtype(cfg))
        specs.append(TeacherSpec(Path(entry.checkpoint), entry.weight, model, tables))
    if sum(s.weight for s in specs) <= 0:
        raise ConfigError("distill.teachers: the weights sum to 0; give at least one teacher a positive weight")
    prefixes = [s.model.table_prefix for s in specs] + [cfg.student.table_prefix]
    clash = sorted({p for p in prefixes if prefixes.count(p) > 1})
    if clash:
        raise ConfigError(f"distill.teachers: table prefix(es) {clash} used by more than one model of this run "
                          "(every model shares one DMP); train the extra teacher with e.g. teacher.table_prefix=t2_")
    return specs


def teacher_digest(checkpoint: Path) -> str:
    """A teacher checkpoint's recorded fingerprint (one from before fingerprints: its file digest)."""
    recorded = read_recorded(read_meta(checkpoint))
    return recorded["digest"] if recorded else "sha256:" + checkpoint_fingerprint(checkpoint)[:16]


def teacher_digests(teachers: List[TeacherSpec]) -> str:
    """The teachers' digests, comma-joined: what a distilled student's fingerprint records of them."""
    return ",".join(teacher_digest(t.checkpoint) for t in teachers)


def warn_if_teacher_not_better(cfg: RunConfig, teacher_checkpoint: Path) -> Optional[str]:
    """Log (and return) a warning when the teacher's best validation AUC is not above the student alone's.

    Args:
        cfg (RunConfig): the run (its ``metrics.json`` may hold the student alone).
        teacher_checkpoint (Path): the (first) teacher's checkpoint; its meta records its selection.

    Returns:
        Optional[str]: the warning, or None (teacher better, or nothing to compare yet).
    """
    metrics_file = cfg.out_dir / METRICS_FILE
    student = json.loads(metrics_file.read_text()).get("student") if metrics_file.is_file() else None
    teacher = (read_meta(teacher_checkpoint).get("selection") or {})
    if not student or not teacher.get("best_val"):
        return None
    warning = teacher_warning({"teacher": teacher, "student": student})
    if warning:
        logger.warning("distill: %s", warning)
    return warning


class DistillRecipe(PipelinedRecipe):
    """Distill the teacher(s) into ``cfg.student``, online or from stored scores, optionally QAT.

    Args:
        cfg (RunConfig): the validated run config.
        qat (Optional[str]): fake-quantize the student's rows as this format (``int4``, …)
            while it learns; the result is saved as ``distilled_qat``.
    """

    def __init__(self, cfg: RunConfig, qat: Optional[str] = None) -> None:
        super().__init__(cfg, "distill" if qat is None else "distill_qat", entry_name(qat), trained_prefix=STUDENT,
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
        self.teachers = resolve_teachers(cfg, list(self.data.sparse_names), list(self.data.num_embeddings))
        self.fingerprint = step_fingerprint(cfg, self.entry_name, {"teachers": teacher_digests(self.teachers)})
        if env.is_main:
            warn_if_teacher_not_better(cfg, self.teachers[0].checkpoint)
        self.inputs = model_inputs(cfg, "student", self.data.sparse_names, self.data.num_embeddings, self.data.dense_names)
        features = self.inputs.sparse_features
        self.student_tables = make_tables(cfg.student, features, self.inputs.num_embeddings)
        first = self.teachers[0]
        dims = FeatureDims(student_hint=interaction_dim(cfg.student, len(features)),
                           teacher_hint=interaction_dim(first.model, len(first.features)),
                           student_dim=cfg.student.embedding_dim, teacher_dim=first.model.embedding_dim,
                           student_features=features, teacher_features=first.features)
        loss = build_loss(cfg.distill.losses, dims)
        if cfg.distill.offline:
            self.offline = OfflineScores.open(cfg, self.teachers, loss.requires, env, self.steps)
            self.teachers_built: List[DLRM] = []
        else:
            self.teachers_built = [build_dlrm(t.model, t.tables, dense_in) for t in self.teachers]
        student = build_dlrm(cfg.student, self.student_tables, dense_in, dense_columns=self.inputs.dense_columns)
        if self.qat is not None:
            use_fake_quant_sparse_arch(student, self.student_tables, self.qat, cfg.distill.qat_start)
        try:
            module = DistillationModel(self.teachers_built, student, loss,
                                       teacher_weights=[t.weight for t in self.teachers] if self.teachers_built else None,
                                       group_feature=cfg.distill.group_feature)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if cfg.distill.group_feature is not None and cfg.distill.group_feature not in self.data.sparse_names:
            raise ConfigError(f"distill.group_feature: '{cfg.distill.group_feature}' is not a sparse feature of this data; "
                              f"it has {list(self.data.sparse_names)[:8]}")
        for teacher in module.teachers:
            freeze_teacher_tables(teacher)
        add_fused_embedding_optimizer(module.student, cfg.train)
        online = self.teachers if self.teachers_built else []
        all_tables = [t for spec in online for t in spec.tables] + self.student_tables
        constraints = planner_constraints(cfg.sharding, all_tables, env.device.type)
        self.model = shard(module, env, self.local_batch, constraints)
        freeze_sharded(self.model, TEACHERS)
        init_weights(self.model, cfg.seed, prefix=STUDENT)
        for i, spec in enumerate(online):
            load_module(self.model, spec.checkpoint, model_prefix=f"{TEACHERS}{i}.", ckpt_prefix=MODEL_PREFIX)
        if online:
            store_teachers_as_int8(cfg, self.model)
        self.optimizer = build_optimizer(self.model, cfg.train, frozen_prefix=TEACHERS)
        self.make_pipeline()

    def _resume(self) -> int:
        start = super()._resume()
        assert self.model is not None
        self.model.module.loss_fn.step = start  # schedules continue where the run stopped
        if self.qat is not None:  # and so does the QAT start
            self.model.module.student.sparse_arch.pool.step = start
        return start

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
        return self.model.module.student(batch.dense_features, batch.sparse_features).squeeze(-1)

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
                             dense_columns=self.inputs.dense_columns)}
        save_model(self.model, out / self.entry_name, meta, model_prefix=STUDENT, ckpt_prefix=MODEL_PREFIX)
        emb = embedding_bytes(self.student_tables)
        entry = {**self.entry(metrics, count_params(emb, self.model, STUDENT), emb),
                 "losses": [config_to_dict(t) for t in cfg.distill.losses], "qat": self.qat,
                 "offline": cfg.distill.offline, "teachers": len(self.teachers)}
        if env.is_main:
            data = update_metrics(out, self.entry_name, entry)
            logger.info("wrote %s\n%s", out / "metrics.json", metrics_table(data))
        return entry


def run(cfg: RunConfig, qat: Optional[str] = None) -> Dict[str, Any]:
    """Distill, evaluate on the test split and save. Returns the ``distilled`` (or ``distilled_qat``) entry."""
    recipe = DistillRecipe(cfg, qat)
    recipe.setup()
    recipe.train()
    return recipe.save(recipe.evaluate("test"))

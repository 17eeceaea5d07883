"""The teachers of a distillation run: which checkpoints, checked against the config and the data.

``resolve_teachers`` reads ``distill.teachers`` (or the run's own ``teacher/``), refuses a
checkpoint that is not a teacher, does not fit the data or clashes with another model's
table prefix, and says in which precision each teacher's tables are sharded.

Example::

    teachers = resolve_teachers(cfg, data.sparse_names, data.num_embeddings)
    model = DistillationModel([build_model(t.model, t.tables, 13) for t in teachers], student, loss,
                              teacher_io=[model_io(t.model) for t in teachers])
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_kd.checkpoint.model_io import checkpoint_fingerprint, read_meta
from torchrec_kd.config import ModelConfig, RunConfig, config_to_dict
from torchrec_kd.core.fingerprint import more, read_recorded, short_value
from torchrec_kd.core.layout import TEACHER, RunLayout
from torchrec_kd.core.tasks import Task, run_tasks
from torchrec_kd.distill.task_teachers import TaskSource, TeacherTasks, saved_tasks, task_plan
from torchrec_kd.errors import CheckpointError, ConfigError
from torchrec_kd.models.build import model_config_from_meta
from torchrec_kd.models.dlrm import make_tables, tables_stored_as
from torchrec_kd.quant.int8_teacher import quantize_frozen_tables

# Where the models sit inside a DistillationModel (its state dict, its sharding plan).
TEACHERS, STUDENT = "teachers.", "student."


def check_teacher_checkpoint(path: Path, teacher: ModelConfig, tables: List[EmbeddingBagConfig]) -> None:
    """Refuse a teacher checkpoint that does not match the configured teacher, saying everything that differs.

    Args:
        path (Path): teacher checkpoint directory (``train-teacher``'s output).
        teacher (ModelConfig): the ``teacher`` section of this run.
        tables (List[EmbeddingBagConfig]): the teacher tables this run builds.

    Raises:
        CheckpointError: one line naming what differs, checkpoint -> config: the tables only one
            side has, a table's rows, and the teacher's fields (``embedding_dim: 64 -> 16``).
    """
    meta = read_meta(path)
    if meta.get("role") != "teacher":
        raise CheckpointError(f"distill.teacher_checkpoint: {path} holds a {meta.get('role')!r} model, not a teacher")
    diff = teacher_checkpoint_difference(meta, teacher, tables)
    if diff:
        raise CheckpointError(f"distill.teacher_checkpoint: {path} was trained for another teacher or data "
                              f"(checkpoint -> this config): {'; '.join(diff)}; use the data and teacher config "
                              "that trained it, or train a teacher for this one")


def _names(items: List[str], limit: int) -> str:
    """``a, b, c and 5 more``."""
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def teacher_checkpoint_difference(meta: dict, teacher: ModelConfig, tables: List[EmbeddingBagConfig],
                                  limit: int = 4) -> List[str]:
    """What differs between a teacher checkpoint's ``meta.json`` and the teacher this config builds.

    Args:
        meta (dict): the checkpoint's meta.
        teacher (ModelConfig): the ``teacher`` section of this run.
        tables (List[EmbeddingBagConfig]): the teacher tables this run builds.
        limit (int): how many names to give in each list before ``and N more``.

    Returns:
        List[str]: e.g. ``["tables only in the checkpoint: t_cat_4, t_cat_5", "rows of t_cat_0: 1000 -> 500",
        "embedding_dim: 64 -> 16"]``; empty when they match.
    """
    saved, wanted = list(meta.get("tables", [])), [t.name for t in tables]
    out = []
    only_saved, only_wanted = [t for t in saved if t not in wanted], [t for t in wanted if t not in saved]
    if only_saved:
        out.append(f"tables only in the checkpoint: {_names(only_saved, limit)}")
    if only_wanted:
        out.append(f"tables only in the config: {_names(only_wanted, limit)}")
    if not only_saved and not only_wanted and saved != wanted:
        out.append(f"the same tables in another order: {_names(saved, limit)}")
    saved_rows = dict(zip(saved, meta.get("num_embeddings") or []))
    rows = [f"rows of {t.name}: {saved_rows[t.name]} -> {t.num_embeddings}" for t in tables
            if t.name in saved_rows and saved_rows[t.name] != t.num_embeddings]
    out += more(rows, limit)
    saved_cfg, wanted_cfg = meta.get("config", {}).get("teacher", {}), config_to_dict(teacher)
    fields = [f"{k}: {short_value(saved_cfg[k])} -> {short_value(wanted_cfg[k])}" for k in wanted_cfg
              if k in saved_cfg and saved_cfg[k] != wanted_cfg[k]]
    return out + more(fields, limit)


class TeacherSpec:
    """One teacher of this run: where it comes from and how it is built.

    Args:
        checkpoint (Path): its ``train-teacher`` checkpoint.
        weight (float): its ensemble weight.
        model (ModelConfig): architecture.
        tables (List[EmbeddingBagConfig]): its tables.
        tasks (Optional[List[Task]]): its output columns (from its meta.json; default one ``label`` task).
        teaches (Optional[List[str]]): ``distill.teachers[i].tasks`` (None: every task it has).
        where (str): its config key, for messages.
    """

    def __init__(self, checkpoint: Path, weight: float, model: ModelConfig, tables: List[EmbeddingBagConfig],
                 tasks: Optional[List[Task]] = None, teaches: Optional[List[str]] = None,
                 where: str = "distill.teacher_checkpoint") -> None:
        self.checkpoint, self.weight, self.model, self.tables = checkpoint, weight, model, tables
        self.tasks: List[Task] = list(tasks or [Task("label")])
        self.teaches, self.where = teaches, where

    @property
    def build_tasks(self) -> Optional[List[Task]]:
        """The tasks it is built (and called) with: None for a one-output teacher (as always)."""
        return self.tasks if len(self.tasks) > 1 else None

    @property
    def features(self) -> List[str]:
        return [t.feature_names[0] for t in self.tables]


def sharded_dtype(cfg: RunConfig) -> str:
    """The precision the teachers' tables are sharded (and loaded) in.

    An int8 teacher is loaded in fp16 (half the fp32 transient) and then quantized in
    place (:func:`~torchrec_kd.quant.int8_teacher.quantize_frozen_tables`).
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
        path = Path(cfg.distill.teacher_checkpoint or RunLayout(cfg.out_dir).model(TEACHER))
        tables = make_tables(cfg.teacher, sparse_names, num_embeddings)
        check_teacher_checkpoint(path, cfg.teacher, tables)
        return [TeacherSpec(path, 1.0, cfg.teacher, tables_stored_as(tables, sharded_dtype(cfg)),
                            saved_tasks(read_meta(path)))]
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
            raise CheckpointError(f"{where}.checkpoint: {entry.checkpoint} holds a {meta.get('role')!r} model, not a teacher")
        model = model_config_from_meta(meta, f"{where}.checkpoint {entry.checkpoint}")
        feats, rows = meta["sparse_features"], meta["num_embeddings"]
        bad = [(f, r, sizes.get(f)) for f, r in zip(feats, rows) if sizes.get(f) != r]
        if bad:
            raise CheckpointError(f"{where}.checkpoint: {entry.checkpoint} does not fit this data: "
                                  f"(feature, its rows, the data's) {bad[:3]}; distill on the data the teacher was trained on")
        tables = tables_stored_as(make_tables(model, feats, rows), sharded_dtype(cfg))
        specs.append(TeacherSpec(Path(entry.checkpoint), entry.weight, model, tables, saved_tasks(meta),
                                 list(entry.tasks) if entry.tasks is not None else None, where))
    if sum(s.weight for s in specs) <= 0:
        raise ConfigError("distill.teachers: the weights sum to 0; give at least one teacher a positive weight")
    prefixes = [s.model.table_prefix for s in specs] + [cfg.student.table_prefix]
    clash = sorted({p for p in prefixes if prefixes.count(p) > 1})
    if clash:
        raise ConfigError(f"distill.teachers: table prefix(es) {clash} used by more than one model of this run "
                          "(every model shares one DMP); train the extra teacher with e.g. teacher.table_prefix=t2_")
    return specs


def teacher_task_plan(cfg: RunConfig, teachers: Sequence[TeacherSpec]) -> Optional[List[List[TaskSource]]]:
    """Which teachers' columns make each student task's soft target (None: one task, the plain mean).

    Args:
        cfg (RunConfig): the run (its ``tasks``).
        teachers (Sequence[TeacherSpec]): from :func:`resolve_teachers`.

    Returns:
        Optional[List[List[TaskSource]]]: see :func:`~torchrec_kd.distill.task_teachers.task_plan`.

    Raises:
        ConfigError: a student task no teacher teaches, or a teacher listing a task it lacks.
    """
    return task_plan(run_tasks(cfg), [TeacherTasks(t.tasks, t.teaches, t.weight, t.where) for t in teachers])


def teacher_digest(checkpoint: Path) -> str:
    """A teacher checkpoint's recorded fingerprint (one from before fingerprints: its file digest)."""
    recorded = read_recorded(read_meta(checkpoint))
    return recorded["digest"] if recorded else "sha256:" + checkpoint_fingerprint(checkpoint)[:16]


def teacher_digests(teachers: List[TeacherSpec]) -> str:
    """The teachers' digests, comma-joined: what a distilled student's fingerprint records of them."""
    return ",".join(teacher_digest(t.checkpoint) for t in teachers)

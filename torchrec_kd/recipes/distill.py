"""Recipe: distill the trained teacher into the student inside ``TrainPipelineSparseDist``.

Example::

    python -m torchrec_kd.cli distill --config configs/dlrm_teacher_synthetic.yaml

Setup builds teacher and student on ``meta``, wraps them in one
``DistillationModel``, freezes the teacher's tables (stateless fused SGD, left out of
the optimizer), shards everything with one ``DistributedModelParallel``, loads the
teacher checkpoint (resharded to this plan) and initialises the student exactly as
``train-student`` does, so "student alone" and "distilled" differ only in the loss.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List

from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_kd.checkpoint import load_module, read_meta, save_model
from torchrec_kd.config import ConfigError, ModelConfig, RunConfig, config_to_dict
from torchrec_kd.distill.freeze import freeze_sharded, freeze_teacher_tables
from torchrec_kd.distill.model import DistillationModel
from torchrec_kd.distributed.init import init_weights
from torchrec_kd.distributed.sharding import add_fused_embedding_optimizer, build_optimizer, planner_constraints, shard
from torchrec_kd.losses import build_loss
from torchrec_kd.models.dlrm import build_dlrm, embedding_bytes, make_tables, model_meta
from torchrec_kd.recipes.pipelined import PipelinedRecipe
from torchrec_kd.recipes.train_model import MODEL_PREFIX, count_params
from torchrec_kd.results import metrics_table, update_metrics

logger = logging.getLogger(__name__)

TEACHER, STUDENT = "teacher.", "student."
DISTILLED = "distilled"


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


class DistillRecipe(PipelinedRecipe):
    """Distill ``cfg.teacher`` (from its checkpoint) into ``cfg.student``.

    Args:
        cfg (RunConfig): the validated run config.
    """

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg, "distill", DISTILLED)

    @property
    def teacher_checkpoint(self) -> Path:
        """Where the teacher is loaded from."""
        return Path(self.cfg.distill.teacher_checkpoint or self.cfg.out_dir / "teacher")

    def setup(self) -> None:
        """Process group, data, both models, freezing, sharding, teacher load, optimizer, pipeline."""
        cfg = self.cfg
        env = self.setup_run()
        dense_in = len(self.data.dense_names)
        self.teacher_tables = make_tables(cfg.teacher, self.data.sparse_names, self.data.num_embeddings)
        self.student_tables = make_tables(cfg.student, self.data.sparse_names, self.data.num_embeddings)
        check_teacher_checkpoint(self.teacher_checkpoint, cfg.teacher, self.teacher_tables)
        module = DistillationModel(build_dlrm(cfg.teacher, self.teacher_tables, dense_in),
                                   build_dlrm(cfg.student, self.student_tables, dense_in),
                                   build_loss(cfg.distill.losses))
        freeze_teacher_tables(module.teacher)
        add_fused_embedding_optimizer(module.student, cfg.train)
        constraints = planner_constraints(cfg.sharding, self.teacher_tables + self.student_tables, env.device.type)
        self.model = shard(module, env, self.local_batch, constraints)
        freeze_sharded(self.model, TEACHER)
        init_weights(self.model, cfg.seed, prefix=STUDENT)
        load_module(self.model, self.teacher_checkpoint, model_prefix=TEACHER, ckpt_prefix=MODEL_PREFIX)
        self.optimizer = build_optimizer(self.model, cfg.train, frozen_prefix=TEACHER)
        self.make_pipeline()

    def save(self, metrics: Dict[str, float]) -> Dict[str, Any]:
        """Checkpoint the student (in ``train-student``'s layout) and record its metrics."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None
        out = cfg.out_dir
        meta = {"role": "student", "distilled_from": str(self.teacher_checkpoint), "config": config_to_dict(cfg),
                "world_size": env.world_size, "tables": [t.name for t in self.student_tables],
                **model_meta(cfg.student, self.student_tables, len(self.data.dense_names))}
        save_model(self.model, out / DISTILLED, meta, model_prefix=STUDENT, ckpt_prefix=MODEL_PREFIX)
        emb = embedding_bytes(self.student_tables)
        entry = {**self.entry(metrics, count_params(emb, self.model, STUDENT), emb),
                 "losses": [config_to_dict(t) for t in cfg.distill.losses]}
        if env.is_main:
            data = update_metrics(out, DISTILLED, entry)
            logger.info("wrote %s\n%s", out / "metrics.json", metrics_table(data))
        return entry


def run(cfg: RunConfig) -> Dict[str, Any]:
    """Distill, evaluate on the test split and save. Returns the ``distilled`` entry."""
    recipe = DistillRecipe(cfg)
    recipe.setup()
    recipe.train()
    return recipe.save(recipe.evaluate("test"))

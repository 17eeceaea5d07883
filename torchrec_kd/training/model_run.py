"""Train one sharded model (the teacher, or the student alone) through ``TrainPipelineSparseDist``.

The student trained alone, with the same data, budget and seed as distillation, is the
baseline distillation has to beat. ``recipes.train_model`` is its entry point.

Example::

    run = TrainModelRun(cfg, "teacher")
    run.setup(); run.train()
    entry = run.save(run.evaluate("test"))
"""

from __future__ import annotations

import logging
from typing import Any, Dict

import torch
from torchrec.datasets.utils import Batch

from torchrec_kd.checkpoint.model_io import save_model
from torchrec_kd.config import RunConfig, config_to_dict
from torchrec_kd.core.console import FILE_ONLY
from torchrec_kd.core.fingerprint import step_fingerprint
from torchrec_kd.core.layout import RunLayout
from torchrec_kd.core.tasks import is_multitask
from torchrec_kd.distill.candidates import has_towers, spec_from_data
from torchrec_kd.distributed.sharding import add_fused_embedding_optimizer, build_optimizer, planner_constraints, shard
from torchrec_kd.errors import ConfigError
from torchrec_kd.models.build import build_model, model_io, model_meta
from torchrec_kd.models.dlrm import MODEL_PREFIX, count_params, embedding_bytes, make_tables
from torchrec_kd.models.init import init_weights
from torchrec_kd.models.inputs import model_inputs
from torchrec_kd.models.registry import feature_roles
from torchrec_kd.models.train import RankerTrain
from torchrec_kd.reporting.metrics_file import metrics_table, update_metrics
from torchrec_kd.training.evaluate import scorer
from torchrec_kd.training.pipelined_run import PipelinedRun
from torchrec_kd.training.tower_train import TowerTrain, tower_loss
from torchrec_kd.training.warm_start import warm_start

logger = logging.getLogger(__name__)

ROLES = ("teacher", "student")


class TrainModelRun(PipelinedRun):
    """Build, shard, train, evaluate and save one model (``cfg.teacher`` or ``cfg.student``, any registered arch).

    The student trained alone, with the same data, steps and seed as distillation,
    is the baseline that distillation has to beat.

    Args:
        cfg (RunConfig): the validated run config.
        role (str): "teacher" or "student": which model config to train; also the
            checkpoint directory and the ``metrics.json`` key.
    """

    def __init__(self, cfg: RunConfig, role: str = "teacher") -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        super().__init__(cfg, role, role, trained_prefix=MODEL_PREFIX, data_role=role)
        self.role = role
        self.model_cfg = getattr(cfg, role)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Process group, data, model on meta, sharding plan, initial (or warm-start) weights, optimizers, pipeline."""
        cfg = self.cfg
        env = self.setup_run()
        self.fingerprint = step_fingerprint(cfg, self.role)
        self.inputs = model_inputs(cfg, self.role, self.data.sparse_names, self.data.num_embeddings, self.data.dense_names)
        self.tables = make_tables(self.model_cfg, self.inputs.sparse_features, self.inputs.num_embeddings)
        # several tasks: [B, T] outputs and the per-task loss; one task: None, the model as it always was
        tasks = self.tasks if is_multitask(self.tasks) else None
        model = build_model(self.model_cfg, self.tables, self.inputs.dense_in_features,
                            dense_columns=self.inputs.dense_columns, where=self.role, tasks=tasks,
                            roles=feature_roles(cfg.data.retrieval))
        io = model_io(self.model_cfg, tasks)
        if cfg.train.tower_losses and self.role == "student" and not has_towers(model):
            raise ConfigError(f"train.tower_losses: the student ({self.model_cfg.arch}) has no towers (user_embedding, "
                              "item_embedding, score_matrix); use arch: two_tower or drop them (a ranker teacher "
                              "ignores them)")
        if cfg.train.tower_losses and has_towers(model):  # a retrieval model's own label objective
            module: RankerTrain = TowerTrain(model, io, tower_loss(cfg), spec_from_data(self.data))
        else:
            module = RankerTrain(model, io)
        add_fused_embedding_optimizer(module, cfg.train)
        self.model = shard(module, env, self.local_batch, planner_constraints(cfg.sharding, self.tables, env.device.type))
        init_weights(self.model, cfg.seed, prefix=MODEL_PREFIX)
        warm_start(self.model, cfg.train.warm_start, self.model_cfg, self.tables, self.inputs.dense_in_features)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.make_pipeline()

    def before_step(self, step: int) -> None:
        """A tower model's label terms (``train.tower_losses``) follow the loop's step, as distillation's do."""
        assert self.model is not None
        if isinstance(self.model.module, TowerTrain):
            self.model.module.terms.set_step(step)

    # ------------------------------------------------------------------ score
    @torch.no_grad()
    def score(self, batch: Batch) -> torch.Tensor:
        """The trained model's logits ``[B]`` (``[B, T]`` with several tasks), through its ModelIO as in training."""
        assert self.model is not None
        return scorer(self.model)(batch)

    def scored_model(self) -> torch.nn.Module:
        """The trained model itself (inside the DMP and ``RankerTrain``)."""
        assert self.model is not None
        return self.model.module.model

    # ------------------------------------------------------------------- save
    def save(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        """Checkpoint the model and merge its entry into ``metrics.json``."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None
        out = cfg.out_dir
        meta = {"role": self.role, "config": config_to_dict(cfg), "world_size": env.world_size,
                "tables": [t.name for t in self.tables], "selection": self.selection(), "fingerprint": self.fingerprint,
                **model_meta(self.model_cfg, self.tables, self.inputs.dense_in_features, self.inputs.dense_columns,
                             tasks=self.tasks if is_multitask(self.tasks) else None,
                             roles=feature_roles(cfg.data.retrieval))}
        save_model(self.model, out / self.role, meta)
        emb = embedding_bytes(self.tables)
        entry = self.entry(metrics, count_params(emb, self.model, MODEL_PREFIX), emb)
        if env.is_main:
            data = update_metrics(out, self.role, entry)
            logger.info("wrote %s\n%s", RunLayout(out).metrics, metrics_table(data), extra=FILE_ONLY)
        return entry

"""Recipe: train a sharded DLRM teacher through ``TrainPipelineSparseDist``.

Example::

    python -m torchrec_kd.cli train-teacher --config configs/dlrm_teacher_synthetic.yaml train.steps=100
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.models.dlrm import DLRMTrain

from torchrec_kd.checkpoint import save_model
from torchrec_kd.config import RunConfig, config_to_dict
from torchrec_kd.data import build_data
from torchrec_kd.distributed.env import DistEnv, init_distributed
from torchrec_kd.distributed.init import init_weights
from torchrec_kd.distributed.sharding import (add_fused_embedding_optimizer, build_optimizer, planner_constraints, shard)
from torchrec_kd.models.dlrm import build_dlrm, embedding_bytes, make_tables
from torchrec_kd.results import metrics_table, update_metrics
from torchrec_kd.training.evaluate import evaluate
from torchrec_kd.training.loop import TrainStats, train

logger = logging.getLogger(__name__)

TEACHER_CKPT = "teacher"


def count_params(tables_bytes: int, model: torch.nn.Module) -> int:
    """Global parameter count: embedding rows from the table configs + dense parameters."""
    dense = sum(p.numel() for n, p in model.named_parameters() if "embedding_bags" not in n)
    return tables_bytes // 4 + dense


class TrainTeacherRecipe:
    """Build, shard, train, evaluate and save a DLRM teacher.

    Args:
        cfg (RunConfig): the validated run config.
    """

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.env: Optional[DistEnv] = None
        self.model: Optional[DistributedModelParallel] = None
        self.stats = TrainStats()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Process group, data, model on meta, sharding plan, optimizers, pipeline."""
        cfg = self.cfg
        self.env = env = init_distributed(cfg.distributed)
        torch.manual_seed(cfg.seed)
        self.data = build_data(cfg.data, cfg.seed)
        self.local_batch = cfg.data.batch_size // env.world_size
        self.tables = make_tables(cfg.teacher, self.data.sparse_names, self.data.num_embeddings)
        module = DLRMTrain(build_dlrm(cfg.teacher, self.tables, len(self.data.dense_names)))
        add_fused_embedding_optimizer(module, cfg.train)
        self.model = shard(module, env, self.local_batch, planner_constraints(cfg.sharding, self.tables, env.device.type))
        init_weights(self.model, cfg.seed)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.pipeline = TrainPipelineSparseDist(self.model, self.optimizer, env.device)

    # ------------------------------------------------------------------ train
    def train(self) -> TrainStats:
        """Run ``train.steps`` pipelined steps on the train stream."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None
        self.model.train()
        batches = self.data.batches("train", cfg.data.batch_size, env.rank, env.world_size, num_batches=cfg.train.steps)
        self.stats = train(self.pipeline, batches, cfg.train.steps, env, cfg.data.batch_size, cfg.train.log_every,
                           cfg.train.eval_every, on_eval=lambda step: self.evaluate("val"), desc="teacher")
        self.pipeline.detach()
        return self.stats

    def evaluate(self, split: str = "test") -> Dict[str, float]:
        """AUC / NE / log loss / calibration of the teacher on ``split``."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None
        self.model.eval()
        n = self.data.num_batches(split, cfg.data.batch_size) or 0
        batches = self.data.batches(split, cfg.data.batch_size, env.rank, env.world_size)
        return evaluate(lambda b: self.model(b)[1][1], batches, env, self.local_batch, n * cfg.data.batch_size)

    # ------------------------------------------------------------------- save
    def save(self, metrics: Dict[str, float]) -> Dict[str, Any]:
        """Checkpoint the teacher and merge its entry into ``metrics.json``."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None
        out = cfg.out_dir
        meta = {"role": "teacher", "config": config_to_dict(cfg), "world_size": env.world_size,
                "tables": [t.name for t in self.tables]}
        save_model(self.model, out / TEACHER_CKPT, meta)
        emb = embedding_bytes(self.tables)
        entry = {**metrics, "params": count_params(emb, self.model), "embedding_bytes": emb,
                 "train_samples_per_s": self.stats.samples_per_s, "world_size": env.world_size,
                 "steps": self.stats.steps, "loss_curve": list(zip(self.stats.loss_steps, self.stats.losses))}
        if env.is_main:
            data = update_metrics(out, "teacher", entry)
            logger.info("wrote %s\n%s", out / "metrics.json", metrics_table(data))
        return entry


def run(cfg: RunConfig) -> Dict[str, Any]:
    """Train, evaluate on the test split and save a teacher. Returns its metrics entry."""
    recipe = TrainTeacherRecipe(cfg)
    recipe.setup()
    recipe.train()
    return recipe.save(recipe.evaluate("test"))

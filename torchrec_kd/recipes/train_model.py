"""Recipe: train a sharded DLRM (the teacher, or the student alone) through ``TrainPipelineSparseDist``.

Example::

    python -m torchrec_kd.cli train-teacher --config configs/dlrm_teacher_synthetic.yaml train.steps=100
    python -m torchrec_kd.cli train-student --config configs/dlrm_teacher_synthetic.yaml
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torchrec.models.dlrm import DLRMTrain

from torchrec_kd.checkpoint import save_model
from torchrec_kd.config import ConfigError, RunConfig, config_to_dict
from torchrec_kd.distributed.init import init_weights
from torchrec_kd.fingerprint import step_fingerprint
from torchrec_kd.distributed.sharding import (add_fused_embedding_optimizer, build_optimizer, planner_constraints, shard)
from torchrec_kd.models.dlrm import build_dlrm, embedding_bytes, is_table_key, make_tables, model_meta
from torchrec_kd.results import metrics_table, update_metrics
from torchrec_kd.recipes.pipelined import PipelinedRecipe

logger = logging.getLogger(__name__)

ROLES = ("teacher", "student")
MODEL_PREFIX = "model."  # DLRMTrain holds the DLRM as .model


def count_params(tables_bytes: int, model: torch.nn.Module, prefix: str = "") -> int:
    """Global parameter count under ``prefix``: fp32 table bytes / 4 + dense parameters.

    Dense parameters are replicated, so this rank's state dict holds them whole.
    """
    dense = sum(v.numel() for k, v in model.state_dict().items() if k.startswith(prefix) and not is_table_key(k))
    return tables_bytes // 4 + dense


@dataclass(frozen=True)
class ModelInputs:
    """What one role's model reads of the data.

    Attributes:
        sparse_features (List[str]): the sparse features it has tables for.
        num_embeddings (List[int]): their table sizes.
        dense_in_features (int): width of the batch's dense input (every dense feature).
        dense_columns (Optional[List[int]]): the dense columns it reads; None: all.
    """

    sparse_features: List[str]
    num_embeddings: List[int]
    dense_in_features: int
    dense_columns: Optional[List[int]] = None


def model_inputs(cfg: RunConfig, role: str, sparse_names: Sequence[str], sizes: Sequence[int],
                 dense_names: Sequence[str]) -> ModelInputs:
    """The features the ``role`` model reads.

    The teacher reads every feature; the student leaves out ``distill.privileged_features``,
    which may name sparse features (no table) and dense features (its dense arch skips
    their columns).

    Args:
        cfg (RunConfig): the run config.
        role (str): "teacher" or "student".
        sparse_names (Sequence[str]): the data's sparse features.
        sizes (Sequence[int]): their table sizes.
        dense_names (Sequence[str]): the data's dense features, in column order.

    Returns:
        ModelInputs: the features kept.

    Raises:
        ConfigError: a privileged feature the data does not have, or every sparse (or
            every dense) feature privileged.
    """
    privileged = set(cfg.distill.privileged_features)
    unknown = sorted(privileged - set(sparse_names) - set(dense_names))
    if unknown:
        raise ConfigError(f"distill.privileged_features: {unknown} are not features of this data; it has sparse "
                          f"{list(sparse_names)[:8]}{' …' if len(sparse_names) > 8 else ''} and dense "
                          f"{list(dense_names)[:8]}{' …' if len(dense_names) > 8 else ''}")
    if role == "teacher" or not privileged:
        return ModelInputs(list(sparse_names), list(sizes), len(dense_names))
    kept = [(n, k) for n, k in zip(sparse_names, sizes) if n not in privileged]
    if not kept:
        raise ConfigError("distill.privileged_features lists every sparse feature; the student needs at least one")
    columns = [i for i, n in enumerate(dense_names) if n not in privileged]
    if dense_names and not columns:
        raise ConfigError("distill.privileged_features lists every dense feature; the student needs at least one")
    return ModelInputs([n for n, _ in kept], [k for _, k in kept], len(dense_names),
                       columns if len(columns) < len(dense_names) else None)


class TrainModelRecipe(PipelinedRecipe):
    """Build, shard, train, evaluate and save one DLRM (``cfg.teacher`` or ``cfg.student``).

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
        """Process group, data, model on meta, sharding plan, optimizers, pipeline."""
        cfg = self.cfg
        env = self.setup_run()
        self.fingerprint = step_fingerprint(cfg, self.role)
        self.inputs = model_inputs(cfg, self.role, self.data.sparse_names, self.data.num_embeddings, self.data.dense_names)
        self.tables = make_tables(self.model_cfg, self.inputs.sparse_features, self.inputs.num_embeddings)
        module = DLRMTrain(build_dlrm(self.model_cfg, self.tables, self.inputs.dense_in_features,
                                     dense_columns=self.inputs.dense_columns))
        add_fused_embedding_optimizer(module, cfg.train)
        self.model = shard(module, env, self.local_batch, planner_constraints(cfg.sharding, self.tables, env.device.type))
        init_weights(self.model, cfg.seed, prefix=MODEL_PREFIX)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.make_pipeline()

    # ------------------------------------------------------------------ train
    # ------------------------------------------------------------------- save
    def save(self, metrics: Dict[str, float]) -> Dict[str, Any]:
        """Checkpoint the model and merge its entry into ``metrics.json``."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None
        out = cfg.out_dir
        meta = {"role": self.role, "config": config_to_dict(cfg), "world_size": env.world_size,
                "tables": [t.name for t in self.tables], "selection": self.selection(), "fingerprint": self.fingerprint,
                **model_meta(self.model_cfg, self.tables, self.inputs.dense_in_features, self.inputs.dense_columns)}
        save_model(self.model, out / self.role, meta)
        emb = embedding_bytes(self.tables)
        entry = self.entry(metrics, count_params(emb, self.model, MODEL_PREFIX), emb)
        if env.is_main:
            data = update_metrics(out, self.role, entry)
            logger.info("wrote %s\n%s", out / "metrics.json", metrics_table(data))
        return entry


def run(cfg: RunConfig, role: str = "teacher") -> Dict[str, Any]:
    """Train, evaluate on the test split and save the ``role`` model. Returns its metrics entry."""
    recipe = TrainModelRecipe(cfg, role)
    recipe.setup()
    recipe.train()
    return recipe.save(recipe.evaluate("test"))

"""Warm start (``train.warm_start``): a freshly sharded model takes a saved model's weights before step 0.

The saved model is any ``train-teacher`` / ``train-student`` / ``distill`` output (``<run>/<role>``),
all of which store the model's keys under ``model.``. It must be the same architecture with the
same tables (names, rows, dim): anything else is refused with one line naming the difference,
never partly loaded. DCP reshards the weights to this run's plan, so a model saved on N ranks
warm-starts one on M. The optimizer starts fresh; the checkpoint's digest is part of the step's
fingerprint (``core.fingerprint.warm_start_digest``), so a remade checkpoint makes the step stale.

Example::

    init_weights(model, cfg.seed, prefix=MODEL_PREFIX)
    warm_start(model, cfg.train.warm_start, cfg.student, tables, dense_in, model_prefix=MODEL_PREFIX)
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional, Sequence

from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_kd.checkpoint.model_io import load_module, read_meta
from torchrec_kd.config import ModelConfig
from torchrec_kd.errors import CheckpointError
from torchrec_kd.models.dlrm import MODEL_PREFIX

logger = logging.getLogger(__name__)

WHERE = "train.warm_start"


def check_warm_start(path: Path, model_cfg: ModelConfig, tables: Sequence[EmbeddingBagConfig],
                     dense_in_features: int) -> None:
    """Refuse a saved model that is not the model this run builds (architecture, tables, inputs).

    Args:
        path (Path): the saved model's directory.
        model_cfg (ModelConfig): the model section this run trains (``teacher`` or ``student``).
        tables (Sequence[EmbeddingBagConfig]): the tables it builds.
        dense_in_features (int): its dense inputs.

    Raises:
        CheckpointError: one line naming the checkpoint, the first difference and what to do.
    """
    meta = read_meta(path)  # a missing or damaged meta.json is its own one-line error
    advice = "warm-start from a model of the same config, or leave train.warm_start out"
    saved_model, wanted_model = meta.get("model") or {}, dataclasses.asdict(model_cfg)
    diff = [k for k in wanted_model if k in saved_model and saved_model[k] != wanted_model[k]]
    if diff:
        raise CheckpointError(f"{WHERE}: {path} is another architecture ("
                              + ", ".join(f"{k}: {saved_model[k]} there, {wanted_model[k]} here" for k in diff[:3])
                              + f"); {advice}")
    checks = [("tables", meta.get("tables"), [t.name for t in tables]),
              ("table rows", meta.get("num_embeddings"), [t.num_embeddings for t in tables]),
              ("dense inputs", meta.get("dense_in_features"), dense_in_features)]
    for what, saved, wanted in checks:
        if saved is not None and saved != wanted:
            raise CheckpointError(f"{WHERE}: {path} has {what} {_short(saved)} but this run builds {_short(wanted)}; "
                                  f"{advice}")


def _short(value: object) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"[{', '.join(map(str, value[:4]))}, … ({len(value)})]"
    return str(value)


def warm_start(model: nn.Module, path: Optional[str], model_cfg: ModelConfig, tables: Sequence[EmbeddingBagConfig],
               dense_in_features: int, model_prefix: str = MODEL_PREFIX) -> bool:
    """Load the saved model at ``path`` into the sharded ``model``'s keys under ``model_prefix`` (collective).

    Args:
        model (nn.Module): the sharded model, already initialised (every rank calls this).
        path (Optional[str]): ``train.warm_start``; None or empty: nothing happens.
        model_cfg (ModelConfig): the model section being trained.
        tables (Sequence[EmbeddingBagConfig]): its tables.
        dense_in_features (int): its dense inputs.
        model_prefix (str): where the trained model sits in ``model`` (``model.`` for a lone model,
            ``student.`` inside a distillation model).

    Returns:
        bool: whether weights were loaded.

    Raises:
        CheckpointError: no saved model there, another architecture or tables, a damaged shard.
    """
    if not path:
        return False
    check_warm_start(Path(path), model_cfg, tables, dense_in_features)
    load_module(model, Path(path), model_prefix=model_prefix, ckpt_prefix=MODEL_PREFIX)
    logger.info("warm start: %s loaded from %s", model_prefix.rstrip("."), path)
    return True

"""Build TorchRec DLRM / DLRM_DCN models from a :class:`ModelConfig`.

Models are built on the ``meta`` device by default: no memory is touched until
``DistributedModelParallel`` materialises the shards on each rank.

Example::

    tables = make_tables(cfg.teacher, ["cat_0", "cat_1"], [1000, 1000])
    model = build_dlrm(cfg.teacher, tables, dense_in_features=13)
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torchrec.models.dlrm import DLRM, DLRM_DCN
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_kd.config import ModelConfig


def make_tables(cfg: ModelConfig, feature_names: Sequence[str], num_embeddings: Sequence[int]) -> List[EmbeddingBagConfig]:
    """One table per sparse feature, named ``<table_prefix><feature>``.

    Args:
        cfg (ModelConfig): embedding dim and table-name prefix.
        feature_names (Sequence[str]): sparse features in KJT key order.
        num_embeddings (Sequence[int]): rows per table, aligned with ``feature_names``.

    Returns:
        List[EmbeddingBagConfig]: the table configs.
    """
    return [
        EmbeddingBagConfig(name=f"{cfg.table_prefix}{f}", embedding_dim=cfg.embedding_dim, num_embeddings=n, feature_names=[f])
        for f, n in zip(feature_names, num_embeddings)
    ]


def build_dlrm(cfg: ModelConfig, tables: List[EmbeddingBagConfig], dense_in_features: int,
               device: torch.device = torch.device("meta")) -> DLRM:
    """A DLRM (or DLRM_DCN) whose embedding bag collection holds ``tables``.

    Args:
        cfg (ModelConfig): architecture and layer sizes.
        tables (List[EmbeddingBagConfig]): from :func:`make_tables`.
        dense_in_features (int): number of dense features.
        device (torch.device): ``meta`` to shard later, or a real device.

    Returns:
        DLRM: the model (``forward(dense, kjt) -> logits [B, 1]``).
    """
    ebc = EmbeddingBagCollection(tables=tables, device=device)
    kwargs = dict(
        embedding_bag_collection=ebc,
        dense_in_features=dense_in_features,
        dense_arch_layer_sizes=list(cfg.dense_arch_layer_sizes),
        over_arch_layer_sizes=list(cfg.over_arch_layer_sizes),
        dense_device=device,
    )
    if cfg.arch == "dlrm_dcn":
        return DLRM_DCN(dcn_num_layers=cfg.dcn_num_layers, dcn_low_rank_dim=cfg.dcn_low_rank_dim, **kwargs)
    return DLRM(**kwargs)


def embedding_bytes(tables: Sequence[EmbeddingBagConfig], bytes_per_value: int = 4) -> int:
    """Bytes of the embedding weights at ``bytes_per_value`` per element (fp32 default)."""
    return sum(t.num_embeddings * t.embedding_dim for t in tables) * bytes_per_value


def model_meta(cfg: ModelConfig, tables: Sequence[EmbeddingBagConfig], dense_in_features: int) -> dict:
    """What :func:`build_dlrm_from_meta` needs to rebuild the model (JSON-serialisable)."""
    import dataclasses

    return {
        "model": dataclasses.asdict(cfg),
        "dense_in_features": dense_in_features,
        "sparse_features": [t.feature_names[0] for t in tables],
        "num_embeddings": [t.num_embeddings for t in tables],
    }


def build_dlrm_from_meta(meta: dict, device: torch.device = torch.device("cpu")) -> DLRM:
    """Rebuild a model described by :func:`model_meta` (e.g. from a checkpoint's meta.json).

    Args:
        meta (dict): holds ``model``, ``dense_in_features``, ``sparse_features``, ``num_embeddings``.
        device (torch.device): where to build it.

    Returns:
        DLRM: the model with freshly initialised weights.
    """
    cfg = ModelConfig(**meta["model"])
    tables = make_tables(cfg, meta["sparse_features"], meta["num_embeddings"])
    return build_dlrm(cfg, tables, meta["dense_in_features"], device=device)

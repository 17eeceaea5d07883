"""Build TorchRec DLRM / DLRM_DCN models from a :class:`ModelConfig` (the ``dlrm`` and ``dlrm_dcn`` builders).

Models are built on the ``meta`` device by default: no memory is touched until
``DistributedModelParallel`` materialises the shards on each rank.

Example::

    tables = make_tables(cfg.teacher, ["cat_0", "cat_1"], [1000, 1000])
    model = build_dlrm(cfg.teacher, tables, dense_in_features=13)
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn
from torchrec.models.dlrm import DLRM, DLRM_DCN, DenseArch, InteractionArch
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_kd.config import ModelConfig
from torchrec_kd.core.table_keys import is_table_key
from torchrec_kd.errors import ConfigError

# RankerTrain (like TorchRec's DLRMTrain) holds the model as .model: the prefix of every checkpoint key
MODEL_PREFIX = "model."


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


def tables_stored_as(tables: Sequence[EmbeddingBagConfig], dtype: str) -> List[EmbeddingBagConfig]:
    """The same tables stored as ``dtype`` (``fp32`` or ``fp16``): the sharder's TBE weight precision.

    Args:
        tables (Sequence[EmbeddingBagConfig]): table configs.
        dtype (str): ``fp32`` or ``fp16``.

    Returns:
        List[EmbeddingBagConfig]: copies with ``data_type`` set.
    """
    data_type = {"fp32": DataType.FP32, "fp16": DataType.FP16}[dtype]
    return [dataclasses.replace(t, data_type=data_type) for t in tables]


class FlatTriuInteractionArch(InteractionArch):
    """TorchRec's ``InteractionArch`` with the upper-triangle gather done as one ``index_select``.

    TorchRec gathers the pairwise dot products with two index tensors
    (``x[:, rows, cols]``), which on CPU costs ~3.5x a flat ``index_select`` forward and
    ~6x in backward (the profile's top item for the int4 student at batch 2048). Same
    values, same state dict.

    Args:
        num_sparse_features (int): F.
    """

    def __init__(self, num_sparse_features: int) -> None:
        super().__init__(num_sparse_features)
        n = self.F + 1
        self.register_buffer("triu_flat", self.triu_indices[0] * n + self.triu_indices[1], persistent=False)

    def forward(self, dense_features: Tensor, sparse_features: Tensor) -> Tensor:
        """Dense features concatenated with the pairwise dot products of [dense, sparse...].

        Args:
            dense_features (Tensor): [B, D].
            sparse_features (Tensor): [B, F, D].

        Returns:
            Tensor: [B, D + F (F + 1) / 2].
        """
        if self.F <= 0:
            return dense_features
        combined = torch.cat((dense_features.unsqueeze(1), sparse_features), dim=1)
        interactions = torch.bmm(combined, torch.transpose(combined, 1, 2))
        return torch.cat((dense_features, interactions.flatten(1).index_select(1, self.triu_flat)), dim=1)


class DenseColumnsArch(nn.Module):
    """A ``DenseArch`` that reads some columns of the dense input and ignores the rest.

    A student without privileged dense features keeps the data's dense layout as its
    input (one feature schema for training, evaluation and serving) while its MLP sees
    only ``columns``: the privileged ones cannot reach its output. The MLP stays at
    ``model``, so the state dict is a plain DLRM's.

    Args:
        dense_arch (DenseArch): TorchRec's dense arch, built for ``len(columns)`` inputs.
        columns (Sequence[int]): positions of the columns it reads, in input order.
    """

    def __init__(self, dense_arch: DenseArch, columns: Sequence[int]) -> None:
        super().__init__()
        self.model: nn.Module = dense_arch.model
        # a CPU buffer like InteractionArch's triu_indices: real even when the model is on meta
        self.register_buffer("columns", torch.tensor(list(columns), dtype=torch.long), persistent=False)

    def forward(self, features: Tensor) -> Tensor:
        """The dense arch on the kept columns.

        Args:
            features (Tensor): [B, all dense features].

        Returns:
            Tensor: [B, D].
        """
        return self.model(features.index_select(1, self.columns))


def build_dlrm(cfg: ModelConfig, tables: List[EmbeddingBagConfig], dense_in_features: int,
               device: torch.device = torch.device("meta"),
               dense_columns: Optional[Sequence[int]] = None) -> DLRM:
    """A DLRM (or DLRM_DCN) whose embedding bag collection holds ``tables``.

    Args:
        cfg (ModelConfig): architecture and layer sizes.
        tables (List[EmbeddingBagConfig]): from :func:`make_tables`.
        dense_in_features (int): number of dense features in the input.
        device (torch.device): ``meta`` to shard later, or a real device.
        dense_columns (Optional[Sequence[int]]): the dense columns the model reads (all when
            None); the others are privileged (see :class:`DenseColumnsArch`).

    Returns:
        DLRM: the model (``forward(dense, kjt) -> logits [B, 1]``).

    Raises:
        ValueError: ``dense_columns`` empty or outside ``0 … dense_in_features - 1``.
    """
    if dense_columns is not None:
        bad = [c for c in dense_columns if not 0 <= c < dense_in_features]
        if not dense_columns or bad:
            raise ValueError(f"dense_columns {list(dense_columns)} must be a non-empty subset of "
                             f"0..{dense_in_features - 1}")
    ebc = EmbeddingBagCollection(tables=tables, device=device)
    kwargs = dict(
        embedding_bag_collection=ebc,
        dense_in_features=dense_in_features if dense_columns is None else len(dense_columns),
        dense_arch_layer_sizes=list(cfg.dense_arch_layer_sizes),
        over_arch_layer_sizes=list(cfg.over_arch_layer_sizes),
        dense_device=device,
    )
    if cfg.arch == "dlrm_dcn":
        model = DLRM_DCN(dcn_num_layers=cfg.dcn_num_layers, dcn_low_rank_dim=cfg.dcn_low_rank_dim, **kwargs)
    else:
        model = DLRM(**kwargs)
        model.inter_arch = FlatTriuInteractionArch(num_sparse_features=len(tables))
    if dense_columns is not None:
        model.dense_arch = DenseColumnsArch(model.dense_arch, dense_columns)
    return model


def embedding_bytes(tables: Sequence[EmbeddingBagConfig], bytes_per_value: int = 4) -> int:
    """Bytes of the embedding weights at ``bytes_per_value`` per element (fp32 default)."""
    return sum(t.num_embeddings * t.embedding_dim for t in tables) * bytes_per_value


def check_fits_data(meta: dict, dense_names: Sequence[str], sparse_names: Sequence[str],
                    num_embeddings: Sequence[int], where: str) -> None:
    """Refuse data whose features are not the ones a saved model was trained on.

    Args:
        meta (dict): the model's :func:`model_meta`.
        dense_names (Sequence[str]): the data's dense features.
        sparse_names (Sequence[str]): the data's sparse features.
        num_embeddings (Sequence[int]): their table sizes.
        where (str): what names the model in the message (a path).

    Raises:
        ConfigError: naming the first difference and what to do.
    """
    if meta.get("dense_in_features") != len(dense_names):
        raise ConfigError(f"{where} was trained on {meta.get('dense_in_features')} dense features but this data has "
                          f"{len(dense_names)} ({list(dense_names)[:6]}…); use the data config it was trained with")
    sizes = dict(zip(sparse_names, num_embeddings))
    for feature, rows in zip(meta.get("sparse_features", []), meta.get("num_embeddings", [])):
        if feature not in sizes:
            raise ConfigError(f"{where} reads sparse feature '{feature}', which this data does not have (it has "
                              f"{list(sparse_names)[:6]}…); use the data config it was trained with")
        if sizes[feature] != rows:
            raise ConfigError(f"{where} has {rows} rows for '{feature}' but this data's table has {sizes[feature]}; "
                              "use the data config it was trained with")


def count_params(tables_bytes: int, model: torch.nn.Module, prefix: str = "") -> int:
    """Global parameter count under ``prefix``: fp32 table bytes / 4 + dense parameters.

    Dense parameters are replicated, so this rank's state dict holds them whole.
    """
    dense = sum(v.numel() for k, v in model.state_dict().items() if k.startswith(prefix) and not is_table_key(k))
    return tables_bytes // 4 + dense

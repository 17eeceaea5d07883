"""The two-tower retrieval model (``arch: two_tower``): a user tower and an item tower over one EBC.

One TorchRec ``EmbeddingBagCollection`` holds the user tables and the item tables (so the
planner shards it, ``quantize_model`` finds it and a pipeline calls it once per forward, like
any ranker's); each tower is an MLP (TorchRec's ``MLP`` for the hidden layers, a plain
``Linear`` last, so embeddings are not forced non-negative) over its features' pooled rows.
The user tower also reads the dense input (retrieval runs keep dense features user-side).
Which sparse feature belongs to which tower is the run's ``data.retrieval``
(:class:`~torchrec_kd.models.registry.FeatureRoles`); features of neither get no table.
Tables pool by mean (a multi-hot history of 20 items should not be 20x a single id).

The ranking contract holds: ``forward(dense, kjt) -> [B]`` logits of each row's (user, item)
pair, so pointwise training, distillation, quantization and export treat it as a ranker.
Retrieval uses the towers separately::

    u = model.user_embedding(dense, kjt)     # [U, d] (cosine: unit rows)
    v = model.item_embedding(kjt_items)      # [N, d]
    logits = model.score_matrix(u, v)        # [U, N] = u @ v.T / temperature + bias

``forward`` is exactly the diagonal: ``score_matrix(u, v)[i, i]`` of the row's own pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.errors import ConfigError
from torchrec_kd.models.registry import BuildInputs, FeatureRoles, register_model

SCORES = ("dot", "cosine")


def _check_layers(key: str, sizes: List[int]) -> None:
    if not sizes or any(not 1 <= s <= 1 << 16 for s in sizes):
        raise ConfigError(f"args.{key} must list at least one layer size, each between 1 and 65536, got {sizes}")


@dataclass
class TwoTowerArgs:
    """``two_tower``: each tower's layers (the last is the embedding width d, equal for both), the score."""

    user_layer_sizes: List[int] = field(default_factory=lambda: [64, 32])
    item_layer_sizes: List[int] = field(default_factory=lambda: [64, 32])
    # dot: u . v; cosine: the towers' outputs are normalised to unit length first
    score: str = "dot"
    # logits are (u . v) / temperature (cosine scores lie in [-1, 1]: use e.g. 0.05)
    temperature: float = 1.0

    def __post_init__(self) -> None:
        _check_layers("user_layer_sizes", self.user_layer_sizes)
        _check_layers("item_layer_sizes", self.item_layer_sizes)
        if self.user_layer_sizes[-1] != self.item_layer_sizes[-1]:
            raise ConfigError(f"args.user_layer_sizes and args.item_layer_sizes must end with the same width (the "
                              f"embedding both towers meet in), got {self.user_layer_sizes[-1]} and "
                              f"{self.item_layer_sizes[-1]}")
        if self.score not in SCORES:
            raise ConfigError(f"args.score must be one of {list(SCORES)}, got {self.score!r}")
        if not self.temperature > 0:
            raise ConfigError(f"args.temperature must be > 0, got {self.temperature}")


class Tower(nn.Module):
    """Hidden layers (TorchRec ``MLP``, ReLU) then a linear output layer.

    Args:
        in_features (int): input width.
        layer_sizes (Sequence[int]): hidden widths then the output width.
        device (torch.device): where to build it.
    """

    def __init__(self, in_features: int, layer_sizes: Sequence[int], device: torch.device) -> None:
        super().__init__()
        sizes = list(layer_sizes)
        self.hidden: nn.Module = MLP(in_features, sizes[:-1], device=device) if len(sizes) > 1 else nn.Identity()
        self.out = nn.Linear(sizes[-2] if len(sizes) > 1 else in_features, sizes[-1], device=device)

    def forward(self, x: Tensor) -> Tensor:
        """[B, in] -> [B, d]."""
        return self.out(self.hidden(x))


class TwoTower(nn.Module):
    """User tower x item tower over one embedding bag collection.

    Args:
        ebc (EmbeddingBagCollection): the user and item tables.
        user_features (Sequence[str]): sparse features of the user tower, in order.
        item_features (Sequence[str]): sparse features of the item tower, in order.
        dense_in_features (int): width of the dense input (read by the user tower; 0: none).
        user_layer_sizes (Sequence[int]): the user tower's layers.
        item_layer_sizes (Sequence[int]): the item tower's layers (same last width).
        score (str): ``dot`` or ``cosine``.
        temperature (float): logits are scores divided by it.
        device (torch.device): where the dense layers are built (``meta`` to shard later).
    """

    def __init__(self, ebc: EmbeddingBagCollection, user_features: Sequence[str], item_features: Sequence[str],
                 dense_in_features: int, user_layer_sizes: Sequence[int], item_layer_sizes: Sequence[int],
                 score: str = "dot", temperature: float = 1.0, device: torch.device = torch.device("cpu")) -> None:
        super().__init__()
        dims = {f: t.embedding_dim for t in ebc.embedding_bag_configs() for f in t.feature_names}
        self.ebc = ebc
        self.user_features: List[str] = list(user_features)
        self.item_features: List[str] = list(item_features)
        # every model key in table order: a KJT missing some is completed in this order (a sharded EBC
        # fixes its key order on the first call)
        self.feature_names: List[str] = [f for t in ebc.embedding_bag_configs() for f in t.feature_names]
        self.dense_in_features = dense_in_features
        self.cosine = score == "cosine"
        self.temperature = float(temperature)
        self.user_tower = Tower(sum(dims[f] for f in self.user_features) + dense_in_features, user_layer_sizes, device)
        self.item_tower = Tower(sum(dims[f] for f in self.item_features), item_layer_sizes, device)
        # a shift of every logit: pointwise (BCE) training needs it, rankings do not see it
        self.logit_bias = nn.Parameter(torch.zeros(1, device=device))

    @property
    def embedding_dim(self) -> int:
        """d: the width both towers end in."""
        return self.item_tower.out.out_features

    def _user(self, dense: Tensor, pooled: dict) -> Tensor:
        parts = [pooled[f] for f in self.user_features]
        if self.dense_in_features > 0:
            parts.append(dense)
        u = self.user_tower(torch.cat(parts, dim=1))
        return F.normalize(u, dim=1) if self.cosine else u

    def _item(self, pooled: dict) -> Tensor:
        v = self.item_tower(torch.cat([pooled[f] for f in self.item_features], dim=1))
        return F.normalize(v, dim=1) if self.cosine else v

    def forward(self, dense_features: Tensor, sparse_features: KeyedJaggedTensor) -> Tensor:
        """Logits of each row's (user, item) pair (the ranking contract).

        Args:
            dense_features (Tensor): [B, dense_in_features].
            sparse_features (KeyedJaggedTensor): the batch's features (user and item keys; others ignored).

        Returns:
            Tensor: [B] logits ``(u . v) / temperature + bias``.
        """
        pooled = self.ebc(sparse_features).to_dict()
        u, v = self._user(dense_features, pooled), self._item(pooled)
        return (u * v).sum(dim=1) / self.temperature + self.logit_bias

    def user_embedding(self, dense_features: Tensor, sparse_features: KeyedJaggedTensor) -> Tensor:
        """The user tower: [B, d] (unit rows for cosine).

        Args:
            dense_features (Tensor): [B, dense_in_features] (ignored when the model reads none).
            sparse_features (KeyedJaggedTensor): at least the user features (item keys may be absent).

        Returns:
            Tensor: [B, d].
        """
        return self._user(dense_features, self.ebc(self.complete(sparse_features)).to_dict())

    def item_embedding(self, sparse_features: KeyedJaggedTensor) -> Tensor:
        """The item tower: [N, d] (unit rows for cosine).

        Args:
            sparse_features (KeyedJaggedTensor): at least the item features (user keys may be absent).

        Returns:
            Tensor: [N, d].
        """
        return self._item(self.ebc(self.complete(sparse_features)).to_dict())

    def score_matrix(self, user: Tensor, item: Tensor) -> Tensor:
        """Logits of every (user, item) pair.

        Args:
            user (Tensor): [U, d] from :meth:`user_embedding`.
            item (Tensor): [N, d] from :meth:`item_embedding`.

        Returns:
            Tensor: [U, N] ``user @ item.T / temperature + bias`` (the same numbers :meth:`forward` gives a pair).
        """
        return user @ item.T / self.temperature + self.logit_bias

    def complete(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """``kjt`` with every model feature, in table order: absent ones become empty bags.

        Unsharded models only: a sharded EBC fixes its input's key order on its first call (the
        training batches' order), so under DMP pass one tower's keys padded to the training keys
        in their order (:func:`in_order`), which this returns as is.

        Args:
            kjt (KeyedJaggedTensor): a batch's features, possibly only one tower's.

        Returns:
            KeyedJaggedTensor: ``kjt`` itself when it holds every model key.
        """
        keys = kjt.keys()
        return kjt if all(f in keys for f in self.feature_names) else in_order(kjt, self.feature_names)


def in_order(kjt: KeyedJaggedTensor, keys: Sequence[str]) -> KeyedJaggedTensor:
    """``kjt`` with exactly ``keys`` in that order: the absent ones as empty bags (pooled to zeros).

    A sharded EBC fixes the key order of its input on its first call (the training batches'),
    so one tower's keys alone (a corpus slice, random negatives) are passed in the batches' order.

    Args:
        kjt (KeyedJaggedTensor): one tower's features (a subset of ``keys``).
        keys (Sequence[str]): every key of the training batches, in their order.

    Returns:
        KeyedJaggedTensor: ``keys`` in order, the same rows.
    """
    keys = list(keys)
    if list(kjt.keys()) == keys:
        return kjt
    present = kjt.to_dict()
    rows = kjt.stride()
    values = [present[k].values() for k in keys if k in present]
    lengths = [present[k].lengths() if k in present else torch.zeros(rows, dtype=kjt.lengths().dtype,
                                                                      device=kjt.lengths().device) for k in keys]
    value = torch.cat(values) if values else kjt.values()[:0]
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=value, lengths=torch.cat(lengths), stride=rows)


def is_two_tower(model: object) -> bool:
    """Whether ``model`` has the two-tower methods retrieval calls (``user_embedding``, ``item_embedding``, ``score_matrix``)."""
    return all(callable(getattr(model, m, None)) for m in ("user_embedding", "item_embedding", "score_matrix"))


def tower_tables(tables: Sequence[EmbeddingBagConfig], roles: Optional[FeatureRoles]) -> List[EmbeddingBagConfig]:
    """The user tables then the item tables (mean pooling); features of neither role get none.

    Raises:
        ConfigError: no roles (not a retrieval run), an empty or overlapping role, or a role feature without a table.
    """
    if roles is None:
        raise ConfigError("two_tower needs data.retrieval (user_features and item_features say which tower reads which "
                          "sparse feature); set it, or use a ranker arch (dlrm, ...)")
    if not roles.user or not roles.item:
        raise ConfigError(f"two_tower needs user and item features, got user {list(roles.user)} and item "
                          f"{list(roles.item)} (data.retrieval.user_features / item_features)")
    both = sorted(set(roles.user) & set(roles.item))
    if both:
        raise ConfigError(f"data.retrieval: {both} are both user and item features; give each feature one tower")
    by_feature = {t.feature_names[0]: t for t in tables}
    missing = [f for f in (*roles.user, *roles.item) if f not in by_feature]
    if missing:
        raise ConfigError(f"data.retrieval names {missing}, which the model has no table for; its sparse features are "
                          f"{sorted(by_feature)}")
    return [replace(by_feature[f], pooling=PoolingType.MEAN) for f in (*roles.user, *roles.item)]


@register_model("two_tower", args=TwoTowerArgs, embeddings="ebc", multitask=False)
def build_two_tower(inputs: BuildInputs) -> nn.Module:
    """A :class:`TwoTower` over the run's user and item features (``forward -> [B]`` pair logits)."""
    args = inputs.args
    ebc = EmbeddingBagCollection(tables=tower_tables(inputs.tables, inputs.roles), device=inputs.device)
    assert inputs.roles is not None
    return TwoTower(ebc, inputs.roles.user, inputs.roles.item, inputs.dense_in_features, args.user_layer_sizes,
                    args.item_layer_sizes, args.score, args.temperature, inputs.device)

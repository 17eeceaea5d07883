"""A plugin: a ranker that is not a DLRM, and a distillation term with its own args.

``MLPRanker`` pools one embedding per sparse feature (a TorchRec ``EmbeddingBagCollection``,
sharded by the planner like any table), concatenates them with the dense features and
scores the row with a plain MLP: no interaction arch, no ``dense_arch`` / ``over_arch``.
Importing this module registers it as ``mlp_ranker`` and the term ``confident_soft_bce``, so
a config names both like built-ins and stays data::

    python -m torchrec_kd.cli distill --plugin examples.custom_ranker.kd_plugin \\
        --config examples/custom_ranker/config.yaml

(any importable module works: a package you installed, or one under the working directory).
"""

# No `from __future__ import annotations` here: the export's TorchScript reads forward's type hints.
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.errors import ConfigError
from torchrec_kd.losses import KDLoss, register_loss
from torchrec_kd.models.registry import BuildInputs, register_model


class MLPRanker(nn.Module):
    """Pooled embeddings + dense features -> MLP -> one logit.

    Args:
        ebc (EmbeddingBagCollection): one table per sparse feature (one embedding dim).
        dense_in (int): dense columns it reads.
        hidden (List[int]): MLP widths.
        dense_columns (Optional[List[int]]): the columns of the batch's dense input it reads (None: all).
        device (torch.device): where its dense layers live (``meta`` to shard later).
    """

    def __init__(self, ebc: EmbeddingBagCollection, dense_in: int, hidden: List[int],
                 dense_columns: Optional[List[int]] = None, device: torch.device = torch.device("cpu")) -> None:
        super().__init__()
        self.ebc = ebc
        width = sum(c.embedding_dim for c in ebc.embedding_bag_configs()) + dense_in
        layers: List[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, size, device=device), nn.ReLU()]
            width = size
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1, device=device)
        # the pooled features by name, in the tables' order: a sharded collection returns them grouped by
        # rank, so taking .values() as they come would read another order once sharded on several ranks
        self.features = [f for c in ebc.embedding_bag_configs() for f in c.feature_names]
        columns = torch.tensor(dense_columns if dense_columns is not None else range(dense_in), dtype=torch.long)
        self.register_buffer("dense_columns", columns, persistent=False)

    def forward(self, dense: Tensor, sparse: KeyedJaggedTensor) -> Tensor:
        """Logits [B, 1]."""
        pooled = self.ebc(sparse).to_dict()  # {feature: [B, D]}, as TorchRec's DLRM reads its SparseArch
        parts = [dense.index_select(1, self.dense_columns)] + [pooled[f] for f in self.features]
        return self.head(self.mlp(torch.cat(parts, dim=1)))  # [B, 1]


@dataclass
class MLPRankerArgs:
    """``student.args`` (or ``teacher.args``) of ``mlp_ranker``."""

    hidden: List[int] = field(default_factory=lambda: [64, 32])

    def __post_init__(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"args.hidden must list positive widths, got {self.hidden}")


@register_model("mlp_ranker", args=MLPRankerArgs, hint="mlp", embeddings="ebc", privileged_dense=True)
def build_mlp_ranker(inputs: BuildInputs) -> nn.Module:
    """The builder ``student.arch: mlp_ranker`` names (tables and device come from the run)."""
    dense_in = inputs.dense_in_features if inputs.dense_columns is None else len(inputs.dense_columns)
    ebc = EmbeddingBagCollection(tables=inputs.tables, device=inputs.device)
    return MLPRanker(ebc, dense_in, list(inputs.args.hidden), inputs.dense_columns, inputs.device)


@dataclass
class ConfidentArgs:
    """``args`` of ``confident_soft_bce``."""

    # rows count by the teacher's confidence |2 p - 1| ** gamma (0: plain soft_bce)
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 10.0:
            raise ConfigError(f"args.gamma must be between 0 and 10, got {self.gamma}")


@register_loss("confident_soft_bce")
class ConfidentSoftBCE(KDLoss):
    """Soft-label BCE where each row counts by how sure the teacher is: ``|2 sigmoid(t / T) - 1| ** gamma``."""

    args = ConfidentArgs

    def __init__(self, temperature: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__(temperature)
        self.gamma = gamma

    @classmethod
    def build(cls, temperature, dims, args=None) -> "ConfidentSoftBCE":
        return cls(temperature, (args or ConfidentArgs()).gamma)

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        t = self.temperature
        target = torch.sigmoid(teacher.detach() / t)
        weight = (2 * target - 1).abs() ** self.gamma
        per_row = F.binary_cross_entropy_with_logits(student / t, target, reduction="none")
        return (weight * per_row).sum() / weight.sum().clamp_min(1e-12) * t * t

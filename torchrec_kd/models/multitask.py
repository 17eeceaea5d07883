"""Multi-task rankers from TorchRec's DLRM parts: ``shared_bottom`` and ``mmoe``.

Both embed and interact like TorchRec's ``DLRM`` (``SparseArch`` over an
``EmbeddingBagCollection``, ``DenseArch``, the flat upper-triangle ``InteractionArch``), so
sharding, :func:`~torchrec_kd.models.init.init_weights`, QAT and quantization (which find the
``EmbeddingBagCollection`` by type) treat them like a DLRM. What differs is the top:

* ``shared_bottom``: the over-arch's hidden layers (``over_arch_layer_sizes`` without its last
  ``1``) are shared by every task; then one small tower per task (``tower_layer_sizes``, then 1
  output).
* ``mmoe`` (Ma et al., KDD 2018): ``num_experts`` expert MLPs over the interaction output, one
  softmax gate per task mixing them, then one tower per task.

Output: ``[B, T]`` in the run's task order (a binary column is a logit, a regression column a
value); with one task ``[B]``.

Example::

    model = SharedBottom(ebc, dense_in_features=13, dense_arch_layer_sizes=[16, 8],
                         shared_layer_sizes=[32], tower_layer_sizes=[16], num_tasks=2)
    out = model(dense, kjt)          # [B, 2]
"""

# (no ``from __future__ import annotations``: fx and TorchScript read forward's type hints)

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn
from torchrec.models.dlrm import DenseArch, OverArch, SparseArch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.models.dlrm import DenseColumnsArch, FlatTriuInteractionArch


def interaction_width(num_sparse: int, embedding_dim: int) -> int:
    """Width of the flat upper-triangle interaction's output: ``D + F (F + 1) / 2``."""
    return embedding_dim + num_sparse * (num_sparse + 1) // 2


class TaskTowers(nn.Module):
    """One tower per task over a shared representation, each ending in one output.

    Args:
        in_features (int): width of the representation each tower reads.
        layer_sizes (Sequence[int]): each tower's hidden layers (non-empty; a final 1 is added).
        num_tasks (int): T.
        device (Optional[torch.device]): where to build them.
    """

    def __init__(self, in_features: int, layer_sizes: Sequence[int], num_tasks: int,
                 device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.towers = nn.ModuleList([OverArch(in_features, list(layer_sizes) + [1], device) for _ in range(num_tasks)])

    def forward(self, features: List[Tensor]) -> Tensor:
        """Tower ``t`` on ``features[t]``.

        Args:
            features (List[Tensor]): one ``[B, in_features]`` per task (the same tensor for a shared bottom).

        Returns:
            Tensor: ``[B, T]``, or ``[B]`` for one task.
        """
        out = torch.cat([tower(x) for tower, x in zip(self.towers, features)], dim=1)
        return out.squeeze(1) if len(self.towers) == 1 else out


class _DLRMBottom(nn.Module):
    """TorchRec's DLRM bottom: ``sparse_arch``, ``dense_arch``, ``inter_arch`` (the paths taps read)."""

    def __init__(self, embedding_bag_collection: EmbeddingBagCollection, dense_in_features: int,
                 dense_arch_layer_sizes: Sequence[int], dense_columns: Optional[Sequence[int]],
                 device: Optional[torch.device]) -> None:
        super().__init__()
        self.sparse_arch: SparseArch = SparseArch(embedding_bag_collection)
        if dense_arch_layer_sizes[-1] != self.sparse_arch.D:
            raise ValueError(f"dense_arch_layer_sizes must end with embedding_dim ({self.sparse_arch.D}), "
                             f"got {list(dense_arch_layer_sizes)}")
        dense_in = dense_in_features if dense_columns is None else len(dense_columns)
        dense: nn.Module = DenseArch(dense_in, list(dense_arch_layer_sizes), device)
        self.dense_arch: nn.Module = dense if dense_columns is None else DenseColumnsArch(dense, dense_columns)
        self.inter_arch = FlatTriuInteractionArch(num_sparse_features=self.sparse_arch.F)
        self.inter_width = interaction_width(self.sparse_arch.F, self.sparse_arch.D)

    def bottom(self, dense_features: Tensor, sparse_features: KeyedJaggedTensor) -> Tensor:
        """The interaction output ``[B, D + F (F + 1) / 2]``."""
        embedded_dense = self.dense_arch(dense_features)
        embedded_sparse = self.sparse_arch(sparse_features)
        return self.inter_arch(dense_features=embedded_dense, sparse_features=embedded_sparse)


class SharedBottom(_DLRMBottom):
    """DLRM bottom and shared hidden layers, then one tower per task.

    Args:
        embedding_bag_collection (EmbeddingBagCollection): the tables (one dim).
        dense_in_features (int): width of the dense input.
        dense_arch_layer_sizes (Sequence[int]): the dense MLP (ends with the embedding dim).
        shared_layer_sizes (Sequence[int]): hidden layers every task shares (may be empty).
        tower_layer_sizes (Sequence[int]): each task's tower (non-empty; a final 1 is added).
        num_tasks (int): T.
        dense_columns (Optional[Sequence[int]]): the dense columns it reads (None: all).
        device (Optional[torch.device]): ``meta`` to shard later, or a real device.
    """

    def __init__(self, embedding_bag_collection: EmbeddingBagCollection, dense_in_features: int,
                 dense_arch_layer_sizes: Sequence[int], shared_layer_sizes: Sequence[int],
                 tower_layer_sizes: Sequence[int], num_tasks: int,
                 dense_columns: Optional[Sequence[int]] = None, device: Optional[torch.device] = None) -> None:
        super().__init__(embedding_bag_collection, dense_in_features, dense_arch_layer_sizes, dense_columns, device)
        shared = list(shared_layer_sizes)
        self.shared: nn.Module = MLP(self.inter_width, shared, device=device) if shared else nn.Identity()
        self.heads = TaskTowers(shared[-1] if shared else self.inter_width, tower_layer_sizes, num_tasks, device)
        self.num_tasks = num_tasks

    def forward(self, dense_features: Tensor, sparse_features: KeyedJaggedTensor) -> Tensor:
        """Score a batch.

        Args:
            dense_features (Tensor): ``[B, dense_in_features]``.
            sparse_features (KeyedJaggedTensor): one key per table.

        Returns:
            Tensor: ``[B, T]`` (``[B]`` for one task).
        """
        shared = self.shared(self.bottom(dense_features, sparse_features))
        return self.heads([shared] * self.num_tasks)


class MMoE(_DLRMBottom):
    """Multi-gate mixture of experts over the DLRM interaction: experts, one softmax gate and one tower per task.

    Args:
        embedding_bag_collection (EmbeddingBagCollection): the tables (one dim).
        dense_in_features (int): width of the dense input.
        dense_arch_layer_sizes (Sequence[int]): the dense MLP (ends with the embedding dim).
        expert_layer_sizes (Sequence[int]): each expert's MLP (non-empty).
        num_experts (int): E.
        tower_layer_sizes (Sequence[int]): each task's tower (non-empty; a final 1 is added).
        num_tasks (int): T.
        dense_columns (Optional[Sequence[int]]): the dense columns it reads (None: all).
        device (Optional[torch.device]): ``meta`` to shard later, or a real device.
    """

    def __init__(self, embedding_bag_collection: EmbeddingBagCollection, dense_in_features: int,
                 dense_arch_layer_sizes: Sequence[int], expert_layer_sizes: Sequence[int], num_experts: int,
                 tower_layer_sizes: Sequence[int], num_tasks: int,
                 dense_columns: Optional[Sequence[int]] = None, device: Optional[torch.device] = None) -> None:
        super().__init__(embedding_bag_collection, dense_in_features, dense_arch_layer_sizes, dense_columns, device)
        self.experts = nn.ModuleList([MLP(self.inter_width, list(expert_layer_sizes), device=device)
                                      for _ in range(num_experts)])
        self.gates = nn.ModuleList([nn.Linear(self.inter_width, num_experts, device=device) for _ in range(num_tasks)])
        self.heads = TaskTowers(expert_layer_sizes[-1], tower_layer_sizes, num_tasks, device)

    def forward(self, dense_features: Tensor, sparse_features: KeyedJaggedTensor) -> Tensor:
        """Score a batch.

        Args:
            dense_features (Tensor): ``[B, dense_in_features]``.
            sparse_features (KeyedJaggedTensor): one key per table.

        Returns:
            Tensor: ``[B, T]`` (``[B]`` for one task).
        """
        x = self.bottom(dense_features, sparse_features)
        experts = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, E, H]
        mixed = [torch.bmm(torch.softmax(gate(x), dim=1).unsqueeze(1), experts).squeeze(1)  # [B, H] per task
                 for gate in self.gates]
        return self.heads(mixed)

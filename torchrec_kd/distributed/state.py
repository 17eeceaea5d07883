"""Views of a sharded model's state that hold only what lives on this rank."""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


def local_tensors(model: nn.Module, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Copies of this rank's part of every state-dict tensor under ``prefix``.

    ShardedTensors contribute their local shards (flattened and concatenated; empty
    when the rank holds none); plain tensors are copied whole.

    Args:
        model (nn.Module): a (sharded) model.
        prefix (str): only keys starting with it.

    Returns:
        Dict[str, Tensor]: detached copies, safe to compare later.
    """
    out: Dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if not key.startswith(prefix):
            continue
        if isinstance(value, ShardedTensor):
            shards = [s.tensor.detach().flatten() for s in value.local_shards()]
            out[key] = torch.cat(shards).clone() if shards else torch.empty(0)
        elif isinstance(value, torch.Tensor):
            out[key] = value.detach().clone()
    return out

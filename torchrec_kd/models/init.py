"""Deterministic weight initialisation that does not depend on the sharding plan.

TorchRec initialises each shard on its own rank, so the same seed gives different
weights on 1 and on N ranks. ``init_weights`` redraws every parameter from
generators keyed by (seed, parameter name, row chunk), writing only the local part
of each shard: the full tables are never materialised, so it scales with the shards.
Tables get TorchRec's default ``U(-1/sqrt(rows), 1/sqrt(rows))``; dense weights the
``nn.Linear`` default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
"""

from __future__ import annotations

import math
import zlib
from typing import Dict, Tuple

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from torchrec_kd.core.table_keys import ebc_layout_key, is_table_key

ROW_CHUNK = 1 << 16


def _gen(seed: int, name: str, chunk: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()) * 65_537 + chunk) % (1 << 62))


def _table_block(seed: int, name: str, rows: int, dim: int, r0: int, r1: int) -> torch.Tensor:
    """Rows [r0, r1) of table ``name`` (all columns), drawn chunk by chunk."""
    bound = 1.0 / math.sqrt(rows)
    parts = []
    for c in range(r0 // ROW_CHUNK, (r1 - 1) // ROW_CHUNK + 1):
        lo, hi = c * ROW_CHUNK, min((c + 1) * ROW_CHUNK, rows)
        block = torch.empty(hi - lo, dim).uniform_(-bound, bound, generator=_gen(seed, name, c))
        parts.append(block[max(r0, lo) - lo: min(r1, hi) - lo])
    return torch.cat(parts)


def _fan_in(name: str, tensor: torch.Tensor, shapes: Dict[str, Tuple[int, ...]]) -> int:
    if tensor.dim() >= 2:
        return tensor.shape[-1]
    sibling = shapes.get(name.rsplit(".", 1)[0] + ".weight")
    return sibling[-1] if sibling and len(sibling) >= 2 else tensor.numel()


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, prefix: str = "") -> None:
    """Redraw all weights under ``prefix`` deterministically, whatever the sharding.

    Draws are keyed by the name *after* ``prefix``, so a sub-model gets the same
    weights alone (``model.`` inside ``RankerTrain``) as inside a bigger model
    (``student.`` inside ``DistillationModel``).

    Args:
        model (nn.Module): a (sharded) model; its ``state_dict`` tensors are written in place.
        seed (int): the run's seed.
        prefix (str): only keys starting with it (e.g. ``"student."``).
    """
    # keyed by the EBC-layout name, so a quantization-aware student starts from the plain student's weights
    sd = {ebc_layout_key(k[len(prefix):]): v for k, v in model.state_dict().items() if k.startswith(prefix)}
    shapes = {k: tuple(v.size()) for k, v in sd.items()}
    for name, t in sd.items():
        if not isinstance(t, ShardedTensor) and not torch.is_floating_point(t):
            continue
        is_table = is_table_key(name)
        if isinstance(t, ShardedTensor):
            rows, dim = t.size()
            for shard in t.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                block = _table_block(seed, name, rows, dim, r0, r0 + nr)[:, c0: c0 + nc]
                shard.tensor.copy_(block)
        elif is_table:
            rows, dim = t.shape
            t.copy_(_table_block(seed, name, rows, dim, 0, rows))
        else:
            bound = 1.0 / math.sqrt(max(1, _fan_in(name, t, shapes)))
            t.copy_(torch.empty(t.shape).uniform_(-bound, bound, generator=_gen(seed, name, 0)))

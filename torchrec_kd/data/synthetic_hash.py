"""The synthetic worlds' deterministic draws: an integer hash and per-block seeds (shared by the
one-task and the multi-task world, so neither imports the other)."""

from __future__ import annotations

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor, salt: int) -> torch.Tensor:
    """A cheap integer mix (int64 in, values in [0, 2^32)); multipliers < 2^31 avoid overflow."""
    x = (x ^ (salt * 0x2545F491)) & _MASK32
    x = (x * 0x45D9F3B) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x3B9ACA07) & _MASK32
    return x ^ (x >> 15)


def _block_seed(seed: int, split: int, block: int) -> int:
    """The seed of one block of one split (numpy's SeedSequence of the three)."""
    return int(np.random.SeedSequence([seed, split, block]).generate_state(1)[0])

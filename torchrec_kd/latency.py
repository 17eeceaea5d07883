"""Inference latency of unsharded models on CPU, with ``torch.utils.benchmark``."""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
import torch.utils.benchmark as benchmark
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def take_rows(batch: Batch, n: int) -> Batch:
    """The first ``n`` rows of a batch (a new KJT with the same keys).

    Args:
        batch (Batch): a batch with at least ``n`` rows.
        n (int): rows to keep.

    Returns:
        Batch: the sliced batch.
    """
    kjt = batch.sparse_features
    rows = batch.labels.numel()
    lengths = kjt.lengths().view(len(kjt.keys()), rows)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), kjt.lengths().long().cumsum(0)]).view(-1)
    values = torch.cat([kjt.values()[offsets[f * rows]: offsets[f * rows + n]] for f in range(len(kjt.keys()))])
    sparse = KeyedJaggedTensor.from_lengths_sync(keys=kjt.keys(), values=values, lengths=lengths[:, :n].flatten())
    return Batch(dense_features=batch.dense_features[:n], sparse_features=sparse, labels=batch.labels[:n])


@torch.no_grad()
def latency_ms(forward: Callable[[Batch], torch.Tensor], batch: Batch, batch_sizes: Sequence[int] = (1, 1024),
               min_run_time: float = 0.3) -> Dict[str, float]:
    """Median single-thread latency of ``forward`` at each batch size.

    Args:
        forward (Callable[[Batch], Tensor]): scores a batch.
        batch (Batch): source rows (at least ``max(batch_sizes)``).
        batch_sizes (Sequence[int]): sizes to time.
        min_run_time (float): seconds of measurement per size (after a warm-up call).

    Returns:
        Dict[str, float]: ``latency_ms_b<size>`` -> median milliseconds.
    """
    out = {}
    for size in batch_sizes:
        rows = take_rows(batch, size)
        forward(rows)  # warm-up: first calls allocate and initialise kernels
        timer = benchmark.Timer(stmt="forward(rows)", globals={"forward": forward, "rows": rows}, num_threads=1)
        out[f"latency_ms_b{size}"] = timer.blocked_autorange(min_run_time=min_run_time).median * 1e3
    return out

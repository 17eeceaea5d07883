"""Inference latency of unsharded models on CPU: per-call percentiles and throughput."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, Iterator, Sequence

import torch
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
    rows = batch.labels.shape[0]  # labels [B] or, with several tasks, [B, T]
    lengths = kjt.lengths().view(len(kjt.keys()), rows)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), kjt.lengths().long().cumsum(0)]).view(-1)
    values = torch.cat([kjt.values()[offsets[f * rows]: offsets[f * rows + n]] for f in range(len(kjt.keys()))])
    sparse = KeyedJaggedTensor.from_lengths_sync(keys=kjt.keys(), values=values, lengths=lengths[:, :n].flatten())
    return Batch(dense_features=batch.dense_features[:n], sparse_features=sparse, labels=batch.labels[:n])


@torch.no_grad()
def latency_profile(forward: Callable[[Batch], torch.Tensor], batch: Batch, batch_sizes: Sequence[int] = (1, 1024),
                    min_run_time: float = 0.3, min_calls: int = 20) -> Dict[int, Dict[str, float]]:
    """Per-call latency percentiles and throughput of ``forward`` at each batch size.

    Each call is timed on its own (``time.perf_counter``), after one warm-up call, for at
    least ``min_run_time`` seconds and ``min_calls`` calls, so p99 is a per-call figure.

    Args:
        forward (Callable[[Batch], Tensor]): scores a batch.
        batch (Batch): source rows (at least ``max(batch_sizes)``).
        batch_sizes (Sequence[int]): sizes to time.
        min_run_time (float): seconds of measurement per size.
        min_calls (int): calls per size at least.

    Returns:
        Dict[int, Dict[str, float]]: size -> ``p50_ms``, ``p99_ms``, ``samples_per_s`` (at the median).
    """
    out: Dict[int, Dict[str, float]] = {}
    for size in batch_sizes:
        rows = take_rows(batch, size)
        forward(rows)  # warm-up: first calls allocate and initialise kernels
        times = []
        start = time.perf_counter()
        while len(times) < min_calls or time.perf_counter() - start < min_run_time:
            t0 = time.perf_counter()
            forward(rows)
            times.append(time.perf_counter() - t0)
        t = torch.tensor(times, dtype=torch.float64)
        p50, p99 = (float(torch.quantile(t, q)) for q in (0.5, 0.99))
        out[size] = {"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "samples_per_s": size / p50}
    return out


def latency_ms(forward: Callable[[Batch], torch.Tensor], batch: Batch, batch_sizes: Sequence[int] = (1, 1024),
               min_run_time: float = 0.3) -> Dict[str, float]:
    """Median latency of ``forward`` at each batch size, as ``latency_ms_b<size>`` (for metrics.json).

    Args:
        forward (Callable[[Batch], Tensor]): scores a batch.
        batch (Batch): source rows (at least ``max(batch_sizes)``).
        batch_sizes (Sequence[int]): sizes to time.
        min_run_time (float): seconds of measurement per size.

    Returns:
        Dict[str, float]: ``latency_ms_b<size>`` -> median milliseconds.
    """
    with _single_thread():
        profile = latency_profile(forward, batch, batch_sizes, min_run_time)
    return {f"latency_ms_b{size}": p["p50_ms"] for size, p in profile.items()}


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Time on one intra-op thread, like one serving worker per core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

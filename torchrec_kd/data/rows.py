"""Rows in columnar numpy form, and how every file source cuts them into per-rank ``Batch``es.

All readers produce :class:`RowBlock`s (dense float32, labels float32 0/1 — ``[n, T]``, one
column per task, in a run of several ``tasks`` — one jagged id column per sparse feature)
and share one batching rule, so any source plugs into the recipes exactly like
``SyntheticClickLog``:

* ``batch_size`` is global. Global batch ``i`` is rows ``[i*B, (i+1)*B)`` of the split's
  row order; rank ``r`` of ``W`` takes the ``r``-th slice of ``B/W`` rows of it. The same
  config therefore sees the same global batches on 1 or N ranks, the ranks' rows are
  disjoint, and together they cover every row of every full batch exactly once.
* The ragged tail (``rows mod B``) is dropped on every rank alike, so all ranks yield
  the same number of batches and collectives cannot hang. ``num_batches`` counts full
  batches only.
* ``train`` repeats epochs when asked for more batches than one pass holds (each epoch
  drops its own tail); ``val`` and ``test`` are read once.

Example::

    block = RowBlock(dense, labels, [Jagged.from_ids(ids) for ids in id_columns])
    batch = block.slice(0, 128).to_batch(["cat_0", "cat_1"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


@dataclass
class Jagged:
    """One sparse feature of ``n`` rows: each row's ids are ``values[offsets[i]:offsets[i+1]]``."""

    values: np.ndarray  # int64
    offsets: np.ndarray  # int64 [n + 1]

    @staticmethod
    def from_ids(ids: np.ndarray) -> "Jagged":
        """One id per row, negative meaning missing (an empty bag)."""
        present = ids >= 0
        offsets = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(present, out=offsets[1:])
        return Jagged(ids[present].astype(np.int64, copy=False), offsets)

    @staticmethod
    def from_lengths(values: np.ndarray, lengths: np.ndarray) -> "Jagged":
        """Concatenated ids and each row's count."""
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return Jagged(values.astype(np.int64, copy=False), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Ids per row."""
        return np.diff(self.offsets)

    def slice(self, a: int, b: int) -> "Jagged":
        """Rows ``[a, b)``."""
        b = min(b, len(self))  # like a list slice, past the end stops at the end
        return Jagged(self.values[self.offsets[a]:self.offsets[b]], self.offsets[a:b + 1] - self.offsets[a])

    def take(self, idx: np.ndarray) -> "Jagged":
        """Rows ``idx`` in that order."""
        starts = self.offsets[idx]
        lengths = self.offsets[idx + 1] - starts
        offsets = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # position k of the output reads values[starts[row(k)] + (k - offsets[row(k)])]
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Jagged(self.values[gather], offsets)

    @staticmethod
    def concat(parts: Sequence["Jagged"]) -> "Jagged":
        """Rows of ``parts`` one after another."""
        if len(parts) == 1:
            return parts[0]
        shifts = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)])
        return Jagged(np.concatenate([p.values for p in parts]), offsets)


@dataclass
class RowBlock:
    """Rows of a split: dense [n, D] float32, labels [n] ([n, T] with several tasks) float32, one Jagged per sparse feature."""

    dense: np.ndarray
    labels: np.ndarray
    sparse: List[Jagged]

    def __len__(self) -> int:
        return len(self.labels)

    def slice(self, a: int, b: int) -> "RowBlock":
        """Rows ``[a, b)`` (views where possible)."""
        return RowBlock(self.dense[a:b], self.labels[a:b], [j.slice(a, b) for j in self.sparse])

    def take(self, idx: np.ndarray) -> "RowBlock":
        """Rows ``idx`` in that order."""
        return RowBlock(self.dense[idx], self.labels[idx], [j.take(idx) for j in self.sparse])

    @staticmethod
    def concat(parts: Sequence["RowBlock"]) -> "RowBlock":
        """Rows of ``parts`` one after another."""
        if len(parts) == 1:
            return parts[0]
        return RowBlock(np.concatenate([p.dense for p in parts]), np.concatenate([p.labels for p in parts]),
                        [Jagged.concat([p.sparse[f] for p in parts]) for f in range(len(parts[0].sparse))])

    @staticmethod
    def from_batch(batch: Batch) -> "RowBlock":
        """The rows of a TorchRec ``Batch`` (dense, labels, one Jagged per KJT key, in key order)."""
        kjt = batch.sparse_features
        sparse = [Jagged.from_lengths(jt.values().numpy().astype(np.int64), jt.lengths().numpy().astype(np.int64))
                  for jt in (kjt[k] for k in kjt.keys())]
        return RowBlock(batch.dense_features.numpy(), batch.labels.numpy(), sparse)

    def to_batch(self, keys: Sequence[str]) -> Batch:
        """TorchRec ``Batch``: dense float32 [n, D], KJT (int64 values, feature-major), labels float32 [n] (or [n, T])."""
        values = np.concatenate([j.values for j in self.sparse]) if self.sparse else np.zeros(0, np.int64)
        lengths = np.concatenate([j.lengths for j in self.sparse]) if self.sparse else np.zeros(0, np.int64)
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=list(keys), values=torch.from_numpy(values.astype(np.int64)),
                                                  lengths=torch.from_numpy(lengths.astype(np.int32)))
        dense = torch.from_numpy(np.array(self.dense, dtype=np.float32, order="C"))  # own, writable copy
        return Batch(dense_features=dense, sparse_features=kjt,
                     labels=torch.from_numpy(np.array(self.labels, dtype=np.float32)))


def local_batch_size(batch_size: int, world_size: int) -> int:
    """Rows per rank of a global batch; the global batch must split evenly.

    Raises:
        ConfigError: naming ``data.batch_size``.
    """
    if batch_size <= 0 or batch_size % world_size:
        raise ConfigError(f"data.batch_size={batch_size} must split evenly over {world_size} rank(s); "
                          f"use a multiple of {world_size}")
    return batch_size // world_size


def check_split(split: str) -> None:
    """Raise for a split name other than train / val / test."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


def too_few_rows(split: str, rows: int, batch_size: int, where: str) -> DataError:
    """The error for a split that holds no full global batch."""
    if rows == 0:  # not a batch-size problem: nothing in the files parsed as a row
        return DataError(f"{where}: split '{split}' has no usable rows: every row was malformed or the files are "
                         "empty; check the files' format (data.on_bad_row=error names the first bad line)")
    return DataError(f"{where}: split '{split}' has {rows} usable row(s), fewer than one global batch "
                     f"(data.batch_size={batch_size}); lower data.batch_size or give the split more data")


def stream_batches(make_pass: Callable[[], Iterator[RowBlock]], keys: Sequence[str], split: str, batch_size: int,
                   rank: int, world_size: int, num_batches: Optional[int], start: int, where: str) -> Iterator[Batch]:
    """Cut a stream of row blocks into this rank's share of global batches ``[start, end)``.

    Args:
        make_pass (Callable): starts one pass over the split's rows (same order on every rank).
        keys (Sequence[str]): sparse feature names.
        split (str): "train" repeats passes until ``num_batches``; others stop after one pass.
        batch_size (int): global batch size.
        rank (int): this rank.
        world_size (int): number of ranks.
        num_batches (Optional[int]): end index (exclusive); None: the end of one pass.
        start (int): first global batch index.
        where (str): names the data in errors.

    Returns:
        Iterator[Batch]: this rank's ``batch_size // world_size`` rows of each global batch.
    """
    local = local_batch_size(batch_size, world_size)
    lo, hi = rank * local, (rank + 1) * local
    repeat = split == "train" and num_batches is not None
    i = 0
    while num_batches is None or i < num_batches:
        buf: List[RowBlock] = []
        buffered = rows = produced = 0
        for block in make_pass():
            rows += len(block)
            buf.append(block)
            buffered += len(block)
            if buffered < batch_size:
                continue
            cat = RowBlock.concat(buf)
            full = buffered // batch_size
            for k in range(full):
                if num_batches is not None and i >= num_batches:
                    return
                if i >= start:
                    yield cat.slice(k * batch_size + lo, k * batch_size + hi).to_batch(keys)
                i += 1
                produced += 1
            # the remainder is copied so the parsed chunk it came from can be freed
            rest = cat.slice(full * batch_size, buffered)
            buf = [RowBlock(rest.dense.copy(), rest.labels.copy(), [Jagged(j.values.copy(), j.offsets.copy())
                                                                     for j in rest.sparse])] if len(rest) else []
            buffered = len(rest)
        if produced == 0:
            raise too_few_rows(split, rows, batch_size, where)
        if not repeat:
            return


def indexed_batches(rows: RowBlock, keys: Sequence[str], split: str, batch_size: int, rank: int, world_size: int,
                    num_batches: Optional[int], start: int, where: str,
                    epoch_order: Optional[Callable[[int], np.ndarray]] = None) -> Iterator[Batch]:
    """This rank's share of global batches ``[start, end)`` of a split whose rows can be indexed.

    Args:
        rows (RowBlock): the split: a ``RowBlock`` in memory, or anything with ``len()``,
            ``slice(a, b)`` and (with ``epoch_order``) ``take(idx)`` (e.g. memory-mapped files).
        keys (Sequence[str]): sparse feature names.
        split (str): "train" repeats epochs when ``num_batches`` asks for more than one.
        batch_size (int): global batch size.
        rank (int): this rank.
        world_size (int): number of ranks.
        num_batches (Optional[int]): end index (exclusive); None: one epoch.
        start (int): first global batch index.
        where (str): names the data in errors.
        epoch_order (Optional[Callable[[int], np.ndarray]]): row order of epoch ``e`` (train
            shuffling); None keeps the stored order.

    Returns:
        Iterator[Batch]: the batches.
    """
    local = local_batch_size(batch_size, world_size)
    per_epoch = len(rows) // batch_size
    if per_epoch == 0:
        raise too_few_rows(split, len(rows), batch_size, where)
    end = per_epoch if num_batches is None else (num_batches if split == "train" else min(num_batches, per_epoch))
    orders: Dict[int, np.ndarray] = {}
    for i in range(start, end):
        epoch, j = divmod(i, per_epoch)
        lo = j * batch_size + rank * local
        if epoch_order is None:
            yield rows.slice(lo, lo + local).to_batch(keys)
            continue
        if epoch not in orders:
            orders.clear()
            orders[epoch] = epoch_order(epoch)
        yield rows.take(orders[epoch][lo:lo + local]).to_batch(keys)


def fraction_split(n: int, val_fraction: float, test_fraction: float, seed: int,
                   order: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Row indices of train / val / test: the last fractions of ``order`` are val, then test.

    Args:
        n (int): rows.
        val_fraction (float): share of rows for val (rounded to whole rows).
        test_fraction (float): share of rows for test.
        seed (int): seed of the random order (used when ``order`` is None).
        order (Optional[np.ndarray]): a fixed row order (e.g. by time: a chronological split);
            None shuffles with ``seed``.

    Returns:
        Dict[str, np.ndarray]: row indices per split, disjoint, covering all rows.
    """
    if order is None:
        order = np.random.default_rng(np.random.SeedSequence([seed, 0x5B117])).permutation(n)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    n_train = n - n_val - n_test
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def epoch_shuffler(seed: int, n: int) -> Callable[[int], np.ndarray]:
    """Row order of each train epoch: a permutation drawn from (seed, epoch), the same on every rank."""
    def order(epoch: int) -> np.ndarray:
        return np.random.default_rng(np.random.SeedSequence([seed, 0xE90C, epoch])).permutation(n)
    return order


class InMemoryClickLog:
    """Batching for readers that hold every split in memory as a :class:`RowBlock`.

    Subclasses set ``splits`` (``{split: RowBlock}``), ``sparse_names``, ``seed``,
    ``shuffle`` (reshuffle the train split each epoch) and ``where`` (names the source
    in errors).
    """

    splits: Dict[str, RowBlock]
    sparse_names: List[str]
    seed: int
    shuffle: bool
    where: str

    def rows(self, split: str) -> int:
        """Rows of ``split``."""
        check_split(split)
        return len(self.splits[split])

    def row_blocks(self, split: str) -> Iterator[RowBlock]:
        """The whole split (stored order), for inspection."""
        check_split(split)
        yield self.splits[split]

    def num_batches(self, split: str, batch_size: int) -> Optional[int]:
        """Full global batches in one epoch of ``split``."""
        return self.rows(split) // batch_size

    def batches(self, split: str, batch_size: int, rank: int = 0, world_size: int = 1,
                num_batches: Optional[int] = None, start: int = 0) -> Iterator[Batch]:
        """This rank's share of ``split``; train is reshuffled each epoch and repeats up to ``num_batches``.

        Args:
            split (str): "train", "val" or "test".
            batch_size (int): global batch size.
            rank (int): this rank.
            world_size (int): number of ranks.
            num_batches (Optional[int]): stop before this global batch index (default: one epoch).
            start (int): first global batch index.

        Returns:
            Iterator[Batch]: ``batch_size // world_size`` rows per batch.
        """
        check_split(split)
        rows = self.splits[split]
        order = epoch_shuffler(self.seed, len(rows)) if split == "train" and self.shuffle else None
        return indexed_batches(rows, self.sparse_names, split, batch_size, rank, world_size, num_batches, start,
                               self.where, order)

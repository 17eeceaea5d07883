"""A planted click log shaped like Criteo: labels drawn from a hidden oracle.

Every row is a function of ``(world seed, split, block index)`` only, so the stream is
deterministic, never materialised, splits are disjoint, and any rank can generate
exactly its own share. The run seed only orders the train blocks: a finite train split
(``train_rows``) is the world's first rows, read by epochs, and the endless stream is
read in shuffled chunks, so replicates over seeds train on the same rows in other orders.
Ids are Zipf-distributed and scattered over each table by a fixed permutation. The oracle's logit has

* a per-id bias for every feature (what a wide model memorises),
* latent pairwise interactions ``<v_f, v_g>`` with ``latent_dim``-wide vectors from a
  per-table codebook (what DLRM's dot interaction learns; an embedding narrower
  than ``latent_dim`` cannot represent them all); features with more rows than
  ``interaction_vocab`` interact more weakly, as their ids are seen too rarely to
  learn much more than a bias,
* dense terms and dense×sparse interactions,

scaled to ``logit_scale`` standard deviations and shifted to the target positive
rate. Because labels are ``Bernoulli(sigmoid(logit))``, a teacher that learns the
oracle's probabilities carries more information than the 0/1 labels.

With two or more ``tasks`` the world is multi-task (:mod:`torchrec_kd.data.synthetic_tasks`):
labels ``[B, T]`` from ``click`` (this oracle, row for row), ``conversion`` (only on clicks),
``like`` and ``dwell`` (regression), each task's own planted oracle mixed with click's.

Example::

    gen = SyntheticClickLog(SyntheticDataConfig(num_embeddings=1000), seed=0)
    batch = next(iter(gen.batches("train", batch_size=256)))
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.config import SyntheticDataConfig
from torchrec_kd.config.data_sources import DriftConfig, SyntheticTasksConfig
from torchrec_kd.data.rows import RowBlock
from torchrec_kd.data.synthetic_hash import _block_seed, _hash32
from torchrec_kd.data.synthetic_tasks import TaskWorld, task_draws
from torchrec_kd.data.task_labels import check_synthetic_specs, label_specs, read_tasks
from torchrec_kd.errors import ConfigError

SPLITS = {"train": 0, "val": 1, "test": 2}
_PERM_PRIME = 1_000_000_007
# The endless train stream is shuffled (per run seed) within chunks of this many batches.
STREAM_CHUNK_BATCHES = 64
# World block "split" code of drift window w is _DRIFT_SPLIT + w (apart from train / val / test).
_DRIFT_SPLIT = 100
# Rows generated at a time for a drift window (large: the oracle's cost is mostly per call).
_DRIFT_BLOCK_ROWS = 4096


def dense_feature_names(n: int) -> List[str]:
    """Dense feature names as in TorchRec's Criteo dataset (``int_0`` …)."""
    return [f"int_{i}" for i in range(n)]


def sparse_feature_names(n: int) -> List[str]:
    """Sparse feature names as in TorchRec's Criteo dataset (``cat_0`` …)."""
    return [f"cat_{i}" for i in range(n)]


def _per_feature(value: int | List[int], n: int) -> List[int]:
    return list(value) if isinstance(value, list) else [int(value)] * n


def drift_rankings(drift: DriftConfig, names: List[str], sizes: List[int], offsets: List[int],
                   seed: int) -> Dict[int, List[torch.Tensor]]:
    """Each drifting feature's popularity ranking (rank -> id) in every window.

    The table's ids, in the static world's scatter order, enter in cohorts: window 0 the first
    ``n - (W-1)k`` ids, each later window ``k = round(new_ids_per_window * n)`` more. Window
    ``w``'s ranking is window ``w-1``'s rotated by ``round(popularity_shift * len)`` (the top ids
    fall to the tail, the others move up) with the window's new ids inserted at random ranks.

    Args:
        drift (DriftConfig): the drift section.
        names (List[str]): sparse feature names.
        sizes (List[int]): rows per table.
        offsets (List[int]): the world's per-feature scatter offsets.
        seed (int): the world seed.

    Returns:
        Dict[int, List[torch.Tensor]]: by feature index, one int64 ranking per window.
    """
    out: Dict[int, List[torch.Tensor]] = {}
    W = drift.windows
    for name in drift.features:
        f = names.index(name)
        n = sizes[f]
        k = int(round(drift.new_ids_per_window * n))
        n0 = n - (W - 1) * k
        if n0 < 1:
            raise ConfigError(f"data.synthetic.drift: {name} has {n} ids, too few for {k} new ids in each of "
                              f"{W - 1} windows; raise its num_embeddings or lower new_ids_per_window")
        order = (np.arange(n, dtype=np.int64) * _PERM_PRIME + offsets[f]) % n  # the static world's scatter
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xD21F7, f]))
        ranking = order[:n0]
        rankings = [torch.from_numpy(ranking.copy())]
        for w in range(1, W):
            ranking = np.roll(ranking, -int(round(drift.popularity_shift * len(ranking))))
            new = order[n0 + (w - 1) * k:n0 + w * k]
            ranking = np.insert(ranking, np.sort(rng.integers(0, len(ranking) + 1, size=len(new))), new)
            rankings.append(torch.from_numpy(ranking.copy()))
        out[f] = rankings
    return out


def drifted_bias_hash(h: torch.Tensor, key: torch.Tensor, seed: int, window: int, concept_shift: float) -> torch.Tensor:
    """The hash that draws each id's oracle bias in ``window``: redrawn for ``concept_shift`` of ids per window.

    Args:
        h (torch.Tensor): the static world's hash of each (id, feature).
        key (torch.Tensor): ``id * 131 + feature``.
        seed (int): the world seed.
        window (int): the window.
        concept_shift (float): fraction of ids whose bias is redrawn at each window change.

    Returns:
        torch.Tensor: ``h`` where no redraw happened up to ``window``, a fresh hash per redraw count elsewhere.
    """
    if window == 0 or concept_shift <= 0:
        return h
    cut = int(concept_shift * 2**32)
    redraws = torch.zeros_like(h)
    for w in range(1, window + 1):
        redraws += (_hash32(key, salt=(seed + 0x51ED27 * w) & 0xFFFF) < cut).long()
    return torch.where(redraws > 0, _hash32(h ^ (redraws * 0x27D4EB2F), salt=0xB1A5), h)


class SyntheticClickLog:
    """Deterministic, streaming generator of click-log batches with a known oracle.

    Args:
        cfg (SyntheticDataConfig): shape and difficulty; ``cfg.world_seed`` (when set) seeds
            the oracle and the rows instead of ``seed``.
        seed (int): the run seed: the train order (and, without ``world_seed``, everything).
        val_rows (int): rows in the validation split.
        test_rows (int): rows in the test split.
        train_rows (Optional[int]): a finite train split of the world's first rows, read by
            epochs; None: the endless stream (``cfg.train_rows`` is what recipes pass).
        tasks (Optional[Sequence[TaskConfig]]): ``cfg.tasks``; two or more: the multi-task world's
            labels ``[B, T]`` (each task's ``column``, default its name: click, conversion, like or
            dwell), else the click label ``[B]``.
    """

    def __init__(self, cfg: SyntheticDataConfig, seed: int = 0, val_rows: int = 65_536, test_rows: int = 131_072,
                 train_rows: Optional[int] = None, tasks: Optional[Sequence[Any]] = None) -> None:
        self.cfg = cfg
        self.run_seed = seed
        self.seed = seed if cfg.world_seed is None else cfg.world_seed  # the world's
        if train_rows is not None and train_rows < cfg.block_rows:
            raise ConfigError(f"the synthetic train split has {train_rows} rows, fewer than one block of "
                              f"data.synthetic.block_rows={cfg.block_rows}")
        self.split_rows = {"train": train_rows, "val": val_rows, "test": test_rows}
        self._orders: dict = {}
        self.dense_names = dense_feature_names(cfg.num_dense)
        self.sparse_names = sparse_feature_names(cfg.num_sparse)
        self.num_embeddings = _per_feature(cfg.num_embeddings, cfg.num_sparse)
        self.pooling = _per_feature(cfg.pooling, cfg.num_sparse)
        F, k, D = cfg.num_sparse, cfg.latent_dim, cfg.num_dense
        g = torch.Generator().manual_seed(_block_seed(self.seed, 99, 0))
        vocab_scale = (cfg.interaction_vocab / torch.tensor(self.num_embeddings, dtype=torch.float)).sqrt().clamp(max=1.0)
        self._codebook = torch.randn(F, cfg.num_clusters, k, generator=g) / math.sqrt(k) * vocab_scale[:, None, None]
        pair_mask = torch.rand(F, F, generator=g) < cfg.interaction_density
        pair_sign = torch.randn(F, F, generator=g)
        w = torch.triu(pair_mask * pair_sign, diagonal=1)
        self._pair_w = w + w.T  # symmetric, zero diagonal
        self._dense_w = torch.randn(D, generator=g)
        # dense x sparse interactions for ~30% of the features
        self._dense_sparse = torch.randn(F, D, k, generator=g) * (torch.rand(F, 1, 1, generator=g) < 0.3) / math.sqrt(0.3 * F * D)
        self._dense_sparse_flat = self._dense_sparse.permute(1, 0, 2).reshape(D, F * k)
        self._pair_norm = math.sqrt(max(1.0, float(self._pair_w.ne(0).sum()) / 2))
        self._offsets = torch.randint(0, 1 << 30, (F,), generator=g)
        self._n = torch.tensor(self.num_embeddings, dtype=torch.int64)
        self._scale, self._bias = 1.0, 0.0
        # drift (data.synthetic.drift): per drifting feature, its popularity ranking in each window
        self._window = 0
        self._rankings: Optional[Dict[int, List[torch.Tensor]]] = None
        if cfg.drift is not None:
            self._rankings = drift_rankings(cfg.drift, self.sparse_names, self.num_embeddings,
                                            [int(o) for o in self._offsets], self.seed)
            self._window_sizes = [torch.tensor([len(self._rankings[f][w]) if f in self._rankings else n
                                                for f, n in enumerate(self.num_embeddings)], dtype=torch.int64)
                                  for w in range(cfg.drift.windows)]
        self._world: Optional[TaskWorld] = None
        tasks = read_tasks(tasks, "synthetic")
        if tasks:
            specs = label_specs(tasks)
            check_synthetic_specs(specs)
            if cfg.drift is not None:
                raise ConfigError("tasks: the drifting synthetic world (data.synthetic.drift) has one task; remove "
                                  "data.synthetic.drift or list one task")
            self._world = TaskWorld(self, [s.column or s.name for s in specs], cfg.tasks or SyntheticTasksConfig())
        self._calibrate()

    # ----------------------------------------------------------------- rows
    def _rows(self, split: int, block: int,
              rows: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One block: (dense latent [R, D], lengths [R, F], ids (row-major), uniforms [R])."""
        cfg = self.cfg
        R, F = rows or cfg.block_rows, cfg.num_sparse
        g = torch.Generator().manual_seed(_block_seed(self.seed, split, block))
        z = torch.randn(R, cfg.num_dense, generator=g)
        pool = torch.tensor(self.pooling)
        lengths = (torch.rand(R, F, generator=g) * pool).floor().long() + 1
        lengths = torch.minimum(lengths, pool)
        flat_len = lengths.flatten()
        feat = torch.arange(F).repeat(R)
        if max(self.pooling) > 1:
            feat = feat.repeat_interleave(flat_len)
        u = torch.rand(feat.numel(), generator=g, dtype=torch.float64)
        # a drifting world samples each drifting feature's ids from the window's popularity ranking
        sizes = self._n if self._rankings is None else self._window_sizes[self._window]
        n = sizes[feat].double()
        s = 1.0 - cfg.zipf_exponent
        rank = ((n.pow(s) - 1.0) * u + 1.0).pow(1.0 / s).floor().long() - 1
        rank = torch.minimum(rank.clamp_min(0), sizes[feat] - 1)
        ids = (rank * _PERM_PRIME + self._offsets[feat]) % self._n[feat]
        if self._rankings is not None:
            for f, ranking in self._rankings.items():
                mine = feat == f
                ids[mine] = ranking[self._window][rank[mine]]
        return z, lengths, ids, torch.rand(R, generator=g)

    def _logits(self, z: torch.Tensor, lengths: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Oracle logit of each row, before scaling and shifting."""
        R, F = lengths.shape
        cfg = self.cfg
        one_hot = ids.numel() == R * F  # every bag holds one id: no pooling needed
        flat_len = lengths.flatten()
        feat = torch.arange(F).repeat(R) if one_hot else torch.arange(F).repeat(R).repeat_interleave(flat_len)
        h = _hash32(ids * 131 + feat, salt=self.seed)
        cluster = h % cfg.num_clusters
        hb = h if self._rankings is None else drifted_bias_hash(h, ids * 131 + feat, self.seed, self._window,
                                                                 cfg.drift.concept_shift)
        # per-id bias: Box-Muller on two hashed uniforms
        u1 = (hb.double() + 1.0) / (2.0**32 + 2.0)
        u2 = (_hash32(hb, salt=7).double() + 0.5) / 2.0**32
        bias = (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).float()
        vec = self._codebook[feat, cluster]
        if not one_hot:  # mean-pool each bag
            bag = torch.arange(R * F).repeat_interleave(flat_len)
            inv_len = 1.0 / flat_len.float()
            vec = torch.zeros(R * F, cfg.latent_dim).index_add_(0, bag, vec).mul_(inv_len[:, None])
            bias = torch.zeros(R * F).index_add_(0, bag, bias).mul_(inv_len)
        vec = vec.view(R, F, cfg.latent_dim)
        bias = bias.view(R, F)
        # sum_{f,g} W_fg <v_f, v_g> without the [R, F, F] Gram matrix
        pair = 0.5 * (vec * torch.matmul(self._pair_w, vec)).sum((1, 2)) / self._pair_norm * math.sqrt(cfg.latent_dim)
        dense = z @ self._dense_w / math.sqrt(cfg.num_dense)
        cross = ((z @ self._dense_sparse_flat).view(R, F, -1) * vec).sum((1, 2))
        # each term has roughly unit variance before weighting
        return (cfg.bias_weight * bias.sum(1) / math.sqrt(F) + cfg.pair_weight * pair
                + cfg.dense_weight * dense + cfg.cross_weight * cross)

    def _calibrate(self) -> None:
        """Scale to ``logit_scale`` std and shift to ``positive_rate`` on a fixed sample."""
        # a fixed sample, independent of block_rows, so the oracle does not depend on it
        sample = [self._rows(SPLITS["train"] + 1000, b, rows=4096)[:3] for b in range(4)]
        parts = [self._logits(*rows) for rows in sample]
        raw = torch.cat(parts).double()
        self._scale = self.cfg.logit_scale / float(raw.std().clamp_min(1e-6))
        x = raw * self._scale
        lo, hi = -20.0, 20.0
        for _ in range(60):  # bisection: mean sigmoid(x + b) == positive_rate
            mid = (lo + hi) / 2
            if torch.sigmoid(x + mid).mean() < self.cfg.positive_rate:
                lo = mid
            else:
                hi = mid
        self._bias = (lo + hi) / 2
        if self._world is not None:
            self._world.calibrate(sample, torch.cat(parts))

    # -------------------------------------------------------------- batches
    def num_batches(self, split: str, batch_size: int) -> Optional[int]:
        """Global batches in ``split`` (one epoch of a finite train split; None for the endless stream)."""
        rows = self.split_rows[split]
        return None if rows is None else rows // batch_size

    def _train_blocks(self, index: int, batch_size: int) -> np.ndarray:
        """World blocks of global train batch ``index``.

        A finite split reads epoch ``index // per_epoch`` in a block order drawn from
        (run seed, epoch). The endless stream reads the world's blocks in chunks of
        ``STREAM_CHUNK_BATCHES`` batches, each chunk in an order drawn from (run seed, chunk):
        every seed reads the same rows (so a finite window of the first rows is part of a
        teacher's long stream) in its own order.
        """
        per_batch = batch_size // self.cfg.block_rows
        rows = self.split_rows["train"]
        if rows is None:
            chunk, j = divmod(index, STREAM_CHUNK_BATCHES)
            n, first = STREAM_CHUNK_BATCHES * per_batch, chunk * STREAM_CHUNK_BATCHES * per_batch
        else:
            per_epoch = rows // batch_size
            if per_epoch == 0:
                raise ConfigError(f"the synthetic train split has {rows} rows, fewer than one batch of "
                                  f"data.batch_size={batch_size}; raise data.synthetic.(student_)train_rows")
            chunk, j = divmod(index, per_epoch)
            n, first = rows // self.cfg.block_rows, 0
        if chunk not in self._orders:  # one chunk (epoch) at a time
            rng = np.random.default_rng(np.random.SeedSequence([self.run_seed, 0xE90C, chunk]))
            self._orders = {chunk: first + rng.permutation(n)}
        return self._orders[chunk][j * per_batch:(j + 1) * per_batch]

    def batch(self, split: str, index: int, batch_size: int, rank: int = 0, world_size: int = 1,
              with_oracle: bool = False) -> Batch:
        """Rank ``rank``'s share of global batch ``index`` of ``split``.

        Args:
            split (str): "train", "val" or "test".
            index (int): global batch index.
            batch_size (int): global batch size (split evenly over ranks).
            rank (int): this rank.
            world_size (int): number of ranks.
            with_oracle (bool): also return the oracle's probabilities (for tests/analysis).

        Returns:
            Batch: dense_features [b, D] (log1p of counts), sparse_features (KJT, b rows),
            labels [b] ([b, T] in a multi-task world); with ``with_oracle`` a tuple (Batch,
            probabilities [b] or [b, T], a regression task's column its expected value).
        """
        local = self._local_batch_size(batch_size, world_size)
        blocks_per_rank = local // self.cfg.block_rows
        if split == "train":
            blocks = self._train_blocks(index, batch_size)
        else:
            per_batch = batch_size // self.cfg.block_rows
            blocks = np.arange(index * per_batch, (index + 1) * per_batch)
        mine = blocks[rank * blocks_per_rank:(rank + 1) * blocks_per_rank]
        draws = None
        if self._world is not None:
            draws = [task_draws(self.seed, SPLITS[split], int(b), self.cfg.block_rows) for b in mine]
        batch, prob = self._assemble([self._rows(SPLITS[split], int(b)) for b in mine], draws)
        return (batch, prob) if with_oracle else batch

    def _assemble(self, parts: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                  draws: Optional[List[torch.Tensor]] = None) -> Tuple[Batch, torch.Tensor]:
        """Generated blocks (and, multi-task, their task draws) -> (Batch, oracle probabilities)."""
        z = torch.cat([p[0] for p in parts])
        lengths = torch.cat([p[1] for p in parts])
        ids = torch.cat([p[2] for p in parts])
        u = torch.cat([p[3] for p in parts])
        raw = self._logits(z, lengths, ids)
        prob = torch.sigmoid(raw * self._scale + self._bias)
        labels = (u < prob).float()
        if self._world is not None and draws is not None:  # [R, T]: click is the column drawn above
            labels, prob = self._world.labels(z, lengths, ids, raw, labels, torch.cat(draws))
            if labels.shape[1] == 1:  # one task (e.g. like alone): [R]
                labels, prob = labels[:, 0], prob[:, 0]
        # Criteo-like dense input: counts from a log-normal, fed as log(1 + count).
        dense = torch.log1p(torch.floor(torch.exp(1.2 * z + 1.0)))
        R, F = lengths.shape
        # row-major (row, feature) elements -> KJT's key-major layout
        if ids.numel() == R * F:
            values = ids.view(R, F).T.flatten()
        else:
            key = (torch.arange(F).repeat(R) * R + torch.arange(R).repeat_interleave(F)).repeat_interleave(lengths.flatten())
            values = ids[torch.argsort(key, stable=True)]
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=self.sparse_names, values=values, lengths=lengths.T.flatten().int())
        return Batch(dense_features=dense, sparse_features=kjt, labels=labels), prob

    def batches(self, split: str, batch_size: int, rank: int = 0, world_size: int = 1,
                num_batches: Optional[int] = None, start: int = 0) -> Iterator[Batch]:
        """Stream rank ``rank``'s share of ``split`` from global batch ``start``.

        Args:
            split (str): "train" (endless, or finite and repeated by epochs, up to ``num_batches``), "val" or "test".
            batch_size (int): global batch size.
            rank (int): this rank.
            world_size (int): number of ranks.
            num_batches (Optional[int]): stop after this many (default: the split's size).
            start (int): first global batch index (to resume a stream).

        Returns:
            Iterator[Batch]: the batches.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        total = self.num_batches(split, batch_size)
        if num_batches is not None:  # the train split repeats epochs up to num_batches
            total = num_batches if total is None or split == "train" else min(total, num_batches)
        i = start
        while total is None or i < total:
            yield self.batch(split, i, batch_size, rank, world_size)
            i += 1

    def row_blocks(self, split: str) -> Iterator[RowBlock]:
        """Every row of the val or test split, one world block at a time (``predict`` scores them all).

        Args:
            split (str): "val" or "test" (the train stream may be endless).

        Returns:
            Iterator[RowBlock]: ``split_rows[split] // block_rows`` blocks, in order.
        """
        if split not in ("val", "test"):
            raise ValueError(f"row_blocks reads 'val' or 'test', got {split!r}")
        block = self.cfg.block_rows
        for i in range(self.split_rows[split] // block):
            yield RowBlock.from_batch(self.batch(split, i, block))

    def drift_timeline(self) -> Tuple[RowBlock, np.ndarray]:
        """Every row of the drifting world in time order, and each row's window number.

        Window ``w``'s rows are world blocks ``(w, 0), (w, 1), …`` of a fixed size (``rows_per_window``
        rows, the last block cut short), so they are a function of the world seed and ``w`` only
        (not of ``block_rows``, which only shapes the batches of the static world).

        Returns:
            Tuple[RowBlock, np.ndarray]: the rows (ids are table rows) and their int64 window numbers.

        Raises:
            ConfigError: ``data.synthetic.drift`` is not set.
        """
        drift = self.cfg.drift
        if drift is None:
            raise ConfigError("data.synthetic.drift is not set: the static synthetic world has no time order")
        blocks: List[RowBlock] = []
        block = _DRIFT_BLOCK_ROWS
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small ops: threads cost more than they give (5x slower on a busy host)
        try:
            for w in range(drift.windows):
                self._window = w
                for b in range(-(-drift.rows_per_window // block)):
                    rows = min(block, drift.rows_per_window - b * block)
                    batch, _ = self._assemble([self._rows(_DRIFT_SPLIT + w, b, rows=rows)])
                    blocks.append(RowBlock.from_batch(batch))
        finally:
            self._window = 0
            torch.set_num_threads(threads)
        times = np.repeat(np.arange(drift.windows, dtype=np.int64), drift.rows_per_window)
        return RowBlock.concat(blocks), times

    def oracle_auc(self, split: str = "test", batch_size: int = 4096, num_batches: int = 8) -> float:
        """AUC of the oracle's own probabilities against the drawn labels: the ceiling for any model.

        Args:
            split (str): which split's rows.
            batch_size (int): rows per generated batch.
            num_batches (int): batches to use.

        Returns:
            float: the AUC.
        """
        from torchmetrics.functional.classification import binary_auroc

        probs, labels = zip(*((p, b.labels) for b, p in (self.batch(split, i, batch_size, with_oracle=True)
                                                         for i in range(num_batches))))
        prob, label = torch.cat(probs), torch.cat(labels)
        if prob.dim() == 2:  # a multi-task world: the first task's
            prob, label = prob[:, 0], label[:, 0]
        return float(binary_auroc(prob, label.long()))

    def _local_batch_size(self, batch_size: int, world_size: int) -> int:
        local = batch_size // world_size
        if batch_size % world_size or local % self.cfg.block_rows:
            raise ConfigError(
                f"data.batch_size={batch_size} must split over {world_size} rank(s) into a multiple of "
                f"data.synthetic.block_rows={self.cfg.block_rows} rows per rank; pick a batch size that is a "
                f"multiple of {world_size * self.cfg.block_rows}"
            )
        return local

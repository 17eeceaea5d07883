"""Criteo click logs as ``Batch`` streams: raw TSV (Kaggle / Terabyte) and TorchRec's ``.npy`` layout.

Both readers expose the interface the recipes use (``dense_names``, ``sparse_names``,
``num_embeddings``, ``num_batches``, ``batches``) with TorchRec's feature names
(``int_0..int_12``, ``cat_0..cat_25``) and the batching rule of ``data/rows.py``: global
batch ``i`` is rows ``[i*B, (i+1)*B)`` of the split, rank ``r`` takes its ``r``-th slice, the
ragged tail is dropped on every rank.

* :class:`CriteoTsvLog` streams the raw files in constant memory (``chunk_bytes`` at a
  time, parsed by ``criteo_parse.parse_block``). Every rank parses the whole stream and
  keeps its own slice: a malformed row is then skipped identically on every rank, so
  shares stay disjoint and aligned. For throughput at scale, ``preprocess`` once and
  read ``criteo_npy``, where each rank only touches its own rows.
* :class:`CriteoNpyLog` memory-maps ``<stem>_{dense,sparse,labels}.npy`` (TorchRec's
  binary layout, from ``BinaryCriteoUtils.tsv_to_npys`` or our ``preprocess``) and
  reads only this rank's rows. A negative sparse value is a missing category (our
  ``preprocess`` writes -1): an empty bag, as in the TSV reader.

TorchRec's ``InMemoryBinaryCriteoIterDataPipe`` is not used for batching: its KJT has
exactly one id per feature (so empty categories cannot become empty bags), it applies
``% hashes`` to the -1 sentinel, splits only the first file in halves, and cannot start
at a batch index; we reuse ``BinaryCriteoUtils`` for the npy headers instead.

Example::

    log = CriteoTsvLog(CriteoDataConfig(path="data/criteo_kaggle"))
    batch = next(iter(log.batches("train", batch_size=2048)))
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from torchrec.datasets.criteo import BinaryCriteoUtils
from torchrec.datasets.utils import Batch

from torchrec_kd.config import CriteoDataConfig
from torchrec_kd.data.bad_rows import BadRowLog
from torchrec_kd.data.criteo_parse import NUM_DENSE, NUM_SPARSE, ParsedBlock, parse_block
from torchrec_kd.data.files import FileSpec, count_lines, parse_spec, raw_stem, read_line_blocks, resolve
from torchrec_kd.data.rows import SPLITS, Jagged, RowBlock, check_split, indexed_batches, stream_batches
from torchrec_kd.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DENSE_NAMES = [f"int_{i}" for i in range(NUM_DENSE)]
SPARSE_NAMES = [f"cat_{i}" for i in range(NUM_SPARSE)]
NPY_PARTS = ("dense", "sparse", "labels")


def criteo_table_sizes(cfg: CriteoDataConfig) -> List[int]:
    """The 26 table sizes from ``data.criteo.num_embeddings`` (one int or a list)."""
    n = cfg.num_embeddings
    return list(n) if isinstance(n, list) else [int(n)] * NUM_SPARSE


def split_specs(cfg: CriteoDataConfig, split: str) -> List[FileSpec]:
    """The parsed file specs of ``data.criteo.<split>``."""
    return [parse_spec(s, f"data.criteo.{split}") for s in getattr(cfg, split)]


def need_dir(path: Optional[str], key: str, what: str) -> Path:
    """``path`` as an existing directory, or an error naming ``key`` and what it should hold."""
    if not path:
        raise ConfigError(f"{key} is not set; point it at {what}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"{key}={path}: no such directory; it should hold {what}")
    return p


def block_rows(parsed: ParsedBlock) -> RowBlock:
    """A parsed block's good rows as a :class:`RowBlock` (missing categories -> empty bags)."""
    return RowBlock(parsed.dense, parsed.labels, [Jagged.from_ids(parsed.ids[:, f]) for f in range(NUM_SPARSE)])


class CriteoTsvLog:
    """Raw Criteo TSV files (``label, I1..I13, C1..C26``), streamed and parsed in constant memory.

    Args:
        cfg (CriteoDataConfig): files of each split, table sizes, chunk size.
        on_bad_row (str): "skip" (count and drop malformed rows) or "error" (stop at the first).
    """

    def __init__(self, cfg: CriteoDataConfig, on_bad_row: str = "skip") -> None:
        self.cfg = cfg
        self.on_bad_row = on_bad_row
        self.dense_names = list(DENSE_NAMES)
        self.sparse_names = list(SPARSE_NAMES)
        self.num_embeddings = criteo_table_sizes(cfg)
        self._tables = np.asarray(self.num_embeddings, np.int64)
        root = need_dir(cfg.path, "data.criteo.path", "the raw Criteo TSV files (train.txt, or day_0 … day_23)")
        # resolve every split now: a missing file stops the run before any training
        self.files: Dict[str, List[Tuple[Path, FileSpec]]] = {
            split: [(f, spec) for spec in split_specs(cfg, split)
                    for f in resolve(root, spec.name, f"data.criteo.{split}")] for split in SPLITS}
        self.bad_rows: Dict[str, BadRowLog] = {}
        self._rows: Dict[str, int] = {}
        self._summarised: set = set()

    def _where(self, split: str) -> str:
        return f"data.criteo.{split} ({', '.join(str(f) for f, _ in self.files[split]) or 'no files'})"

    def parsed_blocks(self, split: str, log: Optional[BadRowLog] = None) -> Iterator[ParsedBlock]:
        """One pass over a split's lines, parsed block by block (bad rows go to ``log``).

        Args:
            split (str): "train", "val" or "test".
            log (Optional[BadRowLog]): where bad rows are counted (default: a fresh one in
                ``self.bad_rows[split]``).

        Returns:
            Iterator[ParsedBlock]: the blocks in file order.
        """
        check_split(split)
        if not self.files[split]:
            raise ConfigError(f"data.criteo.{split} lists no files; name the files of the '{split}' split")
        log = log if log is not None else self.bad_rows.setdefault(split, BadRowLog(self.on_bad_row))
        for path, spec in self.files[split]:
            first, stop = (0, None) if spec.whole else spec.rows(count_lines(path))
            name = str(path)

            def overlong(line: int, name: str = name) -> None:
                log.add(name, line, "line longer than 1 MiB")

            for block, first_line in read_line_blocks(path, self.cfg.chunk_bytes, first, stop, overlong):
                parsed = parse_block(block, first_line, self._tables)
                if len(parsed.bad_lines):
                    log.add_many(name, parsed.bad_lines, parsed.bad_reasons, parsed.bad_text)
                yield parsed

    def _pass(self, split: str, rank: int) -> Iterator[RowBlock]:
        """One pass as row blocks; logs the bad-row summary (rank 0, once per split) when it ends or stops."""
        log = BadRowLog(self.on_bad_row, verbose=rank == 0 and split not in self._summarised)
        self.bad_rows[split] = log
        rows = 0
        complete = False
        try:
            for parsed in self.parsed_blocks(split, log):
                rows += len(parsed.labels)
                yield block_rows(parsed)
            complete = True
            self._rows[split] = rows
        finally:
            if rank == 0 and log.count and split not in self._summarised:
                self._summarised.add(split)
                so_far = "" if complete else f" in the first {rows + log.count} rows read"
                logger.warning("%s: %s%s", self._where(split), log.summary(), so_far)

    def row_blocks(self, split: str) -> Iterator[RowBlock]:
        """One pass over ``split`` in file order, every good row (``predict`` scores them all)."""
        yield from self._pass(split, rank=0)

    def rows(self, split: str) -> int:
        """Good rows in one pass of ``split`` (parses the split once, then cached)."""
        if split not in self._rows:
            for _ in self._pass(split, rank=1):  # rank 1: count quietly; batches() reports on rank 0
                pass
        return self._rows[split]

    def num_batches(self, split: str, batch_size: int) -> Optional[int]:
        """Full global batches in one pass of ``split`` (the tail is dropped)."""
        return self.rows(split) // batch_size

    def batches(self, split: str, batch_size: int, rank: int = 0, world_size: int = 1,
                num_batches: Optional[int] = None, start: int = 0) -> Iterator[Batch]:
        """Stream this rank's share of ``split`` from global batch ``start``.

        Args:
            split (str): "train" (repeats passes until ``num_batches``), "val" or "test" (one pass).
            batch_size (int): global batch size.
            rank (int): this rank.
            world_size (int): number of ranks.
            num_batches (Optional[int]): stop before this global batch index (default: end of one pass).
            start (int): first global batch index.

        Returns:
            Iterator[Batch]: ``batch_size // world_size`` rows per batch.
        """
        check_split(split)
        return stream_batches(lambda: self._pass(split, rank), self.sparse_names, split, batch_size, rank, world_size,
                              num_batches, start, self._where(split))


class _NpySplit:
    """The rows of one split across memory-mapped npy triples: ``len``, ``slice(a, b)``."""

    def __init__(self, segments: List[Tuple[str, int, int]], tables: np.ndarray) -> None:
        self.segments = segments  # (stem, first row, stop row)
        self.tables = tables
        self.bounds = np.cumsum([0] + [b - a for _, a, b in segments])
        self._maps: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def _arrays(self, stem: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        if stem not in self._maps:
            self._maps[stem] = tuple(np.load(f"{stem}_{part}.npy", mmap_mode="r") for part in NPY_PARTS)  # type: ignore
        return self._maps[stem]

    def slice(self, a: int, b: int) -> RowBlock:
        """Rows ``[a, b)`` of the split, read from the memory maps."""
        dense, sparse, labels = [], [], []
        seg = int(np.searchsorted(self.bounds, a, side="right")) - 1
        while a < b:
            stem, lo, _ = self.segments[seg]
            take = min(b, int(self.bounds[seg + 1])) - a
            first = lo + a - int(self.bounds[seg])
            d, s, y = self._arrays(stem)
            dense.append(np.asarray(d[first:first + take], np.float32))
            sparse.append(np.asarray(s[first:first + take], np.int64))
            lab = np.asarray(y[first:first + take]).reshape(-1)
            bad = (lab != 0) & (lab != 1)
            if bad.any():
                row = first + int(np.argmax(bad))
                raise DataError(f"{stem}_labels.npy row {row}: label {lab[np.argmax(bad)].item()!r} is not 0 or 1 "
                                "(Kaggle's test.txt has no labels: it cannot be a train/val/test split)")
            labels.append(lab.astype(np.float32))
            a += take
            seg += 1
        ids = np.concatenate(sparse)
        missing = ids < 0
        ids = np.mod(ids, self.tables[None, :])
        ids[missing] = -1
        d = np.concatenate(dense)
        d[~np.isfinite(d)] = 0.0  # same rule as the TSV parser: NaN / +-inf are missing
        return RowBlock(d, np.concatenate(labels), [Jagged.from_ids(ids[:, f]) for f in range(NUM_SPARSE)])


class CriteoNpyLog:
    """Criteo in TorchRec's binary layout: ``<stem>_dense.npy`` (float32 [N, 13], already log-transformed),
    ``<stem>_sparse.npy`` (int [N, 26]; negative = missing), ``<stem>_labels.npy`` (int [N] or [N, 1]).

    Args:
        cfg (CriteoDataConfig): ``npy_path``, the split specs (same as for the TSV files) and table sizes.
        on_bad_row (str): unused (preprocessed files hold no malformed rows); kept for a uniform signature.
    """

    def __init__(self, cfg: CriteoDataConfig, on_bad_row: str = "skip") -> None:
        self.cfg = cfg
        self.dense_names = list(DENSE_NAMES)
        self.sparse_names = list(SPARSE_NAMES)
        self.num_embeddings = criteo_table_sizes(cfg)
        self._tables = np.asarray(self.num_embeddings, np.int64)
        self.root = need_dir(cfg.npy_path, "data.criteo.npy_path",
                              "the preprocessed <stem>_{dense,sparse,labels}.npy files (made by `preprocess`)")
        self.bad_rows: Dict[str, BadRowLog] = {}
        self.splits: Dict[str, _NpySplit] = {}
        shapes: Dict[str, int] = {}
        for split in SPLITS:
            segments = []
            for spec in split_specs(self.cfg, split):
                for dense_file in resolve(self.root, raw_stem(spec.name), f"data.criteo.{split}", suffix="_dense.npy"):
                    stem = str(dense_file)[: -len("_dense.npy")]
                    if stem not in shapes:
                        shapes[stem] = self._check_stem(stem)
                    a, b = spec.rows(shapes[stem])
                    segments.append((stem, a, b))
            self.splits[split] = _NpySplit(segments, self._tables)

    def _check_stem(self, stem: str) -> int:
        """Rows of one npy triple, after checking the files exist and agree (raises DataError)."""
        shapes = {}
        for part in NPY_PARTS:
            f = Path(f"{stem}_{part}.npy")
            if not f.is_file():
                raise DataError(f"data.criteo.npy_path: {f} is missing; a preprocessed day needs "
                                f"{', '.join(Path(f'{stem}_{p}.npy').name for p in NPY_PARTS)} (run `preprocess`)")
            try:
                shapes[part] = tuple(BinaryCriteoUtils.get_shape_from_npy(str(f)))
            except ValueError as e:
                raise DataError(f"{f}: not a readable .npy file ({e})") from None
        n = shapes["dense"][0]
        expected = {"dense": (n, NUM_DENSE), "sparse": (n, NUM_SPARSE)}
        for part, shape in expected.items():
            if shapes[part] != shape:
                raise DataError(f"{stem}_{part}.npy has shape {shapes[part]}, expected {shape} "
                                f"(dense {shapes['dense']}, sparse {shapes['sparse']}, labels {shapes['labels']})")
        if shapes["labels"] not in ((n,), (n, 1)):
            raise DataError(f"{stem}_labels.npy has shape {shapes['labels']}, expected ({n},) or ({n}, 1)")
        meta = Path(f"{stem}_meta.json")
        if meta.is_file():
            made_with = json.loads(meta.read_text()).get("num_embeddings")
            if made_with is not None and list(made_with) != self.num_embeddings:
                raise ConfigError(f"data.criteo.num_embeddings differs from the table sizes {meta} was preprocessed "
                                  f"with ({made_with}); ids were already taken modulo those sizes. Use the same "
                                  "data.criteo.num_embeddings, or run `preprocess --overwrite` with the new sizes")
        return n

    def rows(self, split: str) -> int:
        """Rows of ``split``."""
        check_split(split)
        return len(self.splits[split])

    def row_blocks(self, split: str, block_rows: int = 65_536) -> Iterator[RowBlock]:
        """The whole split in order, ``block_rows`` at a time (for inspection)."""
        rows = self.splits[split]
        for a in range(0, len(rows), block_rows):
            yield rows.slice(a, min(len(rows), a + block_rows))

    def num_batches(self, split: str, batch_size: int) -> Optional[int]:
        """Full global batches in one pass of ``split``."""
        return self.rows(split) // batch_size

    def batches(self, split: str, batch_size: int, rank: int = 0, world_size: int = 1,
                num_batches: Optional[int] = None, start: int = 0) -> Iterator[Batch]:
        """This rank's share of ``split`` from global batch ``start``; reads only this rank's rows.

        Args:
            split (str): "train" (repeats epochs up to ``num_batches``), "val" or "test".
            batch_size (int): global batch size.
            rank (int): this rank.
            world_size (int): number of ranks.
            num_batches (Optional[int]): stop before this global batch index (default: one pass).
            start (int): first global batch index.

        Returns:
            Iterator[Batch]: ``batch_size // world_size`` rows per batch.
        """
        check_split(split)
        if not self.splits[split].segments:
            raise ConfigError(f"data.criteo.{split} lists no files; name the files of the '{split}' split")
        where = f"data.criteo.{split} (in {self.root})"
        return indexed_batches(self.splits[split], self.sparse_names, split, batch_size, rank, world_size,
                               num_batches, start, where)

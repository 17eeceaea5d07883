"""``preprocess``: raw Criteo TSV -> TorchRec's binary ``.npy`` layout, streaming in constant memory.

For every raw file named by the config's splits (whole files; row ranges are applied
when reading), writes into ``data.criteo.npy_path`` (or ``--out``):

* ``<stem>_dense.npy``  float32 [N, 13]: ``log(1 + max(x, 0))``, missing / NaN / inf -> 0;
* ``<stem>_sparse.npy`` int32 [N, 26] (int64 if a table has 2^31 rows or more): table rows,
  the category's value modulo ``data.criteo.num_embeddings``; -1 = missing (an empty bag);
* ``<stem>_labels.npy`` int32 [N, 1];
* ``<stem>_meta.json``: source file, rows, bad rows, the table sizes used.

These are exactly the rows the TSV reader yields (same parser), so training on
``criteo_npy`` gives the same batches as on ``criteo_tsv``, and TorchRec's
``InMemoryBinaryCriteoIterDataPipe`` reads the files too. Rows are appended to the files
as they are parsed; each ``.npy`` header has a fixed size and is rewritten with the final
row count at the end, so memory stays at a few chunks whatever the input size. Outputs
are written under temporary names and renamed when complete, so an interrupted run
leaves no half file that looks finished; finished files are skipped on a rerun.

Example::

    python -m torchrec_kd.cli preprocess --config configs/criteo_kaggle.yaml
"""

from __future__ import annotations

import json
import logging
import os
import struct
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from torchrec_kd.config import DataConfig
from torchrec_kd.core.console import progress_bar
from torchrec_kd.data.bad_rows import BadRowLog
from torchrec_kd.data.criteo import NPY_PARTS, criteo_table_sizes, need_dir, split_specs
from torchrec_kd.data.criteo_parse import NUM_DENSE, NUM_SPARSE, parse_block
from torchrec_kd.data.files import parse_spec, raw_stem, read_line_blocks, resolve
from torchrec_kd.data.rows import SPLITS
from torchrec_kd.errors import ConfigError

logger = logging.getLogger(__name__)

# Fixed .npy header size (a multiple of 64): room for any shape, rewritten in place at the end.
HEADER_BYTES = 128


def npy_header(dtype: np.dtype, shape: Tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header of exactly ``HEADER_BYTES`` bytes.

    Args:
        dtype (np.dtype): element type.
        shape (Tuple[int, ...]): array shape (C order).

    Returns:
        bytes: magic, version, length and the padded header dict.
    """
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                 "shape": tuple(shape)}).encode("latin1")
    pad = HEADER_BYTES - 10 - len(text) - 1
    if pad < 0:
        raise ValueError(f"npy header for shape {shape} does not fit {HEADER_BYTES} bytes")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", HEADER_BYTES - 10) + text + b" " * pad + b"\n"


class NpyAppender:
    """Append rows to a 2-D ``.npy`` file whose row count is only known at the end.

    Args:
        path (Path): file to write.
        dtype (np.dtype): element type.
        cols (int): columns per row.
    """

    def __init__(self, path: Path, dtype: np.dtype, cols: int) -> None:
        self.path, self.dtype, self.cols, self.rows = path, np.dtype(dtype), cols, 0
        self.f: BinaryIO = open(path, "wb")
        self.f.write(npy_header(self.dtype, (0, cols)))

    def append(self, arr: np.ndarray) -> None:
        """Write rows (``arr`` is converted to the file's dtype and shape)."""
        arr = np.ascontiguousarray(arr, dtype=self.dtype).reshape(-1, self.cols)
        self.f.write(arr.tobytes())
        self.rows += len(arr)

    def close(self) -> None:
        """Rewrite the header with the final row count and close."""
        self.f.seek(0)
        self.f.write(npy_header(self.dtype, (self.rows, self.cols)))
        self.f.close()


@dataclass
class FileResult:
    """What preprocessing one raw file produced."""

    source: str
    stem: str
    rows: int
    positives: int
    bad_rows: int
    summary: str
    skipped: bool = False


def _done(stem: Path, source: Path, tables: List[int]) -> bool:
    meta = Path(f"{stem}_meta.json")
    if not meta.is_file() or not all(Path(f"{stem}_{p}.npy").is_file() for p in NPY_PARTS):
        return False
    m = json.loads(meta.read_text())
    st = source.stat()
    return m.get("num_embeddings") == tables and m.get("source_bytes") == st.st_size and m.get("complete") is True


def preprocess_file(source: Path, out_dir: Path, tables: List[int], chunk_bytes: int, on_bad_row: str,
                    overwrite: bool = False, progress: Optional[tqdm] = None) -> FileResult:
    """Convert one raw TSV file into the npy triple (+ meta) in ``out_dir``.

    Args:
        source (Path): raw Criteo TSV (``*.gz`` is decompressed on the fly).
        out_dir (Path): output directory.
        tables (List[int]): the 26 table sizes.
        chunk_bytes (int): bytes parsed per step.
        on_bad_row (str): "skip" or "error".
        overwrite (bool): redo files whose outputs are already complete.
        progress (Optional[tqdm]): advanced by the bytes read.

    Returns:
        FileResult: rows written, positives and bad rows.
    """
    stem = out_dir / raw_stem(source.name)
    if not overwrite and _done(stem, source, tables):
        m = json.loads(Path(f"{stem}_meta.json").read_text())
        if progress is not None:
            progress.update(source.stat().st_size)
        return FileResult(str(source), str(stem), m["rows"], m["positives"], m["bad_rows"], "already done", True)
    sparse_dtype = np.int32 if max(tables) < 2**31 else np.int64
    tmp = {p: Path(f"{stem}_{p}.npy.tmp") for p in NPY_PARTS}
    out = {"dense": NpyAppender(tmp["dense"], np.float32, NUM_DENSE),
           "sparse": NpyAppender(tmp["sparse"], sparse_dtype, NUM_SPARSE),
           "labels": NpyAppender(tmp["labels"], np.int32, 1)}
    log = BadRowLog(on_bad_row)
    positives = 0
    table_arr = np.asarray(tables, np.int64)
    try:
        for block, first_line in read_line_blocks(source, chunk_bytes,
                                                  on_overlong=lambda n: log.add(str(source), n, "line longer than 1 MiB")):
            parsed = parse_block(block, first_line, table_arr)
            if len(parsed.bad_lines):
                log.add_many(str(source), parsed.bad_lines, parsed.bad_reasons, parsed.bad_text)
            out["dense"].append(parsed.dense)
            out["sparse"].append(parsed.ids)
            out["labels"].append(parsed.labels.astype(np.int32))
            positives += int(parsed.labels.sum())
            if progress is not None:
                progress.update(len(block))
    finally:
        for appender in out.values():
            appender.close()
    rows = out["labels"].rows
    for part in NPY_PARTS:
        os.replace(tmp[part], f"{stem}_{part}.npy")
    meta = {"source": str(source), "source_bytes": source.stat().st_size, "rows": rows, "positives": positives,
            "bad_rows": log.count, "bad_row_summary": log.summary(), "num_embeddings": tables,
            "dense": "log(1 + max(x, 0)); missing, NaN, inf -> 0", "sparse": "value % num_embeddings; -1 = missing",
            "complete": True}
    Path(f"{stem}_meta.json").write_text(json.dumps(meta, indent=1))
    return FileResult(str(source), str(stem), rows, positives, log.count, log.summary())


def _worker(args: Tuple[Path, Path, List[int], int, str, bool]) -> FileResult:
    return preprocess_file(*args)


def raw_files(cfg: DataConfig) -> List[Path]:
    """Every raw file the config's splits (a windowed config: its days) name (whole files, first appearance order)."""
    root = need_dir(cfg.criteo.path, "data.criteo.path", "the raw Criteo TSV files (train.txt, or day_0 … day_23)")
    seen: Dict[str, Path] = {}
    named = [(f"data.criteo.{split}", spec) for split in SPLITS for spec in split_specs(cfg.criteo, split)]
    if cfg.windows is not None:  # a windowed config reads its day files (data.criteo.days), not train / val / test
        named = [("data.criteo.days", parse_spec(d, "data.criteo.days")) for d in cfg.criteo.days]
    for key, spec in named:
        for f in resolve(root, spec.name, key):
            seen.setdefault(str(f), f)
    if not seen:
        raise ConfigError("data.criteo.train, val and test name no files; nothing to preprocess")
    return list(seen.values())


def preprocess_criteo(cfg: DataConfig, out: Optional[str] = None, workers: int = 1, overwrite: bool = False,
                      show_progress: bool = True) -> List[FileResult]:
    """Preprocess every raw Criteo file of the config into npy triples.

    Args:
        cfg (DataConfig): the ``data`` section (``criteo.path``, split specs, ``criteo.num_embeddings``,
            ``criteo.npy_path``, ``on_bad_row``).
        out (Optional[str]): output directory (default ``data.criteo.npy_path``).
        workers (int): files converted in parallel (one process each).
        overwrite (bool): redo files already converted with the same table sizes.
        show_progress (bool): show a progress bar (bytes read).

    Returns:
        List[FileResult]: one per raw file.
    """
    target = out or cfg.criteo.npy_path
    if not target:
        raise ConfigError("data.criteo.npy_path is not set; set it (or pass --out) to say where the .npy files go")
    out_dir = Path(target).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = raw_files(cfg)
    tables = criteo_table_sizes(cfg.criteo)
    total = sum(f.stat().st_size for f in files)
    bar = progress_bar(total, "preprocess", show_progress, unit="B", unit_scale=True)
    results: List[FileResult] = []
    try:
        if workers <= 1 or len(files) == 1:
            for f in files:
                results.append(preprocess_file(f, out_dir, tables, cfg.criteo.chunk_bytes, cfg.on_bad_row,
                                               overwrite, bar))
                _log(results[-1])
        else:
            jobs = [(f, out_dir, tables, cfg.criteo.chunk_bytes, cfg.on_bad_row, overwrite) for f in files]
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for f, result in zip(files, pool.map(_worker, jobs)):
                    bar.update(f.stat().st_size)  # per file: workers report when done
                    results.append(result)
                    _log(result)
    finally:
        bar.close()
    return results


def _log(r: FileResult) -> None:
    if r.skipped:
        logger.info("%s: already preprocessed (%d rows), skipped; pass --overwrite to redo", r.source, r.rows)
    elif r.bad_rows:
        logger.warning("%s -> %s_*.npy: %d rows (%d positives); %s", r.source, r.stem, r.rows, r.positives, r.summary)
    else:
        logger.info("%s -> %s_*.npy: %d rows (%d positives), no bad rows", r.source, r.stem, r.rows, r.positives)

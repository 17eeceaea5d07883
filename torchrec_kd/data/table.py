"""Any click log in CSV or Parquet, described by a schema in the config (``data.table``) — no code.

The schema names the label column and which values are clicks, the dense columns, and
the sparse columns (table size, optional separator for multi-valued cells, hashing).
Rules:

* label: a value listed in ``positive`` -> 1, in ``negative`` -> 0 (numbers compare by
  value: ``1``, ``"1"`` and ``1.0`` match; booleans as true/false); any other value stops
  the run with an error naming the values and lines found. With ``label_threshold``,
  label = value >= threshold. An empty label makes the row bad;
* dense: numbers; empty, NaN and +-inf become ``dense_fill`` (0), a non-numeric value
  makes the row bad; ``dense_transform: log1p`` applies ``log(1 + max(x, 0))``;
* sparse: empty cells are empty bags; integer ids are taken modulo ``num_embeddings``
  (negatives wrap), other values are hashed (``ids.py``); multi-valued cells are split on
  ``separator`` (Parquet list cells are used as they are);
* tasks (``tasks`` of two or more): one label column each, ``[n, T]`` in task order
  (:mod:`torchrec_kd.data.task_labels`): the first task without a ``column`` is the label
  above; another task reads its ``column`` (default: its name) through ``positive`` (text
  values that are 1, any other 0), ``at_least`` (numbers) or as 0/1, a regression task as a
  number; a task with ``only_where`` is 0 outside its space, where its cell may be empty;
* CSV rows with the wrong number of fields or undecodable bytes are bad rows (skipped and
  counted with their line numbers, or an error with ``data.on_bad_row: error``); blank
  lines are not rows.

The table is read once (in chunks) and held in memory as compact arrays; splits are a
seeded random shuffle or the file / ``time_column`` order (``split: ordered``).

Example::

    cfg = TableDataConfig(path="clicks.csv", label="clicked", dense=["price"],
                          sparse=[SparseColumnConfig(column="user", num_embeddings=10000),
                                  SparseColumnConfig(column="tags", separator="|", num_embeddings=1000)])
    log = TableClickLog(cfg, seed=0)
"""

from __future__ import annotations

import csv
import difflib
import glob
import logging
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from torchrec_kd.config import SparseColumnConfig, TableDataConfig
from torchrec_kd.data.bad_rows import BadRowLog
from torchrec_kd.data.files import listing, natural_key
from torchrec_kd.data.ids import to_rows
from torchrec_kd.data.rows import InMemoryClickLog, Jagged, RowBlock, fraction_split
from torchrec_kd.data.task_labels import LabelSpec, label_specs, one_column, read_tasks, zero_outside_spaces
from torchrec_kd.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
Bad = Tuple[int, str, str]  # (line, reason, start of the row)
CHUNK_ROWS = 200_000


def table_files(cfg: TableDataConfig) -> List[Path]:
    """The files ``data.table.path`` names: a file, a directory of tables, or a glob."""
    if not cfg.path:
        raise ConfigError("data.table.path is not set; point it at a CSV or Parquet file (or a folder of them)")
    p = Path(cfg.path).expanduser()
    if glob.has_magic(str(cfg.path)):
        files = sorted((Path(f) for f in glob.glob(str(p))), key=lambda f: natural_key(str(f)))
    elif p.is_dir():
        files = sorted((f for f in p.iterdir() if f.suffix.lower() in TABLE_SUFFIXES), key=lambda f: natural_key(str(f)))
    else:
        files = [p] if p.is_file() else []
    if not files:
        where = listing(p) if p.is_dir() else listing(p.parent)
        raise DataError(f"data.table.path={cfg.path}: no {'/'.join(TABLE_SUFFIXES)} file found; {where}")
    return files


def file_format(path: Path, fmt: str) -> str:
    """"csv" or "parquet": ``data.table.format``, or guessed from the suffix."""
    if fmt != "auto":
        return fmt
    return "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"


def _label_key(v: Any) -> Tuple[str, Any]:
    """Comparable form of a label value: numbers by value, booleans and text as lower-case text."""
    if isinstance(v, (bool, np.bool_)):
        return ("str", str(bool(v)).lower())
    try:
        f = float(v)
        if math.isfinite(f):
            return ("num", f)
    except (TypeError, ValueError):
        pass
    return ("str", str(v).strip().lower())


def _missing(series: pd.Series) -> np.ndarray:
    """Cells that are empty: NaN / None, or blank text."""
    miss = np.array(series.isna(), dtype=bool)  # a copy: pandas hands out read-only views
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        text = series.astype(str).str.strip()
        miss |= (text == "").to_numpy(dtype=bool)
    return miss


def _first_values(values: np.ndarray, lines: np.ndarray, limit: int = 5) -> str:
    """The first ``limit`` distinct values with the line each was first seen on, for an error message."""
    seen: Dict[str, int] = {}
    for v, line in zip(values, lines):
        seen.setdefault(repr(v), int(line))
        if len(seen) == limit:
            break
    return ", ".join(f"{v} (line {n})" for v, n in seen.items())

class TableColumns:
    """The schema's columns and how one chunk of them becomes a RowBlock."""

    def __init__(self, cfg: TableDataConfig, with_label: bool = True, tasks: Optional[Sequence[Any]] = None) -> None:
        self.cfg, self.with_label = cfg, with_label
        # tasks: one label column each ([n, T]; one task [n]); None: the single label as always
        tasks = read_tasks(tasks, "table")
        self.specs: Optional[List[LabelSpec]] = label_specs(tasks) if tasks else None
        self.sparse_cols: List[SparseColumnConfig] = list(cfg.sparse)
        self.needed = [*(self.label_columns() if with_label else []), *cfg.dense, *(s.column for s in cfg.sparse)]
        if cfg.time_column:
            self.needed.append(cfg.time_column)
        self.needed = list(dict.fromkeys(self.needed))
        self.pos = {_label_key(v) for v in cfg.positive}
        self.neg = {_label_key(v) for v in cfg.negative}

    def label_columns(self) -> List[str]:
        """The columns the labels are read from (``data.table.label``, or each task's)."""
        if self.specs is None:
            return [self.cfg.label]
        return list(dict.fromkeys(s.column or self.cfg.label for s in self.specs))

    def check_columns(self, available: Sequence[str], file: Path) -> None:
        """Every column the schema names must be in the file (DataError naming the missing ones)."""
        missing = [c for c in self.needed if c not in available]
        if missing:
            hints = []
            for c in missing:
                near = difflib.get_close_matches(c, list(available), n=1)
                hints.append(f"'{c}'" + (f" (did you mean '{near[0]}'?)" if near else ""))
            raise DataError(f"{file}: column(s) {', '.join(hints)} named in data.table are not in the file; "
                            f"its columns are: {', '.join(map(str, available))}")

    def labels(self, col: pd.Series, lines: np.ndarray, file: Path, bad: np.ndarray, pending: List[Bad]) -> np.ndarray:
        """0/1 labels; empty labels mark rows bad, undeclared values raise DataError."""
        cfg = self.cfg
        empty = _missing(col)
        pending.extend((int(line), f"empty label column '{cfg.label}'", "") for line in lines[empty & ~bad])
        bad |= empty
        out = np.zeros(len(col), np.float32)
        values = col.to_numpy(dtype=object)
        if cfg.label_threshold is not None:
            num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
            wrong = ~np.isfinite(num) & ~bad
            if wrong.any():
                self._label_error(values[wrong], lines[wrong], file,
                                  f"numbers (label_threshold={cfg.label_threshold})")
            out[~bad] = (num[~bad] >= cfg.label_threshold).astype(np.float32)
            return out
        keys = [_label_key(v) if not b else None for v, b in zip(values, bad)]
        wrong = np.asarray([k is not None and k not in self.pos and k not in self.neg for k in keys], bool)
        if wrong.any():
            self._label_error(values[wrong], lines[wrong], file,
                              f"positive {list(cfg.positive)} or negative {list(cfg.negative)}")
        out[:] = [1.0 if k in self.pos else 0.0 for k in keys]
        return out

    def task_labels(self, df: pd.DataFrame, lines: np.ndarray, file: Path, bad: np.ndarray,
                    pending: List[Bad]) -> np.ndarray:
        """[n, T] labels, one column per task; a task's empty cell marks the row bad only inside its space.

        Args:
            df (pd.DataFrame): the chunk.
            lines (np.ndarray): its 1-based line numbers.
            file (Path): the file (for errors).
            bad (np.ndarray): rows already bad (updated).
            pending (List[Bad]): bad rows found here are added.

        Returns:
            np.ndarray: [n, T] float32 (0 outside a task's ``only_where`` space).

        Raises:
            DataError: a task's cell is not what its spec reads (a number, 0/1).
        """
        specs = self.specs or []
        out = np.zeros((len(df), len(specs)), np.float32)
        empty = np.zeros((len(df), len(specs)), bool)
        for i, spec in enumerate(specs):
            if spec.column is None or (spec.column == self.cfg.label and not spec.positive and spec.at_least is None):
                # data.table.label with its positive / negative / label_threshold, as a one-task run reads it
                out[:, i] = self.labels(df[self.cfg.label], lines, file, bad, pending)
                continue
            out[:, i], empty[:, i] = self._task_column(df[spec.column], spec, lines, file, bad)
        for i, spec in enumerate(specs):
            inside = out[:, spec.space] > 0.5 if spec.space is not None else np.ones(len(df), bool)
            missing = empty[:, i] & inside & ~bad
            pending.extend((int(line), f"empty label column '{spec.column}' (task {spec.name})", "")
                           for line in lines[missing])
            bad |= missing
        return zero_outside_spaces(out, specs)

    def _task_column(self, col: pd.Series, spec: LabelSpec, lines: np.ndarray, file: Path,
                     bad: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """One task's (labels, empty cells) from its column (``positive`` / ``at_least`` / 0-1 / regression)."""
        empty = _missing(col) | _nan_text(col)
        values = col.to_numpy(dtype=object)
        out = np.zeros(len(col), np.float32)
        if spec.binary and spec.positive:  # text values: listed ones are 1, every other value 0
            pos = {_label_key(v) for v in spec.positive}
            out[:] = [1.0 if not e and _label_key(v) in pos else 0.0 for v, e in zip(values, empty)]
            return out, empty
        if spec.binary and spec.at_least is None:  # the column itself must be 0/1
            keys = [_label_key(v) if not e else None for v, e in zip(values, empty)]
            ones, zeros = {("num", 1.0), ("str", "true")}, {("num", 0.0), ("str", "false")}
            wrong = np.asarray([k is not None and k not in ones and k not in zeros for k in keys], bool) & ~bad
            if wrong.any():
                self._task_error(spec, values[wrong], lines[wrong], file, "0 or 1 (or set the task's at_least / "
                                 "positive)")
            out[:] = [1.0 if k in ones else 0.0 for k in keys]
            return out, empty
        if pd.api.types.is_bool_dtype(col.dtype):
            col = col.astype(np.float64)
        num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        wrong = ~np.isfinite(num) & ~empty & ~bad
        if wrong.any():
            self._task_error(spec, values[wrong], lines[wrong], file, "numbers")
        num = np.where(np.isfinite(num), num, 0.0)
        out[:] = (num >= spec.at_least) if spec.binary else num
        return out, empty

    def _task_error(self, spec: LabelSpec, values: np.ndarray, lines: np.ndarray, file: Path, expected: str) -> None:
        found = _first_values(values, lines)
        raise DataError(f"{file}: column '{spec.column}' of task '{spec.name}' holds {found}; expected {expected}")

    def _label_error(self, values: np.ndarray, lines: np.ndarray, file: Path, expected: str) -> None:
        found = _first_values(values, lines)
        raise DataError(f"{file}: label column '{self.cfg.label}' holds values other than declared: {found}; "
                        f"expected {expected}. Declare them in data.table.positive / data.table.negative "
                        "(quote text values in YAML), or set data.table.label_threshold")

    def dense(self, df: pd.DataFrame, lines: np.ndarray, bad: np.ndarray, pending: List[Bad]) -> np.ndarray:
        """[n, D] float32; non-numeric cells mark rows bad, empty / NaN / inf become dense_fill."""
        cfg = self.cfg
        out = np.zeros((len(df), len(cfg.dense)), np.float64)
        for j, name in enumerate(cfg.dense):
            col = df[name]
            if pd.api.types.is_bool_dtype(col.dtype):
                col = col.astype(np.float64)
            num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
            wrong = np.isnan(num) & ~_missing(col) & ~_nan_text(col) & ~bad
            pending.extend((int(line), f"dense column '{name}' value is not a number", "") for line in lines[wrong])
            bad |= wrong
            out[:, j] = num
        out[~np.isfinite(out)] = cfg.dense_fill
        if cfg.dense_transform == "log1p":
            out = np.log1p(np.maximum(out, 0.0))
        return out.astype(np.float32)

    def sparse(self, df: pd.DataFrame) -> List[Jagged]:
        """One Jagged per sparse column (table rows)."""
        return [sparse_column(df[s.column], s) for s in self.sparse_cols]

    def time(self, df: pd.DataFrame, lines: np.ndarray, bad: np.ndarray, pending: List[Bad]) -> np.ndarray:
        """Sort key of ``time_column``: numbers, or dates as seconds since 1970; unreadable cells mark rows bad."""
        name = self.cfg.time_column
        col = df[name]
        num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(num).any() and not pd.api.types.is_numeric_dtype(col.dtype):
            # not all numbers: read the column as dates (seconds since 1970, NaN when unreadable)
            dt = pd.to_datetime(col, errors="coerce", utc=True, format="mixed")
            num = (dt - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)
        wrong = np.isnan(num) & ~bad
        pending.extend((int(line), f"time column '{name}' is not a number or date", "") for line in lines[wrong])
        bad |= wrong
        return num

    def convert(self, df: pd.DataFrame, lines: np.ndarray, file: Path,
                pending: List[Bad]) -> Tuple[RowBlock, np.ndarray]:
        """One chunk -> (RowBlock of its good rows, their time keys or empty); bad rows are added to ``pending``."""
        block, time, _ = self.convert_rows(df, lines, file, pending)
        return block, time

    def convert_rows(self, df: pd.DataFrame, lines: np.ndarray, file: Path,
                     pending: List[Bad]) -> Tuple[RowBlock, np.ndarray, np.ndarray]:
        """:meth:`convert`, also returning the boolean mask of the chunk's good rows."""
        bad = np.zeros(len(df), bool)
        # unlabeled traffic (predict, serving): labels stay 0 and are never reported
        if not self.with_label:
            labels = one_column(np.zeros((len(df), len(self.specs) if self.specs else 1), np.float32))
        elif self.specs is None:
            labels = self.labels(df[self.cfg.label], lines, file, bad, pending)
        else:
            labels = one_column(self.task_labels(df, lines, file, bad, pending))
        dense = self.dense(df, lines, bad, pending)
        time = self.time(df, lines, bad, pending) if self.cfg.time_column else np.zeros(0)
        good = ~bad
        df = df[good]
        return (RowBlock(dense[good], labels[good], self.sparse(df)), time[good] if len(time) else time, good)


def _nan_text(col: pd.Series) -> np.ndarray:
    """Cells spelled as NaN ("nan", "NaN", "NA"...), which are missing values, not garbage."""
    if col.dtype != object and not pd.api.types.is_string_dtype(col.dtype):
        return np.zeros(len(col), bool)
    return col.astype(str).str.strip().str.lower().isin(["nan", "na", "n/a", "null", "none"]).to_numpy(dtype=bool)


def sparse_column(col: pd.Series, spec: SparseColumnConfig) -> Jagged:
    """A sparse column's cells -> table rows (empty cells are empty bags).

    Args:
        col (pd.Series): the cells (text from CSV, typed values or lists from Parquet).
        spec (SparseColumnConfig): table size, separator, max_length, hashing.

    Returns:
        Jagged: one bag per row.
    """
    values = col.to_numpy(dtype=object)
    listy = np.asarray([isinstance(v, (list, tuple, np.ndarray)) for v in values], bool)
    missing = np.zeros(len(values), bool)
    if (~listy).any():
        missing[~listy] = _missing(col[~listy]) | _nan_text(col[~listy])
    if spec.separator is None and not listy.any():
        lengths = (~missing).astype(np.int64)
        tokens = values[~missing]
        if len(tokens) and pd.api.types.is_numeric_dtype(col.dtype):
            tokens = col.to_numpy()[~missing]
    else:
        bags: List[List[Any]] = []
        for v, is_list, miss in zip(values, listy, missing):
            if is_list:
                bag = [x for x in v if x is not None and str(x).strip() != ""]
            elif miss:
                bag = []
            elif spec.separator is not None:
                bag = [t.strip() for t in str(v).split(spec.separator) if t.strip()]
            else:
                bag = [v]
            bags.append(bag[: spec.max_length] if spec.max_length else bag)
        lengths = np.asarray([len(b) for b in bags], np.int64)
        tokens = np.asarray([t for b in bags for t in b], dtype=object)
    rows = to_rows(tokens, spec.num_embeddings, spec.hashing) if len(tokens) else np.zeros(0, np.int64)
    return Jagged.from_lengths(rows, lengths)


def csv_chunks(path: Path, cfg: TableDataConfig,
                chunk_rows: int = CHUNK_ROWS) -> Iterator[Tuple[pd.DataFrame, np.ndarray, List[Bad]]]:
    """Read a CSV as text in chunks: (DataFrame of str, 1-based line numbers, the chunk's malformed lines)."""
    line_no = 0
    bad: List[Bad] = []

    def lines() -> Iterator[str]:
        nonlocal line_no
        with open(path, "rb") as f:
            for raw in f:
                line_no += 1
                try:
                    yield raw.decode(cfg.encoding)
                except UnicodeDecodeError:
                    bad.append((line_no, f"undecodable bytes (data.table.encoding={cfg.encoding})",
                                raw[:120].decode("latin-1")))

    reader = csv.reader(lines(), delimiter=cfg.delimiter)
    columns: Optional[List[str]] = list(cfg.columns) if not cfg.header else None
    if columns is None:
        for first in reader:
            if first:
                columns = [c.strip() for c in first]
                break
        if columns is None and bad:
            raise DataError(f"{path}: not {cfg.encoding} text (line {bad[0][0]}: {bad[0][1]}); is it a CSV file? "
                            "Check data.table.path, data.table.format and data.table.encoding")
        if columns is None:
            raise DataError(f"{path}: the file is empty (data.table.header is true, so a header line was expected)")
    elif not columns:
        raise ConfigError("data.table.columns must list the column names when data.table.header is false")
    records: List[List[str]] = []
    nums: List[int] = []
    try:
        for rec in reader:
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue  # blank line
            if len(rec) != len(columns):
                bad.append((line_no, f"expected {len(columns)} fields, found {len(rec)}", cfg.delimiter.join(rec)[:120]))
                continue
            records.append(rec)
            nums.append(line_no)
            if len(records) >= chunk_rows:
                yield pd.DataFrame(records, columns=columns, dtype=object), np.asarray(nums, np.int64), bad
                records, nums, bad = [], [], []
    except csv.Error as e:  # e.g. a NUL byte or an unterminated quote: the rest of the file is unreadable
        bad.append((line_no, f"CSV syntax error ({e}); the rest of the file is not read", ""))
    yield pd.DataFrame(records, columns=columns, dtype=object), np.asarray(nums, np.int64), bad


def parquet_chunks(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[Tuple[pd.DataFrame, np.ndarray, List[Bad]]]:
    """A Parquet file in record batches of ``chunk_rows`` (never read whole); "lines" are 1-based row numbers.

    The one Parquet reader: training (``data.table``), ``inspect-data`` and ``predict --input``
    all read Parquet through it, so a damaged file fails the same way everywhere.

    Args:
        path (Path): the file.
        chunk_rows (int): rows per chunk (bounds memory).

    Yields:
        Tuple: a DataFrame of the chunk's cells, their 1-based row numbers, no unreadable lines
        (Parquet has none: a file is readable or not). A file with no rows gives one empty frame
        with its columns.

    Raises:
        DataError: pyarrow is missing, or the file is not Parquet (text named ``.parquet``, empty,
        truncated), named with what to do.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow) ({e})") from None

    def unreadable(e: Exception) -> DataError:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return DataError(f"{path}: not a readable Parquet file ({reason}); check the file, or give a CSV file a "
                         ".csv name (data.table.format: auto reads .parquet/.pq as Parquet)")

    try:
        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(batch_size=chunk_rows)
    except (pa.ArrowException, OSError) as e:
        raise unreadable(e) from None
    first = 1
    while True:
        try:  # a damaged page shows only when its batch is read
            batch = next(batches, None)
            # no rows at all: one empty frame with the file's columns, so readers still check them
            df = batch.to_pandas() if batch is not None else parquet.schema_arrow.empty_table().to_pandas()
        except (pa.ArrowException, OSError) as e:
            raise unreadable(e) from None
        if batch is None and first > 1:
            return
        yield df, np.arange(first, first + len(df)), []
        if batch is None:
            return
        first += len(df)


class TableClickLog(InMemoryClickLog):
    """A CSV / Parquet click log read through the ``data.table`` schema, batched like every source.

    Args:
        cfg (TableDataConfig): files, schema, split.
        seed (int): run seed (train shuffling per epoch; the split uses ``cfg.split_seed``).
        on_bad_row (str): "skip" (count and drop malformed rows) or "error".
        verbose (bool): log the bad-row summary and the data shape (rank 0).
        tasks (Optional[Sequence[TaskConfig]]): ``cfg.tasks``; two or more: labels ``[n, T]``
            (:mod:`torchrec_kd.data.task_labels`), else the single label ``[n]``.
    """

    def __init__(self, cfg: TableDataConfig, seed: int = 0, on_bad_row: str = "skip", verbose: bool = True,
                 tasks: Optional[Sequence[Any]] = None) -> None:
        if not cfg.dense and not cfg.sparse:
            raise ConfigError("data.table declares no dense and no sparse columns; list them in data.table.dense and "
                              "data.table.sparse (see configs/table_example.yaml)")
        self.cfg, self.seed = cfg, seed
        self.shuffle, self.where = cfg.shuffle, f"data.table ({cfg.path})"
        self.files = table_files(cfg)
        self.bad_rows = BadRowLog(on_bad_row, verbose=verbose)
        self.dense_names = list(cfg.dense)
        self.sparse_names = [s.name or s.column for s in cfg.sparse]
        self.num_embeddings = [s.num_embeddings for s in cfg.sparse]
        cols = TableColumns(cfg, tasks=tasks)
        self.tasks = list(tasks or [])
        blocks: List[RowBlock] = []
        times: List[np.ndarray] = []
        for f in self.files:
            fmt = file_format(f, cfg.format)
            chunks = parquet_chunks(f) if fmt == "parquet" else csv_chunks(f, cfg)
            checked = False
            for df, lines, pending in chunks:
                if not checked:
                    cols.check_columns(list(df.columns), f)
                    checked = True
                block, t = cols.convert(df, lines, f, pending)
                # report in line order, so `on_bad_row: error` names the first bad line of the file
                for line, reason, text in sorted(pending, key=lambda b: b[0]):
                    self.bad_rows.add(str(f), line, reason, text)
                blocks.append(block)
                times.append(t)
        rows = RowBlock.concat(blocks)
        # each row's time_column key in file order (time windows, data/timelines.py); None without one
        self.row_times = np.concatenate(times) if cfg.time_column else None
        if len(rows) == 0:
            raise DataError(f"data.table.path={cfg.path}: no usable rows in {', '.join(map(str, self.files))} "
                            f"({self.bad_rows.summary()})")
        self.split_rows = self._split_rows(rows)
        self.splits: Dict[str, RowBlock] = {s: rows.take(idx) for s, idx in self.split_rows.items()}
        if verbose:
            if self.bad_rows.count:
                logger.warning("%s: %s", cfg.path, self.bad_rows.summary())
            logger.info("%s: %s rows (%s split)", cfg.path, {s: len(b) for s, b in self.splits.items()}, cfg.split)

    def _split_rows(self, rows: RowBlock) -> Dict[str, np.ndarray]:
        """Row indices per split (``data.table.split``; a retrieval log cuts leave-last-out instead)."""
        cfg = self.cfg
        order = None
        if cfg.split == "ordered":
            order = np.argsort(self.row_times, kind="stable") if cfg.time_column else np.arange(len(rows))
        return fraction_split(len(rows), cfg.val_fraction, cfg.test_fraction, cfg.split_seed, order)

"""A model's input contract: which raw columns it reads and how they become features, as data.

Training reads data through a source's reader (``data.table`` schema, Criteo TSV rules,
...). A served model must see the very same ids and dense values, so the export carries the
rules as a JSON-able *contract* and this module applies them to raw rows — the code the
readers themselves run, never a re-implementation:

* ``table``: the ``data.table`` schema (columns, label values, ``dense_fill``,
  ``dense_transform``, per-column table size, separator, ``hashing``), applied by the table
  reader's own column conversion;
* ``criteo_tsv``: Criteo's layout (``label``, ``I1..I13``, ``C1..C26``; a label-less file
  has 39 fields), parsed by the TSV reader's ``parse_block`` (dense ``log(1 + max(x, 0))``,
  hex categories modulo the table size). ``criteo_npy`` runs were preprocessed from the
  same TSV by the same rules, so their contract is this one too;
* ``features``: one column per model feature (the synthetic world, MovieLens' derived
  features): dense numbers as they are (missing -> 0), integer ids modulo the table size
  (text hashed, ``|``-separated bags).

A label is optional: traffic has none; rows whose label is there are scored with it. A run's
``tasks`` are recorded (name, type and how each label is read; none, or one plain task: not
recorded). Two or more give ``[n, T]`` labels: a table's task columns (read as training read
them), or the columns ``label_<task>`` of a ``features`` file (0/1, a regression task's
number), present all or none.

A windowed run's entity features (users, items: ``data.windows.entities``) are not taken modulo
their table: training read their raw ids (integers as they are, text hashed into ``[0, 2**62)``)
and mapped them through an :class:`~torchrec_kd.data.id_remap.IdRemap` (an id trained on -> its
own row, any other -> the fallback row 0). The contract then names the remap (``id_remap``: the
file ``id_remap.json`` of the export, sealed with it, and how many ids each feature holds), and
:class:`RawRows` applies it after the same conversion, so serving maps raw ids exactly as training did.

Example::

    contract = input_contract(cfg.data, dense, sparse, sizes, remaps=data.remaps)   # windowed: with remaps
    files = contract_files(contract, data.remaps)     # {contract.json, id_remap.json}: export extras
    rows = RawRows(contract, remaps)                   # remaps: load_remaps(export / "id_remap.json")
    block, good, bad = rows.convert(frame)             # RowBlock of the good rows, their mask
    batch = block.to_batch(rows.sparse_names)
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from torchrec_kd.config import DataConfig, SparseColumnConfig, TableDataConfig
from torchrec_kd.config.schema import TaskConfig
from torchrec_kd.core.layout import CONTRACT_FILE
from torchrec_kd.data.criteo_parse import NUM_DENSE, NUM_FIELDS, NUM_SPARSE, parse_block
from torchrec_kd.data.id_remap import FALLBACK_ROW, REMAP_FILE, IdRemap, apply_remaps, save_remaps
from torchrec_kd.data.rows import Jagged, RowBlock
from torchrec_kd.data.table import TableColumns, csv_chunks, file_format, parquet_chunks, sparse_column, table_files
from torchrec_kd.data.task_labels import LabelSpec, label_specs, one_column, read_tasks, zero_outside_spaces
from torchrec_kd.errors import DataError

CONTRACT_FORMAT = "torchrec_kd.contract/1"
CRITEO_DENSE = [f"I{i}" for i in range(1, NUM_DENSE + 1)]
CRITEO_SPARSE = [f"C{i}" for i in range(1, NUM_SPARSE + 1)]
CRITEO_LABEL = "label"
FEATURE_SEPARATOR = "|"
CHUNK_ROWS = 65_536
Bad = Tuple[int, str, str]  # (line, reason, start of the row)


def input_contract(cfg: DataConfig, dense_names: Sequence[str], sparse_names: Sequence[str],
                   num_embeddings: Sequence[int], remaps: Optional[Mapping[str, IdRemap]] = None,
                   tasks: Optional[Sequence[Any]] = None) -> Dict[str, Any]:
    """The contract of a run's data: raw columns in, the model's features out.

    Args:
        cfg (DataConfig): the run's ``data`` section.
        dense_names (Sequence[str]): the model's dense features, in order.
        sparse_names (Sequence[str]): the model's sparse features (KJT keys), in order.
        num_embeddings (Sequence[int]): rows of each sparse feature's table.
        remaps (Optional[Mapping[str, IdRemap]]): a windowed run's entity remaps (its data's ``remaps``);
            the contract then names ``id_remap.json``, which :func:`contract_files` writes beside it.
        tasks (Optional[Sequence[TaskConfig]]): the run's ``tasks``, recorded (``tasks``: name, type,
            column, at_least, positive, only_where) unless none or one plain task (the label as always).

    Returns:
        Dict[str, Any]: JSON-able; ``format`` says which rules apply, ``features`` the model's inputs.

    Raises:
        ValueError: a remap for a feature the model does not read.
    """
    contract: Dict[str, Any] = {"contract": CONTRACT_FORMAT,
                                "features": {"dense": list(dense_names), "sparse": list(sparse_names),
                                             "num_embeddings": [int(n) for n in num_embeddings]}}
    if cfg.source == "table":
        schema = asdict(cfg.table)
        # where the training rows came from and how they were split is not part of the contract
        for key in ("path", "split", "time_column", "val_fraction", "test_fraction", "split_seed", "shuffle"):
            schema.pop(key)
        contract.update(format="table", label=cfg.table.label, table=schema)
    elif cfg.source in ("criteo_tsv", "criteo_npy"):
        contract.update(format="criteo_tsv", label=CRITEO_LABEL, columns=[CRITEO_LABEL, *CRITEO_DENSE, *CRITEO_SPARSE],
                        dense_transform="log(1 + max(x, 0)); empty, NaN, inf -> 0",
                        sparse_rule="hex (1-16 digits) modulo num_embeddings; empty -> empty bag")
    else:
        contract.update(format="features", label="label", separator=FEATURE_SEPARATOR,
                        sparse_rule="integers modulo num_embeddings, other values hashed; empty -> empty bag")
    tasks = read_tasks(tasks, cfg.source)
    if tasks:  # how each label is read (none, or one plain task: the label as always)
        contract["tasks"] = [{"name": t.name, "type": t.type, "column": t.column, "at_least": t.at_least,
                              "positive": [str(v) for v in t.positive or []], "only_where": t.only_where}
                             for t in tasks]
    if remaps:
        from torchrec_kd.data.timelines import RAW_ID_SPACE  # the raw ids the windowed readers gave the remaps

        unknown = sorted(set(remaps) - set(sparse_names))
        if unknown:
            raise ValueError(f"id remaps for {unknown}, which are not sparse features of the model {list(sparse_names)}")
        contract["id_remap"] = {
            "file": REMAP_FILE, "fallback_row": FALLBACK_ROW, "raw_id_space": RAW_ID_SPACE,
            "rule": "entity features: integers as they are, other values hashed (modulo raw_id_space), then "
                    "mapped through the remap: an id trained on -> its row, any other id -> fallback_row",
            "features": {name: {"ids": len(r), "capacity": r.capacity} for name, r in sorted(remaps.items())}}
    return contract


def contract_files(contract: Dict[str, Any], remaps: Optional[Mapping[str, IdRemap]] = None
                   ) -> Dict[str, Callable[[Path], Any]]:
    """The export files that carry a contract: ``contract.json`` and, with remaps, ``id_remap.json``.

    Pass them to ``save_quantized(..., extras=...)``: they are written in the export's staging
    directory and sealed with the weights.

    Args:
        contract (Dict[str, Any]): from :func:`input_contract`.
        remaps (Optional[Mapping[str, IdRemap]]): the remaps the contract names (required when it names them).

    Returns:
        Dict[str, Callable[[Path], Any]]: ``{file name: writer of that path}``.

    Raises:
        ValueError: the contract names remaps that were not given (or the other way round).
    """
    if bool(contract.get("id_remap")) != bool(remaps):
        raise ValueError("the contract and the remaps disagree: pass the remaps given to input_contract")
    files: Dict[str, Callable[[Path], Any]] = {CONTRACT_FILE: lambda f: f.write_text(json.dumps(contract, indent=2))}
    if remaps:
        files[REMAP_FILE] = lambda f: save_remaps(dict(remaps), f)
    return files


@dataclass
class Converted:
    """Raw rows turned into model inputs.

    Attributes:
        rows (RowBlock): the good rows (labels 0 where the input has none).
        good (np.ndarray): bool mask over the input rows: which made ``rows``.
        bad (List[Bad]): ``(line, reason, text)`` of the others.
        labeled (bool): whether the input carried the label column.
    """

    rows: RowBlock
    good: np.ndarray
    bad: List[Bad]
    labeled: bool


class RawRows:
    """Applies a contract to raw rows (a DataFrame) or reads and converts files in chunks.

    Args:
        contract (Dict[str, Any]): from :func:`input_contract` (an export's ``contract.json``).
        remaps (Optional[Mapping[str, IdRemap]]): the remaps the contract names (an export's
            ``id_remap.json``, :func:`~torchrec_kd.data.id_remap.load_remaps`); required when it names them.

    Raises:
        DataError: a foreign contract, or remaps missing or not the ones the contract was made with.
    """

    def __init__(self, contract: Dict[str, Any], remaps: Optional[Mapping[str, IdRemap]] = None) -> None:
        if contract.get("contract") != CONTRACT_FORMAT:
            raise DataError(f"input contract {contract.get('contract')!r} is not {CONTRACT_FORMAT!r}; re-run quantize")
        self.contract = contract
        self.remaps = _checked_remaps(contract.get("id_remap"), remaps)
        # entity ids are read raw (as the windowed readers read them: the contract says into what space), then remapped
        self.raw_id_space: int = int(contract["id_remap"]["raw_id_space"]) if self.remaps else 0
        self.format: str = contract["format"]
        features = contract["features"]
        self.dense_names: List[str] = list(features["dense"])
        self.sparse_names: List[str] = list(features["sparse"])
        self.num_embeddings: List[int] = list(features["num_embeddings"])
        self.label: str = contract["label"]
        # a multi-task contract's tasks (how each label column is read); None: the one label
        tasks = [TaskConfig(**{k: v for k, v in t.items() if k in TaskConfig.__dataclass_fields__})
                 for t in contract.get("tasks") or []]
        self.tasks: Optional[List[TaskConfig]] = tasks or None
        self.label_specs: Optional[List[LabelSpec]] = label_specs(tasks) if self.tasks else None
        self.table: Optional[TableDataConfig] = None
        if self.format == "table":
            schema = dict(contract["table"])
            # entity columns are read as raw ids (what the windowed reader gave the remap), then remapped
            schema["sparse"] = [SparseColumnConfig(**{**s, "num_embeddings": self.raw_id_space})
                                if (s.get("name") or s["column"]) in self.remaps else SparseColumnConfig(**s)
                                for s in schema["sparse"]]
            self.table = TableDataConfig(**schema)

    @property
    def columns(self) -> List[str]:
        """The raw columns the model reads (the label not included)."""
        if self.format == "table":
            assert self.table is not None
            return [*self.table.dense, *(s.column for s in self.table.sparse)]
        if self.format == "criteo_tsv":
            return [*CRITEO_DENSE, *CRITEO_SPARSE]
        return [*self.dense_names, *self.sparse_names]

    @property
    def label_columns(self) -> List[str]:
        """The columns the labels are read from (optional in the input: all of them or none)."""
        if self.label_specs is None:
            return [self.label]
        if self.format == "features":
            return [f"label_{s.name}" for s in self.label_specs] if len(self.label_specs) > 1 else [self.label]
        return list(dict.fromkeys(s.column or self.label for s in self.label_specs))

    def convert(self, frame: pd.DataFrame, lines: Optional[np.ndarray] = None, where: str = "rows") -> Converted:
        """Raw rows -> the model's inputs, by the rules training used.

        Args:
            frame (pd.DataFrame): one row per request; the contract's columns (any order, extra
                columns ignored; the label column optional).
            lines (Optional[np.ndarray]): 1-based line numbers for messages (default 1..n).
            where (str): the file or source, for messages.

        Returns:
            Converted: the good rows, their mask, the bad ones with reasons.

        Raises:
            DataError: a column the model reads is missing (named, with the columns found).
        """
        lines = np.arange(1, len(frame) + 1) if lines is None else np.asarray(lines)
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise DataError(f"{where}: column(s) {missing} the model reads are missing; found {list(frame.columns)}")
        labeled = all(c in frame.columns for c in self.label_columns)
        if self.format == "table":
            out = self._convert_table(frame, lines, where, labeled)
        elif self.format == "criteo_tsv":
            out = self._convert_criteo(frame, lines, labeled)
        else:
            out = self._convert_features(frame, lines, labeled)
        if self.remaps:  # raw entity ids -> their trained rows, unseen ids -> the fallback row
            out.rows = RowBlock(out.rows.dense, out.rows.labels, apply_remaps(self.remaps, self.sparse_names, out.rows.sparse))
        return out

    def _convert_table(self, frame: pd.DataFrame, lines: np.ndarray, where: str, labeled: bool) -> Converted:
        assert self.table is not None
        pending: List[Bad] = []
        block, _, good = TableColumns(self.table, with_label=labeled, tasks=self.tasks).convert_rows(
            frame, lines, Path(where), pending)
        return Converted(block, good, sorted(pending), labeled)

    def _convert_criteo(self, frame: pd.DataFrame, lines: np.ndarray, labeled: bool) -> Converted:
        # Rebuild the TSV lines and run the reader's own parser: the same bytes give the same rows.
        cells = frame[[*([CRITEO_LABEL] if labeled else []), *CRITEO_DENSE, *CRITEO_SPARSE]]
        cells = cells.astype(object).where(cells.notna(), "").astype(str)
        if not labeled:
            cells.insert(0, CRITEO_LABEL, "0")
        text = ("\n".join("\t".join(r) for r in cells.itertuples(index=False, name=None)) + "\n").encode("ascii", "replace")
        parsed = parse_block(text if len(cells) else b"", 1, np.asarray(self.num_embeddings, np.int64))
        good = np.ones(len(frame), bool)
        good[parsed.bad_lines - 1] = False
        bad = [(int(lines[i - 1]), reason, t) for i, reason, t in zip(parsed.bad_lines, parsed.bad_reasons, parsed.bad_text)]
        labels = parsed.labels if labeled else np.zeros(len(parsed.labels), np.float32)
        block = RowBlock(parsed.dense, labels, [Jagged.from_ids(parsed.ids[:, f]) for f in range(NUM_SPARSE)])
        return Converted(block, good, bad, labeled)

    def _convert_features(self, frame: pd.DataFrame, lines: np.ndarray, labeled: bool) -> Converted:
        good = np.ones(len(frame), bool)
        bad: List[Bad] = []
        dense = np.zeros((len(frame), len(self.dense_names)), np.float32)
        for j, name in enumerate(self.dense_names):
            num = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
            text = frame[name].astype(str).str.strip().str.lower()
            wrong = np.isnan(num) & ~text.isin(["", "nan", "none", "null", "na"]).to_numpy()
            bad.extend((int(lines[i]), f"dense column '{name}' value is not a number", "") for i in np.flatnonzero(wrong & good))
            good &= ~wrong
            dense[:, j] = np.where(np.isfinite(num), num, 0.0)
        labels = np.zeros(len(frame), np.float32)
        if self.label_specs is not None:
            labels = self._feature_task_labels(frame, lines, labeled, good, bad)
        elif labeled:
            lab = pd.to_numeric(frame[self.label], errors="coerce").to_numpy(dtype=np.float64)
            wrong = ~np.isin(lab, [0.0, 1.0])
            bad.extend((int(lines[i]), f"label '{self.label}' is not 0 or 1", "") for i in np.flatnonzero(wrong & good))
            good &= ~wrong
            labels = np.where(wrong, 0.0, lab).astype(np.float32)
        sparse = []
        for name, n in zip(self.sparse_names, self.num_embeddings):
            n = self.raw_id_space if name in self.remaps else n  # entity ids stay raw until remapped
            spec = SparseColumnConfig(column=name, num_embeddings=n, separator=FEATURE_SEPARATOR)
            sparse.append(sparse_column(frame[name].astype(object), spec))
        block = RowBlock(dense, labels, sparse).take(np.flatnonzero(good))
        return Converted(block, good, sorted(bad), labeled)

    def _feature_task_labels(self, frame: pd.DataFrame, lines: np.ndarray, labeled: bool, good: np.ndarray,
                             bad: List[Bad]) -> np.ndarray:
        """``[n, T]`` labels of a features file from its ``label_<task>`` columns (zeros when unlabelled)."""
        specs = self.label_specs or []
        labels = np.zeros((len(frame), len(specs)), np.float32)
        if not labeled:
            return one_column(labels)
        for i, spec in enumerate(specs):
            name = self.label_columns[i]
            lab = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
            wrong = ~np.isin(lab, [0.0, 1.0]) if spec.binary else ~np.isfinite(lab)
            what = "0 or 1" if spec.binary else "a number"
            bad.extend((int(lines[j]), f"label '{name}' is not {what}", "") for j in np.flatnonzero(wrong & good))
            good &= ~wrong
            labels[:, i] = np.where(wrong, 0.0, lab)
        return one_column(zero_outside_spaces(labels, specs))

    def read(self, path: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[Tuple[pd.DataFrame, np.ndarray, List[Bad], Path]]:
        """The raw rows of a file, a folder or a glob, in chunks: ``(frame, lines, unreadable lines, file)``.

        Args:
            path (str): where the traffic is (the contract's format).
            chunk_rows (int): rows per chunk (bounds memory).

        Yields:
            Tuple: one chunk's DataFrame of raw cells, its 1-based line numbers, lines that could not
            be read as rows (wrong field count, undecodable bytes), and the file.
        """
        # the training schema's CSV settings (delimiter, header, encoding), or a plain CSV / Parquet
        reader = replace(self.table, path=path) if self.table is not None else TableDataConfig(path=path)
        for f in table_files(reader):
            if self.format == "criteo_tsv":
                yield from _criteo_chunks(f, chunk_rows)
            elif file_format(f, reader.format) == "parquet":
                for df, lines, bad in parquet_chunks(f, chunk_rows):
                    yield df, lines, bad, f
            else:
                for df, lines, bad in csv_chunks(f, reader, chunk_rows):
                    yield df, lines, bad, f


def _checked_remaps(spec: Optional[Dict[str, Any]], remaps: Optional[Mapping[str, IdRemap]]) -> Dict[str, IdRemap]:
    """The remaps a contract's ``id_remap`` names, checked to be the ones it was made with."""
    if not spec:
        return {}
    if remaps is None:
        raise DataError(f"the input contract maps {sorted(spec['features'])} through {spec['file']}, which was not "
                        "given; load the export with torchrec_kd.load_model(dir) (it reads the file)")
    out: Dict[str, IdRemap] = {}
    for name, rec in spec["features"].items():
        r = remaps.get(name)
        if r is None or len(r) != rec["ids"] or r.capacity != rec["capacity"]:
            got = "none" if r is None else f"{len(r)} ids of {r.capacity} rows"
            raise DataError(f"{spec['file']}: feature {name!r} holds {got}, the contract {rec['ids']} ids of "
                            f"{rec['capacity']} rows; the remap is from another export: export again")
        out[name] = r
    return out


def _criteo_chunks(path: Path, chunk_rows: int) -> Iterator[Tuple[pd.DataFrame, np.ndarray, List[Bad], Path]]:
    """A Criteo TSV file (40 fields, or 39 without the label) as frames of text cells."""
    names: Optional[List[str]] = None
    records: List[List[str]] = []
    nums: List[int] = []
    bad: List[Bad] = []
    with open(path, "r", encoding="ascii", errors="replace", newline="") as f:
        for line_no, rec in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not rec or rec == [""]:
                continue
            if names is None:
                if len(rec) not in (NUM_FIELDS, NUM_FIELDS - 1):
                    raise DataError(f"{path}:{line_no}: {len(rec)} fields; a Criteo TSV line has {NUM_FIELDS} "
                                    f"(label, I1..I13, C1..C26) or {NUM_FIELDS - 1} without the label")
                names = ([CRITEO_LABEL] if len(rec) == NUM_FIELDS else []) + CRITEO_DENSE + CRITEO_SPARSE
            if len(rec) != len(names):
                bad.append((line_no, f"expected {len(names)} fields, found {len(rec)}", "\t".join(rec)[:120]))
                continue
            records.append(rec)
            nums.append(line_no)
            if len(records) >= chunk_rows:
                yield pd.DataFrame(records, columns=names, dtype=object), np.asarray(nums, np.int64), bad, path
                records, nums, bad = [], [], []
    if names is None:
        raise DataError(f"{path}: no rows")
    yield pd.DataFrame(records, columns=names, dtype=object), np.asarray(nums, np.int64), bad, path


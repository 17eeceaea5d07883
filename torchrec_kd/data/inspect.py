"""``inspect-data``: what a reader sees before anyone trains on it.

Per split: rows, positives, bad rows skipped (with the first ``file:line`` numbers), how
many full global batches that makes; per sparse feature its table size, ids, empty
bags, bag lengths and distinct table rows used; per dense feature the range of the
values the model gets (and, for raw Criteo, how many were missing, infinite or
negative before the DLRM transform).

Example::

    python -m torchrec_kd.cli inspect-data --format criteo_tsv --path tests/fixtures/criteo/criteo_sample.tsv
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from torchrec_kd.config import RunConfig
from torchrec_kd.data.bad_rows import BadRowLog
from torchrec_kd.data.criteo import CriteoTsvLog, block_rows
from torchrec_kd.data.criteo_parse import ParsedBlock
from torchrec_kd.data.files import raw_stem
from torchrec_kd.data.rows import SPLITS, RowBlock

if TYPE_CHECKING:
    from torchrec_kd.data import ClickLog

FORMATS = ("criteo_tsv", "criteo_npy", "movielens", "table")
# Distinct ids are counted with one bitmap per table up to this many rows (and this much memory in all).
_BITMAP_MAX_ROWS = 1 << 26
_BITMAP_BUDGET = 1 << 29


@dataclass
class SplitStats:
    """What one split holds, as the reader yields it."""

    split: str
    dense_names: List[str]
    sparse_names: List[str]
    num_embeddings: List[int]
    rows: int = 0
    positives: int = 0
    bad_rows: BadRowLog = field(default_factory=BadRowLog)
    truncated: bool = False
    dense_min: Optional[np.ndarray] = None
    dense_max: Optional[np.ndarray] = None
    dense_sum: Optional[np.ndarray] = None
    # raw Criteo only: values replaced by the DLRM rule before log(1 + x)
    dense_missing: Optional[np.ndarray] = None
    dense_inf: Optional[np.ndarray] = None
    dense_negative: Optional[np.ndarray] = None
    ids: Optional[np.ndarray] = None
    empty_bags: Optional[np.ndarray] = None
    max_bag: Optional[np.ndarray] = None
    seen: List[Optional[np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        d, f = len(self.dense_names), len(self.sparse_names)
        self.dense_min = np.full(d, np.inf)
        self.dense_max = np.full(d, -np.inf)
        self.dense_sum = np.zeros(d)
        self.ids = np.zeros(f, np.int64)
        self.empty_bags = np.zeros(f, np.int64)
        self.max_bag = np.zeros(f, np.int64)
        budget = _BITMAP_BUDGET
        for n in self.num_embeddings:
            if n <= _BITMAP_MAX_ROWS and n <= budget:
                self.seen.append(np.zeros(n, bool))
                budget -= n
            else:
                self.seen.append(None)

    def add(self, block: RowBlock) -> None:
        """Fold a block of rows into the statistics."""
        if not len(block):
            return
        self.rows += len(block)
        self.positives += int(block.labels.sum())
        if block.dense.shape[1]:
            self.dense_min = np.minimum(self.dense_min, block.dense.min(0))
            self.dense_max = np.maximum(self.dense_max, block.dense.max(0))
            self.dense_sum += block.dense.sum(0, dtype=np.float64)
        for f, jag in enumerate(block.sparse):
            lengths = jag.lengths
            self.ids[f] += len(jag.values)
            self.empty_bags[f] += int((lengths == 0).sum())
            self.max_bag[f] = max(self.max_bag[f], int(lengths.max(initial=0)))
            if self.seen[f] is not None:
                self.seen[f][jag.values] = True

    def add_raw(self, parsed: ParsedBlock) -> None:
        """Fold a raw Criteo block's pre-transform dense counts into the statistics."""
        for name in ("dense_missing", "dense_inf", "dense_negative"):
            cur = getattr(self, name)
            setattr(self, name, getattr(parsed, name) if cur is None else cur + getattr(parsed, name))


def _limit(blocks: Iterator[RowBlock], limit: Optional[int], stats: SplitStats) -> Iterator[RowBlock]:
    seen = 0
    for b in blocks:
        if limit is not None and seen + len(b) >= limit:
            stats.truncated = True  # stopped at the limit (the split may or may not hold more)
            yield b.slice(0, limit - seen)
            return
        seen += len(b)
        yield b


def split_stats(data: "ClickLog", split: str, limit: Optional[int] = None) -> SplitStats:
    """Read ``split`` of a reader once and gather its statistics.

    Args:
        data (ClickLog): a file reader from ``build_data`` (not synthetic).
        split (str): "train", "val" or "test".
        limit (Optional[int]): stop after this many rows.

    Returns:
        SplitStats: rows, positives, bad rows, per-feature statistics.
    """
    stats = SplitStats(split, data.dense_names, data.sparse_names, data.num_embeddings)
    if isinstance(data, CriteoTsvLog):
        log = BadRowLog(data.on_bad_row)

        def blocks() -> Iterator[RowBlock]:
            for parsed in data.parsed_blocks(split, log):
                stats.add_raw(parsed)
                yield block_rows(parsed)

        gen = blocks()
        for b in _limit(gen, limit, stats):
            stats.add(b)
        gen.close()
        stats.bad_rows = log
    else:
        for b in _limit(data.row_blocks(split), limit, stats):
            stats.add(b)
    return stats


def _fmt(x: float) -> str:
    return f"{x:.4g}" if np.isfinite(x) else "-"


def format_stats(s: SplitStats, batch_size: int, show_bad_rows: bool = True) -> str:
    """A human-readable report of one split.

    Args:
        s (SplitStats): the statistics.
        batch_size (int): global batch size (to count full batches).
        show_bad_rows (bool): report the split's bad rows (False when they were counted at load).

    Returns:
        str: several lines.
    """
    pct = 100.0 * s.positives / s.rows if s.rows else 0.0
    first = f" (first {s.rows} rows only)" if s.truncated else ""
    bad = f"  bad rows skipped {s.bad_rows.count}" if show_bad_rows else ""
    lines = [f"split {s.split}{first}: rows {s.rows}  positives {s.positives} ({pct:.2f}%)  "
             f"negatives {s.rows - s.positives}{bad}"]
    if show_bad_rows and s.bad_rows.count:
        lines.append(f"  {s.bad_rows.summary()}")
    full = s.rows // batch_size
    lines.append(f"  data.batch_size={batch_size}: {full} full global batch(es), {s.rows - full * batch_size} "
                 "row(s) in the dropped tail")
    lines.append(f"  {'sparse feature':<16}{'table rows':>12}{'ids':>12}{'empty bags':>12}{'bag len mean/max':>18}"
                 f"{'distinct rows':>15}{'of table':>10}")
    for f, name in enumerate(s.sparse_names):
        n = s.num_embeddings[f]
        mean = s.ids[f] / s.rows if s.rows else 0.0
        distinct = int(s.seen[f].sum()) if s.seen[f] is not None else None
        lines.append(f"  {name:<16}{n:>12}{s.ids[f]:>12}{s.empty_bags[f]:>12}{f'{mean:.2f}/{s.max_bag[f]}':>18}"
                     f"{distinct if distinct is not None else '-':>15}"
                     f"{f'{100.0 * distinct / n:.1f}%' if distinct is not None else '-':>10}")
    if s.dense_names:
        raw = s.dense_missing is not None
        head = f"  {'dense feature':<16}{'min':>10}{'max':>10}{'mean':>10}"
        lines.append(head + (f"{'missing->0':>12}{'inf->0':>8}{'neg->0':>8}" if raw else ""))
        for d, name in enumerate(s.dense_names):
            mean = s.dense_sum[d] / s.rows if s.rows else float("nan")
            row = f"  {name:<16}{_fmt(s.dense_min[d]):>10}{_fmt(s.dense_max[d]):>10}{_fmt(mean):>10}"
            if raw:
                row += f"{s.dense_missing[d]:>12}{s.dense_inf[d]:>8}{s.dense_negative[d]:>8}"
            lines.append(row)
    return "\n".join(lines)


def point_config_at(cfg: RunConfig, fmt: str, path: str) -> Tuple[RunConfig, List[str]]:
    """A copy of ``cfg`` reading ``path`` as ``fmt``, and the splits worth reporting.

    A single Criteo file is read whole (as the "train" split); a folder uses the config's split specs.
    """
    cfg = copy.deepcopy(cfg)
    cfg.data.source = fmt  # type: ignore[assignment]
    p = Path(path).expanduser()
    splits = list(SPLITS)
    if fmt in ("criteo_tsv", "criteo_npy"):
        c = cfg.data.criteo
        if p.is_dir():
            c.path = c.npy_path = str(p)
        else:
            name = p.name
            if fmt == "criteo_npy":
                name = raw_stem(name)
                for part in ("_dense.npy", "_sparse.npy", "_labels.npy"):
                    name = name[: -len(part)] if name.endswith(part) else name
            c.path = c.npy_path = str(p.parent)
            c.train, c.val, c.test = [name], [], []
            splits = ["train"]
    elif fmt == "movielens":
        cfg.data.movielens.path = str(p)
    else:
        cfg.data.table.path = str(p)
    return cfg, splits


def run_inspect(cfg: RunConfig, fmt: str, path: str, splits: Optional[Sequence[str]] = None,
                limit: Optional[int] = None) -> str:
    """Build the reader for ``path`` and report every split.

    Args:
        cfg (RunConfig): the run config (schema, split specs, table sizes, batch size).
        fmt (str): one of ``FORMATS``.
        path (str): a file or folder.
        splits (Optional[Sequence[str]]): which splits (default: all that have data).
        limit (Optional[int]): rows read per split at most.

    Returns:
        str: the report.
    """
    from torchrec_kd.data import build_data

    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    cfg, default_splits = point_config_at(cfg, fmt, path)
    data = build_data(cfg.data, cfg.seed)
    out = [f"{fmt} {path}", f"  dense features {len(data.dense_names)}: {', '.join(data.dense_names)}",
           f"  sparse features {len(data.sparse_names)}: {', '.join(data.sparse_names)}"]
    load_log = data.bad_rows if isinstance(data.bad_rows, BadRowLog) else None
    if load_log is not None:
        # in-memory readers count bad rows once, while loading all splits
        out.append(f"  loading all splits: bad rows skipped {load_log.count}"
                   + (f"; {load_log.summary()}" if load_log.count else ""))
    for split in splits or default_splits:
        if fmt in ("criteo_tsv", "criteo_npy") and not getattr(cfg.data.criteo, split):
            continue
        stats = split_stats(data, split, limit)
        out.append(format_stats(stats, cfg.data.batch_size, show_bad_rows=load_log is None))
    return "\n".join(out)

"""Consecutive time windows of a log (``data.windows``): one window's train / val / test as an in-memory log.

A window is a data view. A source that knows its time order gives a :class:`Timeline` (all
rows, each row's time, a way to build rows whose past-dependent features see only the past;
``data/timelines.py``); :func:`cut_windows` cuts it into consecutive windows (``count``
equal-row windows in time order, or ``size`` durations), and :class:`WindowedClickLog` serves
window ``t = data.windows.index`` to the recipes, batched like every in-memory source:

* train: window t's rows minus its val slice (``history: true``: the train parts of windows
  0..t, in time order); val: window t's last ``val_fraction`` rows by time; test: all of
  window t + 1 — scored before anything trains on it (progressive validation).
* entity features (``data.windows.entities``) go through an :class:`~torchrec_kd.data.id_remap.IdRemap`
  built from the trained rows of windows 0..t (the train parts, whatever ``history`` says):
  a new id gets a row of its own, an id never trained on reads row 0.
* past-dependent features (MovieLens' user / item counts, ml-latest's tag bags) see only the
  trained rows and tags applied before window t + 1 begins.

Every rank builds the same log, so the same window gives the same global batches on 1 or N
ranks (the rule of :class:`~torchrec_kd.data.rows.InMemoryClickLog`).

Example::

    log = build_data(cfg.data, seed=0)        # with data.windows: {count: 10, index: 3}
    slices = window_slices(log)                # 0 new / 1 rare / 2 rest, per test row
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List

import numpy as np

from torchrec_kd.config.data_sources import WindowsConfig, duration_seconds
from torchrec_kd.data.id_remap import IdRemap, apply_remaps
from torchrec_kd.data.rows import InMemoryClickLog, Jagged, RowBlock
from torchrec_kd.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

NEW, RARE, REST = 0, 1, 2
SLICE_NAMES = ("new", "rare", "rest")


@dataclass
class Timeline:
    """A source's rows in stored order with their times, as windows need them.

    Attributes:
        times (np.ndarray): each row's time (Unix seconds, or the drifting world's window number).
        real_time (bool): ``times`` are seconds (durations may cut them).
        dense_names (List[str]): dense features.
        sparse_names (List[str]): sparse features (KJT keys).
        num_embeddings (List[int]): table sizes (entity tables: the remap's capacity).
        entities (List[str]): the source's default entity features.
        rows (Callable): ``rows(idx, past, cutoff)`` -> RowBlock of rows ``idx`` (in that order),
            entity features holding RAW ids, features that depend on the past computed from rows
            ``past`` and side data dated before ``cutoff`` only.
        where (str): names the source in errors.
        shuffle (bool): reshuffle the train split each epoch.
    """

    times: np.ndarray
    real_time: bool
    dense_names: List[str]
    sparse_names: List[str]
    num_embeddings: List[int]
    entities: List[str]
    rows: Callable[[np.ndarray, np.ndarray, float], RowBlock]
    where: str
    shuffle: bool = True


def _start_seconds(start: object) -> float:
    """``data.windows.start`` (Unix seconds or a date) as seconds since 1970."""
    if isinstance(start, (int, float)):
        return float(start)
    import pandas as pd

    try:
        ts = pd.Timestamp(str(start))
    except (ValueError, TypeError):
        raise ConfigError(f"data.windows.start={start!r} is not a date or Unix time; write e.g. 2014-01-01") from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
    return float(ts.timestamp())


def cut_windows(times: np.ndarray, cfg: WindowsConfig, real_time: bool = True) -> List[np.ndarray]:
    """Row indices of each window, in time order (``by: rows``: stored order); windows never overlap.

    Args:
        times (np.ndarray): each row's time.
        cfg (WindowsConfig): ``by``, ``count`` or ``size`` (and ``start``).
        real_time (bool): whether ``times`` are seconds (``size`` needs them).

    Returns:
        List[np.ndarray]: one int64 index array per non-empty window; together every row once.

    Raises:
        ConfigError: ``size`` on a source without real times; DataError: fewer rows than windows.
    """
    n = len(times)
    order = np.arange(n, dtype=np.int64) if cfg.by == "rows" else np.argsort(times, kind="stable").astype(np.int64)
    if cfg.count is not None:
        if n < 2 * cfg.count:
            raise DataError(f"data.windows.count={cfg.count}: the data has only {n} rows; lower the count")
        return list(np.array_split(order, cfg.count))
    if not real_time:
        raise ConfigError(f"data.windows.size={cfg.size!r}: this source's time is a window number, not seconds; "
                          "use data.windows.count")
    size = duration_seconds(str(cfg.size))
    t = times[order].astype(np.float64)
    if cfg.start is None:
        key = np.floor((t - t[0]) / size).astype(np.int64)
    else:  # window 0: everything before start (a warm-up history); then windows of size from start
        s = _start_seconds(cfg.start)
        key = np.where(t < s, 0, np.floor((t - s) / size).astype(np.int64) + 1)
    cuts = np.flatnonzero(np.diff(key)) + 1  # empty windows vanish: windows are the non-empty intervals
    windows = list(np.split(order, cuts))
    if cfg.min_rows:  # too small: merged into the next window (a short tail into the one before)
        merged: List[np.ndarray] = []
        pending: List[np.ndarray] = []
        for w in windows:
            pending.append(w)
            if sum(map(len, pending)) >= cfg.min_rows:
                merged.append(np.concatenate(pending))
                pending = []
        if pending:
            if merged:
                merged[-1] = np.concatenate([merged[-1], *pending])
            else:
                merged.append(np.concatenate(pending))
        windows = merged
    return windows


def _bag_min(values_count: np.ndarray, jag: Jagged) -> np.ndarray:
    """Per row, the minimum of ``values_count`` over its bag (+inf for an empty bag)."""
    out = np.full(len(jag), np.inf)
    lengths = jag.lengths
    nonempty = lengths > 0
    if nonempty.any():
        out[nonempty] = np.minimum.reduceat(values_count.astype(np.float64), jag.offsets[:-1][nonempty])
    return out


def rows_digest(block: RowBlock, window_rows: List[int], num_embeddings: List[int], sparse_names: List[str]) -> str:
    """A sha256 (16 hex characters) of the rows a window reads: its run's data identity (``data.windows.rows_digest``).

    Args:
        block (RowBlock): the rows of windows 0..t+1 in time order (raw entity ids, past-dependent
            features as window t sees them).
        window_rows (List[int]): rows of each of those windows (where the block is cut).
        num_embeddings (List[int]): the table sizes (a MovieLens table is sized from the whole file).
        sparse_names (List[str]): the sparse features, in the block's order.

    Returns:
        str: the digest; equal for equal rows however many windows follow them.
    """
    h = hashlib.sha256()
    h.update(repr((window_rows, [int(n) for n in num_embeddings], list(sparse_names))).encode())
    bags = [(j.values[j.offsets[0]:j.offsets[-1]], j.lengths) for j in block.sparse]
    for arr in (block.dense, block.labels, *(a for bag in bags for a in bag)):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class WindowedClickLog(InMemoryClickLog):
    """Window ``t`` of a timeline: train / val / test as the module docstring says, entity ids remapped.

    Args:
        timeline (Timeline): the source.
        cfg (WindowsConfig): the windows and which one (``index``; null: all windows but the last
            with history, the last is test).
        seed (int): run seed (train shuffling per epoch).
        verbose (bool): log the windows' sizes (rank 0).

    Attributes:
        window (int): t, the trained window; test is window t + 1.
        windows (List[np.ndarray]): each window's rows (timeline indices, time order).
        entities (List[str]): the remapped features.
        remaps (Dict[str, IdRemap]): raw id -> row per entity (built from the trained rows 0..t).
        trained_counts (Dict[str, tuple]): per entity, (sorted raw ids, times seen in trained rows 0..t).
        test_raw (Dict[str, Jagged]): per entity, the test rows' raw ids (stored order).
        new_ids (List[Dict[str, int]]): for windows 0..t+1, ids first seen in that window per entity.
        rows_digest (str): the digest of what this window reads (:func:`rows_digest`): windows 0..t+1 only.
    """

    def __init__(self, timeline: Timeline, cfg: WindowsConfig, seed: int = 0, verbose: bool = True) -> None:
        self.cfg, self.seed, self.shuffle = cfg, seed, timeline.shuffle
        self.dense_names, self.sparse_names = list(timeline.dense_names), list(timeline.sparse_names)
        self.num_embeddings = list(timeline.num_embeddings)
        self.entities = list(cfg.entities) or list(timeline.entities)
        if not self.entities:
            raise ConfigError(f"data.windows.entities is empty and {timeline.where} has no default; name the user / "
                              f"item features among {self.sparse_names}")
        unknown = [e for e in self.entities if e not in self.sparse_names]
        if unknown:
            raise ConfigError(f"data.windows.entities names {unknown}, not sparse features of {timeline.where} "
                              f"(its features: {self.sparse_names})")
        self.windows = cut_windows(timeline.times, cfg, timeline.real_time)
        W = len(self.windows)
        if W < 2:
            raise DataError(f"{timeline.where}: data.windows cuts the data into {W} window(s); a windowed run needs "
                            "at least 2 (one to train on, the next to test); use smaller windows")
        t = W - 2 if cfg.index is None else cfg.index
        if not 0 <= t <= W - 2:
            raise ConfigError(f"data.windows.index={cfg.index} is out of range: the data has {W} windows and window "
                              f"index + 1 is the test window, so index must be in 0..{W - 2}")
        self.window = t
        self.where = f"{timeline.where}, window {t} of {W}"
        train_parts, val = [], np.zeros(0, np.int64)
        for w in range(t + 1):
            rows = self.windows[w]
            if len(rows) < 2:
                raise DataError(f"{timeline.where}: window {w} holds {len(rows)} row(s), too few to hold out a val "
                                "slice; use larger windows")
            n_val = min(len(rows) - 1, max(1, int(round(len(rows) * cfg.val_fraction))))
            train_parts.append(rows[:len(rows) - n_val])
            if w == t:
                val = rows[len(rows) - n_val:]
        trained = np.concatenate(train_parts)
        test = self.windows[t + 1]
        cutoff = float(timeline.times[test].min())  # side data (tags) dated from here on is the future
        # one block of windows 0..t+1 in time order: positions in it are the windows' rows
        span = np.concatenate(self.windows[:t + 2])
        block = timeline.rows(span, trained, cutoff)
        pos = np.empty(len(timeline.times), np.int64)
        pos[span] = np.arange(len(span))
        idx = {name: self.sparse_names.index(name) for name in self.entities}
        trained_block = block.take(pos[trained])
        self.remaps: Dict[str, IdRemap] = {}
        self.trained_counts: Dict[str, tuple] = {}
        for name, f in idx.items():
            remap = IdRemap(name, self.num_embeddings[f])
            for part in train_parts:  # window by window: what a continual run's remaps grow through
                remap.extend(block.sparse[f].take(pos[part]).values)
            self.remaps[name] = remap
            self.trained_counts[name] = np.unique(trained_block.sparse[f].values, return_counts=True)
        # what this window reads, whatever arrives later: rows of windows 0..t+1 in order, their cut, table sizes
        self.rows_digest = rows_digest(block, [len(w) for w in self.windows[:t + 2]], self.num_embeddings,
                                       self.sparse_names)
        test_block = block.take(pos[test])
        self.test_raw = {name: test_block.sparse[f] for name, f in idx.items()}
        self.new_ids = self._new_ids(block, [pos[w] for w in self.windows[:t + 2]], idx)
        train_rows = trained if cfg.history else train_parts[-1]
        self.splits: Dict[str, RowBlock] = {}
        for split, rows in (("train", train_rows), ("val", val), ("test", test)):
            b = block.take(pos[rows])
            self.splits[split] = RowBlock(b.dense, b.labels, apply_remaps(self.remaps, self.sparse_names, b.sparse))
        self.window_rows = [len(w) for w in self.windows]
        if verbose:
            logger.info("%s: %d windows of %s rows; window %d trains on %d rows (%s), val %d, test (window %d) %d; "
                        "new ids in the test window %s", timeline.where, W, self.window_rows, t, len(train_rows),
                        "history 0..%d" % t if cfg.history else "this window", len(val), t + 1, len(test),
                        self.new_ids[t + 1])

    @staticmethod
    def _new_ids(block: RowBlock, windows: List[np.ndarray], idx: Dict[str, int]) -> List[Dict[str, int]]:
        """Per window, per entity: distinct ids first seen (in any row) in that window."""
        out: List[Dict[str, int]] = [{} for _ in windows]
        for name, f in idx.items():
            seen = np.zeros(0, np.int64)
            for w, rows in enumerate(windows):
                ids = np.unique(block.sparse[f].take(rows).values)
                out[w][name] = int((~np.isin(ids, seen)).sum())
                seen = np.union1d(seen, ids)
        return out

    def window_info(self) -> List[Dict[str, object]]:
        """Per window: its number, rows, and (for windows 0..t+1) new ids per entity."""
        return [{"window": w, "rows": n, **({"new_ids": self.new_ids[w]} if w < len(self.new_ids) else {})}
                for w, n in enumerate(self.window_rows)]


def window_slices(log: WindowedClickLog) -> np.ndarray:
    """The cold-start slice of every test row (stored order): 0 new, 1 rare, 2 rest.

    A row is *new* when one of its entity ids was never in the trained rows of windows 0..t,
    *rare* when the least-seen of them was seen fewer than ``data.windows.rare_below`` times,
    the *rest* otherwise (a row with no entity ids at all is rest).

    Args:
        log (WindowedClickLog): a windowed run's data.

    Returns:
        np.ndarray: int8 per test row.
    """
    least = np.full(log.rows("test"), np.inf)
    for name, jag in log.test_raw.items():
        ids, counts = log.trained_counts[name]
        if len(ids):
            at = np.clip(np.searchsorted(ids, jag.values), 0, len(ids) - 1)
            seen = np.where(ids[at] == jag.values, counts[at], 0)
        else:
            seen = np.zeros(len(jag.values), np.int64)
        least = np.minimum(least, _bag_min(seen, jag))
    out = np.full(len(least), REST, np.int8)
    out[least < log.cfg.rare_below] = RARE
    out[least == 0] = NEW
    return out


__all__ = ["NEW", "RARE", "REST", "SLICE_NAMES", "Timeline", "WindowedClickLog", "cut_windows", "rows_digest",
           "window_slices"]

"""Each time-ordered source as a :class:`~torchrec_kd.data.windows.Timeline` (``data.windows``).

* synthetic (``data.synthetic.drift``): the drifting world's rows; time = window number;
  entities default to ``drift.features``; entity tables get one extra row (row 0, the fallback).
* movielens (all layouts): time = the rating's timestamp; entities default to ``user_id`` and
  ``item_id`` with tables of ``num_embeddings`` (configured) or distinct ids + 1; ``user_count``
  / ``item_count`` count the trained rows only; ml-latest's tag bags hold only tags applied
  before the test window begins, with tag ids numbered by first application (ties by text), so
  a tag keeps its id (and its embedding row) from window to window.
* table: time = ``time_column`` (``by: rows``: the file order); entities must be named; their
  raw values (integers, or text hashed to 62 bits) are remapped instead of taken modulo.
* Criteo: not windowed yet (refused when the config is loaded).

Example::

    log = windowed_log(cfg.data, seed=0)      # window data.windows.index of the configured source
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from torchrec_kd.config import DataConfig
from torchrec_kd.config.data_sources import WindowsConfig
from torchrec_kd.data.bad_rows import BadRowLog
from torchrec_kd.data.rows import RowBlock
from torchrec_kd.data.windows import Timeline, WindowedClickLog
from torchrec_kd.errors import ConfigError

logger = logging.getLogger(__name__)

# Raw ids of table entities live in [0, 2^62): integers modulo it (i.e. as they are), text hashed into it.
RAW_ID_SPACE = 1 << 62


def _bad_row_summary(log: Any, verbose: bool) -> None:
    """The reader's bad-row summary (its own shape line would show the raw-id tables: not logged)."""
    if verbose and log.bad_rows.count:
        logger.warning("%s: %s", log.where, log.bad_rows.summary())


def synthetic_timeline(cfg: DataConfig, seed: int) -> Timeline:
    """The drifting synthetic world (``data.synthetic.drift``) as a timeline."""
    from torchrec_kd.data.synthetic import SyntheticClickLog

    syn = cfg.synthetic
    if syn.drift is None:
        raise ConfigError("data.windows on the synthetic source needs data.synthetic.drift (the static world has no "
                          "time order)")
    world = SyntheticClickLog(syn, seed=seed, val_rows=cfg.val_rows, test_rows=cfg.test_rows)
    rows, times = world.drift_timeline()
    entities = list(cfg.windows.entities if cfg.windows and cfg.windows.entities else syn.drift.features)
    sizes = [n + 1 if name in entities else n for name, n in zip(world.sparse_names, world.num_embeddings)]
    return Timeline(times=times, real_time=False, dense_names=world.dense_names, sparse_names=world.sparse_names,
                    num_embeddings=sizes, entities=list(syn.drift.features),
                    rows=lambda idx, past, cutoff: rows.take(idx), where="data.synthetic (drift)")


def stable_tag_bags(root: Path, cutoff: float) -> Tuple[Dict[int, List[int]], int]:
    """ml-latest tag bags from tags applied before ``cutoff``, with ids fixed over the whole file.

    Args:
        root (Path): the ml-latest folder.
        cutoff (float): Unix time; tags applied at or after it are in no bag.

    Returns:
        Tuple[Dict[int, List[int]], int]: sorted tag ids by movie, and the vocabulary size (all
        tags of the file, numbered by first application time, ties by text; at least 1).
    """
    from torchrec_kd.data.movielens_latest import load_tags

    path = root / "tags.csv"
    if not path.is_file():
        return {}, 1
    tags = load_tags(path, BadRowLog("skip", verbose=False))  # the reader counted its bad lines already
    first: Dict[str, int] = {}
    for t, when in zip(tags.tag, tags.time):
        first[t] = min(first.get(t, int(when)), int(when))
    vocab = {t: k for k, t in enumerate(sorted(first, key=lambda t: (first[t], t)))}
    bags: Dict[int, set] = {}
    for item, t, when in zip(tags.item, tags.tag, tags.time):
        if when < cutoff:
            bags.setdefault(int(item), set()).add(vocab[t])
    return {item: sorted(ids) for item, ids in bags.items()}, max(1, len(vocab))


def movielens_timeline(cfg: DataConfig, seed: int, entities: List[str], verbose: bool) -> Timeline:
    """A MovieLens folder (any layout) as a timeline of its ratings."""
    from torchrec_kd.data.movielens import MovieLensClickLog

    ml = cfg.movielens
    # user and item ids stay raw (a table too large to wrap them); other entities are vocabulary ids
    raw = [e for e in entities if e in ("user_id", "item_id")]
    # read once, every rating in one split (the windows split them)
    raw_cfg = replace(ml, split="chronological", val_fraction=0.0, test_fraction=0.0, shuffle=False,
                      num_embeddings={**ml.num_embeddings, **{e: RAW_ID_SPACE for e in raw}})
    log = MovieLensClickLog(raw_cfg, seed=seed, on_bad_row=cfg.on_bad_row, verbose=False)
    _bad_row_summary(log, verbose)
    r = log.ratings
    sizes = dict(zip(log.sparse_names, log.num_embeddings))
    for e in raw:  # configured, or every id of the file plus the fallback row 0
        sizes[e] = ml.num_embeddings.get(e, len(np.unique(r.user if e == "user_id" else r.item)) + 1)
    has_tags = "tags" in log.sparse_names
    if has_tags:  # the whole file's vocabulary: tag ids do not move between windows
        sizes["tags"] = ml.num_embeddings.get("tags", stable_tag_bags(log.root, 0)[1])
    # the rows' tables: raw ids for user / item, the stable tag vocabulary
    log.num_embeddings = [RAW_ID_SPACE if n in raw else sizes[n] for n in log.sparse_names]

    def rows(idx: np.ndarray, past: np.ndarray, cutoff: float) -> RowBlock:
        return log.rows_for(idx, past, stable_tag_bags(log.root, cutoff)[0] if has_tags else None)

    return Timeline(times=r.time, real_time=True, dense_names=log.dense_names, sparse_names=log.sparse_names,
                    num_embeddings=[sizes[n] for n in log.sparse_names], entities=["user_id", "item_id"],
                    rows=rows, where=f"data.movielens ({log.root})", shuffle=ml.shuffle)


def table_timeline(cfg: DataConfig, seed: int, entities: List[str], by: str, verbose: bool) -> Timeline:
    """A ``data.table`` log as a timeline (``time_column``, or the file order for ``by: rows``)."""
    from torchrec_kd.data.table import TableClickLog

    tab = cfg.table
    names = [s.name or s.column for s in tab.sparse]
    sparse = [replace(s, num_embeddings=RAW_ID_SPACE) if n in entities else s for s, n in zip(tab.sparse, names)]
    raw_cfg = replace(tab, split="ordered", val_fraction=0.0, test_fraction=0.0, shuffle=False, sparse=sparse,
                      time_column=tab.time_column if by == "time" else None)
    log = TableClickLog(raw_cfg, seed=seed, on_bad_row=cfg.on_bad_row, verbose=False)
    _bad_row_summary(log, verbose)
    rows = log.splits["train"]  # every row, in time (or file) order
    times = np.sort(log.row_times, kind="stable") if log.row_times is not None else np.arange(len(rows), dtype=np.float64)
    return Timeline(times=times, real_time=log.row_times is not None, dense_names=log.dense_names,
                    sparse_names=log.sparse_names, num_embeddings=[s.num_embeddings for s in tab.sparse], entities=[],
                    rows=lambda idx, past, cutoff: rows.take(idx), where=f"data.table ({tab.path})",
                    shuffle=tab.shuffle)


def windowed_log(cfg: DataConfig, seed: int, verbose: bool = True) -> WindowedClickLog:
    """The windowed log of ``cfg`` (``data.windows``; a drifting synthetic world without it: its own windows).

    Args:
        cfg (DataConfig): the data section.
        seed (int): run seed (train shuffling; the synthetic world's seed unless ``world_seed`` is set).
        verbose (bool): log the windows (rank 0).

    Returns:
        WindowedClickLog: window ``data.windows.index``'s train / val / test.

    Raises:
        ConfigError: a source that cannot be windowed, bad entities or index; DataError: too few rows.
    """
    win = cfg.windows
    if win is None:  # a drifting world read without windows: its own windows, the last one is test
        win = WindowsConfig(count=cfg.synthetic.drift.windows)
    entities = list(win.entities)
    if cfg.source == "synthetic":
        timeline = synthetic_timeline(replace(cfg, windows=win), seed)
    elif cfg.source == "movielens":
        timeline = movielens_timeline(cfg, seed, entities or ["user_id", "item_id"], verbose)
    elif cfg.source == "table":
        if not entities:
            raise ConfigError("data.windows.entities must name the user / item columns of data.table (e.g. "
                              "[user_id, item_id]); they get their own rows and the cold-start slices")
        timeline = table_timeline(cfg, seed, entities, win.by, verbose)
    else:
        raise ConfigError(f"data.windows is not supported for data.source={cfg.source} yet; window a Criteo log "
                          "by giving each run its days in data.criteo.train / val / test")
    return WindowedClickLog(timeline, win, seed=seed, verbose=verbose)


__all__ = ["RAW_ID_SPACE", "movielens_timeline", "stable_tag_bags", "synthetic_timeline",
           "table_timeline", "windowed_log"]

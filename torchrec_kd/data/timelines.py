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
* Criteo (``criteo_tsv``, ``criteo_npy``): not a timeline. Its windows are its day files
  (``data.criteo.days``, one window per matched file, in order), and window t is rewritten into
  an ordinary Criteo config whose train / val / test are row ranges of those files
  (:func:`criteo_window_data`), so the streaming readers serve it unchanged and a window is
  never held in memory (a Terabyte day is ~200M rows). No id remap, no cold-start slices:
  Criteo's categories are hashed values, not user / item ids.

What window t reads is windows 0..t+1 only; :func:`window_rows_digest` is a digest of exactly
that (the rows, or Criteo's day files), which the ``continual`` workflow records as
``data.windows.rows_digest`` so data arriving later changes no earlier window's fingerprint.

Example::

    log = windowed_log(cfg.data, seed=0)      # window data.windows.index of the configured source
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np

from torchrec_kd.config import DataConfig
from torchrec_kd.config.data_sources import WindowsConfig
from torchrec_kd.data.bad_rows import BadRowLog
from torchrec_kd.data.files import FileSpec, parse_spec, raw_stem, resolve
from torchrec_kd.data.rows import RowBlock
from torchrec_kd.data.windows import Timeline, WindowedClickLog
from torchrec_kd.errors import ConfigError, DataError

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


def spec_text(spec: FileSpec) -> str:
    """A file spec as ``data.criteo`` writes it: ``name`` or ``name[lo:hi]`` (exact fractions)."""
    return spec.name if spec.whole else f"{spec.name}[{spec.lo}:{spec.hi}]"


def criteo_days(cfg: DataConfig) -> List[FileSpec]:
    """Criteo's windows: ``data.criteo.days`` resolved in its folder, one spec per matched file, in order.

    Args:
        cfg (DataConfig): the data section (``criteo_npy`` resolves the preprocessed stems in ``npy_path``).

    Returns:
        List[FileSpec]: each window's file (relative to the folder) and row range.

    Raises:
        ConfigError: no days, or two windows sharing rows; DataError: a missing folder or file.
    """
    from torchrec_kd.data.criteo import need_dir

    crit, npy = cfg.criteo, cfg.source == "criteo_npy"
    root = (need_dir(crit.npy_path, "data.criteo.npy_path", "the preprocessed day_N_{dense,sparse,labels}.npy files")
            if npy else need_dir(crit.path, "data.criteo.path", "the Criteo day files (day_0 … day_23)"))
    if not crit.days:
        raise ConfigError("data.windows on Criteo needs data.criteo.days, the day files in time order (one window "
                          "each), e.g. [day_0, day_1, day_2] or ['day_*']")
    out: List[FileSpec] = []
    for text in crit.days:
        spec = parse_spec(text, "data.criteo.days")
        if npy:
            found = resolve(root, raw_stem(spec.name), "data.criteo.days", suffix="_dense.npy")
            names = [str(f.relative_to(root))[: -len("_dense.npy")] for f in found]
        else:
            names = [str(f.relative_to(root)) for f in resolve(root, spec.name, "data.criteo.days")]
        out += [FileSpec(name, spec.lo, spec.hi) for name in names]
    seen: Dict[str, List[FileSpec]] = {}
    for w, spec in enumerate(out):  # windows partition the rows: two windows never share one
        for other in seen.setdefault(spec.name, []):
            if spec.lo < other.hi and other.lo < spec.hi:
                raise ConfigError(f"data.criteo.days: window {w} ({spec_text(spec)}) shares rows with an earlier "
                                  f"window ({spec_text(other)}); list each day (or row range) once")
        seen[spec.name].append(spec)
    return out


def criteo_window_data(cfg: DataConfig, verbose: bool = False) -> DataConfig:
    """Window ``data.windows.index`` of a Criteo log as an ordinary (unwindowed) Criteo data section.

    With the days' specs ``d_0 .. d_{W-1}`` and ``f = 1 - val_fraction``: train is ``d_t[0:f]`` (with
    ``history: true`` the same first part of every day 0..t, in order), val ``d_t[f:1]``, test the
    whole ``d_{t+1}`` (ranges relative to each day's own range). The streaming readers then read
    exactly those rows, so window t's rows are never in an earlier window.

    Args:
        cfg (DataConfig): a Criteo data section with ``windows`` and ``criteo.days``.
        verbose (bool): log the window's files (rank 0).

    Returns:
        DataConfig: ``windows`` null, ``criteo.train / val / test`` the window's row ranges.

    Raises:
        ConfigError: entities set, a count that is not the number of days, an index out of range.
    """
    win = cfg.windows
    assert win is not None
    if win.entities:
        raise ConfigError(f"data.windows.entities={win.entities} must be empty for data.source={cfg.source}: "
                          "Criteo's categories are hashed values, not user / item ids, so there is no id remap "
                          "and no cold-start slice; remove it")
    days = criteo_days(cfg)
    W = len(days)
    if win.count != W:
        raise ConfigError(f"data.windows.count={win.count} but data.criteo.days matches {W} day files "
                          f"({spec_text(days[0])} … {spec_text(days[-1])}; one window each); set "
                          f"data.windows.count={W}")
    t = W - 2 if win.index is None else win.index
    if not 0 <= t <= W - 2:
        raise ConfigError(f"data.windows.index={win.index} is out of range: data.criteo.days gives {W} windows and "
                          f"window index + 1 is the test window, so index must be in 0..{W - 2}")
    keep = 1 - Fraction(repr(win.val_fraction))  # exact: 0.1 -> 1/10, so the cut is the same on every rank

    def cut(spec: FileSpec) -> Fraction:
        return spec.lo + (spec.hi - spec.lo) * keep

    train = [FileSpec(d.name, d.lo, cut(d)) for d in days[:t + 1]]
    splits = {"train": train if win.history else train[-1:], "val": [FileSpec(days[t].name, cut(days[t]), days[t].hi)],
              "test": [days[t + 1]]}
    texts = {split: [spec_text(s) for s in specs] for split, specs in splits.items()}
    if verbose:
        logger.info("data.criteo.days: %d windows; window %d trains on %s, val %s, test (window %d) %s", W, t,
                    texts["train"], texts["val"], t + 1, texts["test"])
    return replace(cfg, windows=None, criteo=replace(cfg.criteo, **texts))


def criteo_window_digest(cfg: DataConfig) -> str:
    """The identity of the day files window ``data.windows.index`` reads: days 0..index+1 only.

    Each day's spec and its files' sizes and modification times (the whole-folder identity of an
    unwindowed run, cut to these days), so a day file added later changes no earlier window.

    Args:
        cfg (DataConfig): a Criteo data section with ``windows`` and ``criteo.days``.

    Returns:
        str: a sha256 (16 hex characters).
    """
    from torchrec_kd.data.criteo import need_dir

    npy = cfg.source == "criteo_npy"
    root = need_dir(cfg.criteo.npy_path if npy else cfg.criteo.path, "data.criteo.npy_path" if npy else
                    "data.criteo.path", "the Criteo day files")
    days = criteo_days(cfg)
    win = cfg.windows
    assert win is not None
    t = len(days) - 2 if win.index is None else win.index
    stamp = []
    for spec in days[:t + 2]:
        files = [root / (spec.name + s) for s in ("_dense.npy", "_sparse.npy", "_labels.npy")] if npy else \
            [root / spec.name]
        stamp.append([spec_text(spec), [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files
                                        if f.is_file()]])
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]


def window_rows_digest(cfg: DataConfig, log: Any = None, seed: int = 0) -> str:
    """What window ``data.windows.index`` reads, as ``data.windows.rows_digest`` records it.

    In-memory sources: the digest of the rows of windows 0..index+1 (:func:`~torchrec_kd.data.windows.rows_digest`);
    Criteo: of the day files 0..index+1 (:func:`criteo_window_digest`). Either way, rows or days that
    arrive after window index + 1 leave it unchanged.

    Args:
        cfg (DataConfig): a windowed data section (``windows.index`` set).
        log (Any): the window's log if already built (:func:`windowed_log` of ``cfg``), else built here.
        seed (int): run seed, to build the log.

    Returns:
        str: the digest.
    """
    if cfg.source in ("criteo_tsv", "criteo_npy"):
        return criteo_window_digest(cfg)
    if log is None:
        log = windowed_log(cfg, seed, verbose=False)
    return str(log.rows_digest)


def _check_rows_digest(cfg: DataConfig, digest: str) -> None:
    """A run whose config records other rows than it reads would record a false fingerprint: stop it."""
    recorded = cfg.windows.rows_digest if cfg.windows is not None else None
    if recorded is not None and recorded != digest:
        raise DataError(f"data.windows.rows_digest={recorded} but window {cfg.windows.index} now reads other rows "
                        f"(digest {digest}): its data changed since the config was written; remove the key (the "
                        "continual workflow sets it) or run continual again")


def windowed_log(cfg: DataConfig, seed: int, verbose: bool = True) -> Union[WindowedClickLog, Any]:
    """The windowed log of ``cfg`` (``data.windows``; a drifting synthetic world without it: its own windows).

    A Criteo source gives its streaming reader over window ``index``'s row ranges
    (:func:`criteo_window_data`), not an in-memory :class:`WindowedClickLog`.

    Args:
        cfg (DataConfig): the data section.
        seed (int): run seed (train shuffling; the synthetic world's seed unless ``world_seed`` is set).
        verbose (bool): log the windows (rank 0).

    Returns:
        Union[WindowedClickLog, Any]: window ``data.windows.index``'s train / val / test (Criteo:
        a ``CriteoTsvLog`` / ``CriteoNpyLog``).

    Raises:
        ConfigError: a source that cannot be windowed, bad entities or index; DataError: too few rows.
    """
    win = cfg.windows
    if win is None:  # a drifting world read without windows: its own windows, the last one is test
        win = WindowsConfig(count=cfg.synthetic.drift.windows)
    entities = list(win.entities)
    if cfg.source in ("criteo_tsv", "criteo_npy"):
        from torchrec_kd.data.criteo import CriteoNpyLog, CriteoTsvLog

        plain = criteo_window_data(cfg, verbose)
        if win.rows_digest is not None:
            _check_rows_digest(cfg, criteo_window_digest(cfg))
        reader = CriteoNpyLog if cfg.source == "criteo_npy" else CriteoTsvLog
        return reader(plain.criteo, on_bad_row=cfg.on_bad_row)
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
        raise ConfigError(f"data.windows is not supported for data.source={cfg.source}")
    log = WindowedClickLog(timeline, win, seed=seed, verbose=verbose)
    _check_rows_digest(replace(cfg, windows=win), log.rows_digest)
    return log


__all__ = ["RAW_ID_SPACE", "criteo_days", "criteo_window_data", "criteo_window_digest", "movielens_timeline",
           "spec_text", "stable_tag_bags", "synthetic_timeline", "table_timeline", "window_rows_digest", "windowed_log"]

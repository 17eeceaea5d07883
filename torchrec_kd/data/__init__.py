"""Data sources that yield TorchRec's ``Batch`` (dense_features, sparse_features KJT, labels).

Every source has the interface the recipes use: ``dense_names``, ``sparse_names`` (KJT
keys), ``num_embeddings`` (rows per sparse feature's table), ``num_batches(split,
batch_size)`` and ``batches(split, batch_size, rank, world_size, num_batches, start)``
yielding this rank's ``batch_size // world_size`` rows of each global batch.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

from torchrec_kd.config import DataConfig
from torchrec_kd.data.bad_rows import BadRowLog
from torchrec_kd.data.criteo import CriteoNpyLog, CriteoTsvLog
from torchrec_kd.data.movielens import MovieLensClickLog
from torchrec_kd.data.movielens_retrieval import MovieLensRetrievalLog
from torchrec_kd.data.retrieval import EvalUsers, ItemCorpus
from torchrec_kd.data.synthetic import SyntheticClickLog
from torchrec_kd.data.synthetic_retrieval import SyntheticRetrievalLog
from torchrec_kd.data.table import TableClickLog
from torchrec_kd.data.table_retrieval import TableRetrievalLog
from torchrec_kd.data.task_labels import read_tasks
from torchrec_kd.data.timelines import windowed_log
from torchrec_kd.data.windows import WindowedClickLog, window_slices
from torchrec_kd.errors import ConfigError, DataError

ClickLog = Union[SyntheticClickLog, CriteoTsvLog, CriteoNpyLog, MovieLensClickLog, TableClickLog, WindowedClickLog,
                 SyntheticRetrievalLog, MovieLensRetrievalLog, TableRetrievalLog]


def retrieval_log(cfg: DataConfig, seed: int, verbose: bool = True,
                  tasks: Optional[Sequence[Any]] = None) -> Union[SyntheticRetrievalLog, MovieLensRetrievalLog,
                                                                  TableRetrievalLog]:
    """The source of a run with ``data.retrieval``: rows, ``corpus()`` and ``eval_users(split)``.

    Args:
        cfg (DataConfig): the ``data`` section (``retrieval`` set).
        seed (int): the run's seed (train order; the synthetic world when ``world_seed`` is null).
        verbose (bool): log the shape.
        tasks (Optional[Sequence[TaskConfig]]): already read by :func:`read_tasks`; several are refused.

    Returns:
        SyntheticRetrievalLog, MovieLensRetrievalLog or TableRetrievalLog: the same for every role.

    Raises:
        ConfigError: a source or option a retrieval run cannot use yet.
    """
    rcfg = cfg.retrieval
    assert rcfg is not None
    if cfg.windows is not None or (cfg.source == "synthetic" and cfg.synthetic.drift is not None):
        raise ConfigError("data.retrieval with time windows (data.windows, data.synthetic.drift) is not supported; "
                          "a retrieval run cuts each user's history leave-last-out by time: remove one of them")
    if tasks:
        raise ConfigError("data.retrieval with tasks is not supported yet; a retrieval run reads the source's one "
                          "label (remove tasks, or list one task without column / at_least / positive)")
    if cfg.source == "synthetic":
        world = cfg.synthetic.world_seed if cfg.synthetic.world_seed is not None else seed
        return SyntheticRetrievalLog(rcfg.synthetic, rcfg, world_seed=world, seed=seed, verbose=verbose)
    if cfg.source == "movielens":
        return MovieLensRetrievalLog(cfg.movielens, rcfg, seed=seed, on_bad_row=cfg.on_bad_row, verbose=verbose)
    if cfg.source == "table":
        return TableRetrievalLog(cfg.table, rcfg, seed=seed, on_bad_row=cfg.on_bad_row, verbose=verbose)
    raise ConfigError(f"data.retrieval: source {cfg.source!r} has no user / item declaration yet; use synthetic, "
                      "movielens or table (or remove data.retrieval)")


def build_data(cfg: DataConfig, seed: int, role: str = "teacher", tasks: Optional[Sequence[Any]] = None) -> ClickLog:
    """The data source named by ``cfg.source``.

    Args:
        cfg (DataConfig): the ``data`` section.
        seed (int): the run's seed (synthetic train order; per-epoch shuffling of in-memory train splits).
        role (str): "teacher" or "student": the student's synthetic train split is its window
            (``data.synthetic.student_train_rows``) when one is set. A windowed log
            (``data.windows``, or a drifting synthetic world) is the same for every role.
        tasks (Optional[Sequence[TaskConfig]]): the run's ``tasks``; two or more: labels
            ``[B, T]`` in that order (:mod:`torchrec_kd.data.task_labels`); none or one: ``[B]``
            (no task, or one asking for nothing else: the source's label as always).

    Returns:
        ClickLog: exposes feature names, table sizes and per-rank batch streams; with
        ``data.retrieval`` set also ``corpus()`` and ``eval_users(split)`` (:func:`retrieval_log`).

    Raises:
        DataError: a missing path, file or column, an empty split, undeclared label values
            (a ``UserError``: it names the file and what was expected); ConfigError: a bad data section.
    """
    # only rank 0 logs load summaries (bad rows, split sizes); every rank counts the same rows
    verbose = os.environ.get("RANK", "0") == "0"
    tasks = read_tasks(tasks, cfg.source)  # None: the source's usual label, exactly as before
    if tasks and cfg.source in ("criteo_tsv", "criteo_npy"):
        raise ConfigError("tasks: Criteo has one 0/1 label column; list one task without column / at_least / "
                          "positive (or none), or use a table source with a column per task")
    if tasks and (cfg.windows is not None or (cfg.source == "synthetic" and cfg.synthetic.drift is not None)):
        raise ConfigError("tasks: time windows (data.windows, data.synthetic.drift) read the source's one label; "
                          "list one task without column / at_least / positive there (or none)")
    if cfg.retrieval is not None:
        # (user, item) rows cut leave-last-out, with an item corpus and evaluation users
        return retrieval_log(cfg, seed, verbose=verbose, tasks=tasks)
    if cfg.windows is not None or (cfg.source == "synthetic" and cfg.synthetic.drift is not None):
        # one window of a time-ordered log (data.windows): the same for every role
        return windowed_log(cfg, seed, verbose=verbose)
    if cfg.source == "synthetic":
        syn = cfg.synthetic
        rows = syn.student_train_rows if role == "student" and syn.student_train_rows is not None else syn.train_rows
        return SyntheticClickLog(syn, seed=seed, val_rows=cfg.val_rows, test_rows=cfg.test_rows, train_rows=rows,
                                 tasks=tasks)
    if cfg.source == "criteo_tsv":
        return CriteoTsvLog(cfg.criteo, on_bad_row=cfg.on_bad_row)
    if cfg.source == "criteo_npy":
        return CriteoNpyLog(cfg.criteo, on_bad_row=cfg.on_bad_row)
    if cfg.source == "movielens":
        return MovieLensClickLog(cfg.movielens, seed=seed, on_bad_row=cfg.on_bad_row, verbose=verbose, tasks=tasks)
    if cfg.source == "table":
        return TableClickLog(cfg.table, seed=seed, on_bad_row=cfg.on_bad_row, verbose=verbose, tasks=tasks)
    raise ValueError(f"data.source={cfg.source!r} is not supported; use synthetic, criteo_tsv, criteo_npy, "
                     "movielens or table")


__all__ = ["BadRowLog", "ClickLog", "CriteoNpyLog", "CriteoTsvLog", "DataError", "EvalUsers", "ItemCorpus",
           "MovieLensClickLog", "MovieLensRetrievalLog", "SyntheticClickLog", "SyntheticRetrievalLog", "TableClickLog",
           "TableRetrievalLog", "WindowedClickLog", "build_data", "retrieval_log", "window_slices"]

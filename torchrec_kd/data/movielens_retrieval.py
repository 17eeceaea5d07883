"""MovieLens as a retrieval log: leave-last-out by time, the user's history, the movie corpus.

Read when ``data.source: movielens`` and ``data.retrieval`` is set (any layout; built for
ml-latest-small). The rows are :class:`~torchrec_kd.data.movielens.MovieLensClickLog`'s
(a rating >= ``positive_threshold`` is a positive) with three changes, so every feature
belongs to one side:

* the splits are leave-last-out by time (:func:`torchrec_kd.data.retrieval.leave_last_out`),
  not ``data.movielens.split``; tags and counts are cut at the train rows as always;
* the dense features are the user's only: ``user_count`` (log(1 + the user's train ratings));
  the movie's release year becomes the sparse item feature ``year`` (1870 -> id 0 ...,
  clipped to the table; unknown: an empty bag) and ``item_count`` is dropped (``item_id``
  carries popularity);
* ``user_history`` (``history_length > 0``): the movies of the user's last positives strictly
  before the row's time.

Usual roles: user ``[user_id]`` (ml-100k / ml-1m add ``gender``, ``age_bucket``,
``occupation``, ``zip_prefix``), item ``[item_id, genres, tags, year]`` (``tags``: ml-latest).

Example::

    log = MovieLensRetrievalLog(MovieLensDataConfig(path="../shared/data/ml-latest-small"),
                                RetrievalDataConfig(user_features=["user_id"],
                                                    item_features=["item_id", "genres", "tags", "year"]))
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

import numpy as np

from torchrec_kd.config import MovieLensDataConfig
from torchrec_kd.config.data_sources import USER_HISTORY, RetrievalDataConfig
from torchrec_kd.data.movielens import DENSE_NAMES, MovieLensClickLog, Ratings
from torchrec_kd.data.retrieval import RetrievalLogMixin, check_roles, history_bags, leave_last_out, retrieval_views
from torchrec_kd.data.rows import Jagged, RowBlock

logger = logging.getLogger(__name__)

YEAR_BASE = 1870
YEAR_ROWS = 160  # 1870 .. 2029; earlier / later years are clipped into the table
_USER_COUNT = DENSE_NAMES.index("user_count")


class MovieLensRetrievalLog(RetrievalLogMixin, MovieLensClickLog):
    """MovieLens ratings cut leave-last-out, with ``year`` / ``user_history`` features, a corpus and eval users.

    Args:
        cfg (MovieLensDataConfig): ``data.movielens`` (its split keys are not used).
        rcfg (RetrievalDataConfig): ``data.retrieval``.
        seed (int): run seed (train reshuffled each epoch).
        on_bad_row (str): "skip" or "error".
        verbose (bool): log the shape (rank 0).
        tasks (Optional[Sequence[TaskConfig]]): as :class:`MovieLensClickLog` (one task).
    """

    def __init__(self, cfg: MovieLensDataConfig, rcfg: RetrievalDataConfig, seed: int = 0, on_bad_row: str = "skip",
                 verbose: bool = True, tasks: Optional[Sequence[Any]] = None) -> None:
        self.retrieval = rcfg
        super().__init__(cfg, seed=seed, on_bad_row=on_bad_row, verbose=False, tasks=tasks)
        self.where = f"data.movielens ({self.root}, leave-last-out)"
        check_roles(rcfg, self.sparse_names + ["year"], self.where)
        r = self.ratings
        self.positive = r.rating >= cfg.positive_threshold
        self._history: Optional[Jagged] = None
        if rcfg.history_length > 0:
            item_ids = r.item % self.num_embeddings[self.sparse_names.index("item_id")]  # as the item_id feature
            self._history = history_bags(r.user, r.time, self.positive, item_ids, rcfg.history_length)
        base = list(self.sparse_names)
        names = base + ["year"] + ([USER_HISTORY] if self._history is not None else [])
        # the corpus and users read base rows (rows_for: the base features) before the names grow
        self._corpus, self._eval_users = retrieval_views(self._rows_at, names, ["user_count"], rcfg, r.item, r.time,
                                                         self._lo, self.where)
        self.dense_names, self.sparse_names = ["user_count"], names
        self.num_embeddings = self.num_embeddings + [YEAR_ROWS] + (
            [self.num_embeddings[base.index("item_id")]] if self._history is not None else [])
        self.splits: Dict[str, RowBlock] = {s: self._extend(b, self.split_rows[s]) for s, b in self.splits.items()}
        if verbose:
            if self.bad_rows.count:
                logger.warning("%s: %s", self.root, self.bad_rows.summary())
            logger.info("%s (%s): rows %s; %d items in the corpus; %d evaluation users; tables %s", self.where,
                        self.layout.name, {s: len(b) for s, b in self.splits.items()}, len(self._corpus),
                        len(self._eval_users["test"]), dict(zip(self.sparse_names, self.num_embeddings)))

    def _split_rows(self, ratings: Ratings) -> Dict[str, np.ndarray]:
        """Leave-last-out by time (each user's last positive is test, the one before val)."""
        self._lo = leave_last_out(ratings.user, ratings.time, ratings.rating >= self.cfg.positive_threshold,
                                  self.retrieval.min_positives)
        return self._lo.split_rows

    def _rows_at(self, idx: np.ndarray) -> RowBlock:
        """Ratings ``idx`` with every feature of a split row (counts from the train rows; during ``__init__``)."""
        return self._extend(self.rows_for(idx, past=self.split_rows["train"]), idx)

    def _extend(self, block: RowBlock, idx: np.ndarray) -> RowBlock:
        """A base row block of ratings ``idx`` -> user-side dense, plus the ``year`` and ``user_history`` bags."""
        year = np.asarray([self.meta.year.get(int(i), np.nan) for i in self.ratings.item[idx]], np.float64)
        known = np.isfinite(year)
        ids = np.where(known, np.clip(np.nan_to_num(year) - YEAR_BASE, 0, YEAR_ROWS - 1), -1).astype(np.int64)
        sparse = list(block.sparse) + [Jagged.from_ids(ids)]
        if self._history is not None:
            sparse.append(self._history.take(idx))
        return RowBlock(np.ascontiguousarray(block.dense[:, [_USER_COUNT]]), block.labels, sparse)


__all__ = ["MovieLensRetrievalLog", "YEAR_BASE", "YEAR_ROWS"]

"""Any CSV / Parquet click log as a retrieval log: leave-last-out by time, ``user_history``, the corpus.

Read when ``data.source: table`` and ``data.retrieval`` is set. The rows are
:class:`~torchrec_kd.data.table.TableClickLog`'s; ``data.retrieval.user_id`` and ``item_id``
name two of its one-id sparse columns (users and items are their ids *as the model sees them*:
taken modulo or hashed into the tables, so ids that collide in a table are one user / item;
size the tables so they do not). Time is ``data.table.time_column`` (none: file order), a
positive is a row labelled 1; the splits are leave-last-out (``data.table.split`` is not used)
and ``user_history`` is added when ``history_length > 0``. The declared dense columns are read
as user-side features (a two-tower's user tower reads them): list only user-side ones.

Example::

    log = TableRetrievalLog(TableDataConfig(path="clicks.csv", ...),
                            RetrievalDataConfig(user_features=["user"], item_features=["item", "category"],
                                                user_id="user", item_id="item"))
"""

from __future__ import annotations

import logging
from typing import Dict, Sequence

import numpy as np

from torchrec_kd.config import TableDataConfig
from torchrec_kd.config.data_sources import USER_HISTORY, RetrievalDataConfig
from torchrec_kd.data.retrieval import RetrievalLogMixin, check_roles, history_bags, leave_last_out, retrieval_views
from torchrec_kd.data.rows import RowBlock
from torchrec_kd.data.table import TableClickLog
from torchrec_kd.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def _one_id(rows: RowBlock, names: Sequence[str], name: str, key: str) -> np.ndarray:
    """The ids of a one-id-per-row sparse column (DataError when a row holds none or several)."""
    col = rows.sparse[list(names).index(name)]
    if not np.all(col.lengths == 1):
        bad = int(np.flatnonzero(col.lengths != 1)[0])
        raise DataError(f"data.retrieval.{key}={name!r}: row {bad} holds {int(col.lengths[bad])} ids; the "
                        f"{key.split('_')[0]} id column needs exactly one per row (no separator, no empty cells)")
    return col.values


class TableRetrievalLog(RetrievalLogMixin, TableClickLog):
    """A table cut leave-last-out by time, with ``user_history``, a corpus and evaluation users.

    Args:
        cfg (TableDataConfig): ``data.table``.
        rcfg (RetrievalDataConfig): ``data.retrieval``.
        seed (int): run seed (train reshuffled each epoch).
        on_bad_row (str): "skip" or "error".
        verbose (bool): log the shape (rank 0).
    """

    def __init__(self, cfg: TableDataConfig, rcfg: RetrievalDataConfig, seed: int = 0, on_bad_row: str = "skip",
                 verbose: bool = True) -> None:
        self.retrieval = rcfg
        super().__init__(cfg, seed=seed, on_bad_row=on_bad_row, verbose=False)
        # the base cut its splits from the rows without user_history: take them from the full rows
        self.splits: Dict[str, RowBlock] = {s: self._all.take(idx) for s, idx in self.split_rows.items()}
        if verbose:
            if self.bad_rows.count:
                logger.warning("%s: %s", cfg.path, self.bad_rows.summary())
            logger.info("%s: rows %s; %d items in the corpus; %d evaluation users", self.where,
                        {s: len(b) for s, b in self.splits.items()}, len(self._corpus), len(self._eval_users["test"]))

    def _split_rows(self, rows: RowBlock) -> Dict[str, np.ndarray]:
        """Leave-last-out by time; also adds ``user_history`` and builds the corpus and evaluation users."""
        rcfg = self.retrieval
        self.where = f"data.table ({self.cfg.path}, leave-last-out)"
        if self.tasks:
            raise ConfigError("data.retrieval with tasks is not supported yet")
        check_roles(rcfg, self.sparse_names, self.where)
        names = list(self.sparse_names)
        user = _one_id(rows, names, rcfg.user_id, "user_id")
        item = _one_id(rows, names, rcfg.item_id, "item_id")
        time = self.row_times if self.row_times is not None else np.arange(len(rows))
        positive = rows.labels > 0.5
        if rcfg.history_length > 0:
            hist = history_bags(user, time, positive, item, rcfg.history_length)
            rows = RowBlock(rows.dense, rows.labels, list(rows.sparse) + [hist])
            self.num_embeddings = self.num_embeddings + [self.num_embeddings[names.index(rcfg.item_id)]]
            names.append(USER_HISTORY)
        self.sparse_names, self._all = names, rows
        lo = leave_last_out(user, time, positive, rcfg.min_positives)
        self._corpus, self._eval_users = retrieval_views(rows.take, names, self.dense_names, rcfg, item, time, lo,
                                                         self.where)
        return lo.split_rows


__all__ = ["TableRetrievalLog"]

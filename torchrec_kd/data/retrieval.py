"""Retrieval views of a (user, item) click log: the item corpus, leave-last-out users, the user's history.

A source read with ``data.retrieval`` set keeps its usual ``train`` / ``val`` / ``test`` rows
(every feature, so any ranker trains and is scored on them), cut **leave-last-out by time**:

* each user's interactions are ordered by time (ties: file order). A user with at least
  ``min_positives`` positives is an *evaluation user*: the last positive is the test target,
  the one before it the val target; the user's rows before the val target are train, the
  rows from the val target up to the test target val, the rest test. Other users' rows are
  all train. So no train row is a val / test target interaction (nor comes after one);
* ``user_history`` (a multi-hot user feature, added when ``history_length > 0``): the item ids
  of the user's last ``history_length`` positives **strictly earlier in time** than the row
  (oldest first), the same on every split — no row sees its own label or a later one;
* :class:`ItemCorpus`: every item of the log once (sorted by raw id), with its item features
  as of its latest row;
* :class:`EvalUsers` per ``val`` / ``test``: each evaluation user's features as of the target
  row (user features, ``user_history``, user-side dense), the target's corpus index, and the
  ``seen`` items to exclude: every item of the user's rows before the split's target (val:
  the train rows; test: train and val rows), the target itself removed.

Example::

    lo = leave_last_out(user, time, positive, min_positives=3)
    hist = history_bags(user, time, positive, item_ids, length=20)
    corpus, users = retrieval_views(rows_at, names, rcfg, user, item, time, lo)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from torchrec_kd.config.data_sources import USER_HISTORY, RetrievalDataConfig
from torchrec_kd.data.rows import Jagged, RowBlock
from torchrec_kd.errors import ConfigError, DataError

EVAL_SPLITS = ("val", "test")
# Fixed seed of the evaluation-user subset (data.retrieval.eval_users): the same users for every run.
_EVAL_USERS_SEED = 0x5E1EC7


@dataclass
class ItemCorpus:
    """Every item once: ``ids[k]`` is the raw id of corpus index ``k``; ``block`` its item features.

    Attributes:
        ids (np.ndarray): int64 ``[N]`` raw item ids, ascending (row order = item index).
        block (RowBlock): ``N`` rows: sparse in ``sparse_names`` order, dense ``[N, 0]``, labels zeros.
        sparse_names (List[str]): the item features (``data.retrieval.item_features``).
    """

    ids: np.ndarray
    block: RowBlock
    sparse_names: List[str]

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, raw: np.ndarray) -> np.ndarray:
        """Corpus indices of raw item ids (each must be in the corpus)."""
        return np.searchsorted(self.ids, raw)


@dataclass
class EvalUsers:
    """The evaluation users of one split, leave-last-out by time.

    Attributes:
        users (np.ndarray): int64 ``[U]`` raw user ids, ascending.
        block (RowBlock): ``U`` rows of the users' features as of the target: sparse in
            ``sparse_names`` order (user features, then ``user_history``), the source's dense
            (user-side) features, labels zeros.
        sparse_names (List[str]): ``data.retrieval.user_keys()``.
        dense_names (List[str]): the dense features (the source's, all user-side in a retrieval run).
        targets (List[np.ndarray]): per user, the target items' corpus indices.
        seen (List[np.ndarray]): per user, sorted corpus indices to exclude (earlier interactions).
        target_rows (np.ndarray): the targets' rows in the source's file order (for tests and reports).
    """

    users: np.ndarray
    block: RowBlock
    sparse_names: List[str]
    dense_names: List[str]
    targets: List[np.ndarray]
    seen: List[np.ndarray]
    target_rows: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class LeaveLastOut:
    """A leave-last-out cut of a log (rows in file order).

    Attributes:
        split_rows (Dict[str, np.ndarray]): ascending row indices of train / val / test.
        users (np.ndarray): raw ids of the evaluation users, ascending.
        target_rows (Dict[str, np.ndarray]): per split, each evaluation user's target row.
        before (Dict[str, List[np.ndarray]]): per split, each evaluation user's rows before the target.
    """

    split_rows: Dict[str, np.ndarray]
    users: np.ndarray
    target_rows: Dict[str, np.ndarray]
    before: Dict[str, List[np.ndarray]]


def _by_user_time(user: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Row order by (user, time, row): each user's interactions in time order, ties in file order."""
    return np.lexsort((np.arange(len(user)), time, user))


def leave_last_out(user: np.ndarray, time: np.ndarray, positive: np.ndarray, min_positives: int = 3) -> LeaveLastOut:
    """Cut rows into train / val / test by each user's last two positives in time.

    Args:
        user (np.ndarray): ``[n]`` user id of each row (file order).
        time (np.ndarray): ``[n]`` time of each row (any comparable numbers).
        positive (np.ndarray): ``[n]`` bool, the row is a positive interaction.
        min_positives (int): a user with fewer positives is not evaluated (all rows train).

    Returns:
        LeaveLastOut: the splits, the evaluation users and their targets.
    """
    n = len(user)
    order = _by_user_time(user, time)
    u, pos = user[order], positive[order].astype(bool)
    start = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if n else np.zeros(0, np.int64)
    end = np.r_[start[1:], n]
    group = np.repeat(np.arange(len(start)), end - start)
    cum = np.cumsum(pos)
    before_group = np.r_[0, cum][start]  # positives before each group
    total = np.r_[0, cum][end] - before_group
    rank = cum - before_group[group]  # 1-based rank of a positive in its user's sequence
    eligible = total >= min_positives
    k = np.arange(n)
    test_at = np.full(len(start), n)
    val_at = np.full(len(start), n)
    is_test = pos & (rank == total[group]) & eligible[group]
    is_val = pos & (rank == total[group] - 1) & eligible[group]
    test_at[group[is_test]] = k[is_test]
    val_at[group[is_val]] = k[is_val]
    code = np.where(k < val_at[group], 0, np.where(k < test_at[group], 1, 2))
    split_rows = {s: np.sort(order[code == c]) for c, s in enumerate(("train", "val", "test"))}
    g = np.flatnonzero(eligible)
    users = u[start[g]]
    target_rows = {"val": order[val_at[g]], "test": order[test_at[g]]}
    before = {"val": [order[start[j]:val_at[j]] for j in g], "test": [order[start[j]:test_at[j]] for j in g]}
    return LeaveLastOut(split_rows, users, target_rows, before)


def history_bags(user: np.ndarray, time: np.ndarray, positive: np.ndarray, item_ids: np.ndarray,
                 length: int) -> Jagged:
    """Each row's ``user_history``: the item ids of the user's last ``length`` positives strictly before it.

    Args:
        user (np.ndarray): ``[n]`` user of each row (file order).
        time (np.ndarray): ``[n]`` time of each row; positives at the row's own time are not history.
        positive (np.ndarray): ``[n]`` bool.
        item_ids (np.ndarray): ``[n]`` the row's item id as the model sees it (the item-id feature's value).
        length (int): the most recent positives kept.

    Returns:
        Jagged: ``n`` bags in file order, oldest first, at most ``length`` ids each.
    """
    n = len(user)
    if n == 0 or length <= 0:
        return Jagged(np.zeros(0, np.int64), np.zeros(n + 1, np.int64))
    _, u = np.unique(user, return_inverse=True)
    _, t = np.unique(time, return_inverse=True)
    key = u.astype(np.int64) * (n + 1) + t  # (user, time) in one sortable number
    order = _by_user_time(u, t)
    pos_rows = order[positive[order].astype(bool)]
    pkey = key[pos_rows]  # ascending
    upto = np.searchsorted(pkey, key, side="left")  # positives of this user strictly earlier, and all before
    first = np.searchsorted(pkey, u.astype(np.int64) * (n + 1), side="left")
    lo = np.maximum(first, upto - length)
    lengths = upto - lo
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    gather = np.repeat(lo - offsets[:-1], lengths) + np.arange(offsets[-1])
    return Jagged(item_ids[pos_rows[gather]].astype(np.int64), offsets)


def check_roles(rcfg: RetrievalDataConfig, names: Sequence[str], where: str) -> None:
    """Raise ConfigError unless the declared user / item features are sparse features of the source.

    Args:
        rcfg (RetrievalDataConfig): ``data.retrieval``.
        names (Sequence[str]): the source's sparse features (before ``user_history`` is added).
        where (str): names the source in messages.
    """
    for key in ("user_features", "item_features"):
        if not getattr(rcfg, key):
            raise ConfigError(f"data.retrieval.{key} is empty; list the {key.split('_')[0]} side's features of "
                              f"{where}: {list(names)}")
        unknown = [f for f in getattr(rcfg, key) if f not in names and f != USER_HISTORY]
        if unknown:
            raise ConfigError(f"data.retrieval.{key}: {unknown} are not features of {where}; its sparse features "
                              f"are {list(names)}")


def select_columns(block: RowBlock, names: Sequence[str], keep: Sequence[str], dense: bool) -> RowBlock:
    """The rows of ``block`` with only the sparse features ``keep`` (in that order), labels zeros.

    Args:
        block (RowBlock): rows with one Jagged per name of ``names``.
        names (Sequence[str]): ``block``'s sparse feature names.
        keep (Sequence[str]): the features kept.
        dense (bool): keep the dense features (else ``[n, 0]``).

    Returns:
        RowBlock: the selected columns.
    """
    cols = [block.sparse[list(names).index(k)] for k in keep]
    d = block.dense if dense else np.zeros((len(block), 0), np.float32)
    return RowBlock(np.ascontiguousarray(d, np.float32), np.zeros(len(block), np.float32), cols)


def _without(values: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """``values`` minus the few ids of ``drop`` (cheaper than ``np.setdiff1d`` for a handful)."""
    keep = np.ones(len(values), bool)
    for d in drop:
        keep &= values != d
    return values[keep]


def eval_subset(users: np.ndarray, cap: Optional[int]) -> np.ndarray:
    """Positions of the evaluated users: all, or a fixed seeded sample of ``cap`` of them (ascending)."""
    if cap is None or cap >= len(users):
        return np.arange(len(users))
    rng = np.random.default_rng(np.random.SeedSequence([_EVAL_USERS_SEED]))
    return np.sort(rng.permutation(len(users))[:cap])


def retrieval_views(rows_at: Callable[[np.ndarray], RowBlock], names: Sequence[str], dense_names: Sequence[str],
                    rcfg: RetrievalDataConfig, item: np.ndarray, time: np.ndarray, lo: LeaveLastOut,
                    where: str) -> Tuple[ItemCorpus, Dict[str, EvalUsers]]:
    """The item corpus and the val / test evaluation users of a leave-last-out log.

    Args:
        rows_at (Callable[[np.ndarray], RowBlock]): rows (file order indices) with every
            feature of ``names`` (``user_history`` included), dense user-side.
        names (Sequence[str]): the sparse features of those rows.
        dense_names (Sequence[str]): the dense features.
        rcfg (RetrievalDataConfig): ``data.retrieval``.
        item (np.ndarray): ``[n]`` raw item id of each row.
        time (np.ndarray): ``[n]`` time of each row.
        lo (LeaveLastOut): the cut.
        where (str): names the source in errors.

    Returns:
        Tuple[ItemCorpus, Dict[str, EvalUsers]]: the corpus and ``{"val": ..., "test": ...}``.

    Raises:
        DataError: no user has ``min_positives`` positives.
    """
    ids, item_index = np.unique(item, return_inverse=True)
    # an item's features as of its latest row (constant per item in MovieLens and the synthetic world)
    by_item = np.lexsort((np.arange(len(item)), time, item_index))
    last = by_item[np.r_[item_index[by_item][1:] != item_index[by_item][:-1], True]]
    corpus = ItemCorpus(ids.astype(np.int64), select_columns(rows_at(last), names, rcfg.item_keys(), dense=False),
                        rcfg.item_keys())
    if len(lo.users) == 0:
        raise DataError(f"{where}: no user has {rcfg.min_positives} positive interactions, so there is no "
                        "leave-last-out user to evaluate; lower data.retrieval.min_positives or give more data")
    keep = eval_subset(lo.users, rcfg.eval_users)
    out: Dict[str, EvalUsers] = {}
    for split in EVAL_SPLITS:
        rows = lo.target_rows[split][keep]
        targets = [item_index[[r]] for r in rows]
        seen = [_without(np.unique(item_index[lo.before[split][j]]), t) for j, t in zip(keep, targets)]
        block = select_columns(rows_at(rows), names, rcfg.user_keys(), dense=True)
        out[split] = EvalUsers(lo.users[keep], block, rcfg.user_keys(), list(dense_names), targets, seen, rows)
    return corpus, out


class RetrievalLogMixin:
    """What a retrieval source adds to a click log: ``corpus()`` and ``eval_users(split)``.

    A reader sets ``retrieval`` (the config), ``_corpus`` and ``_eval_users`` (from
    :func:`retrieval_views`).
    """

    retrieval: RetrievalDataConfig
    _corpus: ItemCorpus
    _eval_users: Dict[str, EvalUsers]

    def corpus(self) -> ItemCorpus:
        """Every item once with its item features (corpus index = row)."""
        return self._corpus

    def eval_users(self, split: str) -> EvalUsers:
        """The leave-last-out users of ``split`` ("val" or "test"), their targets and seen items."""
        if split not in EVAL_SPLITS:
            raise ValueError(f"eval_users: split must be 'val' or 'test', got {split!r}")
        return self._eval_users[split]

    @property
    def user_keys(self) -> List[str]:
        """The user side's sparse features (``user_history`` last)."""
        return self.retrieval.user_keys()

    @property
    def item_keys(self) -> List[str]:
        """The item side's sparse features."""
        return self.retrieval.item_keys()


__all__ = ["EVAL_SPLITS", "EvalUsers", "ItemCorpus", "LeaveLastOut", "RetrievalLogMixin", "check_roles",
           "eval_subset", "history_bags", "leave_last_out", "retrieval_views", "select_columns"]

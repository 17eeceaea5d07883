"""Retrieval evaluation: each user's top-K of the whole corpus (seen items excluded), recall / NDCG / HR / MRR, GAUC.

Every test user of a leave-last-out split (``EvalUsers``: a ``RowBlock`` of user features,
per user its target and seen corpus indices) is scored against every item of the corpus
(``ItemCorpus``) with a two-tower's ``user_embedding`` / ``item_embedding`` / ``score_matrix``:
exact, batched matmul, no index. The items the user already interacted with in training are
excluded (they neither count as hits nor take a slot). A ranker (any ``forward(dense, kjt) ->
[B]``) is measured on a candidate set instead: it re-orders each user's candidates (e.g. the
two-tower's top 100), scored row by row as (user, item) pairs.

**Definitions** (per user, averaged over the users that have at least one target; ``T`` is
the user's set of targets, ``hit_i`` whether the item at position ``i`` = 1, 2, … of the
ranking is a target):

- ``recall@K`` = |top-K ∩ T| / |T|  (a seen target stays in |T|: it could not be retrieved);
- ``ndcg@K`` = Σ_{i≤K} hit_i / log2(i + 1), divided by the ideal Σ_{i ≤ min(K, |T|)} 1 / log2(i + 1)
  (binary gains);
- ``hr@K`` = 1 if any target is in the top-K, else 0;
- ``mrr`` = 1 / (rank of the best-ranked target in the **full** ranking of the user's unseen
  items), 0 when every target was seen. Not truncated at any K: :func:`evaluate_retrieval`
  counts the rank exactly (:func:`first_target_rank`). Without the full ranking
  (:func:`retrieval_metrics` given only a top-K, and :func:`evaluate_ranker_on_candidates`,
  whose ranking *is* its candidate list) it is the reciprocal rank within that list, 0 when no
  target is in it.

**Ties** are broken deterministically: a higher score first; equal scores, the lower corpus
index first (a candidate list: the earlier candidate first). NaN and -inf scores rank as the
lowest finite score: after every other unseen item, never with the seen ones.

**Across ranks** every rank scores an equal share of the users (the last ones padded with a
repeated user that counts for nothing, so every rank calls the model the same number of times,
as a sharded model's collectives need) and the per-metric sums are all-reduced: N ranks give
the numbers of one rank.

**Why not TorchRec's metric modules** (``torchrec.metrics``): ``ndcg`` (``NDCGComputation``)
and ``recall_session`` are per-session metrics over the rows they are given. Fed a full
corpus, ``ndcg`` would build ``[tasks, sessions, rows]`` masks — users × (users × items) —
and its sort does not break ties deterministically; NDCG@K here agrees with it on tie-free
rows (tests/test_retrieval_metrics.py checks that). ``recall`` is a thresholded
classification recall (prediction ≥ 0.5), not recall@K. ``gauc`` (``torchrec.metrics.gauc``)
is not in ``RecMetricEnum`` in TorchRec 1.8 (``RecMetricModule`` cannot build it), needs each
user's rows contiguous within one update, and ranks a tied positive and negative by
``argsort``'s order (a tie counts 0 or 1, not ½): :func:`user_auc_sums` is our own, with
midranks; it agrees with TorchRec's on tie-free rows (tested).

Example::

    metrics = evaluate_retrieval(tower.user_embedding, tower.item_embedding, tower.score_matrix,
                                 log.eval_users("test"), log.corpus(), ks=[10, 20, 50, 100])
    metrics["recall@20"], metrics["ndcg@20"], metrics["mrr"], metrics["users"]
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.data.rows import RowBlock
from torchrec_kd.errors import ConfigError, DataError

DEFAULT_KS = (10, 20, 50, 100)

UserEmbedFn = Callable[[torch.Tensor, KeyedJaggedTensor], torch.Tensor]  # (dense, kjt) -> [B, d]
ItemEmbedFn = Callable[[KeyedJaggedTensor], torch.Tensor]  # kjt -> [B, d]
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (u [U, d], v [N, d]) -> [U, N]
ScoreRowsFn = Callable[[torch.Tensor, KeyedJaggedTensor], torch.Tensor]  # a ranker: (dense, kjt) -> [B]
Indices = Union[np.ndarray, torch.Tensor, Sequence[int]]


def metric_keys(ks: Sequence[int]) -> List[str]:
    """The keys of a metrics dict, in order: per K ``recall@K``, ``ndcg@K``, ``hr@K``; then ``mrr``, ``users``."""
    return [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hr")] + ["mrr", "users"]


def _cutoffs(ks: Sequence[int]) -> List[int]:
    """Sorted distinct positive cutoffs."""
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 1:
        raise ValueError(f"cutoffs must be positive integers, got {list(ks)}")
    return out


def seen_mask(seen: Union[torch.Tensor, Sequence[Indices]], num_items: int,
              device: Optional[torch.device] = None) -> torch.Tensor:
    """A ``[U, N]`` boolean mask of the items each user has seen.

    Args:
        seen: a bool tensor ``[U, N]`` (returned as is), or per user the corpus indices seen.
        num_items (int): N, the corpus size.
        device (Optional[torch.device]): where the mask lives (default: CPU).

    Returns:
        Tensor: bool ``[U, N]``.
    """
    if isinstance(seen, torch.Tensor) and seen.dtype == torch.bool:
        return seen.to(device) if device is not None else seen
    lens = [len(s) for s in seen]
    cols = np.concatenate([np.asarray(s, np.int64).reshape(-1) for s in seen]) if sum(lens) else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(lens)), lens)
    mask = torch.zeros(len(lens), num_items, dtype=torch.bool, device=device)
    mask[torch.from_numpy(rows).to(mask.device), torch.from_numpy(cols).to(mask.device)] = True
    return mask


def _ranked_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scores as they are ranked: NaN / ±inf clamped to the finite range, seen items at -inf (below all others)."""
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    info = torch.finfo(scores.dtype)
    clean = torch.nan_to_num(scores, nan=info.min, posinf=info.max, neginf=info.min)
    return clean.masked_fill(mask, float("-inf"))


def _stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each row's ``k`` largest scores, ordered by (score descending, index ascending).

    ``torch.topk`` chooses among equal scores arbitrarily; its choice is re-ordered by index and
    rows whose k-th score is tied beyond the k-th position are fully (stably) sorted instead.
    """
    vals, idx = scores.topk(k, dim=1)
    boundary_tied = (scores >= vals[:, -1:]).sum(1) > k
    idx = idx.sort(dim=1).values  # ascending index, so the stable sort below keeps it among equal scores
    order = scores.gather(1, idx).sort(dim=1, descending=True, stable=True).indices
    idx = idx.gather(1, order)
    rows = boundary_tied.nonzero().squeeze(1)
    if rows.numel():
        idx[rows] = scores[rows].sort(dim=1, descending=True, stable=True).indices[:, :k]
    return idx


def topk_excluding(scores: torch.Tensor, seen: Union[torch.Tensor, Sequence[Indices]], k: int) -> torch.Tensor:
    """Each user's ``k`` best corpus items, seen items excluded, ties broken by the lower index.

    Args:
        scores (Tensor): ``[U, N]`` scores of every user against every corpus item.
        seen: per user the corpus indices seen in training (or a bool mask ``[U, N]``): never returned and
            taking no slot.
        k (int): how many items per user.

    Returns:
        Tensor: int64 ``[U, k]`` corpus indices, best first; ``-1`` past the user's unseen items.

    Example::

        topk_excluding(torch.tensor([[0.1, 0.9, 0.5]]), [[1]], 2)  # tensor([[2, 0]])
    """
    mask = seen_mask(seen, scores.shape[1], scores.device)
    return _topk_ranked(_ranked_scores(scores, mask), mask, k)


def _topk_ranked(ranked: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`topk_excluding` of scores already through :func:`_ranked_scores`."""
    num_users, num_items = ranked.shape
    width = min(k, num_items)
    idx = _stable_topk(ranked, width) if width else \
        torch.zeros(num_users, 0, dtype=torch.int64, device=ranked.device)
    idx = idx.masked_fill(mask.gather(1, idx), -1)  # fewer unseen items than k: the seen ones are not results
    if width < k:
        idx = torch.cat([idx, idx.new_full((num_users, k - width), -1)], dim=1)
    return idx


def _padded_targets(targets: Sequence[Indices], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each user's distinct targets ``[U, T]`` int64, padded with -2 (no index, not a top-K's -1), and their counts."""
    uniq = [np.unique(np.asarray(t, np.int64).reshape(-1)) for t in targets]
    counts = torch.tensor([len(t) for t in uniq], dtype=torch.int64)
    width = max([len(t) for t in uniq] + [1])
    out = np.full((len(uniq), width), -2, np.int64)
    for i, t in enumerate(uniq):
        out[i, :len(t)] = t
    return torch.from_numpy(out).to(device), counts.to(device)


def first_target_rank(scores: torch.Tensor, seen: Union[torch.Tensor, Sequence[Indices]],
                      targets: Sequence[Indices]) -> torch.Tensor:
    """The rank (1 = first) of each user's best-ranked unseen target in the full ranking of its unseen items.

    The ranking is :func:`topk_excluding`'s (ties: the lower index first), counted without sorting:
    rank(t) = 1 + #{unseen j : s_j > s_t, or s_j = s_t and j < t}.

    Args:
        scores (Tensor): ``[U, N]``.
        seen: per user the seen corpus indices (or a bool mask ``[U, N]``).
        targets (Sequence): per user the target corpus indices.

    Returns:
        Tensor: float64 ``[U]``; ``inf`` for a user without an unseen target.
    """
    mask = seen_mask(seen, scores.shape[1], scores.device)
    return _first_rank_ranked(_ranked_scores(scores, mask), mask, targets)


def _first_rank_ranked(ranked: torch.Tensor, mask: torch.Tensor, targets: Sequence[Indices]) -> torch.Tensor:
    """:func:`first_target_rank` of scores already through :func:`_ranked_scores`."""
    num_users, num_items = ranked.shape
    tgt, counts = _padded_targets(targets, ranked.device)
    users = torch.arange(num_users, device=ranked.device).repeat_interleave(counts)
    items = tgt[tgt >= 0]
    first = torch.full((num_users,), math.inf, dtype=torch.float64, device=ranked.device)
    if items.numel() == 0:
        return first
    row = ranked[users]  # [P, N], one row per (user, target) pair
    own = ranked[users, items].unsqueeze(1)
    before = (row > own) | ((row == own) & (torch.arange(num_items, device=ranked.device) < items.unsqueeze(1)))
    rank = 1.0 + before.sum(1).double()
    rank = rank.masked_fill(mask[users, items], math.inf)  # a seen target is not in the ranking
    return first.scatter_reduce(0, users, rank, reduce="amin")


def retrieval_sums(topk_idx: torch.Tensor, targets: Sequence[Indices], ks: Sequence[int],
                   first_rank: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Per-metric sums over the users of :func:`retrieval_metrics` (and ``users``: how many were counted).

    Sums rather than means, so shares of users (batches, ranks) add up exactly.
    """
    ks = _cutoffs(ks)
    num_users, width = topk_idx.shape
    if ks[-1] > width:
        raise ValueError(f"the top-K lists hold {width} items, fewer than the largest cutoff {ks[-1]}")
    device = topk_idx.device
    tgt, counts = _padded_targets(targets, device)
    valid = counts > 0  # a user without a target is not counted
    hits = (topk_idx.unsqueeze(2) == tgt.unsqueeze(1)).any(2).double()  # [U, W]
    discount = 1.0 / torch.log2(torch.arange(2, width + 2, device=device, dtype=torch.float64))
    ideal_cum = discount.cumsum(0)
    n = counts.clamp(min=1).double()
    sums: Dict[str, float] = {}
    for k in ks:
        h = hits[:, :k]
        found = h.sum(1)
        ideal = ideal_cum[(counts.clamp(min=1, max=k) - 1)]
        sums[f"recall@{k}"] = float((found / n)[valid].sum())
        sums[f"ndcg@{k}"] = float(((h * discount[:k]).sum(1) / ideal)[valid].sum())
        sums[f"hr@{k}"] = float((found > 0)[valid].double().sum())
    if first_rank is None:  # reciprocal rank within the list
        pos = torch.where(hits.bool().any(1), hits.argmax(1).double() + 1.0, torch.full_like(found, math.inf))
    else:
        pos = first_rank.to(device).double()
    sums["mrr"] = float((1.0 / pos)[valid].sum())
    sums["users"] = float(valid.sum())
    return sums


def _means(sums: Dict[str, float]) -> Dict[str, float]:
    """Sums divided by the number of users (``users`` kept as an int)."""
    users = sums["users"]
    if users <= 0:
        raise DataError("retrieval evaluation: no user has a target; check the data's leave-last-out split "
                        "(data.retrieval) or raise data.retrieval.eval_users")
    return {k: (int(round(v)) if k == "users" else v / users) for k, v in sums.items()}


def retrieval_metrics(topk_idx: torch.Tensor, targets: Sequence[Indices], ks: Sequence[int],
                      first_rank: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """recall@K, NDCG@K, HR@K for every K, and MRR, averaged over the users that have a target.

    Args:
        topk_idx (Tensor): ``[U, W]`` corpus indices, best first (``-1``: no item), W ≥ max(ks)
            (:func:`topk_excluding`).
        targets (Sequence): per user the target corpus indices (duplicates count once).
        ks (Sequence[int]): the cutoffs.
        first_rank (Optional[Tensor]): ``[U]`` rank of each user's first target in the full ranking
            (:func:`first_target_rank`); None: MRR within the ``W`` listed items (0 when no target is listed).

    Returns:
        Dict[str, float]: :func:`metric_keys` — ``recall@K``, ``ndcg@K``, ``hr@K`` per K, ``mrr``, ``users``
        (see the module docstring for the exact definitions).

    Example::

        # one user, target 2; top-3 [5, 2, 7]: recall@1 0, recall@3 1, ndcg@3 1/log2(3), mrr 1/2
        retrieval_metrics(torch.tensor([[5, 2, 7]]), [[2]], [1, 3])
    """
    return _means(retrieval_sums(topk_idx, targets, ks, first_rank))


def _rank_world(collective: bool = True) -> Tuple[int, int]:
    """This process's rank and the world size (0, 1 without a process group, or when not ``collective``)."""
    if collective and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sums(sums: Dict[str, float], keys: Sequence[str], device: torch.device,
                     collective: bool = True) -> Dict[str, float]:
    """The sums of every rank (float64, in a fixed key order)."""
    _, world = _rank_world(collective)
    if world == 1:
        return {k: sums.get(k, 0.0) for k in keys}
    # gloo reduces CPU tensors, nccl device tensors: the device the model scores on
    total = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return dict(zip(keys, total.tolist()))


def rank_share(num_users: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's users: ``ceil(U / W)`` consecutive indices, ``-1`` padding past the last user.

    Every rank gets the same number, so every rank makes the same calls (collectives of a
    sharded model); the padding counts for nothing.
    """
    per = -(-num_users // world_size)
    share = np.arange(rank * per, (rank + 1) * per, dtype=np.int64)
    share[share >= num_users] = -1
    return share


def _user_keys(users: Any, user_keys: Optional[Sequence[str]]) -> List[str]:
    keys = user_keys if user_keys is not None else getattr(users, "sparse_names", None)
    if keys is None:
        raise ValueError("the users' sparse feature names are needed: pass user_keys= (EvalUsers.sparse_names)")
    return list(keys)


def corpus_embeddings(item_embed_fn: ItemEmbedFn, corpus: Any, batch_items: int = 4096,
                      device: Optional[torch.device] = None) -> torch.Tensor:
    """Every corpus item's embedding, in corpus order (``[N, d]``), computed in batches.

    Args:
        item_embed_fn (ItemEmbedFn): ``kjt -> [b, d]`` (a two-tower's ``item_embedding``).
        corpus: an ``ItemCorpus`` (``block`` of item features, ``sparse_names``).
        batch_items (int): items per call.
        device (Optional[torch.device]): where the model runs (default: CPU).

    Returns:
        Tensor: ``[N, d]``.
    """
    device = device or torch.device("cpu")
    block: RowBlock = corpus.block
    parts = []
    for a in range(0, len(block), batch_items):
        kjt = block.slice(a, a + batch_items).to_batch(corpus.sparse_names).sparse_features.to(device)
        parts.append(item_embed_fn(kjt))
    return torch.cat(parts)


@torch.no_grad()
def evaluate_retrieval(user_embed_fn: UserEmbedFn, item_embed_fn: ItemEmbedFn, score_fn: ScoreFn, eval_users: Any,
                       corpus: Any, ks: Sequence[int] = DEFAULT_KS, batch_users: int = 256, *,
                       user_keys: Optional[Sequence[str]] = None, batch_items: int = 4096,
                       device: Optional[torch.device] = None) -> Dict[str, float]:
    """Exact full-corpus retrieval metrics of a two-tower model, seen items excluded, over every evaluation user.

    Collective when a process group is initialised: every rank calls it with the same users
    and corpus, scores its share (:func:`rank_share`) and gets the global numbers.

    Args:
        user_embed_fn (UserEmbedFn): ``(dense, kjt) -> [b, d]`` (a two-tower's ``user_embedding``).
        item_embed_fn (ItemEmbedFn): ``kjt -> [b, d]`` (its ``item_embedding``).
        score_fn (ScoreFn): ``(u [b, d], v [N, d]) -> [b, N]`` (its ``score_matrix``).
        eval_users: an ``EvalUsers`` (``block``, ``targets``, ``seen``; ``sparse_names`` or ``user_keys``).
        corpus: an ``ItemCorpus`` (``ids``, ``block``, ``sparse_names``).
        ks (Sequence[int]): cutoffs.
        batch_users (int): users scored against the corpus at once (memory ``batch_users × N``).
        user_keys (Optional[Sequence[str]]): the users' sparse feature names (default ``eval_users.sparse_names``).
        batch_items (int): items per ``item_embed_fn`` call.
        device (Optional[torch.device]): where the model runs (default: CPU).

    Returns:
        Dict[str, float]: :func:`metric_keys` (``mrr`` over the full ranking), the same on every rank.
    """
    ks = _cutoffs(ks)
    device = device or torch.device("cpu")
    keys = _user_keys(eval_users, user_keys)
    items = corpus_embeddings(item_embed_fn, corpus, batch_items, device)
    rank, world = _rank_world()
    share = rank_share(len(eval_users.targets), rank, world)
    totals = dict.fromkeys(metric_keys(ks), 0.0)
    for a in range(0, len(share), batch_users):
        idx = share[a:a + batch_users]
        real = idx >= 0
        rows = np.where(real, idx, 0)  # padding repeats user 0 and has no targets: it counts for nothing
        batch = eval_users.block.take(rows).to_batch(keys)
        u = user_embed_fn(batch.dense_features.to(device), batch.sparse_features.to(device))
        scores = score_fn(u, items)
        mask = seen_mask([eval_users.seen[r] for r in rows], scores.shape[1], scores.device)
        ranked = _ranked_scores(scores, mask)
        targets = [eval_users.targets[r] if ok else () for r, ok in zip(rows, real)]
        sums = retrieval_sums(_topk_ranked(ranked, mask, ks[-1]), targets, ks, _first_rank_ranked(ranked, mask, targets))
        for k, v in sums.items():
            totals[k] += v
    return _means(_all_reduce_sums(totals, metric_keys(ks), device))


def pair_scorer(score: Callable[[Batch], torch.Tensor]) -> ScoreRowsFn:
    """A ranker's ``Batch -> logits`` as the ``(dense, kjt) -> [B]`` :func:`evaluate_ranker_on_candidates` calls."""
    def rows(dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        return score(Batch(dense, kjt, torch.zeros(kjt.stride(), device=dense.device))).reshape(-1)

    return rows


@torch.no_grad()
def tower_top_k(user_embed_fn: UserEmbedFn, item_embed_fn: ItemEmbedFn, score_fn: ScoreFn, eval_users: Any,
                corpus: Any, k: int, batch_users: int = 256, *, user_keys: Optional[Sequence[str]] = None,
                device: Optional[torch.device] = None) -> torch.Tensor:
    """Every evaluation user's top-``k`` corpus items by a two-tower, seen items excluded (this process, all users).

    The candidates a cascade's ranker re-orders (:func:`evaluate_ranker_on_candidates`).

    Args:
        user_embed_fn (UserEmbedFn): ``(dense, kjt) -> [b, d]``.
        item_embed_fn (ItemEmbedFn): ``kjt -> [b, d]``.
        score_fn (ScoreFn): ``(u, v) -> [b, N]``.
        eval_users: an ``EvalUsers``.
        corpus: an ``ItemCorpus``.
        k (int): candidates per user.
        batch_users (int): users per matmul.
        user_keys (Optional[Sequence[str]]): the users' sparse names (default ``eval_users.sparse_names``).
        device (Optional[torch.device]): where the model runs (default: CPU).

    Returns:
        Tensor: int64 ``[U, k]`` corpus indices, best first (``-1`` past a user's unseen items), on CPU.
    """
    device = device or torch.device("cpu")
    keys = _user_keys(eval_users, user_keys)
    items = corpus_embeddings(item_embed_fn, corpus, device=device)
    parts = []
    for a in range(0, len(eval_users.targets), batch_users):
        rows = np.arange(a, min(a + batch_users, len(eval_users.targets)))
        batch = eval_users.block.take(rows).to_batch(keys)
        scores = score_fn(user_embed_fn(batch.dense_features.to(device), batch.sparse_features.to(device)), items)
        parts.append(topk_excluding(scores, [eval_users.seen[r] for r in rows], k).cpu())
    return torch.cat(parts) if parts else torch.zeros(0, k, dtype=torch.int64)


# ---------------------------------------------------------------- a ranker on candidates


def join_rows(users: RowBlock, user_keys: Sequence[str], user_rows: np.ndarray, items: RowBlock,
              item_keys: Sequence[str], item_rows: np.ndarray, keys: Sequence[str]) -> Batch:
    """The (user, item) rows a ranker scores: row i = user ``user_rows[i]``'s features + item ``item_rows[i]``'s.

    Args:
        users (RowBlock): the users' features (sparse in ``user_keys`` order; dense: the user's).
        user_keys (Sequence[str]): names of ``users``' sparse columns.
        user_rows (np.ndarray): ``[R]`` row of ``users`` per output row.
        items (RowBlock): the corpus's item features (sparse in ``item_keys`` order).
        item_keys (Sequence[str]): names of ``items``' sparse columns.
        item_rows (np.ndarray): ``[R]`` corpus index per output row.
        keys (Sequence[str]): the ranker's sparse features, in the order of its training batches.

    Returns:
        Batch: dense = the user's dense features, KJT with ``keys``, labels zeros ``[R]``.

    Raises:
        ConfigError: a feature of ``keys`` is on neither side or on both.
    """
    side = {}
    for name in keys:
        where = [s for s, names in (("user", user_keys), ("item", item_keys)) if name in names]
        if len(where) != 1:
            raise ConfigError(f"data.retrieval: the ranker's feature '{name}' is "
                              f"{'on neither side' if not where else 'both a user and an item feature'}; "
                              "list it in exactly one of data.retrieval.user_features / item_features")
        side[name] = where[0]
    u = users.take(np.asarray(user_rows, np.int64))
    v = items.take(np.asarray(item_rows, np.int64))
    sparse = [u.sparse[list(user_keys).index(n)] if side[n] == "user" else v.sparse[list(item_keys).index(n)]
              for n in keys]
    return RowBlock(u.dense, np.zeros(len(u), np.float32), sparse).to_batch(keys)


@torch.no_grad()
def evaluate_ranker_on_candidates(score_rows_fn: ScoreRowsFn, users: Any, corpus: Any,
                                  candidates: Union[torch.Tensor, np.ndarray], ks: Sequence[int] = DEFAULT_KS, *,
                                  keys: Sequence[str], user_keys: Optional[Sequence[str]] = None,
                                  batch_rows: int = 8192, device: Optional[torch.device] = None,
                                  collective: bool = True) -> Dict[str, float]:
    """Retrieval metrics of a ranker re-ordering each user's candidates (e.g. a two-tower's top 100).

    Each (user, candidate) pair becomes one row (:func:`join_rows`) scored by the ranker; the
    candidates are ranked by that score (ties: the earlier candidate first), seen candidates and
    ``-1`` slots dropped. recall@K for K above the number of candidates is recall of the whole
    list; ``mrr`` is within the list. Collective like :func:`evaluate_retrieval`.

    Args:
        score_rows_fn (ScoreRowsFn): ``(dense, kjt) -> [B]`` (a ranker's forward: logits of the pairs).
        users: an ``EvalUsers`` (``block``, ``targets``, ``seen``; ``sparse_names`` or ``user_keys``).
        corpus: an ``ItemCorpus`` (``block``, ``sparse_names``).
        candidates: ``[U, C]`` corpus indices per user (``-1``: none), one row per user of ``users``.
        ks (Sequence[int]): cutoffs.
        keys (Sequence[str]): the ranker's sparse features in its training order.
        user_keys (Optional[Sequence[str]]): the users' sparse names (default ``users.sparse_names``).
        batch_rows (int): (user, item) rows per ranker call (whole users: at least one user's candidates).
        device (Optional[torch.device]): where the ranker runs (default: CPU).
        collective (bool): every rank calls it and scores a share; False: this process alone scores
            every user (an unsharded ranker on one rank).

    Returns:
        Dict[str, float]: :func:`metric_keys` and ``candidates`` (C), the same on every rank.
    """
    ks = _cutoffs(ks)
    device = device or torch.device("cpu")
    ukeys = _user_keys(users, user_keys)
    cand = torch.as_tensor(np.asarray(candidates), dtype=torch.int64)
    if cand.dim() != 2 or len(cand) != len(users.targets):
        raise ValueError(f"candidates must be [users, C] for {len(users.targets)} users, got {tuple(cand.shape)}")
    num_cand = cand.shape[1]
    rank, world = _rank_world(collective)
    share = rank_share(len(users.targets), rank, world)
    per_call = max(1, batch_rows // max(1, num_cand))
    totals = dict.fromkeys(metric_keys(ks), 0.0)
    for a in range(0, len(share), per_call):
        idx = share[a:a + per_call]
        real = idx >= 0
        rows = np.where(real, idx, 0)
        c = cand[torch.from_numpy(rows)]  # [b, C]
        seen = seen_mask([users.seen[r] for r in rows], len(corpus.block)).gather(1, c.clamp(min=0))
        c = c.masked_fill(seen, -1)
        batch = join_rows(users.block, ukeys, np.repeat(rows, num_cand), corpus.block, corpus.sparse_names,
                          c.clamp(min=0).reshape(-1).numpy(), keys)
        scores = score_rows_fn(batch.dense_features.to(device), batch.sparse_features.to(device))
        scores = scores.reshape(len(rows), num_cand).cpu()
        order = _ranked_scores(scores, c < 0).sort(dim=1, descending=True, stable=True).indices
        ranked = c.gather(1, order)  # dropped slots (-1) sort last
        if ks[-1] > num_cand:
            ranked = torch.cat([ranked, ranked.new_full((len(rows), ks[-1] - num_cand), -1)], dim=1)
        targets = [users.targets[r] if ok else () for r, ok in zip(rows, real)]
        for k, v in retrieval_sums(ranked, targets, ks).items():
            totals[k] += v
    result = _means(_all_reduce_sums(totals, metric_keys(ks), device, collective))
    result["candidates"] = int(num_cand)
    return result


# ---------------------------------------------------------------- GAUC


def user_auc_sums(user_ids: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Tuple[float, int]:
    """The sum of per-user AUCs and the number of users that have both a positive and a negative.

    A user's AUC is the Mann-Whitney statistic with midranks: the probability that a random
    positive of the user scores above a random negative of the user, a tie counting ½ (so a user
    whose scores are all equal has AUC 0.5 and counts). Users with only positives or only
    negatives have no AUC and are left out, as TorchRec's ``gauc`` leaves them out.

    Args:
        user_ids (np.ndarray): ``[n]`` the user of each row.
        scores (np.ndarray): ``[n]`` the model's score (logits: no sigmoid saturation ties).
        labels (np.ndarray): ``[n]`` 0/1 (> 0.5 is a positive).

    Returns:
        Tuple[float, int]: (Σ AUC, users counted); GAUC = Σ / users.
    """
    user_ids = np.asarray(user_ids).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    pos = np.asarray(labels).reshape(-1) > 0.5
    if len(user_ids) == 0:
        return 0.0, 0
    order = np.lexsort((scores, user_ids))
    u, s, y = user_ids[order], scores[order], pos[order]
    n = len(u)
    new_user = np.r_[True, u[1:] != u[:-1]]
    group = np.cumsum(new_user) - 1  # user index of each row
    start = np.flatnonzero(new_user)
    rank = np.arange(n) - start[group] + 1.0  # 1-based rank within the user, ascending score
    new_run = new_user | np.r_[True, s[1:] != s[:-1]]
    run = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.r_[run_start[1:], n] - 1
    midrank = (rank[run_start] + rank[run_end]) / 2.0  # a tie shares the mean of its ranks
    r = midrank[run]
    n_pos = np.bincount(group, weights=y)
    n_all = np.bincount(group).astype(np.float64)
    n_neg = n_all - n_pos
    rank_sum = np.bincount(group, weights=r * y)
    ok = (n_pos > 0) & (n_neg > 0)
    auc = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return float(auc.sum()), int(ok.sum())


def row_user_ids(kjt: KeyedJaggedTensor, key: str) -> torch.Tensor:
    """Each row's user id: the first id of feature ``key`` (-1 for a row without one).

    Args:
        kjt (KeyedJaggedTensor): a batch's sparse features.
        key (str): the user-id feature.

    Returns:
        Tensor: int64 ``[B]``.
    """
    jt = kjt[key]
    lengths = jt.lengths().long()
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
    values = jt.values().long()
    first = values[offsets.clamp(max=max(values.numel() - 1, 0))] if values.numel() else torch.zeros_like(lengths)
    return torch.where(lengths > 0, first, torch.full_like(first, -1))


class GaucAccumulator:
    """GAUC (per-user AUC averaged over users) of an evaluation pass whose rows may be on any rank.

    A user's rows can fall on several ranks and in several batches, so the rows are kept and
    gathered: :meth:`compute` is collective (every rank calls it) and returns the same on every rank.

    Example::

        acc = GaucAccumulator()
        for batch in batches:
            acc.update(row_user_ids(batch.sparse_features, "user_id"), logits, batch.labels)
        acc.compute()  # {"gauc": 0.71, "gauc_users": 480}
    """

    def __init__(self) -> None:
        self._parts: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, user_ids: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: the user of each row (rows with a negative id belong to no user), logits ``[B]``, labels ``[B]``."""
        users = user_ids.detach().reshape(-1).cpu().numpy().astype(np.int64)
        keep = users >= 0
        self._parts.append((users[keep], scores.detach().reshape(-1).double().cpu().numpy()[keep],
                            labels.detach().reshape(-1).double().cpu().numpy()[keep]))

    def compute(self) -> Dict[str, Optional[float]]:
        """``{"gauc": mean per-user AUC (None: no user), "gauc_users": users counted}`` over all ranks (collective)."""
        mine = [np.concatenate([p[i] for p in self._parts]) if self._parts else np.zeros(0) for i in range(3)]
        _, world = _rank_world()
        if world > 1:
            gathered: List[Any] = [None] * world
            dist.all_gather_object(gathered, mine)
            mine = [np.concatenate([g[i] for g in gathered]) for i in range(3)]
        total, users = user_auc_sums(*mine)
        return {"gauc": total / users if users else None, "gauc_users": users}

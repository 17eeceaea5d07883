"""The cascade at test: a ranker re-orders a tower model's top-K, as it serves behind retrieval.

A ranker scoring the whole corpus pair by pair
(:func:`~torchrec_kd.training.retrieval_entry.ranker_corpus_metrics`) answers "what would it
retrieve with unlimited compute"; a cascade asks what it adds where it really runs: each test
user's top-``max(ks)`` items from the two-tower (seen items excluded), re-ordered by the ranker.
recall@max(ks) is the tower's (the same set); recall@K below it says whether the ranker orders
the tower's candidates better than the tower does — the teacher's ranking of the same candidates.

Example::

    found = cascade_metrics(teacher_logits, student, data, ks=[10, 20, 50, 100])
    found["recall@20"], found["candidates"]  # the teacher re-ranking the student's top 100
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Sequence

import torch
from torch import nn
from torchrec.datasets.utils import Batch

from torchrec_kd.training.retrieval_eval import evaluate_ranker_on_candidates, pair_scorer, tower_top_k


@torch.no_grad()
def cascade_metrics(ranker: Callable[[Batch], torch.Tensor], towers: nn.Module, data: Any,
                    ks: Sequence[int]) -> Dict[str, Any]:
    """Recall@K / NDCG@K / HR@K / MRR of ``ranker`` re-ordering ``towers``' top-``max(ks)`` per test user.

    Runs in this process alone on unsharded models (the report's rank 0), every test user.

    Args:
        ranker (Callable[[Batch], Tensor]): a ranker's logits ``[B]`` of (user, item) rows.
        towers (nn.Module): an unsharded model with ``user_embedding``, ``item_embedding``, ``score_matrix``.
        data: the run's retrieval log (``eval_users("test")``, ``corpus()``, ``sparse_names``, ``user_keys``).
        ks (Sequence[int]): cutoffs; the depth re-ranked is the largest.

    Returns:
        Dict[str, Any]: the metrics, ``candidates`` (the depth) and ``scored: "cascade"``.
    """
    users, corpus = data.eval_users("test"), data.corpus()
    user_keys = list(data.user_keys)
    top = tower_top_k(towers.user_embedding, towers.item_embedding, towers.score_matrix, users, corpus, max(ks),
                      user_keys=user_keys)

    found: Dict[str, Any] = evaluate_ranker_on_candidates(pair_scorer(ranker), users, corpus, top.numpy(), ks,
                                                          keys=list(data.sparse_names), user_keys=user_keys,
                                                          collective=False)
    found["scored"] = "cascade"
    return found

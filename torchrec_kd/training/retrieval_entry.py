"""What a retrieval run (``data.retrieval``) adds to a model's evaluation: GAUC and, for towers, recall@K.

Every model of such a run (a ranker teacher, the two-tower student alone or distilled) gets
``gauc`` / ``gauc_users`` over the split's (user, item) rows (per-user AUC averaged). A model with
towers (``user_embedding``, ``item_embedding``, ``score_matrix``: the ``two_tower`` arch or a
plugin with the same three methods) also gets ``"retrieval"``: exact full-corpus recall@K /
NDCG@K / HR@K / MRR over the split's leave-last-out users, their seen items excluded
(:func:`~torchrec_kd.training.retrieval_eval.evaluate_retrieval`), and the selection metric
(``data.retrieval.select_metric``, e.g. ``recall@20``) at the top level, where model selection reads it.
A ranker (no towers) gets the same ``"retrieval"`` block at test: every (user, corpus item) pair
scored as a row (:func:`ranker_corpus_metrics`), so the teacher's ranking of the same corpus is
measured beside the student's; not at every validation (users x items rows each time).

Example::

    metrics.update(retrieval_metrics(student, run.score, run.data, "val", cfg, env))
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import numpy as np
import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.config import RunConfig
from torchrec_kd.distill.candidates import has_towers, in_order
from torchrec_kd.distributed.env import DistEnv
from torchrec_kd.quant.item_index import quantize_rows_int8
from torchrec_kd.training.retrieval_eval import (
    GaucAccumulator,
    evaluate_ranker_on_candidates,
    evaluate_retrieval,
    pair_scorer,
    row_user_ids,
)

# a ranker's full-corpus evaluation scores users x items rows: beyond this, it is skipped (said in the entry)
RANKER_MAX_PAIRS = 20_000_000


def selection_metric(cfg: RunConfig, model: Any) -> str:
    """The validation metric that selects ``model``: the retrieval one for towers, else ``train.early_stopping.metric``."""
    if cfg.data.retrieval is not None and has_towers(model):
        return cfg.data.retrieval.select_metric
    return cfg.train.early_stopping.metric


@torch.no_grad()
def retrieval_metrics(model: nn.Module, score: Callable[[Batch], torch.Tensor], data: Any, split: str,
                      cfg: RunConfig, env: DistEnv, int8_index: bool = False) -> Dict[str, Any]:
    """GAUC of ``score`` on the split's rows, and the towers' retrieval metrics (collective: every rank calls it).

    Args:
        model (nn.Module): the scored model itself (unwrapped; its towers are called if it has them).
        score (Callable[[Batch], Tensor]): the run's row scorer (logits ``[B]``).
        data: the run's retrieval log (``batches``, ``corpus()``, ``eval_users(split)``).
        split (str): ``val`` or ``test``.
        cfg (RunConfig): the run config (``data.retrieval``).
        env (DistEnv): ranks and device.
        int8_index (bool): towers: also ``retrieval_int8_index``, the same metrics with the item
            embeddings stored as the export's int8 index stores them (row-wise int8, dequantized).

    Returns:
        Dict[str, Any]: ``gauc``, ``gauc_users``; with towers also ``retrieval`` and the selection metric; a
        ranker at ``test`` also ``retrieval`` (:func:`ranker_corpus_metrics`, its ``candidates`` = the corpus).
    """
    spec = cfg.data.retrieval
    assert spec is not None
    acc = GaucAccumulator()
    for batch in data.batches(split, cfg.data.batch_size, env.rank, env.world_size):
        batch = batch.to(env.device)
        acc.update(row_user_ids(batch.sparse_features, spec.user_id), score(batch).reshape(-1).float(),
                   batch.labels.reshape(-1).float())
    out: Dict[str, Any] = dict(acc.compute())
    if has_towers(model):
        # a sharded EBC fixes the key order of its input on the first call (the training batches'): one
        # tower's keys alone are padded to every key of the data, in that order, with empty bags
        keys = list(data.sparse_names)

        def towers(items: Callable[[KeyedJaggedTensor], torch.Tensor]) -> Dict[str, float]:
            return evaluate_retrieval(lambda dense, kjt: model.user_embedding(dense, in_order(kjt, keys)), items,
                                      model.score_matrix, data.eval_users(split), data.corpus(), ks=spec.ks,
                                      device=env.device, user_keys=list(data.user_keys))

        found = towers(lambda kjt: model.item_embedding(in_order(kjt, keys)))
        out["retrieval"] = found
        out[spec.select_metric] = found[spec.select_metric]
        if int8_index:
            out["retrieval_int8_index"] = towers(lambda kjt: int8_rows(model.item_embedding(in_order(kjt, keys))))
    elif split == "test":  # a ranker ranks the same whole corpus, row by row (once: at test, not every validation)
        out.update(ranker_corpus_metrics(score, data, spec.ks, env))
    return out


def int8_rows(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` as the export's int8 item index holds them: row-wise symmetric int8, dequantized."""
    q, scale = quantize_rows_int8(rows.float())
    return q.float() * scale.unsqueeze(1)


def ranker_corpus_metrics(score: Callable[[Batch], torch.Tensor], data: Any, ks: Any, env: DistEnv,
                          max_pairs: int = RANKER_MAX_PAIRS) -> Dict[str, Any]:
    """A ranker's recall@K / NDCG@K / HR@K / MRR over the whole corpus: every (test user, item) pair scored as a row.

    The towers' metrics, on the same users, targets, seen items and corpus, so a ranker teacher
    and a two-tower student compare on one footing (what a cascade's ranker would retrieve with
    unlimited compute). Skipped, with ``retrieval_skipped`` saying why, above ``max_pairs`` pairs.

    Args:
        score (Callable[[Batch], Tensor]): the run's row scorer (logits ``[B]``).
        data: the run's retrieval log (``corpus()``, ``eval_users("test")``, ``sparse_names``, ``user_keys``).
        ks: cutoffs (``data.retrieval.ks``).
        env (DistEnv): ranks and device (collective: every rank calls it).
        max_pairs (int): the most (user, item) rows scored.

    Returns:
        Dict[str, Any]: ``{"retrieval": {..., "candidates": N, "scored": "pairs"}}`` or ``{"retrieval_skipped": why}``.
    """
    users, corpus = data.eval_users("test"), data.corpus()
    pairs = len(users.targets) * len(corpus.block)
    if pairs > max_pairs:
        return {"retrieval_skipped": f"{len(users.targets)} users x {len(corpus.block)} items = {pairs:,} rows to "
                                     f"score, more than {max_pairs:,}"}
    everything = np.broadcast_to(np.arange(len(corpus.block), dtype=np.int64), (len(users.targets), len(corpus.block)))

    found = evaluate_ranker_on_candidates(pair_scorer(score), users, corpus, np.ascontiguousarray(everything), ks,
                                          keys=list(data.sparse_names), user_keys=list(data.user_keys),
                                          device=env.device)
    found["scored"] = "pairs"  # every (user, item) pair as a row: the whole corpus, not a candidate list
    return {"retrieval": found}

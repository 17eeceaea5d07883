"""What a retrieval run (``data.retrieval``) adds to a model's evaluation: GAUC and, for towers, recall@K.

Every model of such a run (a ranker teacher, the two-tower student alone or distilled) gets
``gauc`` / ``gauc_users`` over the split's (user, item) rows (per-user AUC averaged). A model with
towers (``user_embedding``, ``item_embedding``, ``score_matrix``: the ``two_tower`` arch or a
plugin with the same three methods) also gets ``"retrieval"``: exact full-corpus recall@K /
NDCG@K / HR@K / MRR over the split's leave-last-out users, their seen items excluded
(:func:`~torchrec_kd.training.retrieval_eval.evaluate_retrieval`), and the selection metric
(``data.retrieval.select_metric``, e.g. ``recall@20``) at the top level, where model selection reads it.

Example::

    metrics.update(retrieval_metrics(student, run.score, run.data, "val", cfg, env))
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_kd.config import RunConfig
from torchrec_kd.distributed.env import DistEnv
from torchrec_kd.training.retrieval_eval import GaucAccumulator, evaluate_retrieval, row_user_ids

TOWER_METHODS = ("user_embedding", "item_embedding", "score_matrix")


def has_towers(model: Any) -> bool:
    """Whether ``model`` can embed users and items apart (a retrieval model)."""
    return all(callable(getattr(model, m, None)) for m in TOWER_METHODS)


def selection_metric(cfg: RunConfig, model: Any) -> str:
    """The validation metric that selects ``model``: the retrieval one for towers, else ``train.early_stopping.metric``."""
    if cfg.data.retrieval is not None and has_towers(model):
        return cfg.data.retrieval.select_metric
    return cfg.train.early_stopping.metric


def in_order(kjt: KeyedJaggedTensor, keys: List[str]) -> KeyedJaggedTensor:
    """``kjt`` with exactly ``keys`` in that order: the absent ones as empty bags (pooled to zeros)."""
    if list(kjt.keys()) == keys:
        return kjt
    present = kjt.to_dict()
    rows = kjt.stride()
    values = [present[k].values() for k in keys if k in present]
    lengths = [present[k].lengths() if k in present else torch.zeros(rows, dtype=kjt.lengths().dtype,
                                                                      device=kjt.lengths().device) for k in keys]
    value = torch.cat(values) if values else kjt.values()[:0]
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=value, lengths=torch.cat(lengths), stride=rows)


@torch.no_grad()
def retrieval_metrics(model: nn.Module, score: Callable[[Batch], torch.Tensor], data: Any, split: str,
                      cfg: RunConfig, env: DistEnv) -> Dict[str, Any]:
    """GAUC of ``score`` on the split's rows, and the towers' retrieval metrics (collective: every rank calls it).

    Args:
        model (nn.Module): the scored model itself (unwrapped; its towers are called if it has them).
        score (Callable[[Batch], Tensor]): the run's row scorer (logits ``[B]``).
        data: the run's retrieval log (``batches``, ``corpus()``, ``eval_users(split)``).
        split (str): ``val`` or ``test``.
        cfg (RunConfig): the run config (``data.retrieval``).
        env (DistEnv): ranks and device.

    Returns:
        Dict[str, Any]: ``gauc``, ``gauc_users``; with towers also ``retrieval`` and the selection metric.
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
        found = evaluate_retrieval(lambda dense, kjt: model.user_embedding(dense, in_order(kjt, keys)),
                                   lambda kjt: model.item_embedding(in_order(kjt, keys)), model.score_matrix,
                                   data.eval_users(split), data.corpus(), ks=spec.ks, device=env.device,
                                   user_keys=list(data.user_keys))
        out["retrieval"] = found
        out[spec.select_metric] = found[spec.select_metric]
    return out

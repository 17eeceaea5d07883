"""Per-row logits of a model on a whole split, in the split's stored order, on 1 or N ranks.

Every source gives rank ``r`` of ``W`` the rows ``[i·B + r·B/W, i·B + (r+1)·B/W)`` of global batch
``i`` (``data.rows.indexed_batches``, the synthetic world's blocks), so gathering each rank's
logits and laying them out batch by batch, rank by rank, gives the rows in stored order: the
first ``num_batches(split) · B`` rows, the ones the recipes' test metrics are computed on.
What the continual workflow needs for its per-slice metrics (new / rare / rest ids).

Example::

    logits, labels = split_logits(run.score, run.data, "test", cfg.data.batch_size, run.env)
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch

from torchrec_kd.distributed.env import DistEnv


@torch.no_grad()
def split_logits(score: Callable[[Batch], torch.Tensor], data: Any, split: str, batch_size: int,
                 env: DistEnv) -> Tuple[np.ndarray, np.ndarray]:
    """Score every full global batch of ``split``; every rank gets all rows' logits and labels (a collective).

    Args:
        score (Callable[[Batch], Tensor]): logits [b] (or [b, T] of a multi-task run) of a batch already on
            the device (the model in eval mode).
        data: a data source (``batches``, ``num_batches``).
        split (str): "val" or "test".
        batch_size (int): the global batch size (as the recipes evaluate).
        env (DistEnv): ranks and device.

    Returns:
        Tuple[np.ndarray, np.ndarray]: float32 logits and labels of the split's first
        ``num_batches · batch_size`` rows, in stored order (``[n]``, or ``[n, T]`` with several tasks).
    """
    logits: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    for batch in data.batches(split, batch_size, env.rank, env.world_size):
        batch = batch.to(env.device)
        out, lab = score(batch).float(), batch.labels.float()
        if lab.dim() < 2:  # one task: [b], as always; several: [b, T] rows stay rows
            out, lab = out.reshape(-1), lab.reshape(-1)
        logits.append(out.cpu().numpy())
        labels.append(lab.cpu().numpy())
    mine = (logits, labels)
    if env.world_size == 1:
        shares = [mine]
    else:
        shares = [None] * env.world_size
        dist.all_gather_object(shares, mine)
    batches = len(shares[0][0])
    order = [(i, r) for i in range(batches) for r in range(env.world_size)]  # batch by batch, rank by rank
    if not order:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return (np.concatenate([shares[r][0][i] for i, r in order]).astype(np.float32),
            np.concatenate([shares[r][1][i] for i, r in order]).astype(np.float32))

"""Evaluate a model with TorchRec's RecMetrics (AUC, NE, log loss, calibration).

The metric module reduces across ranks, so every rank passes its own share of the
evaluation data and all ranks get the global numbers.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable

import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch
from torchrec.metrics.metric_module import RecMetricModule, generate_metric_module
from torchrec.metrics.metrics_config import MetricsConfig, RecComputeMode, RecMetricDef, RecMetricEnum, RecTaskInfo

from torchrec_kd.distributed.env import DistEnv

TASK = RecTaskInfo(name="ctr", label_name="label", prediction_name="prediction", weight_name="weight")
# metric name in our reports -> key in RecMetricModule.compute()
_KEYS = {
    "auc": "auc-ctr|window_auc",
    "ne": "ne-ctr|lifetime_ne",
    "logloss": "ne-ctr|lifetime_logloss",
    "calibration": "calibration-ctr|lifetime_calibration",
}


def make_metric_module(env: DistEnv, local_batch_size: int, total_rows: int) -> RecMetricModule:
    """A RecMetricModule computing AUC over a window that holds the whole evaluation set.

    Args:
        env (DistEnv): ranks and device.
        local_batch_size (int): rows per update on this rank.
        total_rows (int): rows in the evaluation set across all ranks.

    Returns:
        RecMetricModule: update with ``{"prediction", "label", "weight"}`` tensors.
    """
    window = max(total_rows, local_batch_size * env.world_size)
    metrics = {m: RecMetricDef(rec_tasks=[TASK], window_size=window)
               for m in (RecMetricEnum.AUC, RecMetricEnum.CALIBRATION)}
    # NE also reports plain log loss when asked to
    metrics[RecMetricEnum.NE] = RecMetricDef(rec_tasks=[TASK], window_size=window, arguments={"include_logloss": True})
    config = MetricsConfig(rec_tasks=[TASK], rec_metrics=metrics, rec_compute_mode=RecComputeMode.UNFUSED_TASKS_COMPUTATION)
    return generate_metric_module(RecMetricModule, metrics_config=config, batch_size=local_batch_size,
                                  world_size=env.world_size, my_rank=env.rank, state_metrics_mapping={},
                                  device=env.device, process_group=dist.GroupMember.WORLD)


@torch.no_grad()
def evaluate(score: Callable[[Batch], torch.Tensor], batches: Iterable[Batch], env: DistEnv,
             local_batch_size: int, total_rows: int) -> Dict[str, float]:
    """Score every batch and compute global metrics.

    Args:
        score (Callable[[Batch], Tensor]): returns logits [b] for a batch already on the device.
        batches (Iterable[Batch]): this rank's share of the evaluation set.
        env (DistEnv): ranks and device.
        local_batch_size (int): rows per batch on this rank.
        total_rows (int): rows across ranks (sizes the AUC window).

    Returns:
        Dict[str, float]: ``auc``, ``ne``, ``logloss``, ``calibration`` and ``rows``.
    """
    module = make_metric_module(env, local_batch_size, total_rows)
    rows = 0
    for batch in batches:
        batch = batch.to(env.device)
        logits = score(batch).reshape(-1).float()
        labels = batch.labels.reshape(-1).float()
        module.update({"prediction": torch.sigmoid(logits), "label": labels, "weight": torch.ones_like(labels)})
        rows += labels.numel()
    out = module.compute()  # collective: every rank calls it; AUC lands on rank 0
    result: Dict[str, float] = {}
    if env.is_main:
        out = out.resolve() if hasattr(out, "resolve") else out  # torchrec may defer the result
        result = {name: float(out[key]) for name, key in _KEYS.items()}
        result["logloss"] *= math.log(2.0)  # torchrec reports log loss in bits; we report nats
    shared = [result]
    dist.broadcast_object_list(shared, src=0)
    result = shared[0]
    count = torch.tensor([rows], device=env.device)
    dist.all_reduce(count)
    result["rows"] = int(count.item())
    return result

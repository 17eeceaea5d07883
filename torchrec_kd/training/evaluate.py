"""Evaluate a model with TorchRec's RecMetrics (AUC, NE, log loss, calibration).

The metric module reduces across ranks, so every rank passes its own share of the
evaluation data and all ranks get the global numbers. :func:`evaluate` is what every recipe
runs; :func:`evaluate_model` runs the same for a model of one's own TorchRec loop.

Example (one's own loop)::

    for step in range(steps):
        pipeline.progress(train_batches)
    metrics = evaluate_model(pipeline, val_batches)   # detaches the pipeline first
    pipeline.progress(train_batches)                  # training goes on: TorchRec re-attaches the model
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Dict, Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.metrics.metric_module import RecMetricModule, generate_metric_module
from torchrec.metrics.metrics_config import MetricsConfig, RecComputeMode, RecMetricDef, RecMetricEnum, RecTaskInfo

from torchrec_kd.config import DistributedConfig
from torchrec_kd.distill.model import DistillationModel
from torchrec_kd.distributed.env import DistEnv, init_distributed
from torchrec_kd.models.io import DEFAULT, ModelIO
from torchrec_kd.models.train import RankerTrain

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


# AUC window when the number of evaluation rows is not given: larger than any evaluation set, so
# every row counts, as in the recipes (the window is a bound on stored rows, not an allocation).
WHOLE_SET_ROWS = 1 << 40


def _env() -> DistEnv:
    """This process in the caller's process group (a one-process group is created if there is none)."""
    if not dist.is_initialized():
        return init_distributed(DistributedConfig())
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return DistEnv(dist.get_rank(), dist.get_world_size(), device.index or 0, device, str(backend))


def scorer(model: nn.Module, io: Optional[ModelIO] = None) -> Callable[[Batch], torch.Tensor]:
    """How the recipes score an evaluation batch with ``model``: logits [B] of the trained model alone.

    Args:
        model (nn.Module): a ``DistillationModel`` (its student alone, as ``distill`` evaluates), a
            ``RankerTrain`` (its model), or a bare ranking model; any of them inside a
            ``DistributedModelParallel`` (unwrapped here).
        io (Optional[ModelIO]): how a bare model is called and what it returns (default: by its type,
            else logits; see :class:`~torchrec_kd.models.io.ModelIO`).

    Returns:
        Callable[[Batch], Tensor]: ``batch -> logits [B]``.
    """
    module = model.module if isinstance(model, DistributedModelParallel) else model
    if isinstance(module, DistillationModel):
        return module.score
    if isinstance(module, RankerTrain):
        return lambda b: module.io.logits(module.model, b)
    model_io = io or DEFAULT
    return lambda b: model_io.logits(module, b)


def evaluate_model(target: Any, batches: Iterable[Batch], io: Optional[ModelIO] = None,
                   total_rows: Optional[int] = None) -> Dict[str, float]:
    """AUC / NE / log loss / calibration of a model in one's own TorchRec loop, as the recipes compute them.

    Given a ``TrainPipelineSparseDist`` (or any TorchRec pipeline with ``detach``), the model is
    detached from it first: after ``pipeline.progress(...)`` the sharded tables answer with the
    pipeline's prefetched batch, and a second direct call raises TorchRec's "Invalid
    PipelinedForward usage". Training may go on afterwards with ``pipeline.progress(...)``:
    TorchRec re-attaches a detached model itself and keeps the batches in flight. The model is
    scored in eval mode (under ``no_grad``) and left in the mode it was in.

    Every rank passes its own share of the evaluation data (collective: all ranks call it).

    Args:
        target: a TorchRec train pipeline, a ``DistributedModelParallel`` or a model (see :func:`scorer`).
        batches (Iterable[Batch]): this rank's evaluation batches (moved to the rank's device).
        io (Optional[ModelIO]): how a bare model is called and what it returns.
        total_rows (Optional[int]): rows across ranks, if known (sizes the AUC window as the recipes
            do); None: a window that holds any evaluation set.

    Returns:
        Dict[str, float]: ``auc``, ``ne``, ``logloss`` (nats), ``calibration`` and ``rows``, the same on
        every rank.
    """
    model = target.detach() if callable(getattr(target, "detach", None)) and hasattr(target, "progress") else target
    env = _env()
    stream = iter(batches)
    first = next(stream, None)
    local_batch = int(first.labels.numel()) if first is not None else 1
    stream = itertools.chain([first], stream) if first is not None else iter(())
    was_training = model.training
    model.eval()
    try:
        return evaluate(scorer(model, io), stream, env, local_batch,
                        WHOLE_SET_ROWS if total_rows is None else int(total_rows))
    finally:
        model.train(was_training)

"""Evaluate a model with TorchRec's RecMetrics (AUC, NE, log loss, calibration; MSE per regression task).

The metric module reduces across ranks, so every rank passes its own share of the
evaluation data and all ranks get the global numbers. :func:`evaluate` is what every recipe
runs; :func:`evaluate_model` runs the same for a model of one's own TorchRec loop.

A multi-task run (``tasks`` of two or more) is measured with one ``RecTaskInfo`` per task:
binary tasks get AUC / NE / log loss / calibration, regression tasks MSE, each task's rows
weighted by its space (1 where it is observed, 0 elsewhere). The result keeps the top-level
``auc`` / ``ne`` / ``logloss`` / ``calibration`` of the selection task
(``train.early_stopping.task``) and adds ``"tasks": {name: {...}}`` and ``"selection_task"``.
One task takes today's path and returns today's keys only.

Example (one's own loop)::

    for step in range(steps):
        pipeline.progress(train_batches)
    metrics = evaluate_model(pipeline, val_batches)   # detaches the pipeline first
    pipeline.progress(train_batches)                  # training goes on: TorchRec re-attaches the model
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.metrics.metric_module import RecMetricModule, generate_metric_module
from torchrec.metrics.metrics_config import MetricsConfig, RecComputeMode, RecMetricDef, RecMetricEnum, RecTaskInfo

from torchrec_kd.config import DistributedConfig
from torchrec_kd.core.tasks import Task, task_space
from torchrec_kd.distill.model import DistillationModel
from torchrec_kd.distributed.env import DistEnv, init_distributed
from torchrec_kd.models.io import DEFAULT, ModelIO
from torchrec_kd.models.train import RankerTrain
from torchrec_kd.training.selection import MEAN, selection_task

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


def _task_info(task: Task) -> RecTaskInfo:
    """The ``RecTaskInfo`` of one task: its predictions, labels and space weights under its own keys."""
    return RecTaskInfo(name=task.name, label_name=f"label/{task.name}", prediction_name=f"prediction/{task.name}",
                       weight_name=f"weight/{task.name}")


def make_task_metric_module(env: DistEnv, local_batch_size: int, total_rows: int,
                            tasks: Sequence[Task]) -> RecMetricModule:
    """A RecMetricModule with one ``RecTaskInfo`` per task: AUC / NE / calibration of the binary ones, MSE of the others.

    Args:
        env (DistEnv): ranks and device.
        local_batch_size (int): rows per update on this rank.
        total_rows (int): rows in the evaluation set across all ranks (the AUC window holds them all).
        tasks (Sequence[Task]): the run's tasks.

    Returns:
        RecMetricModule: update with ``{"prediction/<task>", "label/<task>", "weight/<task>"}`` tensors.
    """
    window = max(total_rows, local_batch_size * env.world_size)
    infos = [_task_info(t) for t in tasks]
    binary = [info for info, t in zip(infos, tasks) if t.binary]
    regression = [info for info, t in zip(infos, tasks) if not t.binary]
    metrics: Dict[RecMetricEnum, RecMetricDef] = {}
    if binary:
        for m in (RecMetricEnum.AUC, RecMetricEnum.CALIBRATION):
            metrics[m] = RecMetricDef(rec_tasks=binary, window_size=window)
        metrics[RecMetricEnum.NE] = RecMetricDef(rec_tasks=binary, window_size=window,
                                                 arguments={"include_logloss": True})
    if regression:
        metrics[RecMetricEnum.MSE] = RecMetricDef(rec_tasks=regression, window_size=window)
    config = MetricsConfig(rec_tasks=infos, rec_metrics=metrics, rec_compute_mode=RecComputeMode.UNFUSED_TASKS_COMPUTATION)
    return generate_metric_module(RecMetricModule, metrics_config=config, batch_size=local_batch_size,
                                  world_size=env.world_size, my_rank=env.rank, state_metrics_mapping={},
                                  device=env.device, process_group=dist.GroupMember.WORLD)


def _task_update(outputs: torch.Tensor, labels: torch.Tensor, tasks: Sequence[Task]) -> Dict[str, torch.Tensor]:
    """The metric module's update of one batch: per task its probabilities (binary) or values, labels and space."""
    update: Dict[str, torch.Tensor] = {}
    for i, task in enumerate(tasks):
        out = outputs[:, i]
        update[f"prediction/{task.name}"] = torch.sigmoid(out) if task.binary else out
        update[f"label/{task.name}"] = labels[:, i]
        update[f"weight/{task.name}"] = task_space(labels, tasks, i).float()
    return update


def _task_results(out: Any, tasks: Sequence[Task], rows: Dict[str, int]) -> Dict[str, Dict[str, float]]:
    """``{task: {auc, ne, logloss, calibration, rows}}`` (binary) or ``{task: {mse, rows}}`` from ``compute()``."""
    results: Dict[str, Dict[str, float]] = {}
    for task in tasks:
        if task.binary:
            per = {name: float(out[key.replace("-ctr|", f"-{task.name}|")]) for name, key in _KEYS.items()}
            per["logloss"] *= math.log(2.0)  # bits -> nats, as for one task
        else:
            per = {"mse": float(out[f"mse-{task.name}|lifetime_mse"])}
        per["rows"] = rows[task.name]
        results[task.name] = per
    return results


def select_metrics(per_task: Dict[str, Dict[str, float]], tasks: Sequence[Task], chosen: str) -> Dict[str, float]:
    """The top-level metrics: those of task ``chosen``, or (``"mean"``) their task-weighted mean over the binary tasks.

    Args:
        per_task (Dict[str, Dict[str, float]]): the per-task metrics.
        tasks (Sequence[Task]): the run's tasks (their weights weigh the mean).
        chosen (str): a binary task's name or ``"mean"`` (see :func:`~torchrec_kd.training.selection.selection_task`).

    Returns:
        Dict[str, float]: ``auc``, ``ne``, ``logloss``, ``calibration``.
    """
    if chosen != MEAN:
        return {k: per_task[chosen][k] for k in _KEYS}
    binary = [t for t in tasks if t.binary]
    weights = [t.weight for t in binary]
    if sum(weights) <= 0:  # every binary task weighs 0 in the loss: an unweighted mean still selects
        weights = [1.0] * len(binary)
    total = sum(weights)
    return {k: sum(w * per_task[t.name][k] for w, t in zip(weights, binary)) / total for k in _KEYS}


@torch.no_grad()
def evaluate(score: Callable[[Batch], torch.Tensor], batches: Iterable[Batch], env: DistEnv,
             local_batch_size: int, total_rows: int, tasks: Optional[Sequence[Task]] = None,
             select: Optional[str] = None) -> Dict[str, Any]:
    """Score every batch and compute global metrics.

    Args:
        score (Callable[[Batch], Tensor]): returns logits [b] (one task) or outputs [b, T] (one column per
            task: a logit, or a value for a regression task) for a batch already on the device.
        batches (Iterable[Batch]): this rank's share of the evaluation set.
        env (DistEnv): ranks and device.
        local_batch_size (int): rows per batch on this rank.
        total_rows (int): rows across ranks (sizes the AUC window).
        tasks (Optional[Sequence[Task]]): the run's tasks (``core.tasks.run_tasks``); None or one task: the
            single-task metrics, as always.
        select (Optional[str]): ``train.early_stopping.task``: the task whose metrics are the top-level ones
            (None: the first task; ``"mean"``: the task-weighted mean over the binary tasks).

    Returns:
        Dict[str, Any]: ``auc``, ``ne``, ``logloss``, ``calibration`` and ``rows`` (every row scored); with two
        or more tasks also ``tasks`` (``{name: {auc, ne, logloss, calibration, rows}}`` or ``{name: {mse, rows}}``,
        rows = the rows in the task's space) and ``selection_task``.
    """
    if tasks is not None and len(tasks) > 1:
        return _evaluate_tasks(score, batches, env, local_batch_size, total_rows, list(tasks), select)
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


def _evaluate_tasks(score: Callable[[Batch], torch.Tensor], batches: Iterable[Batch], env: DistEnv,
                    local_batch_size: int, total_rows: int, tasks: List[Task], select: Optional[str]) -> Dict[str, Any]:
    """:func:`evaluate` of a multi-task run (outputs and labels ``[b, T]``)."""
    chosen = selection_task(tasks, select)  # a bad choice fails before any row is scored
    module = make_task_metric_module(env, local_batch_size, total_rows, tasks)
    counts = torch.zeros(len(tasks) + 1, dtype=torch.float64, device=env.device)  # rows in each space, all rows
    for batch in batches:
        batch = batch.to(env.device)
        labels = batch.labels.float()
        outputs = score(batch).float()
        if outputs.dim() != 2 or outputs.shape != labels.shape:
            raise ValueError(f"a {len(tasks)}-task run's scorer must return [b, {len(tasks)}] outputs "
                             f"(one column per task), got {tuple(outputs.shape)} for labels {tuple(labels.shape)}")
        update = _task_update(outputs, labels, tasks)
        module.update(update)
        counts[:-1] += torch.stack([update[f"weight/{t.name}"].sum().double() for t in tasks])
        counts[-1] += labels.shape[0]
    out = module.compute()  # collective: every rank calls it; AUC lands on rank 0
    dist.all_reduce(counts)
    rows = {t.name: int(round(float(c))) for t, c in zip(tasks, counts[:-1])}
    result: Dict[str, Any] = {}
    if env.is_main:
        out = out.resolve() if hasattr(out, "resolve") else out
        per_task = _task_results(out, tasks, rows)
        result = {**select_metrics(per_task, tasks, chosen), "rows": int(counts[-1].item()),
                  "selection_task": chosen, "tasks": per_task}
    shared = [result]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


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
    """How the recipes score an evaluation batch with ``model``: logits [B] (or [B, T]) of the trained model alone.

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
                   total_rows: Optional[int] = None, tasks: Optional[Sequence[Task]] = None,
                   select: Optional[str] = None) -> Dict[str, Any]:
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
        tasks (Optional[Sequence[Task]]): a multi-task run's tasks (``core.tasks.run_tasks(cfg)``); None: one task.
        select (Optional[str]): ``train.early_stopping.task`` (see :func:`evaluate`).

    Returns:
        Dict[str, Any]: ``auc``, ``ne``, ``logloss`` (nats), ``calibration`` and ``rows``, the same on
        every rank (with several tasks also ``tasks`` and ``selection_task``, as :func:`evaluate`).
    """
    model = target.detach() if callable(getattr(target, "detach", None)) and hasattr(target, "progress") else target
    env = _env()
    stream = iter(batches)
    first = next(stream, None)
    local_batch = int(first.labels.shape[0]) if first is not None else 1  # rows ([B] or [B, T] labels)
    stream = itertools.chain([first], stream) if first is not None else iter(())
    was_training = model.training
    model.eval()
    try:
        return evaluate(scorer(model, io), stream, env, local_batch,
                        WHOLE_SET_ROWS if total_rows is None else int(total_rows), tasks=tasks, select=select)
    finally:
        model.train(was_training)

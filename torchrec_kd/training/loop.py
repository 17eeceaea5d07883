"""The training loop: ``TrainPipelineSparseDist.progress`` with progress and throughput.

The pipeline overlaps the next batch's input distribution (the KJT all-to-all) with
the current forward/backward; this loop only drives it, logs, and times it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from torchrec_kd.distributed.env import DistEnv
from torchrec_kd.training.guard import NonFiniteGuard

logger = logging.getLogger(__name__)

# Steps excluded from throughput: the pipeline fills and allocators warm up.
WARMUP_STEPS = 3


@dataclass
class TrainStats:
    """What a training run measured."""

    steps: int = 0
    samples_per_s: float = 0.0
    losses: List[float] = field(default_factory=list)  # every log_every steps
    loss_steps: List[int] = field(default_factory=list)
    evals: List[Dict[str, float]] = field(default_factory=list)


def train(pipeline: TrainPipelineSparseDist, batches: Iterator[Batch], steps: int, env: DistEnv,
          global_batch_size: int, log_every: int = 100, eval_every: int = 0,
          on_eval: Optional[Callable[[int], Dict[str, float]]] = None, desc: str = "train",
          start_step: int = 0, stats: Optional[TrainStats] = None, checkpoint_every: int = 0,
          on_checkpoint: Optional[Callable[[int, TrainStats], None]] = None,
          guard: Optional[NonFiniteGuard] = None, writer: Optional[Any] = None) -> TrainStats:
    """Run pipelined training steps ``start_step + 1 … steps``.

    Args:
        pipeline (TrainPipelineSparseDist): wraps the sharded model and optimizer.
        batches (Iterator[Batch]): this rank's batches from global batch ``start_step`` on.
        steps (int): total optimizer steps of the run.
        env (DistEnv): rank 0 shows the progress bar.
        global_batch_size (int): samples per step across ranks (for throughput).
        log_every (int): log the loss every N steps.
        eval_every (int): call ``on_eval(step)`` every N steps (0: never).
        on_eval (Optional[Callable]): evaluates the model (the loop detaches the pipeline around it).
        desc (str): progress-bar label.
        start_step (int): steps already done (when resuming).
        stats (Optional[TrainStats]): what the earlier part of a resumed run logged.
        checkpoint_every (int): call ``on_checkpoint(step, stats)`` every N steps (0: never).
        on_checkpoint (Optional[Callable]): saves the training state.
        guard (Optional[NonFiniteGuard]): checked at log and checkpoint steps.
        writer (Optional[SummaryWriter]): TensorBoard writer for the loss and validation curves (rank 0).

    Returns:
        TrainStats: throughput, logged losses and evaluations.
    """
    stats = stats or TrainStats()
    bar = tqdm(total=steps, initial=start_step, desc=desc, disable=not env.is_main, mininterval=2.0)
    start = time.perf_counter()
    timed_from = None
    paused_seconds = 0.0
    first = start_step + 1
    for step in range(first, steps + 1):
        out = pipeline.progress(batches)
        if step == start_step + WARMUP_STEPS:
            timed_from = time.perf_counter()
        if guard is not None and (step % log_every == 0 or step == steps or
                                  (checkpoint_every and step % checkpoint_every == 0)):
            guard.check(step)
        if step % log_every == 0 or step == steps:
            loss = float(out[0])  # host sync, every log_every steps only
            stats.losses.append(loss)
            if writer is not None:
                writer.add_scalar("train/loss", loss, step)
            stats.loss_steps.append(step)
            bar.set_postfix(loss=f"{loss:.4f}")
            logger.info("%s step %d/%d loss %.5f", desc, step, steps, loss)
        if on_eval is not None and eval_every and step % eval_every == 0 and step < steps:
            t0 = time.perf_counter()
            model = pipeline.detach()
            stats.evals.append({"step": step, **on_eval(step)})
            if writer is not None:
                for key in ("auc", "ne", "logloss"):
                    writer.add_scalar(f"val/{key}", stats.evals[-1][key], step)
                writer.flush()
            model.train()
            pipeline.attach(model)
            paused_seconds += time.perf_counter() - t0
        if on_checkpoint is not None and checkpoint_every and step % checkpoint_every == 0 and step < steps:
            t0 = time.perf_counter()
            stats.steps = step
            on_checkpoint(step, stats)
            paused_seconds += time.perf_counter() - t0
        bar.update(1)
    bar.close()
    end = time.perf_counter()
    run_steps = steps - start_step
    timed_steps = run_steps - WARMUP_STEPS if timed_from is not None else run_steps
    elapsed = end - (timed_from if timed_from is not None else start) - paused_seconds
    stats.steps = steps
    stats.samples_per_s = timed_steps * global_batch_size / max(elapsed, 1e-9)
    return stats

"""The training loop: ``TrainPipelineSparseDist.progress`` with progress and throughput.

The pipeline overlaps the next batch's input distribution (the KJT all-to-all) with
the current forward/backward; this loop only drives it, logs, and times it.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from torchrec_kd.core.console import progress_bar
from torchrec_kd.distributed.env import DistEnv
from torchrec_kd.training.guard import NonFiniteGuard
from torchrec_kd.training.selection import ModelSelector

logger = logging.getLogger(__name__)

# Steps excluded from throughput: the pipeline fills and allocators warm up.
WARMUP_STEPS = 3


@dataclass
class TrainStats:
    """What a training run measured."""

    steps: int = 0
    samples_per_s: Optional[float] = None  # None: no step past the warm-up was timed (a run too short to say)
    losses: List[float] = field(default_factory=list)  # every log_every steps
    loss_steps: List[int] = field(default_factory=list)
    evals: List[Dict[str, float]] = field(default_factory=list)
    # model selection so far (:class:`~torchrec_kd.training.selection.SelectionState` as a dict)
    selection: Dict[str, Any] = field(default_factory=dict)


def train(pipeline: TrainPipelineSparseDist, batches: Iterator[Batch], steps: int, env: DistEnv,
          global_batch_size: int, log_every: int = 100, eval_every: int = 0,
          on_eval: Optional[Callable[[int], Dict[str, float]]] = None, desc: str = "train",
          start_step: int = 0, stats: Optional[TrainStats] = None, checkpoint_every: int = 0,
          on_checkpoint: Optional[Callable[[int, TrainStats], None]] = None,
          guard: Optional[NonFiniteGuard] = None, writer: Optional[Any] = None,
          selector: Optional[ModelSelector] = None, on_best: Optional[Callable[[int], None]] = None,
          make_pipeline: Optional[Callable[[], TrainPipelineSparseDist]] = None,
          on_step: Optional[Callable[[int], None]] = None) -> TrainStats:
    """Run pipelined training steps ``start_step + 1 … steps``, or until early stopping.

    Args:
        pipeline (TrainPipelineSparseDist): wraps the sharded model and optimizer.
        batches (Iterator[Batch]): this rank's batches from global batch ``start_step`` on.
        steps (int): total optimizer steps of the run.
        env (DistEnv): rank 0 shows the progress bar.
        global_batch_size (int): samples per step across ranks (for throughput).
        log_every (int): log the loss every N steps (0: only at the last step).
        eval_every (int): call ``on_eval(step)`` every N steps and at the last step (0: never).
        on_eval (Optional[Callable]): validates the model (the loop detaches the pipeline around it).
        desc (str): progress-bar label.
        start_step (int): steps already done (when resuming).
        stats (Optional[TrainStats]): what the earlier part of a resumed run logged.
        checkpoint_every (int): call ``on_checkpoint(step, stats)`` every N steps (0: never).
        on_checkpoint (Optional[Callable]): saves the training state.
        guard (Optional[NonFiniteGuard]): checked at log and checkpoint steps.
        writer (Optional[SummaryWriter]): TensorBoard writer for the loss and validation curves (rank 0).
        selector (Optional[ModelSelector]): sees every validation; training stops when it says so.
        on_best (Optional[Callable[[int], None]]): keeps a copy of the model when a
            validation is the best so far (called with the pipeline detached).
        make_pipeline (Optional[Callable[[], TrainPipelineSparseDist]]): a new pipeline over
            the same model and optimizer, to continue after a validation (see below);
            None: re-attach the detached one.
        on_step (Optional[Callable[[int], None]]): called with the 0-based optimizer step before
            each step's forward (the loss terms' weight and temperature schedules follow it).

    A validation detaches the pipeline and calls the model directly. ``attach`` restarts
    the input distribution of the next batch, which is already in flight, and with sharded
    ``EmbeddingCollection``s (quantization-aware students) the ranks' all-to-alls then
    disagree; so the loop continues with a new pipeline fed the in-flight batches first.

    Returns:
        TrainStats: throughput (None when no step past the first WARMUP_STEPS ran), logged losses,
        evaluations, steps trained and the selection state.
    """
    stats = stats or TrainStats()
    bar = progress_bar(steps, desc, env.is_main, initial=start_step)
    timed_from = None
    paused_seconds = 0.0
    first = start_step + 1
    step = start_step
    stop = False
    for step in range(first, steps + 1):
        if on_step is not None:
            on_step(step - 1)  # progress() runs this step's forward: its schedules are at step - 1
        out = pipeline.progress(batches)
        if step == start_step + WARMUP_STEPS:
            timed_from = time.perf_counter()
            paused_seconds = 0.0  # a validation during the warm-up is not inside the timed span
        logs = (log_every and step % log_every == 0) or step == steps
        if guard is not None and (logs or (checkpoint_every and step % checkpoint_every == 0)):
            guard.check(step)
        if logs:
            loss = float(out[0])  # host sync, every log_every steps only
            stats.losses.append(loss)
            if writer is not None:
                writer.add_scalar("train/loss", loss, step)
            stats.loss_steps.append(step)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        validates = on_eval is not None and eval_every and (step % eval_every == 0 or step == steps)
        if logs or validates:  # the step's console line (built only for steps that print one)
            line = f"{desc} step {step}/{steps}" + (f" loss {stats.losses[-1]:.5f}" if logs else "")
        if validates:
            t0 = time.perf_counter()
            model = pipeline.detach()
            metrics = on_eval(step)
            stats.evals.append({"step": step, **metrics})
            # a selection metric of its own (a retrieval model's recall@20) is shown and logged beside AUC / NE
            chosen = selector.metric if selector is not None and selector.metric not in ("auc", "ne", "logloss") else None
            if writer is not None:
                for key in ("auc", "ne", "logloss") + ((chosen,) if chosen in metrics else ()):
                    writer.add_scalar(f"val/{key}", metrics[key], step)
                writer.flush()
            line += f" | val auc {metrics['auc']:.4f} ne {metrics['ne']:.4f}"
            if chosen in metrics:
                line += f" {chosen} {metrics[chosen]:.4f}"
            if selector is not None:
                if selector.observe(step, metrics) and on_best is not None:
                    on_best(step)
                best = selector.state.best.get(selector.metric)
                line += f" (best {selector.metric} {best:.4f} at {selector.state.best_step})" if best is not None else ""
                stop = selector.should_stop and step < steps
                selector.state.stopped_early = stop
                stats.selection = selector.to_dict()
                if stop:
                    line += (f"; early stop: validation {selector.metric} not better for "
                             f"{selector.state.evals_since_best} validations")
            model.train()
            if make_pipeline is None:
                pipeline.attach(model)
            else:  # the batches already read from the stream come first
                batches = itertools.chain(list(pipeline.batches), batches)
                pipeline = make_pipeline()
            paused_seconds += time.perf_counter() - t0
        if logs or validates:
            logger.info("%s", line)
        if stop:
            bar.update(1)
            break
        if on_checkpoint is not None and checkpoint_every and step % checkpoint_every == 0 and step < steps:
            t0 = time.perf_counter()
            stats.steps = step
            on_checkpoint(step, stats)
            paused_seconds += time.perf_counter() - t0
        bar.update(1)
    bar.close()
    end = time.perf_counter()
    timed_steps = step - start_step - WARMUP_STEPS
    stats.steps = step
    if timed_from is not None and timed_steps > 0:
        stats.samples_per_s = timed_steps * global_batch_size / max(end - timed_from - paused_seconds, 1e-9)
    # else nothing past the warm-up ran: no figure (not 0, nor one of warm-up steps); a resumed
    # run keeps the one its earlier part measured
    return stats

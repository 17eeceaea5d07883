"""What every pipelined recipe shares: train through the pipeline (resumably) with model
selection on the validation split, evaluate the kept model, report an entry.

The subclass contract is :class:`PipelinedRun`'s abstract methods:

- ``setup()``: calls :meth:`setup_run`, builds ``model`` (a DMP whose forward returns
  TorchRec's ``(loss, (loss, logits, …))`` for the pipeline) and ``optimizer``, then calls
  :meth:`make_pipeline`;
- ``score(batch)``: the trained model's outputs on an evaluation batch (logits ``[B]``, or
  ``[B, T]`` in a multi-task run), named, not read by position from the training forward;
- ``save(metrics)``: checkpoint the model and write its ``metrics.json`` entry (:meth:`entry`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim.keyed import KeyedOptimizer

from torchrec_kd.checkpoint.model_io import MODEL_DIR, load_module
from torchrec_kd.checkpoint.training_state import TrainingCheckpointer
from torchrec_kd.config import RunConfig, config_to_dict
from torchrec_kd.core.budget import eval_interval, max_steps
from torchrec_kd.core.fingerprint import describe_change, digest
from torchrec_kd.core.layout import BEST_DIR, META_FILE, RunLayout
from torchrec_kd.core.tasks import is_multitask, run_tasks
from torchrec_kd.data import build_data
from torchrec_kd.distributed.env import DistEnv, init_distributed
from torchrec_kd.errors import ConfigError
from torchrec_kd.training.evaluate import evaluate
from torchrec_kd.training.guard import NonFiniteGuard, nonfinite_entry
from torchrec_kd.training.loop import TrainStats, train
from torchrec_kd.training.retrieval_entry import retrieval_metrics, selection_metric
from torchrec_kd.training.selection import ModelSelector, selection_task

logger = logging.getLogger(__name__)



def reset_peak_rss() -> None:
    """Restart this process's peak-RSS counter (Linux >= 4.0: ``VmHWM``), so that a model trained
    after others in the same process (``experiment``) records its own peak, not theirs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux: the peak stays the process's since it started
        pass


def peak_rss_gib(device: torch.device = torch.device("cpu")) -> float:
    """Largest peak resident memory of any rank's process since :func:`reset_peak_rss`, in GiB (a collective).

    Memory the process still holds from earlier steps counts; their own peaks do not.

    Args:
        device (torch.device): the process group's device (nccl reduces CUDA tensors).

    Returns:
        float: GiB, the maximum over ranks.
    """
    import resource

    import torch.distributed as dist

    # ru_maxrss (KiB) follows the counter clear_refs resets while the process lives
    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20], device=device)
    if dist.is_initialized():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return round(float(peak), 3)


class PipelinedRun(ABC):
    """Base of the training recipes (subclasses implement :meth:`setup`, :meth:`score` and :meth:`save`).

    Args:
        cfg (RunConfig): the validated run config.
        name (str): progress-bar label and name of the training-state directory.
        entry_name (str): the model's key in ``metrics.json`` and its TensorBoard run.
        trained_prefix (str): state-dict prefix of the model being trained (what model
            selection keeps and restores).
        data_role (str): "teacher" or "student": which train split it reads.
    """

    def __init__(self, cfg: RunConfig, name: str, entry_name: str, trained_prefix: str = "",
                 data_role: str = "student") -> None:
        self.cfg = cfg
        self.name = name
        self.entry_name = entry_name
        self.trained_prefix = trained_prefix
        self.data_role = data_role
        self.selector = ModelSelector(cfg.train.early_stopping)
        self.tasks = run_tasks(cfg)
        # the task whose validation metric selects (multi-task runs; checked before any training)
        self.selection_task = selection_task(self.tasks, cfg.train.early_stopping.task) if is_multitask(self.tasks) else None
        self.fingerprint: Dict[str, Any] = {}  # set by the subclass's setup (what made this run)
        self.env: Optional[DistEnv] = None
        self.model: Optional[DistributedModelParallel] = None
        self.optimizer: Optional[KeyedOptimizer] = None
        self.pipeline: Optional[TrainPipelineSparseDist] = None
        self.guard: Optional[NonFiniteGuard] = None
        self.local_batch = 0
        self.stats = TrainStats()

    @abstractmethod
    def setup(self) -> None:
        """Process group, data, model (``self.model``), optimizer and pipeline (see the module docstring)."""

    @abstractmethod
    def score(self, batch: Batch) -> torch.Tensor:
        """Outputs of the trained model alone on an evaluation batch already on the device.

        Args:
            batch (Batch): an evaluation batch.

        Returns:
            Tensor: logits ``[B]`` (one task) or ``[B, T]`` (a column per task: logit, or value for regression).
        """

    @abstractmethod
    def scored_model(self) -> torch.nn.Module:
        """The model :meth:`score` runs, unwrapped (sharded in place): what a retrieval evaluation calls towers on."""

    @abstractmethod
    def save(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        """Checkpoint the trained model and merge its :meth:`entry` into ``metrics.json``; return the entry."""

    @property
    def steps(self) -> int:
        """Maximum training steps of this recipe (:func:`~torchrec_kd.core.budget.max_steps` of its data role)."""
        return max_steps(self.cfg.train, self.data, self.cfg.data.batch_size, self.data_role)

    def setup_run(self) -> DistEnv:
        """Process group, seed, data source and per-rank batch size: the first steps of every ``setup``."""
        self.env = init_distributed(self.cfg.distributed)
        reset_peak_rss()  # this model's peak_rss_gib: not that of a step before it in the same process
        torch.manual_seed(self.cfg.seed)
        self.data = build_data(self.cfg.data, self.cfg.seed, self.data_role, tasks=self.cfg.tasks)
        self.local_batch = self.cfg.data.batch_size // self.env.world_size
        # fail before any model is built: the first batch of each split must be readable
        for split in ("train", "val"):
            next(iter(self.data.batches(split, self.cfg.data.batch_size, self.env.rank, self.env.world_size,
                                        num_batches=1)), None)
        return self.env

    def make_pipeline(self) -> TrainPipelineSparseDist:
        """``TrainPipelineSparseDist`` over the model, with the non-finite-loss guard as its forward.

        Called again after each validation (the loop continues on a new pipeline); the guard
        and its count of non-finite steps carry over.
        """
        assert self.env is not None and self.model is not None and self.optimizer is not None
        if self.guard is None:
            self.guard = NonFiniteGuard(self.model, self.cfg.train.on_nonfinite)
        self.pipeline = TrainPipelineSparseDist(self.model, self.optimizer, self.env.device, custom_model_fwd=self.guard)
        return self.pipeline

    @property
    def checkpointer(self) -> TrainingCheckpointer:
        """Where this recipe's resumable training state lives."""
        return TrainingCheckpointer(RunLayout(self.cfg.out_dir).train_state(self.name), self.cfg.train.keep_checkpoints)

    @property
    def best_dir(self) -> Path:
        """Where the best validated weights so far are kept."""
        return self.checkpointer.root / BEST_DIR

    def _resume(self) -> int:
        """Load the newest complete training state if there is one; return its step.

        A fresh start drops a best checkpoint left by an earlier run; a resumed one keeps
        it with the selection state (best step, patience count) it was saved with.
        """
        ckpt = self.checkpointer
        ckpt.clean_incomplete()
        latest = ckpt.latest() if self.cfg.train.resume else None
        if latest is None:  # starting over: nothing of an earlier run may be picked up later
            if self.env is not None and self.env.is_main:
                shutil.rmtree(self.best_dir, ignore_errors=True)
                for old in ckpt.checkpoints():
                    shutil.rmtree(old, ignore_errors=True)
            dist.barrier()
            return 0
        self._check_same_run(latest)
        meta = ckpt.load(latest, self.model, self.optimizer)
        self.stats = TrainStats(**meta["stats"])
        self.selector = ModelSelector(self.cfg.train.early_stopping, self.stats.selection or None)
        return int(meta["step"])

    def _check_same_run(self, latest: Path) -> None:
        """Refuse to resume training state that another config made (its fingerprint, budget aside, differs).

        Raises:
            ConfigError: naming the checkpoint, what changed and what to do.
        """
        try:
            saved = json.loads((latest / META_FILE).read_text()).get("fingerprint") or {}
        except (OSError, ValueError):
            return  # unreadable: the checkpointer's verification names the file
        # the budget is not compared: the first steps of a run do not depend on its maximum,
        # so a run may be resumed with a larger (or smaller) one and equals a fresh run of it
        old_inputs = {k: v for k, v in saved.get("inputs", {}).items() if k != "budget"}
        new_inputs = {k: v for k, v in self.fingerprint.get("inputs", {}).items() if k != "budget"}
        if saved.get("inputs") and digest(old_inputs) == digest(new_inputs):
            return
        change = describe_change(old_inputs, new_inputs) or ["(unrecorded)"]
        raise ConfigError(f"{latest} is the training state of a run with another config ({'; '.join(change)}); "
                          f"pass train.resume=false to start this one over, or use another --output-dir")

    def _keep_best(self, step: int) -> None:
        """Save the trained model's weights as the best so far (collective; atomic rename by rank 0)."""
        assert self.model is not None and self.env is not None
        best = self.best_dir
        tmp = best.with_name(".tmp-" + BEST_DIR)
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        state = {k: v for k, v in self.model.state_dict().items() if k.startswith(self.trained_prefix)}
        dcp.save(state, checkpoint_id=str(tmp / MODEL_DIR))
        dist.barrier()
        if self.env.is_main:
            (tmp / "step").write_text(str(step))
            shutil.rmtree(best, ignore_errors=True)
            os.replace(tmp, best)  # the commit point
        dist.barrier()

    def _restore_best(self) -> None:
        """Load the best validated weights back into the model, if they are not the last step's."""
        best_step = self.selector.state.best_step
        if best_step is None or best_step == self.stats.steps:
            return
        saved = (self.best_dir / "step").read_text().strip() if (self.best_dir / "step").is_file() else None
        if saved != str(best_step):
            raise ConfigError(f"{self.best_dir} holds step {saved}, but model selection chose step {best_step}; "
                              f"delete {self.checkpointer.root} and run again")
        assert self.model is not None
        load_module(self.model, self.best_dir, model_prefix=self.trained_prefix, ckpt_prefix=self.trained_prefix)
        logger.info("%s: kept the best validated model, step %d of %d trained (validation %s %.5f)", self.name,
                    best_step, self.stats.steps, self.selector.metric, self.selector.state.best[self.selector.metric])

    def _checkpoint(self, step: int, stats: TrainStats) -> None:
        self.checkpointer.save(self.model, self.optimizer, step,
                               {"stats": dataclasses.asdict(stats), "config": config_to_dict(self.cfg),
                                "fingerprint": self.fingerprint})

    def train(self) -> TrainStats:
        """Train up to ``steps`` pipelined steps, validating every ``train.eval_every`` and at the end,
        stopping early per ``train.early_stopping``, checkpointing every ``train.checkpoint_every``
        and resuming from the newest checkpoint; the model ends as its best validated step."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None and self.pipeline is not None
        start = self._resume()
        self.selector.select_on(selection_metric(cfg, self.scored_model()))  # a retrieval model: recall@K
        self.model.train()
        writer = None
        if env.is_main:  # live curves; the report adds test metrics to the same run
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(RunLayout(cfg.out_dir).tensorboard / self.entry_name))
        batches = self.train_batches(start)
        eval_every = eval_interval(cfg.train, self.data, cfg.data.batch_size)  # null: every half epoch
        self.stats = train(self.pipeline, batches, self.steps, env, cfg.data.batch_size, cfg.train.log_every,
                           eval_every, on_eval=lambda step: self.evaluate("val"), desc=self.name,
                           start_step=start, stats=self.stats, checkpoint_every=cfg.train.checkpoint_every,
                           on_checkpoint=self._checkpoint, guard=self.guard, writer=writer,
                           selector=self.selector, on_best=self._keep_best, make_pipeline=self.make_pipeline,
                           on_step=self.before_step)
        if writer is not None:
            writer.close()
        self.pipeline.detach()  # back to the plain model for evaluation and saving
        self._restore_best()
        return self.stats

    def before_step(self, step: int) -> None:
        """Called with the 0-based optimizer step before each training step (nothing by default)."""
        del step  # a subclass with step schedules (DistillRun's loss terms) follows it

    def train_batches(self, start: int) -> Iterator[Batch]:
        """This rank's training batches from step ``start`` on (a subclass may decorate them)."""
        assert self.env is not None
        return iter(self.data.batches("train", self.cfg.data.batch_size, self.env.rank, self.env.world_size,
                                      num_batches=self.steps, start=start))

    def evaluate(self, split: str = "test") -> Dict[str, Any]:
        """AUC / NE / log loss / calibration of the trained model's logits on ``split`` (per task, and the
        selection task's at the top, in a multi-task run: :func:`~torchrec_kd.training.evaluate.evaluate`)."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None
        self.model.eval()
        n = self.data.num_batches(split, cfg.data.batch_size) or 0
        batches = self.data.batches(split, cfg.data.batch_size, env.rank, env.world_size)
        metrics = evaluate(self.score, batches, env, self.local_batch, n * cfg.data.batch_size,
                           tasks=self.tasks, select=cfg.train.early_stopping.task)
        if cfg.data.retrieval is not None:  # GAUC; a model with towers: recall@K over the whole corpus
            metrics.update(retrieval_metrics(self.scored_model(), self.score, self.data, split, cfg, env))
        return metrics

    def selection(self) -> Dict[str, Any]:
        """Which model was kept: ``best_step`` (the last step without validation), its validation
        metrics ``best_val``, ``steps`` trained of ``max_steps``, ``stopped_early``, ``select_metric``
        and, in a multi-task run, ``selection_task`` (the task whose ``select_metric`` chose, or "mean")."""
        sel = self.selector.state
        chosen = {"best_step": sel.best_step if sel.best_step is not None else self.stats.steps,
                  "best_val": dict(sel.best) or None, "steps": self.stats.steps, "max_steps": self.steps,
                  "stopped_early": sel.stopped_early, "select_metric": self.selector.metric,
                  "epochs": self._epochs_seen()}
        if self.selection_task is not None:
            chosen["selection_task"] = self.selection_task
        return chosen

    def _epochs_seen(self) -> Optional[float]:
        per_epoch = self.data.num_batches("train", self.cfg.data.batch_size)
        return round(self.stats.steps / per_epoch, 2) if per_epoch else None

    def entry(self, metrics: Dict[str, Any], params: int, embedding_bytes: int) -> Dict[str, Any]:
        """The ``metrics.json`` entry of this run (a multi-task run's carries ``tasks`` and ``selection_task``)."""
        assert self.env is not None
        flags = nonfinite_entry(self.name, metrics, self.guard)
        return {**metrics, **flags, "fingerprint": self.fingerprint.get("digest"), "base": self.fingerprint.get("base"),
                "params": params, "embedding_bytes": embedding_bytes, "peak_rss_gib": peak_rss_gib(self.env.device),
                "train_samples_per_s": self.stats.samples_per_s, "world_size": self.env.world_size,
                **self.selection(), "loss_curve": list(zip(self.stats.loss_steps, self.stats.losses)),
                "val_curve": self.stats.evals}

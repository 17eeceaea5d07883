"""What every pipelined recipe shares: train through the pipeline (resumably), evaluate,
report an entry.

Subclasses' ``setup()`` calls :meth:`setup_run`, builds ``model`` (a DMP whose forward
returns ``(loss, (loss, logits, …))``) and ``optimizer``, then calls :meth:`make_pipeline`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, Optional

import torch
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim.keyed import KeyedOptimizer

from torchrec_kd.config import RunConfig, config_to_dict
from torchrec_kd.data import build_data
from torchrec_kd.distributed.env import DistEnv, init_distributed
from torchrec_kd.report import TENSORBOARD_DIR
from torchrec_kd.training.checkpointing import TrainingCheckpointer
from torchrec_kd.training.evaluate import evaluate
from torchrec_kd.training.guard import NonFiniteGuard
from torchrec_kd.training.loop import TrainStats, train

TRAIN_STATE_DIR = "train_state"


def peak_rss_gib(device: torch.device = torch.device("cpu")) -> float:
    """Largest peak resident memory of any rank's process so far, in GiB (a collective).

    Args:
        device (torch.device): the process group's device (nccl reduces CUDA tensors).
    """
    import resource

    import torch.distributed as dist

    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20], device=device)  # Linux: KiB
    if dist.is_initialized():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return round(float(peak), 3)


class PipelinedRecipe:
    """Base of the training recipes.

    Args:
        cfg (RunConfig): the validated run config.
        name (str): progress-bar label and name of the training-state directory.
        entry_name (str): the model's key in ``metrics.json`` and its TensorBoard run.
    """

    def __init__(self, cfg: RunConfig, name: str, entry_name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.entry_name = entry_name
        self.env: Optional[DistEnv] = None
        self.model: Optional[DistributedModelParallel] = None
        self.optimizer: Optional[KeyedOptimizer] = None
        self.pipeline: Optional[TrainPipelineSparseDist] = None
        self.guard: Optional[NonFiniteGuard] = None
        self.local_batch = 0
        self.stats = TrainStats()

    @property
    def steps(self) -> int:
        """Training steps of this recipe (``train.steps`` unless a subclass says otherwise)."""
        return self.cfg.train.steps

    def setup_run(self) -> DistEnv:
        """Process group, seed, data source and per-rank batch size: the first steps of every ``setup``."""
        self.env = init_distributed(self.cfg.distributed)
        torch.manual_seed(self.cfg.seed)
        self.data = build_data(self.cfg.data, self.cfg.seed)
        self.local_batch = self.cfg.data.batch_size // self.env.world_size
        return self.env

    def make_pipeline(self) -> None:
        """``TrainPipelineSparseDist`` over the model, with the non-finite-loss guard as its forward."""
        assert self.env is not None and self.model is not None and self.optimizer is not None
        self.guard = NonFiniteGuard(self.model, self.cfg.train.on_nonfinite)
        self.pipeline = TrainPipelineSparseDist(self.model, self.optimizer, self.env.device, custom_model_fwd=self.guard)

    @property
    def checkpointer(self) -> TrainingCheckpointer:
        """Where this recipe's resumable training state lives."""
        return TrainingCheckpointer(self.cfg.out_dir / TRAIN_STATE_DIR / self.name, self.cfg.train.keep_checkpoints)

    def _resume(self) -> int:
        """Load the newest complete training state if there is one; return its step."""
        ckpt = self.checkpointer
        ckpt.clean_incomplete()
        latest = ckpt.latest() if self.cfg.train.resume else None
        if latest is None:
            return 0
        meta = ckpt.load(latest, self.model, self.optimizer)
        self.stats = TrainStats(**meta["stats"])
        return int(meta["step"])

    def _checkpoint(self, step: int, stats: TrainStats) -> None:
        self.checkpointer.save(self.model, self.optimizer, step,
                               {"stats": dataclasses.asdict(stats), "config": config_to_dict(self.cfg)})

    def train(self) -> TrainStats:
        """Run ``steps`` pipelined steps on the train stream, validating every ``train.eval_every``,
        checkpointing every ``train.checkpoint_every`` and resuming from the newest checkpoint."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None and self.pipeline is not None
        start = self._resume()
        self.model.train()
        writer = None
        if env.is_main:  # live curves; the report adds test metrics to the same run
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(cfg.out_dir / TENSORBOARD_DIR / self.entry_name))
        batches = self.train_batches(start)
        self.stats = train(self.pipeline, batches, self.steps, env, cfg.data.batch_size, cfg.train.log_every,
                           cfg.train.eval_every, on_eval=lambda step: self.evaluate("val"), desc=self.name,
                           start_step=start, stats=self.stats, checkpoint_every=cfg.train.checkpoint_every,
                           on_checkpoint=self._checkpoint, guard=self.guard, writer=writer)
        if writer is not None:
            writer.close()
        self.pipeline.detach()  # back to the plain model for evaluation and saving
        return self.stats

    def train_batches(self, start: int) -> Iterator[Batch]:
        """This rank's training batches from step ``start`` on (a subclass may decorate them)."""
        assert self.env is not None
        return iter(self.data.batches("train", self.cfg.data.batch_size, self.env.rank, self.env.world_size,
                                      num_batches=self.steps, start=start))

    def score(self, batch: Batch) -> torch.Tensor:
        """Logits [B] of the trained model on an evaluation batch."""
        assert self.model is not None
        # forward returns (loss, (loss, logits, ...)): the trained model's logits come second
        return self.model(batch)[1][1]

    def evaluate(self, split: str = "test") -> Dict[str, float]:
        """AUC / NE / log loss / calibration of the trained model's logits on ``split``."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None
        self.model.eval()
        n = self.data.num_batches(split, cfg.data.batch_size) or 0
        batches = self.data.batches(split, cfg.data.batch_size, env.rank, env.world_size)
        return evaluate(self.score, batches, env, self.local_batch, n * cfg.data.batch_size)

    def entry(self, metrics: Dict[str, float], params: int, embedding_bytes: int) -> Dict[str, Any]:
        """The ``metrics.json`` entry of this run."""
        assert self.env is not None
        return {**metrics, "params": params, "embedding_bytes": embedding_bytes, "peak_rss_gib": peak_rss_gib(self.env.device),
                "train_samples_per_s": self.stats.samples_per_s, "world_size": self.env.world_size,
                "steps": self.stats.steps, "loss_curve": list(zip(self.stats.loss_steps, self.stats.losses)),
                "val_curve": self.stats.evals}

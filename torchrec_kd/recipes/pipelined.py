"""What every pipelined recipe shares: train through the pipeline, evaluate, report an entry.

Subclasses build ``env``, ``data``, ``model`` (a DMP whose forward returns
``(loss, (loss, logits, …))``), ``pipeline`` and ``local_batch`` in ``setup()``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from torchrec_kd.config import RunConfig
from torchrec_kd.distributed.env import DistEnv
from torchrec_kd.training.evaluate import evaluate
from torchrec_kd.training.loop import TrainStats, train


class PipelinedRecipe:
    """Base of the training recipes.

    Args:
        cfg (RunConfig): the validated run config.
        name (str): progress-bar label and log name.
    """

    def __init__(self, cfg: RunConfig, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.env: Optional[DistEnv] = None
        self.model: Optional[DistributedModelParallel] = None
        self.pipeline: Optional[TrainPipelineSparseDist] = None
        self.local_batch = 0
        self.stats = TrainStats()

    @property
    def steps(self) -> int:
        """Training steps of this recipe (``train.steps`` unless a subclass says otherwise)."""
        return self.cfg.train.steps

    def train(self) -> TrainStats:
        """Run ``steps`` pipelined steps on the train stream, validating every ``train.eval_every``."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None and self.pipeline is not None
        self.model.train()
        batches = self.data.batches("train", cfg.data.batch_size, env.rank, env.world_size, num_batches=self.steps)
        self.stats = train(self.pipeline, batches, self.steps, env, cfg.data.batch_size, cfg.train.log_every,
                           cfg.train.eval_every, on_eval=lambda step: self.evaluate("val"), desc=self.name)
        self.pipeline.detach()  # back to the plain model for evaluation and saving
        return self.stats

    def evaluate(self, split: str = "test") -> Dict[str, float]:
        """AUC / NE / log loss / calibration of the trained model's logits on ``split``."""
        cfg, env = self.cfg, self.env
        assert env is not None and self.model is not None
        self.model.eval()
        n = self.data.num_batches(split, cfg.data.batch_size) or 0
        batches = self.data.batches(split, cfg.data.batch_size, env.rank, env.world_size)
        # forward returns (loss, (loss, logits, ...)): the trained model's logits come second
        return evaluate(lambda b: self.model(b)[1][1], batches, env, self.local_batch, n * cfg.data.batch_size)

    def entry(self, metrics: Dict[str, float], params: int, embedding_bytes: int) -> Dict[str, Any]:
        """The ``metrics.json`` entry of this run."""
        assert self.env is not None
        return {**metrics, "params": params, "embedding_bytes": embedding_bytes,
                "train_samples_per_s": self.stats.samples_per_s, "world_size": self.env.world_size,
                "steps": self.stats.steps, "loss_curve": list(zip(self.stats.loss_steps, self.stats.losses)),
                "val_curve": self.stats.evals}

"""Recipe: train a sharded DLRM (the teacher, or the student alone) through ``TrainPipelineSparseDist``.

Example::

    python -m torchrec_kd.cli train-teacher --config configs/dlrm_teacher_synthetic.yaml train.steps=100
    python -m torchrec_kd.cli train-student --config configs/dlrm_teacher_synthetic.yaml
"""

from __future__ import annotations

from typing import Any, Dict

from torchrec_kd.config import RunConfig
from torchrec_kd.training.model_run import TrainModelRun


def run(cfg: RunConfig, role: str = "teacher") -> Dict[str, Any]:
    """Train, evaluate on the test split and save the ``role`` model. Returns its metrics entry."""
    recipe = TrainModelRun(cfg, role)
    recipe.setup()
    recipe.train()
    return recipe.save(recipe.evaluate("test"))

"""Recipe: distill trained teacher(s) into the student inside ``TrainPipelineSparseDist``.

Example::

    python -m torchrec_kd.cli distill --config configs/dlrm_teacher_synthetic.yaml
    python -m torchrec_kd.cli distill-qat --config configs/dlrm_teacher_synthetic.yaml   # int4-aware
    python -m torchrec_kd.cli distill --config … distill.offline=true                  # from score-teacher's cache
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from torchrec_kd.config import RunConfig
from torchrec_kd.training.distill_run import DistillRun


def run(cfg: RunConfig, qat: Optional[str] = None) -> Dict[str, Any]:
    """Distill, evaluate on the test split and save. Returns the ``distilled`` (or ``distilled_qat``) entry."""
    recipe = DistillRun(cfg, qat)
    recipe.setup()
    recipe.train()
    return recipe.save(recipe.evaluate("test"))

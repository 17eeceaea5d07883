"""Recipe: the whole job in one launch — teacher, student alone, distillation,
quantization, quantization-aware distillation (``distill.qat``), report — skipping
every step whose outputs already exist.

All steps run in the same processes and process group; a step is done when its
checkpoint (``<name>/meta.json``) and its ``metrics.json`` entry exist. Rank 0
decides and broadcasts, so every rank skips the same steps.

Example::

    python -m torchrec_kd.cli experiment --config configs/dlrm_teacher_synthetic.yaml
"""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path
from typing import Callable, List, Tuple

import torch.distributed as dist

from torchrec_kd.config import RunConfig
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.recipes import distill, quantize, report, train_model
from torchrec_kd.results import METRICS_FILE

logger = logging.getLogger(__name__)


def _has(out: Path, entries: List[str], checkpoint: str = "") -> bool:
    f = out / METRICS_FILE
    if not f.is_file():
        return False
    metrics = json.loads(f.read_text())
    return all(e in metrics for e in entries) and (not checkpoint or (out / checkpoint / "meta.json").is_file())


def steps(cfg: RunConfig) -> List[Tuple[str, Callable[[Path], bool], Callable[[], object]]]:
    """(name, is_done(out_dir), run) for each step, in order."""
    quantized = [f"distilled_{d}" for d in cfg.quantize.dtypes]
    out = [
        ("teacher", lambda out: _has(out, ["teacher"], "teacher"), lambda: train_model.run(cfg, "teacher")),
        ("student", lambda out: _has(out, ["student"], "student"), lambda: train_model.run(cfg, "student")),
        ("distill", lambda out: _has(out, ["distilled"], "distilled"), lambda: distill.run(cfg)),
        ("quantize", lambda out: _has(out, quantized), lambda: quantize.run(cfg, "distilled")),
    ]
    qat = cfg.distill.qat
    if qat is not None:  # quantization-aware distillation, exported in the format it trained for
        out += [
            ("distill-qat", lambda out: _has(out, ["distilled_qat"], "distilled_qat"), lambda: distill.run(cfg, qat=qat)),
            ("quantize-qat", lambda out: _has(out, [f"distilled_qat_{qat}"]),
             lambda: quantize.run(cfg, "distilled_qat", [qat])),
        ]
    return out + [("report", lambda out: False, lambda: report.run(cfg))]


def run(cfg: RunConfig) -> None:
    """Run the steps that are not done yet.

    Args:
        cfg (RunConfig): the run config; ``output_dir`` holds what earlier launches produced.
    """
    env = init_distributed(cfg.distributed)
    out = cfg.out_dir
    for name, is_done, step in steps(cfg):
        decision = [is_done(out) if env.is_main else None]
        dist.broadcast_object_list(decision, src=0)
        if decision[0]:
            logger.info("experiment: %s already done in %s, skipping", name, out)
            continue
        logger.info("experiment: %s", name)
        step()
        gc.collect()  # free the previous step's sharded model before the next one is built
        dist.barrier()

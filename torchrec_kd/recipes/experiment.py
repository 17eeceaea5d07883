"""Recipe: the whole job in one launch — teacher, student alone, distillation,
quantization, quantization-aware distillation (``distill.qat``), report — skipping
every step whose outputs already exist, once per seed of ``experiment.seeds``.

All steps run in the same processes and process group; a step is done when its
checkpoint (``<name>/meta.json``) and its ``metrics.json`` entry exist. Rank 0
decides and broadcasts, so every rank skips the same steps. Every model is kept at
its best validation step. With several seeds each is a whole replicate in
``seed_<s>/`` and ``summary.json`` / ``summary.md`` / ``report.md`` state the
distilled − student-alone difference with its 95% interval.

Example::

    python -m torchrec_kd.cli experiment --config configs/dlrm_teacher_synthetic.yaml
    python -m torchrec_kd.cli experiment --config configs/dlrm_teacher_synthetic.yaml 'experiment.seeds=[0,1,2]'
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch.distributed as dist

from torchrec_kd.config import RunConfig
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.recipes import distill, quantize, report, train_model
from torchrec_kd.report import REPORT_MD
from torchrec_kd.results import METRICS_FILE
from torchrec_kd.summary import SUMMARY_JSON, summarize, summary_markdown, teacher_warning

SUMMARY_MD = "summary.md"

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


def seed_configs(cfg: RunConfig) -> Dict[int, RunConfig]:
    """Each replicate's config: ``experiment.seeds`` in ``<output_dir>/seed_<s>/``, or the run itself.

    Args:
        cfg (RunConfig): the run config.

    Returns:
        Dict[int, RunConfig]: seed -> its config (one entry, ``cfg`` itself, without ``experiment.seeds``).
    """
    if not cfg.experiment.seeds:
        return {cfg.seed: cfg}
    return {s: dataclasses.replace(cfg, seed=s, output_dir=str(cfg.out_dir / f"seed_{s}")) for s in cfg.experiment.seeds}


def run_one(cfg: RunConfig) -> Dict[str, Any]:
    """Run one replicate's steps that are not done yet; return its ``metrics.json`` (rank 0; {} elsewhere)."""
    env = init_distributed(cfg.distributed)
    out = cfg.out_dir
    for name, is_done, step in steps(cfg):
        decision = [is_done(out) if env.is_main else None]
        dist.broadcast_object_list(decision, src=0)
        if decision[0]:
            logger.info("experiment: %s already done in %s, skipping", name, out)
            continue
        logger.info("experiment: %s (seed %d)", name, cfg.seed)
        step()
        gc.collect()  # free the previous step's sharded model before the next one is built
        dist.barrier()
        if name == "student" and env.is_main:
            warning = teacher_warning(json.loads((out / METRICS_FILE).read_text()))
            if warning:
                logger.warning("experiment: %s", warning)
    return json.loads((out / METRICS_FILE).read_text()) if env.is_main else {}


def run(cfg: RunConfig) -> Dict[str, Any]:
    """Run every seed's steps that are not done yet, then write ``summary.json`` and ``summary.md``.

    Args:
        cfg (RunConfig): the run config; ``output_dir`` holds what earlier launches produced.

    Returns:
        Dict[str, Any]: the summary (rank 0; {} elsewhere).
    """
    env = init_distributed(cfg.distributed)
    per_seed = {seed: run_one(c) for seed, c in seed_configs(cfg).items()}
    summary: Dict[str, Any] = {}
    if env.is_main:
        out = cfg.out_dir
        summary = summarize(per_seed)
        (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
        text = summary_markdown(summary, cfg.run_name)
        (out / SUMMARY_MD).write_text(text)
        if cfg.experiment.seeds:  # the top-level report is the summary; each seed has its own
            (out / REPORT_MD).write_text(text)
        logger.info("experiment: wrote %s\n%s", out / SUMMARY_JSON, text)
    dist.barrier()
    return summary

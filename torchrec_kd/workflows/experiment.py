"""Workflow: the whole job in one launch — teacher, student alone, distillation,
quantization, quantization-aware distillation (``distill.qat``), report — skipping
every step whose outputs already exist, once per seed of ``experiment.seeds``.

All steps run in the same processes and process group; a step is done when its
``metrics.json`` entries exist and record the fingerprint (config sections and inputs)
this config would give them; otherwise it runs, with the reason logged. A fingerprint
holds the digests of the artifacts its step reads, so a step whose inputs were remade
differently is stale too (a new teacher: distillation and its exports run again; the
student alone does not). Rank 0 decides and broadcasts, so every rank skips the same steps. Every model is kept at
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
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch.distributed as dist

from torchrec_kd.config import RunConfig
from torchrec_kd.core.console import FILE_ONLY
from torchrec_kd.core.fingerprint import describe_change
from torchrec_kd.core.layout import RunLayout
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.recipes import distill, quantize, report, train_model
from torchrec_kd.reporting.lineage import expected_fingerprints, split_lineage
from torchrec_kd.reporting.metrics_file import read_metrics
from torchrec_kd.reporting.report import TASKS_PNG, write_experiment_plot
from torchrec_kd.reporting.summary import announce_once, summarize, summary_markdown, teacher_warning

logger = logging.getLogger(__name__)


def _stale(out: Path, entries: List[str], expected: Dict[str, Dict[str, Any]]) -> Optional[str]:
    """Why the step that writes ``entries`` must run (None: every entry is there and up to date)."""
    layout = RunLayout(out)
    metrics = read_metrics(layout.metrics)
    for e in entries:
        if e not in metrics:
            return f"{e} not done yet"
        have = metrics[e].get("fingerprint")
        if have != expected[e]["digest"] and "source_fingerprint" in metrics[e]:
            return f"{e} was exported from another {metrics[e].get('source') or e.rpartition('_')[0]} model (it was remade)"
        if have != expected[e]["digest"]:
            ckpt = layout.model_meta(e)
            old = (json.loads(ckpt.read_text()).get("fingerprint") or {}).get("inputs", {}) if ckpt.is_file() else {}
            change = describe_change(old, expected[e]["inputs"]) if old else []
            return f"{e} was made by another config" + (f" ({'; '.join(change)})" if change else
                                                        " or from other inputs (an upstream step changed)")
    return None


def steps(cfg: RunConfig) -> List[Tuple[str, List[str], Callable[[], object]]]:
    """(name, the metrics entries it writes, run) for each step, in order."""
    out: List[Tuple[str, List[str], Callable[[], object]]] = [
        ("teacher", ["teacher"], lambda: train_model.run(cfg, "teacher")),
        ("student", ["student"], lambda: train_model.run(cfg, "student")),
        ("distill", ["distilled"], lambda: distill.run(cfg)),
        ("quantize", quantize.export_names(cfg, "distilled"), lambda: quantize.run(cfg, "distilled")),
    ]
    qat = cfg.distill.qat
    if qat is not None:  # quantization-aware distillation, exported in the format it trained for
        out += [
            ("distill-qat", ["distilled_qat"], lambda: distill.run(cfg, qat=qat)),
            ("quantize-qat", [f"distilled_qat_{qat}"], lambda: quantize.run(cfg, "distilled_qat", [qat])),
        ]
    return out + [("report", [], lambda: report.run(cfg))]


def seed_configs(cfg: RunConfig) -> Dict[int, RunConfig]:
    """Each replicate's config: ``experiment.seeds`` in ``<output_dir>/seed_<s>/``, or the run itself.

    Args:
        cfg (RunConfig): the run config.

    Returns:
        Dict[int, RunConfig]: seed -> its config (one entry, ``cfg`` itself, without ``experiment.seeds``).
    """
    if not cfg.experiment.seeds:
        return {cfg.seed: cfg}
    layout = RunLayout(cfg.out_dir)
    return {s: dataclasses.replace(cfg, seed=s, output_dir=str(layout.seed(s).root)) for s in cfg.experiment.seeds}


def run_one(cfg: RunConfig) -> Dict[str, Any]:
    """Run one replicate's steps that are not done yet; return its ``metrics.json`` (rank 0; {} elsewhere)."""
    env = init_distributed(cfg.distributed)
    out = cfg.out_dir
    metrics_file = RunLayout(out).metrics
    for name, entries, step in steps(cfg):
        reason = None
        if env.is_main:  # a step's fingerprint holds its inputs' digests: a changed input makes it stale
            reason = "the report is always rebuilt" if not entries else _stale(out, entries, expected_fingerprints(cfg))
        decision = [reason]
        dist.broadcast_object_list(decision, src=0)
        if decision[0] is None:
            logger.info("experiment: %s already done in %s (same config and inputs), skipping", name, out)
            continue
        if name.startswith("distill") and env.is_main:
            # the report (the last step) states the teacher warning: distill and distill-qat do not print it too
            warning = teacher_warning(read_metrics(metrics_file))
            if warning:
                announce_once(warning)
        logger.info("experiment: %s (seed %d): %s", name, cfg.seed, decision[0])
        step()
        gc.collect()  # free the previous step's sharded model before the next one is built
        dist.barrier()
    return read_metrics(metrics_file) if env.is_main else {}


def run(cfg: RunConfig) -> Dict[str, Any]:
    """Run every seed's steps that are not done yet, then write ``summary.json`` and ``summary.md``.

    The summary, like each report, holds only the models of this config's lineage; the others
    are named in it (``reporting.lineage``).

    Args:
        cfg (RunConfig): the run config; ``output_dir`` holds what earlier launches produced.

    Returns:
        Dict[str, Any]: the summary (rank 0; {} elsewhere).
    """
    env = init_distributed(cfg.distributed)
    configs = seed_configs(cfg)
    for c in configs.values():  # a damaged metrics.json stops every rank with one line, before any work
        read_metrics(RunLayout(c.out_dir).metrics)
    per_seed = {seed: run_one(c) for seed, c in configs.items()}
    summary: Dict[str, Any] = {}
    if env.is_main:
        layout = RunLayout(cfg.out_dir)
        lineages = {seed: split_lineage(per_seed[seed], c, Path(c.out_dir)) for seed, c in configs.items()}
        summary = summarize({s: lin.current for s, lin in lineages.items()},
                            {s: lin.left_out for s, lin in lineages.items()})
        layout.summary_json.write_text(json.dumps(summary, indent=2))
        text = summary_markdown(summary, cfg.run_name)
        layout.summary_md.write_text(text)
        if cfg.experiment.seeds:  # the top-level report is the summary; each seed has its own
            plot = write_experiment_plot(summary, {s: lin.current for s, lin in lineages.items()}, layout.root,
                                         title=cfg.run_name)
            tasks_png = layout.root / TASKS_PNG  # a multi-task run: each task's means and interval
            layout.report_md.write_text(text + (f"\n![AUC against size, validation curves, the gain]({plot.name})\n"
                                                if plot else "")
                                        + (f"\n![each task: means over seeds, the gain]({TASKS_PNG})\n"
                                           if summary.get("tasks") and tasks_png.is_file() else ""))
        # one seed: report.md, just printed, says it all; across seeds the summary is the final table
        logger.info("experiment: wrote %s\n%s", layout.summary_json, text,
                    extra=None if cfg.experiment.seeds else FILE_ONLY)
    dist.barrier()
    return summary

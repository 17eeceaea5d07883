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
from torchrec_kd.core.fingerprint import describe_change, step_fingerprint
from torchrec_kd.core.layout import META_FILE, RunLayout
from torchrec_kd.distill.teachers import teacher_digest
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.recipes import distill, quantize, report, train_model
from torchrec_kd.reporting.report import write_experiment_plot
from torchrec_kd.reporting.summary import summarize, summary_markdown, teacher_warning

logger = logging.getLogger(__name__)


def expected_fingerprints(cfg: RunConfig) -> Dict[str, Dict[str, Any]]:
    """The fingerprint each step's artifact must record to count as done for ``cfg``.

    Computed from the config alone (and the recorded fingerprints of teachers this
    experiment does not train), so every stale step is known before anything runs.
    """
    exp = {"teacher": step_fingerprint(cfg, "teacher"), "student": step_fingerprint(cfg, "student")}
    external = [e.checkpoint for e in cfg.distill.teachers] or (
        [cfg.distill.teacher_checkpoint] if cfg.distill.teacher_checkpoint else [])
    teachers = exp["teacher"]["digest"]
    if external:  # not trained here: what distill will record of them (missing: it will stop with an error)
        teachers = ",".join(teacher_digest(Path(p)) if (Path(p) / META_FILE).is_file() else "missing"
                            for p in external)
    for name in ("distilled", "distilled_qat"):
        exp[name] = step_fingerprint(cfg, name, {"teachers": teachers})
        for dtype in ("int8", "int4", "int2", "fp16"):
            exp[f"{name}_{dtype}"] = step_fingerprint(cfg, f"{name}_{dtype}", {"source": exp[name]["digest"]})
    return exp


def _stale(out: Path, entries: List[str], expected: Dict[str, Dict[str, Any]]) -> Optional[str]:
    """Why the step that writes ``entries`` must run (None: every entry is there and up to date)."""
    layout = RunLayout(out)
    metrics = json.loads(layout.metrics.read_text()) if layout.metrics.is_file() else {}
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
        logger.info("experiment: %s (seed %d): %s", name, cfg.seed, decision[0])
        step()
        gc.collect()  # free the previous step's sharded model before the next one is built
        dist.barrier()
        if name == "student" and env.is_main:
            warning = teacher_warning(json.loads(metrics_file.read_text()))
            if warning:
                logger.warning("experiment: %s", warning)
    return json.loads(metrics_file.read_text()) if env.is_main else {}


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
        layout = RunLayout(cfg.out_dir)
        summary = summarize(per_seed)
        layout.summary_json.write_text(json.dumps(summary, indent=2))
        text = summary_markdown(summary, cfg.run_name)
        layout.summary_md.write_text(text)
        if cfg.experiment.seeds:  # the top-level report is the summary; each seed has its own
            plot = write_experiment_plot(summary, per_seed, layout.root, title=cfg.run_name)
            layout.report_md.write_text(text + (f"\n![AUC against size, validation curves, the gain]({plot.name})\n"
                                                if plot else ""))
        # one seed: report.md, just printed, says it all; across seeds the summary is the final table
        logger.info("experiment: wrote %s\n%s", layout.summary_json, text,
                    extra=None if cfg.experiment.seeds else FILE_ONLY)
    dist.barrier()
    return summary

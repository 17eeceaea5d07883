"""Recipe: the whole job in one launch — teacher, student alone, distillation,
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
from torchrec_kd.fingerprint import describe_change, step_fingerprint
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.recipes import distill, quantize, report, train_model
from torchrec_kd.report import REPORT_MD
from torchrec_kd.results import METRICS_FILE
from torchrec_kd.summary import SUMMARY_JSON, summarize, summary_markdown, teacher_warning

SUMMARY_MD = "summary.md"

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
        teachers = ",".join(distill.teacher_digest(Path(p)) if (Path(p) / "meta.json").is_file() else "missing"
                            for p in external)
    for name in ("distilled", "distilled_qat"):
        exp[name] = step_fingerprint(cfg, name, {"teachers": teachers})
        for dtype in ("int8", "int4", "int2", "fp16"):
            exp[f"{name}_{dtype}"] = step_fingerprint(cfg, f"{name}_{dtype}", {"source": exp[name]["digest"]})
    return exp


def _stale(out: Path, entries: List[str], expected: Dict[str, Dict[str, Any]]) -> Optional[str]:
    """Why the step that writes ``entries`` must run (None: every entry is there and up to date)."""
    f = out / METRICS_FILE
    metrics = json.loads(f.read_text()) if f.is_file() else {}
    for e in entries:
        if e not in metrics:
            return f"{e} not done yet"
        have = metrics[e].get("fingerprint")
        if have != expected[e]["digest"] and "source_fingerprint" in metrics[e]:
            return f"{e} was exported from another {e.rpartition('_')[0]} model (it was remade)"
        if have != expected[e]["digest"]:
            ckpt = out / e / "meta.json"
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
        ("quantize", [f"distilled_{d}" for d in cfg.quantize.dtypes], lambda: quantize.run(cfg, "distilled")),
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
    return {s: dataclasses.replace(cfg, seed=s, output_dir=str(cfg.out_dir / f"seed_{s}")) for s in cfg.experiment.seeds}


def run_one(cfg: RunConfig) -> Dict[str, Any]:
    """Run one replicate's steps that are not done yet; return its ``metrics.json`` (rank 0; {} elsewhere)."""
    env = init_distributed(cfg.distributed)
    out = cfg.out_dir
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

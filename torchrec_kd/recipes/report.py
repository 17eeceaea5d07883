"""Recipe: measure inference latency of every model of the run, then write the report.

Rank 0 keeps the models of this config's lineage (``reporting.lineage``: the others are
named and left out), rebuilds each unsharded on CPU (float checkpoints and quantized
exports), times it at batch 1 and 1024 on test rows, merges the latencies into
``metrics.json`` and writes ``report.md``, ``report.png`` and TensorBoard events. A
directory holding no model of this config's lineage is refused. Other ranks wait.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch

from torchrec_kd.checkpoint.model_io import read_meta
from torchrec_kd.config import RunConfig
from torchrec_kd.core.console import FILE_ONLY
from torchrec_kd.core.layout import RunLayout
from torchrec_kd.data import build_data
from torchrec_kd.distill.candidates import has_towers
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.errors import CheckpointError, ConfigError, DataError, UserError
from torchrec_kd.models.build import build_model_from_meta, io_from_meta
from torchrec_kd.models.saved import load_float_model
from torchrec_kd.quant.export import load_quantized, read_quantized_meta
from torchrec_kd.reporting.latency import latency_ms
from torchrec_kd.reporting.lineage import Lineage, split_lineage
from torchrec_kd.reporting.metrics_file import read_metrics, update_metrics
from torchrec_kd.reporting.report import write_report
from torchrec_kd.training.cascade_eval import cascade_metrics

logger = logging.getLogger(__name__)
LATENCY_ROWS = 1024
ROOTS = ("teacher", "student", "distilled", "distilled_qat")  # trained models, upstream first


def _scorer(layout: RunLayout, name: str) -> Callable[[Batch], torch.Tensor]:
    """The logits of one model of the run (a quantized export or a float checkpoint), through its own forward."""
    if layout.export_meta(name).is_file():
        model = load_quantized(layout.export(name), build_model_from_meta).eval()
        io = io_from_meta(read_quantized_meta(layout.export(name))["meta"])
    else:
        model, meta = load_float_model(layout.model(name))
        io = io_from_meta(meta)
    return lambda b: io.logits(model, b)


def run(cfg: RunConfig) -> Dict[str, Any]:
    """Add latencies to ``metrics.json`` and write the report of this config's lineage (rank 0).

    Args:
        cfg (RunConfig): the run (output dir, data for the timing rows; its fingerprints pick the lineage).

    Returns:
        Dict[str, Any]: the reported metrics with latencies (on rank 0; empty elsewhere).

    Raises:
        ConfigError: the directory's models were all made by another config.
        CheckpointError: ``metrics.json`` is missing or damaged.
    """
    env = init_distributed(cfg.distributed)
    out = cfg.out_dir
    layout = RunLayout(out)
    metrics: Dict[str, Any] = {}
    if env.is_main:
        lineage = _lineage(cfg)
        metrics = lineage.current
        data = build_data(cfg.data, cfg.seed, tasks=cfg.tasks)
        if cfg.data.retrieval is not None:
            metrics = _cascades(layout, metrics, data, cfg.data.retrieval.ks)
        rows = _timing_rows(data, cfg)
        for name in list(metrics):
            if layout.model_meta(name).is_file() or layout.export_meta(name).is_file():
                lat = latency_ms(_scorer(layout, name), rows, (1, LATENCY_ROWS))
                metrics[name] = update_metrics(out, name, {**metrics[name], **lat})[name]
                logger.info("%s: %s", name, ", ".join(f"{k} {v:.3f}" for k, v in lat.items()), extra=FILE_ONLY)
        paths = write_report(metrics, out, cfg.run_name, left_out=lineage.left_out)
        logger.info("%s\nwrote %s", layout.report_md.read_text().rstrip(), ", ".join(str(p) for p in paths))
    dist.barrier()
    return metrics


def _cascades(layout: RunLayout, metrics: Dict[str, Any], data: Any, ks: Sequence[int]) -> Dict[str, Any]:
    """A retrieval run's cascade: the teacher re-ranking each tower student's top-max(ks), merged as ``cascade``."""
    if "teacher" not in metrics or not layout.model_meta("teacher").is_file():
        return metrics
    ranker = _scorer(layout, "teacher")
    for name in ("student", "distilled"):
        if name not in metrics or not layout.model_meta(name).is_file():
            continue
        towers, _ = load_float_model(layout.model(name))
        if has_towers(towers):
            found = cascade_metrics(ranker, towers, data, ks)
            metrics[name] = update_metrics(layout.root, name, {**metrics[name], "cascade": found})[name]
            logger.info("%s's top %d re-ranked by the teacher: recall@20 %.4f (alone %.4f)", name, found["candidates"],
                        found.get("recall@20", float("nan")),
                        (metrics[name].get("retrieval") or {}).get("recall@20", float("nan")), extra=FILE_ONLY)
    return metrics


def _lineage(cfg: RunConfig) -> Lineage:
    """The run's ``metrics.json`` split by lineage; refused when nothing in it is of this config's lineage."""
    layout = RunLayout(cfg.out_dir)
    all_metrics = read_metrics(layout.metrics)
    if not all_metrics:
        raise CheckpointError(f"{layout.metrics} not found or empty: nothing to report in {layout.root}; "
                              "run experiment (or train-teacher, train-student, distill) first")
    lineage = split_lineage(all_metrics, cfg, layout.root)
    if not lineage.current:
        # the first model of the chain says what differs at the root (the teacher's change, not its effect)
        first = min(lineage.left_out, key=lambda n: (ROOTS.index(n) if n in ROOTS else len(ROOTS), n))
        made_by = next((n for n in (_recorded_run_name(layout, m) for m in ROOTS) if n), None)
        other = f" (run_name {made_by!r})" if made_by and made_by != cfg.run_name else ""
        raise ConfigError(f"report: no model in {layout.root} is of this config's lineage (run_name {cfg.run_name!r}): "
                          f"they were made by another config{other}; {first}: {lineage.left_out[first]}. Report "
                          "with the config that made them, or run experiment with this one")
    return lineage


def _recorded_run_name(layout: RunLayout, name: str) -> Optional[str]:
    """The run_name in the config a trained model's checkpoint recorded (None when there is none)."""
    try:
        return (read_meta(layout.model(name)).get("config") or {}).get("run_name")
    except UserError:
        return None


def _timing_rows(data: Any, cfg: RunConfig) -> Any:
    """LATENCY_ROWS or more rows to time the models on: test rows, or train rows when the test split is smaller."""
    for split in ("test", "train"):
        try:
            return next(iter(data.batches(split, _timing_batch(cfg), num_batches=1)))
        except DataError:
            if split == "train":
                raise
    raise AssertionError("unreachable")


def _timing_batch(cfg: RunConfig) -> int:
    """A global batch size of at least LATENCY_ROWS rows that the data source accepts."""
    size = cfg.data.batch_size
    while size < LATENCY_ROWS:
        size *= 2
    return size

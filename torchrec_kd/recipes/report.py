"""Recipe: measure inference latency of every model of the run, then write the report.

Rank 0 rebuilds each model unsharded on CPU (float checkpoints and quantized exports),
times it at batch 1 and 1024 on test rows, merges the latencies into ``metrics.json``
and writes ``report.md``, ``report.png`` and TensorBoard events. Other ranks wait.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict

import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch

from torchrec_kd.config import RunConfig
from torchrec_kd.core.console import FILE_ONLY
from torchrec_kd.core.layout import RunLayout
from torchrec_kd.data import build_data
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.models.build import build_model_from_meta, io_from_meta
from torchrec_kd.models.saved import load_float_model
from torchrec_kd.quant.export import load_quantized, read_quantized_meta
from torchrec_kd.reporting.latency import latency_ms
from torchrec_kd.reporting.metrics_file import update_metrics
from torchrec_kd.reporting.report import write_report

logger = logging.getLogger(__name__)
LATENCY_ROWS = 1024


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
    """Add latencies to ``metrics.json`` and write the report (rank 0).

    Args:
        cfg (RunConfig): the run (output dir, data for the timing rows).

    Returns:
        Dict[str, Any]: the metrics with latencies (on rank 0; empty elsewhere).
    """
    env = init_distributed(cfg.distributed)
    out = cfg.out_dir
    layout = RunLayout(out)
    metrics: Dict[str, Any] = {}
    if env.is_main:
        metrics = json.loads(layout.metrics.read_text())
        data = build_data(cfg.data, cfg.seed)
        rows = next(iter(data.batches("test", _timing_batch(cfg), num_batches=1)))
        for name in metrics:
            if layout.model_meta(name).is_file() or layout.export_meta(name).is_file():
                lat = latency_ms(_scorer(layout, name), rows, (1, LATENCY_ROWS))
                metrics = update_metrics(out, name, {**metrics[name], **lat})
                logger.info("%s: %s", name, ", ".join(f"{k} {v:.3f}" for k, v in lat.items()), extra=FILE_ONLY)
        paths = write_report(metrics, out, cfg.run_name)
        logger.info("%s\nwrote %s", layout.report_md.read_text().rstrip(), ", ".join(str(p) for p in paths))
    dist.barrier()
    return metrics


def _timing_batch(cfg: RunConfig) -> int:
    """A global batch size of at least LATENCY_ROWS rows that the data source accepts."""
    size = cfg.data.batch_size
    while size < LATENCY_ROWS:
        size *= 2
    return size

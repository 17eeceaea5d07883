"""Recipe: evaluate a saved model of the run on a split, without training anything.

A float checkpoint (``teacher``, ``student``, ``distilled``) is rebuilt sharded, as it
trained, and loaded with DCP (any world size); a quantized export
(``distilled_int4`` …) is loaded on every rank. Each rank scores its share; the
numbers are printed and written to ``<output_dir>/eval_<source>_<split>.json``.

Example::

    python -m torchrec_kd.cli evaluate --config configs/dlrm_teacher_synthetic.yaml --source distilled_int4
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict

from torchrec_kd.checkpoint.model_io import load_module, read_meta
from torchrec_kd.config import RunConfig
from torchrec_kd.core.layout import RunLayout
from torchrec_kd.core.tasks import run_tasks
from torchrec_kd.data import build_data
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.errors import ConfigError
from torchrec_kd.models.build import build_model_from_meta, io_from_meta
from torchrec_kd.models.dlrm import check_fits_data
from torchrec_kd.quant.export import load_quantized, read_quantized_meta
from torchrec_kd.training.evaluate import evaluate
from torchrec_kd.training.model_run import TrainModelRun

logger = logging.getLogger(__name__)


def _line(metrics: Dict[str, Any]) -> str:
    """``auc 0.7812, ne 0.8012, …`` and, per task of a multi-task run, ``conversion: auc 0.7001, …``."""
    def numbers(m: Dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float) and k != "rows")

    tasks = metrics.get("tasks") or {}
    head = numbers(metrics) + (f" (selection task {metrics['selection_task']})" if tasks else "")
    return "; ".join([head] + [f"{t}: {numbers(m)}" for t, m in tasks.items()])


def run(cfg: RunConfig, source: str, split: str = "test") -> Dict[str, Any]:
    """Metrics of ``source`` on ``split``.

    Args:
        cfg (RunConfig): the run config (data, output dir, model shapes).
        source (str): a checkpoint directory name or an ``export/`` name of the run.
        split (str): "val" or "test".

    Returns:
        Dict[str, Any]: auc, ne, logloss, calibration, rows (a multi-task run: the selection task's, and
        ``tasks`` with each task's, as :func:`~torchrec_kd.training.evaluate.evaluate`).
    """
    out = cfg.out_dir
    layout = RunLayout(out)
    export = layout.export(source)
    if layout.export_meta(source).is_file():
        env = init_distributed(cfg.distributed)
        data = build_data(cfg.data, cfg.seed, tasks=cfg.tasks)
        meta = read_quantized_meta(export)["meta"]
        check_fits_data(meta, data.dense_names, data.sparse_names, data.num_embeddings, str(export))
        model, io = load_quantized(export, build_model_from_meta).eval(), io_from_meta(meta)
        n = data.num_batches(split, cfg.data.batch_size) or 0
        metrics = evaluate(lambda b: io.logits(model, b),
                           data.batches(split, cfg.data.batch_size, env.rank, env.world_size),
                           env, cfg.data.batch_size // env.world_size, n * cfg.data.batch_size,
                           tasks=run_tasks(cfg), select=cfg.train.early_stopping.task)
    elif layout.model_meta(source).is_file():
        role = read_meta(layout.model(source))["role"]
        recipe = TrainModelRun(cfg, role)
        recipe.setup()
        load_module(recipe.model, layout.model(source))
        env = recipe.env
        metrics = recipe.evaluate(split)
    else:
        raise ConfigError(f"--source {source}: neither {out / source}/meta.json nor {export}/quantized.json exists; "
                          "name a checkpoint (teacher, student, distilled) or an export (distilled_int4, …) of this run")
    if env.is_main:
        layout.evaluation(source, split).write_text(json.dumps(metrics, indent=2))
        logger.info("%s on %s: %s", source, split, _line(metrics))
    return metrics

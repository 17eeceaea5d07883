"""Recipe: quantize a trained student's tables, evaluate each dtype, export for serving.

Every rank rebuilds the (small) student unsharded on CPU from the DCP checkpoint,
quantizes it, and scores its own share of the test split, so metrics come out of the
same collective ``RecMetricModule`` path as training. Rank 0 writes
``metrics.json`` entries ``<source>_<dtype>`` and the exports under ``export/``:
``weights.pt`` + ``quantized.json`` (plain tensors, loads with ``weights_only=True``)
and a TorchScript program ``model.ts``.

Example::

    python -m torchrec_kd.cli quantize --config configs/dlrm_teacher_synthetic.yaml
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from torchrec.models.dlrm import DLRM

from torchrec_kd.checkpoint import load_full_state_dict, read_meta
from torchrec_kd.config import RunConfig
from torchrec_kd.data import build_data
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.export import export_torchscript, save_quantized, seal_export
from torchrec_kd.fingerprint import read_recorded, step_fingerprint
from torchrec_kd.models.dlrm import build_dlrm_from_meta
from torchrec_kd.quantization import embedding_storage_bytes, quantize_dlrm
from torchrec_kd.recipes.train_model import MODEL_PREFIX
from torchrec_kd.results import METRICS_FILE, metrics_table, update_metrics
from torchrec_kd.training.evaluate import evaluate

logger = logging.getLogger(__name__)

EXPORT_DIR = "export"


def load_float_model(ckpt: Path) -> Tuple[DLRM, Dict[str, Any]]:
    """The unsharded float model of a ``train-student``/``distill`` checkpoint, on CPU.

    Args:
        ckpt (Path): checkpoint directory (holds ``meta.json`` and ``model/``).

    Returns:
        Tuple[DLRM, dict]: the model in eval mode and the checkpoint's meta.
    """
    meta = read_meta(ckpt)
    model = build_dlrm_from_meta(meta)
    state = {k[len(MODEL_PREFIX):]: v for k, v in load_full_state_dict(ckpt).items() if k.startswith(MODEL_PREFIX)}
    model.load_state_dict(state)
    return model.eval(), meta


def run(cfg: RunConfig, source: str = "distilled", dtypes: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    """Quantize ``<output_dir>/<source>`` to each of ``quantize.dtypes`` and evaluate.

    Args:
        cfg (RunConfig): the run config (``quantize`` section, data, output dir).
        source (str): which checkpoint: ``distilled``, ``distilled_qat`` or ``student``.
        dtypes (Optional[Sequence[str]]): overrides ``quantize.dtypes`` (a QAT student is
            exported in the format it was trained for).

    Returns:
        Dict[str, dict]: the metrics entries written, keyed ``<source>_<dtype>``.
    """
    env = init_distributed(cfg.distributed)
    data = build_data(cfg.data, cfg.seed)
    out = cfg.out_dir
    float_model, meta = load_float_model(out / source)
    local_batch = cfg.data.batch_size // env.world_size
    n = data.num_batches("test", cfg.data.batch_size) or 0
    params = sum(p.numel() for p in float_model.parameters())
    results: Dict[str, Dict[str, Any]] = {}
    for dtype in (dtypes or cfg.quantize.dtypes):
        qm = quantize_dlrm(float_model, dtype, cfg.quantize.tables)
        t0 = time.perf_counter()
        metrics = evaluate(lambda b: qm(b.dense_features, b.sparse_features).squeeze(-1),
                           data.batches("test", cfg.data.batch_size, env.rank, env.world_size),
                           env, local_batch, n * cfg.data.batch_size)
        eval_s = time.perf_counter() - t0
        name = f"{source}_{dtype}"
        recorded = read_recorded(meta)
        fp = step_fingerprint(cfg, name, {"source": recorded["digest"] if recorded else None})
        entry = {**metrics, "fingerprint": fp["digest"], "source_fingerprint": fp["inputs"]["source"], "params": params, "embedding_bytes": embedding_storage_bytes(qm), "dtype": dtype, "per_table": dict(cfg.quantize.tables),
                 "eval_samples_per_s": metrics["rows"] / max(eval_s, 1e-9)}
        if env.is_main:
            base = _read_entry(out, source)
            entry["train_samples_per_s"] = base.get("train_samples_per_s")
            entry["best_step"] = base.get("best_step")  # quantized from the source's kept checkpoint
            target = out / EXPORT_DIR / name
            save_quantized(qm, target, {**meta, "export_fingerprint": fp})
            export_torchscript(qm, target / "model.ts")
            seal_export(target)  # sizes and hashes of weights.pt and model.ts, checked on every load
            entry["export"] = str(target)
            table = metrics_table(update_metrics(out, name, entry))
            logger.info("%s: test auc %.4f, %d embedding bytes; exported to %s\n%s",
                        name, entry["auc"], entry["embedding_bytes"], target, table)
        results[name] = entry
    return results


def _read_entry(out: Path, name: str) -> Dict[str, Any]:
    f = out / METRICS_FILE
    return json.loads(f.read_text()).get(name, {}) if f.is_file() else {}

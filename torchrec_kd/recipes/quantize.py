"""Recipe: quantize a trained student's tables, evaluate each dtype, export for serving.

Every rank rebuilds the (small) student unsharded on CPU from the DCP checkpoint,
quantizes it, and scores its own share of the test split, so metrics come out of the
same collective ``RecMetricModule`` path as training. Rank 0 writes
``metrics.json`` entries ``<source>_<dtype>`` and the exports under ``export/``:
``weights.pt`` + ``quantized.json`` (plain tensors, loads with ``weights_only=True``),
``contract.json`` (the input contract: raw columns in, features out) and a TorchScript
program ``model.ts`` returning logits and probabilities.

Example::

    python -m torchrec_kd.cli quantize --config configs/dlrm_teacher_synthetic.yaml
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Dict, Optional, Sequence

from torchrec_kd.config import RunConfig
from torchrec_kd.core.console import FILE_ONLY
from torchrec_kd.core.fingerprint import read_recorded, step_fingerprint
from torchrec_kd.core.layout import CONTRACT_FILE, TORCHSCRIPT_FILE, RunLayout
from torchrec_kd.data import build_data
from torchrec_kd.data.contract import input_contract
from torchrec_kd.distributed.env import init_distributed
from torchrec_kd.errors import ConfigError
from torchrec_kd.models.build import io_from_meta
from torchrec_kd.models.saved import load_float_model
from torchrec_kd.quant.embeddings import embedding_storage_bytes, quantize_model
from torchrec_kd.quant.export import export_torchscript, save_quantized, seal_export
from torchrec_kd.quant.scoring_head import ScoringHead
from torchrec_kd.reporting.metrics_file import metrics_table, read_entry, update_metrics
from torchrec_kd.training.evaluate import evaluate

logger = logging.getLogger(__name__)


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
    layout = RunLayout(out)
    float_model, meta = load_float_model(layout.model(source))
    local_batch = cfg.data.batch_size // env.world_size
    n = data.num_batches("test", cfg.data.batch_size) or 0
    params = sum(p.numel() for p in float_model.parameters())
    io = io_from_meta(meta)
    contract = input_contract(cfg.data, data.dense_names, data.sparse_names, data.num_embeddings)
    results: Dict[str, Dict[str, Any]] = {}
    for dtype in (dtypes or cfg.quantize.dtypes):
        try:
            qm = quantize_model(float_model, dtype, cfg.quantize.tables)
        except ValueError as e:  # a table named in quantize.tables that the student does not have
            raise ConfigError(f"quantize.tables: {e}") from None
        t0 = time.perf_counter()
        metrics = evaluate(lambda b, qm=qm: io.logits(qm, b),
                           data.batches("test", cfg.data.batch_size, env.rank, env.world_size),
                           env, local_batch, n * cfg.data.batch_size)
        eval_s = time.perf_counter() - t0
        name = f"{source}_{dtype}"
        recorded = read_recorded(meta)
        fp = step_fingerprint(cfg, name, {"source": recorded["digest"] if recorded else None})
        entry = {**metrics, "fingerprint": fp["digest"], "source_fingerprint": fp["inputs"]["source"], "params": params,
                 "embedding_bytes": embedding_storage_bytes(qm), "dtype": dtype, "per_table": dict(cfg.quantize.tables),
                 "eval_samples_per_s": metrics["rows"] / max(eval_s, 1e-9)}
        if env.is_main:
            base = read_entry(out, source)
            entry["train_samples_per_s"] = base.get("train_samples_per_s")
            entry["best_step"] = base.get("best_step")  # quantized from the source's kept checkpoint
            target = layout.export(name)
            save_quantized(qm, target, {**meta, "export_fingerprint": fp})
            (target / CONTRACT_FILE).write_text(json.dumps(contract, indent=2))
            # the program returns {"logit", "probability"} with no autograd (ScoringHead); a model with
            # its own call adapter is exported as it is (load_model scores it through the adapter)
            export_torchscript(ScoringHead(qm, io.output) if io.call is None else qm, target / TORCHSCRIPT_FILE)
            seal_export(target)  # sizes and hashes of weights.pt, contract.json and model.ts, checked on every load
            entry["export"] = str(target)
            table = metrics_table(update_metrics(out, name, entry))
            logger.info("%s: test auc %.4f, %s embedding bytes; exported to %s", name, entry["auc"],
                        f"{entry['embedding_bytes']:,}", target)
            logger.info("wrote %s\n%s", layout.metrics, table, extra=FILE_ONLY)
        results[name] = entry
    return results

